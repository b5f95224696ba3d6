//! Input files: glob expansion, formats, and reading them item by item (a JSON line or a TFRecord
//! record).

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::ValueEnum;
use oxserve_core::tfrecord::{Compression, RecordReader};

/// `--data_format`, with Cloud ML Engine's names as aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    /// JSON lines: one instance per line, as an element of REST's "instances".
    #[value(alias = "text", alias = "JSON", alias = "TEXT")]
    Json,
    /// TFRecord files: one instance per record.
    #[value(name = "tf-record", alias = "tf_record", alias = "TF_RECORD")]
    TfRecord,
    /// Gzip-compressed TFRecord files.
    #[value(
        name = "tf-record-gzip",
        alias = "tf_record_gzip",
        alias = "TF_RECORD_GZIP"
    )]
    TfRecordGzip,
}

/// What one file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    JsonLines,
    TfRecord,
}

#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    /// The path as shown in error records and logs.
    pub name: Arc<str>,
    pub kind: Kind,
    pub compression: Compression,
    pub size: u64,
}

fn has_glob_chars(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The format of `path` from its name: `.json`, `.jsonl`, `.ndjson`, `.tfrecord`, `.tfrecords`,
/// `.tfr`, optionally followed by `.gz`.
fn kind_from_name(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let ext = Path::new(name).extension()?.to_str()?;
    match ext {
        "json" | "jsonl" | "ndjson" => Some(Kind::JsonLines),
        "tfrecord" | "tfrecords" | "tfr" => Some(Kind::TfRecord),
        _ => None,
    }
}

/// Expands `--input` patterns (globs or plain paths) into files, in order: patterns as given,
/// the matches of each pattern sorted by name, duplicates (the same file under any spelling)
/// dropped. A pattern that names an existing file as written is that file, even with glob
/// characters in its name (`data[1].jsonl`). Every worker of a sharded job must see the same
/// list, so nothing here depends on anything but the names and the files there are.
pub fn expand(patterns: &[String], format: Option<DataFormat>) -> anyhow::Result<Vec<InputFile>> {
    if patterns.is_empty() {
        bail!("no --input given");
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        if has_glob_chars(pattern) && !Path::new(pattern).is_file() {
            let mut matches: Vec<PathBuf> = glob::glob(pattern)
                .with_context(|| format!("--input: bad glob pattern {pattern:?}"))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            matches.sort();
            if matches.is_empty() {
                bail!("--input {pattern}: no file matches");
            }
            paths.extend(matches);
        } else {
            let path = PathBuf::from(pattern);
            if path.is_dir() {
                bail!(
                    "--input {pattern} is a directory: give its files, e.g. '{}'",
                    path.join("*").display()
                );
            }
            if !path.is_file() {
                bail!("--input {pattern}: no such file");
            }
            paths.push(path);
        }
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    paths
        .into_iter()
        .map(|path| {
            let (kind, compression) = match format {
                Some(DataFormat::Json) => (Kind::JsonLines, Compression::from_path(&path)),
                Some(DataFormat::TfRecord) => (Kind::TfRecord, Compression::from_path(&path)),
                Some(DataFormat::TfRecordGzip) => (Kind::TfRecord, Compression::Gzip),
                None => match kind_from_name(&path) {
                    Some(kind) => (kind, Compression::from_path(&path)),
                    None => bail!(
                        "cannot tell the format of {} from its name: give --data_format (json, tf-record or tf-record-gzip)",
                        path.display()
                    ),
                },
            };
            let size = std::fs::metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            Ok(InputFile {
                name: Arc::from(path.to_string_lossy().as_ref()),
                path,
                kind,
                compression,
                size,
            })
        })
        .collect()
}

/// A buffer of input bytes shared by the items cut from it (the lines of a block of a JSON-lines
/// file, or one record), immutable once shared; back to its pool, if any, when the last of them
/// is gone.
struct Block {
    data: Vec<u8>,
    pool: Option<BlockPool>,
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.put(std::mem::take(&mut self.data));
        }
    }
}

/// Buffers that items are read into, reused once the items are done with: a fresh buffer would
/// cost a page fault (and the zeroing of a page) for every 4 KiB read into it.
#[derive(Clone, Default)]
pub struct BlockPool(Arc<Mutex<Idle>>);

#[derive(Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// Bytes read at once from a JSON-lines file: lines are cut from such blocks without a copy.
const BLOCK_LEN: usize = 4 << 20;
/// At most this many bytes of idle buffers are kept (the others are freed).
const POOL_BYTES: usize = 256 << 20;

impl BlockPool {
    fn take(&self) -> Option<Vec<u8>> {
        let mut idle = self.0.lock().ok()?;
        let data = idle.buffers.pop()?;
        idle.bytes -= data.capacity();
        Some(data)
    }

    /// A zeroed or reused buffer of at least `len` initialised bytes.
    fn get(&self, len: usize) -> Vec<u8> {
        match self.take() {
            Some(data) if data.len() >= len => data,
            _ => vec![0; len],
        }
    }

    fn put(&self, data: Vec<u8>) {
        if data.capacity() == 0 {
            return;
        }
        if let Ok(mut idle) = self.0.lock() {
            if idle.bytes + data.capacity() <= POOL_BYTES {
                idle.bytes += data.capacity();
                idle.buffers.push(data);
            }
        }
    }
}

/// The pools of one reader: blocks of JSON lines, and records.
#[derive(Clone, Default)]
pub struct Pools {
    pub lines: BlockPool,
    pub records: BlockPool,
}

/// The bytes of one input item (a line or a record): a range of a shared [`Block`].
#[derive(Clone)]
pub struct Bytes {
    block: Arc<Block>,
    range: std::ops::Range<usize>,
}

impl Bytes {
    pub fn from_vec(data: Vec<u8>) -> Bytes {
        let range = 0..data.len();
        Bytes {
            block: Arc::new(Block { data, pool: None }),
            range,
        }
    }

    /// The bytes as a vector of their own: no copy when they are a whole record nothing else
    /// points into.
    pub fn into_vec(self) -> Vec<u8> {
        let Bytes { block, range } = self;
        match Arc::try_unwrap(block) {
            Ok(mut block) if range == (0..block.data.len()) => std::mem::take(&mut block.data),
            Ok(block) => block.data[range].to_vec(),
            Err(shared) => shared.data[range].to_vec(),
        }
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::from_vec(Vec::new())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.block.data[self.range.clone()]
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

/// The position of the first `\n` in `s`. 32 bytes at a time, without early exit inside a
/// group, which the compiler turns into vector compares: several times the speed of the
/// word-at-a-time search of `read_until`, which shows on lines of a megabyte.
fn find_newline(s: &[u8]) -> Option<usize> {
    let mut groups = s.chunks_exact(32);
    let mut base = 0;
    for group in &mut groups {
        let mut hit = false;
        for &b in group {
            hit |= b == b'\n';
        }
        if hit {
            return group.iter().position(|&b| b == b'\n').map(|i| base + i);
        }
        base += 32;
    }
    groups
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

/// Lines cut from blocks read from the file: one copy from the kernel into a block, none after
/// (a line that spans two blocks is copied into the next one).
struct LineReader {
    inner: Box<dyn Read + Send>,
    pool: BlockPool,
    /// [`BLOCK_LEN`] (smaller in tests).
    block_len: usize,
    block: Arc<Block>,
    /// The next line starts at `start`; bytes up to `end` are valid.
    start: usize,
    end: usize,
    /// No newline in `block.data[start..scanned]`.
    scanned: usize,
    eof: bool,
    /// A read error, reported once the lines read before it are out.
    error: Option<std::io::Error>,
    /// No line has been returned yet: the first may start with a byte order mark.
    first: bool,
}

/// The UTF-8 byte order mark that some Windows tools write at the start of a file: not part of
/// the first line's JSON.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl LineReader {
    fn new(inner: Box<dyn Read + Send>, pool: BlockPool) -> LineReader {
        LineReader {
            inner,
            pool,
            block_len: BLOCK_LEN,
            block: Arc::new(Block {
                data: Vec::new(),
                pool: None,
            }),
            start: 0,
            end: 0,
            scanned: 0,
            eof: false,
            error: None,
            first: true,
        }
    }

    /// The next line without its terminator (`\n` or `\r\n`), `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let data = &self.block.data[..self.end];
            if let Some(i) = find_newline(&data[self.scanned..]) {
                let newline = self.scanned + i;
                let mut stop = newline;
                if stop > self.start && data[stop - 1] == b'\r' {
                    stop -= 1;
                }
                let line = self.cut(self.start..stop);
                self.start = newline + 1;
                self.scanned = self.start;
                return Ok(Some(line));
            }
            self.scanned = self.end;
            if let Some(e) = self.error.take() {
                self.eof = true;
                self.start = self.end;
                return Err(e);
            }
            if self.eof {
                if self.start < self.end {
                    let line = self.cut(self.start..self.end);
                    self.start = self.end;
                    return Ok(Some(line));
                }
                return Ok(None);
            }
            self.refill();
        }
    }

    fn cut(&mut self, mut range: std::ops::Range<usize>) -> Bytes {
        // Only at the start of the file: the first line is whole here (however small the blocks
        // read), so a mark split between two reads is seen too.
        if std::mem::take(&mut self.first) && self.block.data[range.clone()].starts_with(UTF8_BOM) {
            range.start += UTF8_BOM.len();
        }
        Bytes {
            block: self.block.clone(),
            range,
        }
    }

    /// A new block: the incomplete line at the end of the current one, then as much of the
    /// file as fits.
    fn refill(&mut self) {
        let tail = self.end - self.start;
        // A line longer than a block gets a block twice its length so far.
        let mut data = self.pool.get(self.block_len.max(tail.saturating_mul(2)));
        data[..tail].copy_from_slice(&self.block.data[self.start..self.end]);
        let mut filled = tail;
        while filled < data.len() {
            match self.inner.read(&mut data[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        self.block = Arc::new(Block {
            data,
            pool: Some(self.pool.clone()),
        });
        self.start = 0;
        self.scanned = tail;
        self.end = filled;
    }
}

enum Source {
    Lines(LineReader),
    Records(RecordReader<Box<dyn Read + Send>>),
    Done,
}

/// The items of one input file, each with its 0-based index in the file.
pub struct ItemReader {
    source: Source,
    next_index: u64,
    /// The file again (a duplicate descriptor, sharing the read offset): how far it has been
    /// read, for progress. (Counting the bytes in a `Read` wrapper instead would cost a memset of
    /// every buffer read into: such a wrapper cannot read into uninitialised memory.)
    position: Option<File>,
    /// An error found while opening, reported as the first item.
    pending: Option<String>,
    /// The length of the last record: the next one's buffer is made that large up front, so that
    /// it is not grown (and copied) step by step as its bytes arrive.
    last_len: usize,
    /// Where record buffers come from, and go back to.
    records: BlockPool,
}

/// One item of an input file.
pub enum Item {
    /// A line (without its line terminator) or a record.
    Data(Bytes),
    /// The file cannot be read from here on (I/O error, corrupt or truncated data).
    Broken(String),
}

impl ItemReader {
    /// Opens `file`, to be read into buffers of `pools`.
    pub fn open(file: &InputFile, pools: &Pools) -> ItemReader {
        let mut position = None;
        let (source, pending) = match File::open(&file.path) {
            Err(e) => (
                Source::Done,
                Some(format!("cannot open {}: {e}", file.path.display())),
            ),
            Ok(f) => {
                position = f.try_clone().ok();
                let source = match (file.kind, file.compression) {
                    // Blocks are read straight from the file.
                    (Kind::JsonLines, Compression::None) => {
                        Source::Lines(LineReader::new(Box::new(f), pools.lines.clone()))
                    }
                    (Kind::JsonLines, compression) => Source::Lines(LineReader::new(
                        compression.reader(BufReader::with_capacity(1 << 16, f)),
                        pools.lines.clone(),
                    )),
                    // A small buffer for the headers: the data of a record bigger than it is
                    // read straight into the record.
                    (Kind::TfRecord, Compression::None) => Source::Records(RecordReader::new(
                        Box::new(BufReader::with_capacity(1 << 14, f)),
                    )),
                    (Kind::TfRecord, compression) => Source::Records(RecordReader::new(
                        compression.reader(BufReader::with_capacity(1 << 16, f)),
                    )),
                };
                (source, None)
            }
        };
        ItemReader {
            source,
            next_index: 0,
            position,
            pending,
            last_len: 0,
            records: pools.records.clone(),
        }
    }

    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.position
            .as_ref()
            .and_then(|mut f| f.stream_position().ok())
            .unwrap_or(0)
    }

    /// The next item and its index, or `None` at the end of the file. An item's bytes are kept
    /// only when `want(index)` is true (otherwise `Item::Data` is empty).
    pub fn next_item(&mut self, want: impl Fn(u64) -> bool) -> Option<(u64, Item)> {
        if let Some(message) = self.pending.take() {
            let index = self.next_index;
            self.next_index += 1;
            return Some((index, Item::Broken(message)));
        }
        let index = self.next_index;
        let result: Result<Option<Bytes>, String> = match &mut self.source {
            Source::Done => return None,
            Source::Lines(reader) => reader
                .next_line()
                .map_err(|e| format!("reading line {}: {e}", index + 1)),
            Source::Records(reader) => {
                let mut buf = self.records.take().unwrap_or_default();
                buf.clear();
                // A hint only (a bigger record still grows the buffer); capped so that one huge
                // record does not make every later buffer huge.
                buf.reserve(self.last_len.min(64 << 20));
                let read = reader.read_record(&mut buf);
                self.last_len = buf.len();
                let data = Bytes {
                    block: Arc::new(Block {
                        data: buf,
                        pool: Some(self.records.clone()),
                    }),
                    range: 0..self.last_len,
                };
                match read {
                    Ok(true) => Ok(Some(data)),
                    Ok(false) => Ok(None),
                    Err(e) => Err(e.message),
                }
            }
        };
        match result {
            Ok(None) => {
                self.source = Source::Done;
                None
            }
            Ok(Some(data)) => {
                self.next_index += 1;
                let data = if want(index) { data } else { Bytes::default() };
                Some((index, Item::Data(data)))
            }
            Err(message) => {
                self.source = Source::Done;
                self.next_index += 1;
                Some((index, Item::Broken(message)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_names() {
        assert_eq!(
            kind_from_name(Path::new("a/b.jsonl")),
            Some(Kind::JsonLines)
        );
        assert_eq!(
            kind_from_name(Path::new("b.JSON.gz")),
            Some(Kind::JsonLines)
        );
        assert_eq!(
            kind_from_name(Path::new("x.tfrecord.gz")),
            Some(Kind::TfRecord)
        );
        assert_eq!(
            kind_from_name(Path::new("x.tfrecords")),
            Some(Kind::TfRecord)
        );
        assert_eq!(kind_from_name(Path::new("x.ndjson")), Some(Kind::JsonLines));
        assert_eq!(kind_from_name(Path::new("x.txt")), None);
        assert_eq!(kind_from_name(Path::new("gz")), None);
    }

    #[test]
    fn expansion_sorts_dedups_and_rejects_missing() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.jsonl", "c.tfrecord.gz"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let d = dir.path().display();
        let files = expand(
            &[
                format!("{d}/*.jsonl"),
                format!("{d}/a.jsonl"),
                format!("{d}/*.gz"),
            ],
            None,
        )
        .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl", "c.tfrecord.gz"]);
        assert_eq!(files[2].kind, Kind::TfRecord);
        assert_eq!(files[2].compression, Compression::Gzip);
        assert!(expand(&[format!("{d}/*.nothing")], None).is_err());
        assert!(expand(&[format!("{d}/missing.jsonl")], None).is_err());
        std::fs::write(dir.path().join("x.bin"), "").unwrap();
        assert!(expand(&[format!("{d}/x.bin")], None).is_err());
        let forced = expand(&[format!("{d}/x.bin")], Some(DataFormat::TfRecordGzip)).unwrap();
        assert_eq!(forced[0].compression, Compression::Gzip);
    }

    #[test]
    fn lines_keep_indices_and_strip_terminators() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "1\r\n\n[2]\nlast").unwrap();
        let file = &expand(&[path.display().to_string()], None).unwrap()[0];
        let mut reader = ItemReader::open(file, &Pools::default());
        let mut got = Vec::new();
        while let Some((i, item)) = reader.next_item(|i| i != 1) {
            match item {
                Item::Data(d) => got.push((i, String::from_utf8(d.into_vec()).unwrap())),
                Item::Broken(m) => panic!("{m}"),
            }
        }
        assert_eq!(
            got,
            vec![
                (0, "1".to_string()),
                (1, String::new()),
                (2, "[2]".to_string()),
                (3, "last".to_string())
            ]
        );
        assert_eq!(reader.bytes_read(), 12);
    }

    #[test]
    fn newlines_are_found_in_every_position() {
        for len in [0, 1, 31, 32, 33, 64, 100] {
            let mut text = vec![b'x'; len];
            assert_eq!(find_newline(&text), None);
            for at in 0..len {
                text[at] = b'\n';
                assert_eq!(find_newline(&text), Some(at), "len {len}, at {at}");
                text[at] = b'x';
            }
        }
    }

    /// Reads every line of `text` with blocks of `block_len` bytes.
    fn lines(text: &[u8], block_len: usize) -> Vec<Vec<u8>> {
        let mut reader = LineReader::new(
            Box::new(std::io::Cursor::new(text.to_vec())),
            BlockPool::default(),
        );
        reader.block_len = block_len;
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(line.to_vec());
        }
        out
    }

    #[test]
    fn lines_span_blocks_and_outgrow_them() {
        let mut text = Vec::new();
        let mut want = Vec::new();
        for i in 0..200usize {
            let line: Vec<u8> =
                std::iter::repeat_n(b'a' + (i % 26) as u8, (i * 37) % 150).collect();
            text.extend_from_slice(&line);
            text.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
            want.push(line);
        }
        for block_len in [1, 2, 7, 64, 1000, 1 << 20] {
            assert_eq!(lines(&text, block_len), want, "block_len {block_len}");
        }
        // The last line needs no terminator; a lone \r stays part of its line.
        assert_eq!(
            lines(b"a\n\rb\r", 3),
            vec![b"a".to_vec(), b"\rb\r".to_vec()]
        );
        assert_eq!(lines(b"", 3), Vec::<Vec<u8>>::new());
        assert_eq!(lines(b"\n", 3), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_at_the_start_of_the_file_only() {
        let bom = "\u{feff}";
        for block_len in [1, 2, 3, 4, 1 << 20] {
            assert_eq!(
                lines(format!("{bom}[1]\r\n{bom}[2]\n").as_bytes(), block_len),
                vec![b"[1]".to_vec(), format!("{bom}[2]").into_bytes()],
                "block_len {block_len}"
            );
            assert_eq!(lines(bom.as_bytes(), block_len), vec![Vec::<u8>::new()]);
            // Not a whole mark: left as it is.
            assert_eq!(
                lines(b"\xEF\xBB[3]", block_len),
                vec![b"\xEF\xBB[3]".to_vec()]
            );
        }
    }

    #[test]
    fn lines_read_before_an_error_come_out_first() {
        struct Failing(std::io::Cursor<Vec<u8>>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(std::io::Error::other("disk on fire")),
                    n => Ok(n),
                }
            }
        }
        let inner = Failing(std::io::Cursor::new(b"one\ntwo\nthr".to_vec()));
        let mut reader = LineReader::new(Box::new(inner), BlockPool::default());
        assert_eq!(&*reader.next_line().unwrap().unwrap(), b"one");
        assert_eq!(&*reader.next_line().unwrap().unwrap(), b"two");
        assert!(reader
            .next_line()
            .unwrap_err()
            .to_string()
            .contains("on fire"));
        assert!(reader.next_line().unwrap().is_none());
    }

    #[test]
    fn blocks_go_back_to_their_pool_and_records_out_without_a_copy() {
        let pool = BlockPool::default();
        let text = vec![b'\n'; 10];
        let mut reader = LineReader::new(Box::new(std::io::Cursor::new(text)), pool.clone());
        let line = reader.next_line().unwrap().unwrap();
        drop(reader);
        assert!(pool.0.lock().unwrap().buffers.is_empty());
        drop(line);
        assert_eq!(pool.0.lock().unwrap().buffers.len(), 1);
        let record = vec![1u8, 2, 3];
        let ptr = record.as_ptr();
        let back = Bytes::from_vec(record).into_vec();
        assert_eq!(back.as_ptr(), ptr);
        let shared = Bytes::from_vec(vec![4, 5]);
        let copy = shared.clone();
        assert_eq!(copy.into_vec(), vec![4, 5]);
        assert_eq!(&*shared, &[4, 5]);
    }
}
