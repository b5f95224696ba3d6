//! TFRecord files, as TensorFlow's `tf.io.TFRecordWriter` / `tf.data.TFRecordDataset` read and
//! write them: a sequence of records, each
//!
//! ```text
//! uint64 length            little endian
//! uint32 masked_crc32c(length bytes)
//! byte   data[length]
//! uint32 masked_crc32c(data)
//! ```
//!
//! where `masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` of the CRC-32C
//! (Castagnoli) of `x`. Files may be compressed as a whole (`GZIP` or `ZLIB`, TensorFlow's
//! `compression_type`): [`Compression`] wraps any reader or writer accordingly, or the caller
//! hands an already-decompressed reader to [`RecordReader::new`].
//!
//! Reading never panics and never allocates more than the bytes actually present: a truncated
//! file or a record whose checksum does not match is a `DATA_LOSS` error naming the byte offset
//! (in the uncompressed stream) and the record index, after which the reader yields nothing more
//! (the format cannot be resynchronised).
//!
//! ```
//! use oxserve_core::tfrecord::{RecordReader, RecordWriter};
//!
//! let mut writer = RecordWriter::new(Vec::new());
//! writer.write_record(b"hello")?;
//! writer.write_record(b"")?;
//! let bytes = writer.into_inner()?;
//! let records: Vec<Vec<u8>> = RecordReader::new(&bytes[..]).collect::<Result<_, _>>()?;
//! assert_eq!(records, vec![b"hello".to_vec(), vec![]]);
//! # Ok::<(), oxserve_core::Error>(())
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;

use crate::error::{Code, Error, Result};

const MASK_DELTA: u32 = 0xa282_ead8;
const HEADER_LEN: usize = 12;
const FOOTER_LEN: usize = 4;

/// TFRecord's masking of a CRC-32C value.
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// The inverse of [`mask_crc`].
pub fn unmask_crc(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

/// The masked CRC-32C of `data`, as stored in TFRecord headers and footers.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask_crc(crc32c::crc32c(data))
}

/// Whole-file compression of a TFRecord file (TensorFlow's `compression_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zlib,
}

impl Compression {
    /// Parses TensorFlow's `compression_type` (case-insensitive; `""` and `NONE` are none).
    pub fn from_tf_name(name: &str) -> Result<Compression> {
        match name.to_ascii_uppercase().as_str() {
            "" | "NONE" => Ok(Compression::None),
            "GZIP" => Ok(Compression::Gzip),
            "ZLIB" => Ok(Compression::Zlib),
            _ => Err(Error::invalid_argument(format!(
                "unknown TFRecord compression type {name:?}: expected \"\", \"GZIP\" or \"ZLIB\""
            ))),
        }
    }

    /// Gzip when `path` ends in `.gz`, else none.
    pub fn from_path(path: &Path) -> Compression {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("gz") => Compression::Gzip,
            _ => Compression::None,
        }
    }

    /// A reader of the uncompressed bytes of `inner`. Gzip accepts concatenated members.
    pub fn reader<'a, R: Read + Send + 'a>(self, inner: R) -> Box<dyn Read + Send + 'a> {
        match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zlib => Box::new(flate2::read::ZlibDecoder::new(inner)),
        }
    }

    /// A writer compressing into `inner`. Call `flush` and drop it (or use
    /// [`RecordWriter::into_inner`]) to finish the compressed stream.
    pub fn writer<'a, W: Write + Send + 'a>(self, inner: W) -> Box<dyn Write + Send + 'a> {
        match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::default(),
            )),
            Compression::Zlib => Box::new(flate2::write::ZlibEncoder::new(
                inner,
                flate2::Compression::default(),
            )),
        }
    }
}

/// Reads the records of a TFRecord stream (already decompressed). Also an [`Iterator`] of
/// `Result<Vec<u8>>`; [`RecordReader::read_record`] reuses one buffer instead.
pub struct RecordReader<R> {
    inner: R,
    /// Offset of the next record in the (uncompressed) stream.
    offset: u64,
    /// Index of the next record.
    index: u64,
    verify_data_crc: bool,
    /// Set after the end or an error: nothing more is read.
    done: bool,
}

/// Opens a TFRecord file for reading, decompressing as told.
pub fn open(
    path: &Path,
    compression: Compression,
) -> Result<RecordReader<Box<dyn Read + Send + 'static>>> {
    let file = File::open(path).map_err(|e| io_error(e, &format!("opening {}", path.display())))?;
    Ok(RecordReader::new(
        compression.reader(BufReader::with_capacity(1 << 16, file)),
    ))
}

/// Creates (truncates) a TFRecord file for writing, compressing as told.
pub fn create(
    path: &Path,
    compression: Compression,
) -> Result<RecordWriter<Box<dyn Write + Send + 'static>>> {
    let file =
        File::create(path).map_err(|e| io_error(e, &format!("creating {}", path.display())))?;
    Ok(RecordWriter::new(
        compression.writer(BufWriter::with_capacity(1 << 16, file)),
    ))
}

fn io_error(err: io::Error, what: &str) -> Error {
    let code = match err.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof => Code::DataLoss,
        _ => Code::Unknown,
    };
    Error {
        code,
        message: format!("{what}: {err}"),
    }
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> RecordReader<R> {
        RecordReader {
            inner,
            offset: 0,
            index: 0,
            verify_data_crc: true,
            done: false,
        }
    }

    /// Whether to check each record's data checksum (default true; the length checksum is always
    /// checked, as a corrupt length would make the reader lose its way).
    pub fn verify_data_crc(mut self, verify: bool) -> Self {
        self.verify_data_crc = verify;
        self
    }

    /// Byte offset of the next record in the uncompressed stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of records read so far (the index of the next one).
    pub fn records_read(&self) -> u64 {
        self.index
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn fail(&mut self, code: Code, what: &str) -> Error {
        self.done = true;
        Error {
            code,
            message: format!(
                "{what} at offset {} (record index {}, counting from 0)",
                self.offset, self.index
            ),
        }
    }

    /// Reads the next record into `buf` (replacing its contents). `Ok(false)` at a clean end of
    /// the stream (no byte of a next record); an error for anything else, after which every call
    /// returns `Ok(false)`.
    pub fn read_record(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        buf.clear();
        if self.done {
            return Ok(false);
        }
        let mut header = [0u8; HEADER_LEN];
        let n = match read_full(&mut self.inner, &mut header) {
            Ok(n) => n,
            Err(e) => {
                let message = format!("reading record header: {e}");
                return Err(self.fail(Code::DataLoss, &message));
            }
        };
        if n == 0 {
            self.done = true;
            return Ok(false);
        }
        if n < HEADER_LEN {
            return Err(self.fail(
                Code::DataLoss,
                &format!("truncated record header ({n} of {HEADER_LEN} bytes)"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&header[..8]);
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&header[8..]);
        if masked_crc32c(&len_bytes) != u32::from_le_bytes(crc_bytes) {
            return Err(self.fail(
                Code::DataLoss,
                "corrupted record (length checksum mismatch)",
            ));
        }
        let len = u64::from_le_bytes(len_bytes);
        // `take` + `read_to_end` grows the buffer only as bytes arrive: a huge length in a
        // truncated file cannot exhaust memory.
        let got = match (&mut self.inner).take(len).read_to_end(buf) {
            Ok(got) => got as u64,
            Err(e) => {
                let message = format!("reading record data: {e}");
                return Err(self.fail(Code::DataLoss, &message));
            }
        };
        if got < len {
            return Err(self.fail(
                Code::DataLoss,
                &format!("truncated record data ({got} of {len} bytes)"),
            ));
        }
        let mut footer = [0u8; FOOTER_LEN];
        match read_full(&mut self.inner, &mut footer) {
            Ok(FOOTER_LEN) => {}
            Ok(n) => {
                return Err(self.fail(
                    Code::DataLoss,
                    &format!("truncated record footer ({n} of {FOOTER_LEN} bytes)"),
                ))
            }
            Err(e) => {
                let message = format!("reading record footer: {e}");
                return Err(self.fail(Code::DataLoss, &message));
            }
        }
        if self.verify_data_crc && masked_crc32c(buf) != u32::from_le_bytes(footer) {
            return Err(self.fail(Code::DataLoss, "corrupted record (data checksum mismatch)"));
        }
        self.offset += HEADER_LEN as u64 + len + FOOTER_LEN as u64;
        self.index += 1;
        Ok(true)
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        let mut buf = Vec::new();
        match self.read_record(&mut buf) {
            Ok(true) => Some(Ok(buf)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Writes TFRecord records.
pub struct RecordWriter<W: Write> {
    inner: W,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> RecordWriter<W> {
        RecordWriter { inner }
    }

    pub fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&len);
        header[8..].copy_from_slice(&masked_crc32c(&len).to_le_bytes());
        let footer = masked_crc32c(data).to_le_bytes();
        self.inner
            .write_all(&header)
            .and_then(|()| self.inner.write_all(data))
            .and_then(|()| self.inner.write_all(&footer))
            .map_err(|e| io_error(e, "writing a TFRecord"))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.inner
            .flush()
            .map_err(|e| io_error(e, "flushing a TFRecord file"))
    }

    /// Flushes and returns the inner writer. For a compressing writer from [`create`] or
    /// [`Compression::writer`], dropping the returned box finishes the compressed stream.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(records: &[&[u8]]) -> Vec<u8> {
        let mut writer = RecordWriter::new(Vec::new());
        for r in records {
            writer.write_record(r).unwrap();
        }
        writer.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<Error>) {
        let mut ok = Vec::new();
        for item in RecordReader::new(bytes) {
            match item {
                Ok(r) => ok.push(r),
                Err(e) => return (ok, Some(e)),
            }
        }
        (ok, None)
    }

    #[test]
    fn crc32c_and_mask_match_known_values() {
        // CRC-32C check value (RFC 3720 / iSCSI).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        for crc in [0u32, 1, 0xdead_beef, u32::MAX, 0xe306_9283] {
            assert_eq!(unmask_crc(mask_crc(crc)), crc);
        }
        // A record written by tf.io.TFRecordWriter: b"hello" (length 5).
        let tf_bytes: [u8; 21] = [
            5, 0, 0, 0, 0, 0, 0, 0, 234, 178, 4, 62, b'h', b'e', b'l', b'l', b'o', 187, 31, 28, 25,
        ];
        assert_eq!(write(&[b"hello"]), tf_bytes.to_vec());
        assert_eq!(read_all(&tf_bytes), (vec![b"hello".to_vec()], None));
    }

    #[test]
    fn round_trip_including_empty_and_large_records() {
        let big = vec![7u8; 1 << 20];
        let bytes = write(&[b"a", b"", &big, b"last"]);
        let (records, err) = read_all(&bytes);
        assert!(err.is_none());
        assert_eq!(records, vec![b"a".to_vec(), vec![], big, b"last".to_vec()]);
    }

    #[test]
    fn offsets_and_indices_advance() {
        let bytes = write(&[b"abc", b"de"]);
        let mut reader = RecordReader::new(&bytes[..]);
        let mut buf = Vec::new();
        assert!(reader.read_record(&mut buf).unwrap());
        assert_eq!((reader.offset(), reader.records_read()), (19, 1));
        assert!(reader.read_record(&mut buf).unwrap());
        assert_eq!(buf, b"de");
        assert!(!reader.read_record(&mut buf).unwrap());
        assert!(!reader.read_record(&mut buf).unwrap());
    }

    #[test]
    fn empty_stream_has_no_records() {
        assert_eq!(read_all(&[]), (vec![], None));
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let bytes = write(&[b"first", b"second record"]);
        let first_len = HEADER_LEN + 5 + FOOTER_LEN;
        for cut in 0..bytes.len() {
            let (records, err) = read_all(&bytes[..cut]);
            if cut == 0 || cut == first_len {
                assert!(err.is_none(), "cut at {cut}");
            } else {
                let err = err.unwrap_or_else(|| panic!("cut at {cut} must fail"));
                assert_eq!(err.code, Code::DataLoss);
                assert!(err.message.contains("truncated"), "{}", err.message);
            }
            assert_eq!(records.len(), usize::from(cut >= first_len));
        }
    }

    #[test]
    fn corrupt_crcs_are_data_loss_and_stop_the_reader() {
        let bytes = write(&[b"first", b"second"]);
        // Flip one bit in every byte position in turn: never a panic, never a wrong record.
        for pos in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[pos] ^= 0x10;
            let mut reader = RecordReader::new(&corrupt[..]);
            let mut seen = Vec::new();
            let mut failed = false;
            for item in reader.by_ref() {
                match item {
                    Ok(r) => seen.push(r),
                    Err(e) => {
                        assert_eq!(e.code, Code::DataLoss);
                        failed = true;
                    }
                }
            }
            assert!(failed, "flipping byte {pos} went unnoticed");
            assert!(seen.len() <= 1);
            assert!(reader.next().is_none());
        }
        let mut corrupt = bytes.clone();
        corrupt[14] ^= 1; // data of the first record
        let err = read_all(&corrupt).1.unwrap();
        assert_eq!(
            err.message,
            "corrupted record (data checksum mismatch) at offset 0 (record index 0, counting from 0)"
        );
        let unverified: Vec<_> = RecordReader::new(&corrupt[..])
            .verify_data_crc(false)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(unverified.len(), 2);
    }

    #[test]
    fn a_huge_length_with_a_valid_crc_in_a_short_file_is_an_error() {
        let len = (u64::MAX / 2).to_le_bytes();
        let mut bytes = len.to_vec();
        bytes.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        bytes.extend_from_slice(b"only a few bytes");
        let err = read_all(&bytes).1.unwrap();
        assert_eq!(err.code, Code::DataLoss);
        assert!(err.message.contains("truncated record data (16 of"));
    }

    #[test]
    fn gzip_and_zlib_round_trip() {
        for compression in [Compression::None, Compression::Gzip, Compression::Zlib] {
            let mut out = Vec::new();
            {
                let mut writer = RecordWriter::new(compression.writer(&mut out));
                writer.write_record(b"x").unwrap();
                writer.write_record(b"yz").unwrap();
                drop(writer.into_inner().unwrap());
            }
            let records: Vec<_> = RecordReader::new(compression.reader(&out[..]))
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(
                records,
                vec![b"x".to_vec(), b"yz".to_vec()],
                "{compression:?}"
            );
        }
        // Corrupt gzip data is an error, not a panic.
        let mut out = Vec::new();
        {
            let mut writer = RecordWriter::new(Compression::Gzip.writer(&mut out));
            writer.write_record(&[1u8; 1000]).unwrap();
            drop(writer.into_inner().unwrap());
        }
        let len = out.len();
        out.truncate(len / 2);
        let err = RecordReader::new(Compression::Gzip.reader(&out[..]))
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code, Code::DataLoss);
    }

    #[test]
    fn files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.tfrecord.gz");
        let compression = Compression::from_path(&path);
        assert_eq!(compression, Compression::Gzip);
        let mut writer = create(&path, compression).unwrap();
        writer.write_record(b"on disk").unwrap();
        drop(writer.into_inner().unwrap());
        let records: Vec<_> = open(&path, compression)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(records, vec![b"on disk".to_vec()]);
        assert_eq!(
            open(&dir.path().join("missing"), Compression::None)
                .err()
                .unwrap()
                .code,
            Code::NotFound
        );
        assert_eq!(
            Compression::from_tf_name("gzip").unwrap(),
            Compression::Gzip
        );
        assert!(Compression::from_tf_name("lz4").is_err());
    }
}
