//! TFRecord files as `oxserve predict` and the warm-up reader take them: any bytes, read as
//! uncompressed, gzip or zlib streams, must end in records or an error, never a panic. And
//! records written by `RecordWriter` must read back as written.
//!
//! The first byte picks the compression; the rest is the file, and also the records (split at
//! every 0xff byte) of the round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oxserve_core::tfrecord::{Compression, RecordReader, RecordWriter};

const COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zlib];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let compression = COMPRESSIONS[usize::from(pick) % COMPRESSIONS.len()];
    for record in RecordReader::new(compression.reader(file)) {
        if record.is_err() {
            break;
        }
    }

    let records: Vec<&[u8]> = file.split(|&b| b == 0xff).collect();
    let mut written = Vec::new();
    {
        let mut writer = RecordWriter::new(compression.writer(&mut written));
        for record in &records {
            writer.write_record(record).expect("writing to memory");
        }
        // Dropping the compressing writer finishes its stream.
        drop(writer.into_inner().expect("writing to memory"));
    }
    let read: Vec<Vec<u8>> = RecordReader::new(compression.reader(&written[..]))
        .collect::<Result<_, _>>()
        .expect("written records read back");
    assert_eq!(read, records);
});
