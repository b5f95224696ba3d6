//! A long list of a predict request decoded on two threads, with the sequential result.
//!
//! One request at a time leaves a core idle while its body is decoded (a 128x128x3 float image is
//! 1 MB of JSON). For the rest of a list whose items all have a known shape, a helper thread
//! guesses where the second half starts from the text alone (a ',' after as many ']' as the items
//! are deep), and decodes the items from there to the list's ']' into a buffer of its own. The
//! calling thread decodes from the start; the helper's work is used only when the calling thread
//! reaches an item start that is exactly the helper's start, so that the helper computed just what
//! the calling thread would have computed from there: the same values, the same end, or a failure
//! that the calling thread then meets itself. Whenever anything else happens (the guess is inside
//! a string or another list, the helper fails, the list ends first), the calling thread carries
//! on alone, exactly as without a helper.
//!
//! The helper is one thread for the whole process, started on first use and woken for each list
//! (a thread started per list took 60 to 250 µs to start and join, a sixth of the decode it was
//! to halve), on another CPU than the calling thread's ([`super::apart`]). Waking a thread from
//! a blocking wait takes ~50 µs on this VM, and a split needed two (the helper's, then the calling
//! thread's for the helper's part): the helper is woken as soon as the decode of a large body of
//! numbers begins, ahead of the list, and both then wait for each other awake for a while
//! (Planet's 1 MB image, in the server: 1.0 ms at the median and 1.5 ms at the 90th percentile
//! before, 0.89 and 0.95 ms after). Outliving the request, the helper must hold the body itself:
//! only bodies held in `Bytes` and made available with [`with_shared_body`] are split. It takes
//! one list at a time, only once the calling thread is 16 KiB into the list, and only while the
//! server has no other request in flight: another request keeps the other core busy (decoding, or
//! running a model), and the calling thread would then wait for the helper, slower than decoding
//! alone. (Judging by timing
//! instead, no helper for a while after one began late, left 25 to 60% of the lone requests of a
//! steady stream without one on this VM, where a core is now and then taken for a few hundred
//! microseconds.)

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::apart::Placement;
use super::predict::{items_with, reserve, Elem, Next};
use super::reader::Reader;
use crate::memory_budget;

/// When the calling thread starts a helper, and where the helper starts looking.
struct Config {
    /// How far into the list the calling thread gets first: the list is then known to be long
    /// (the first lists met, a pixel, a row, are short).
    start_after: usize,
    /// Bytes that must be left in the body: waking the helper and merging its part cost about
    /// what decoding 30 KB of numbers takes.
    min_remaining: usize,
    /// Where the helper starts looking; by default the middle of the rest of the body (the list
    /// ends before the body does, most often just before), moved on by half of `head_start`.
    guess: Option<usize>,
    /// About what the calling thread decodes while the helper finds its start (the helper is
    /// most often awake already): its share is larger by that much, so that both finish together.
    head_start: usize,
    /// Whether the calling thread waits for the helper to have looked before it goes on (tests:
    /// so that the helper is met whenever it can be).
    wait: bool,
    /// Whether to take the process-wide helper slot, which also requires the request to be alone
    /// in the server (tests run concurrently).
    take_slot: bool,
}

// Fuzzing builds use their own (below).
#[cfg_attr(fuzzing, allow(dead_code))]
const DEFAULT: Config = Config {
    start_after: 16 * 1024,
    min_remaining: 64 * 1024,
    guess: None,
    head_start: 4 * 1024,
    wait: false,
    take_slot: true,
};

/// The server's configuration.
#[cfg(not(fuzzing))]
const CONFIG: Config = DEFAULT;

/// Fuzzing splits the short lists a fuzzer writes, always, and waits for the helper, so that
/// every split is tried.
#[cfg(fuzzing)]
const CONFIG: Config = Config {
    start_after: 32,
    min_remaining: 64,
    guess: None,
    head_start: 0,
    wait: true,
    take_slot: false,
};

/// How far past its guess the helper looks for an item start before giving up, at least; and at
/// least twice the size of the items seen so far (a batch's images are 1 MB each).
const MIN_SCAN: usize = 64 * 1024;

/// Set from when a list is handed to the helper until the helper is done with it: one list at a
/// time. When several requests are decoded at once the cores are busy anyway.
static HELPER_BUSY: AtomicBool = AtomicBool::new(false);

/// The helper's start before it has looked for one, and once it has given up.
const PENDING: usize = usize::MAX;
const NONE: usize = usize::MAX - 1;

/// How long the helper stays awake for a list after [`Message::Expect`]: the calling thread hands
/// one over some 40 to 70 µs after it starts a 1 MB image, about as long as waking the helper
/// takes on this VM (48 µs at the median, by timestamps in a temporary build).
const EXPECT_SPIN: Duration = Duration::from_micros(500);

/// How long the calling thread stays awake for the helper's part once it reaches the helper's
/// start. Both halves end within some 30 µs of each other at the median, but being woken from a
/// blocking wait took another 50 to 60 µs (300 µs at the 90th percentile).
const JOIN_SPIN: Duration = Duration::from_millis(1);

/// Tests: no helpers at all (to measure one thread).
#[cfg(test)]
pub(super) static DISABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The body this thread is decoding, when the helper may share it ([`with_shared_body`]).
    static SHARED_BODY: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    /// Whether this thread told the helper to expect a list and has not handed it one.
    static EXPECTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `parse` with `body` available to the helper: lists read from it may be split.
pub(super) fn with_shared_body<R>(body: &Bytes, parse: impl FnOnce() -> R) -> R {
    /// Puts back the body of an enclosing call, also when `parse` unwinds, and lets the helper
    /// sleep if it was told to expect a list that never came.
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHARED_BODY.set(self.0.take());
            call_off();
        }
    }
    let _restore = Restore(SHARED_BODY.replace(Some(body.clone())));
    if body.len() >= CONFIG.start_after + CONFIG.min_remaining && looks_numeric(body) {
        expect_list();
    }
    parse()
}

/// Whether the middle of `body` is numbers in lists (an image as floats), not base64 or other
/// strings: only then is a long list for the helper likely, and worth waking it for. (A helper
/// kept awake for nothing would take a core from the model that runs next.)
fn looks_numeric(body: &[u8]) -> bool {
    let mid = body.len() / 2;
    body.get(mid..mid + 64).is_some_and(|middle| {
        middle
            .iter()
            .all(|c| b"0123456789.,-+eE[] \n\r\t".contains(c))
    })
}

/// Wakes the helper ahead of a list it may get, when it would get one: its wake-up then overlaps
/// the decode of the list's start instead of delaying the split.
fn expect_list() {
    #[cfg(test)]
    if DISABLED.load(Ordering::Relaxed) {
        return;
    }
    if HELPER_BUSY.load(Ordering::Relaxed) || oxserve_core::metrics::requests_in_flight() > 1 {
        return;
    }
    if let Some(helper) = helper() {
        if let Some(placement) = &helper.placement {
            placement.away_from_current_cpu();
        }
        if helper.messages.send(Message::Expect).is_ok() {
            EXPECTING.set(true);
        }
    }
}

/// Tells the helper the list it was told to expect will not come, if none was handed over.
fn call_off() {
    if EXPECTING.replace(false) {
        if let Some(helper) = helper() {
            let _ = helper.messages.send(Message::CallOff);
        }
    }
}

/// `buf` as the helper can hold it: when it is the body made available by [`with_shared_body`].
fn shared_body(buf: &[u8]) -> Option<Bytes> {
    SHARED_BODY.with_borrow(|body| {
        body.as_ref()
            .filter(|body| body.as_ptr() == buf.as_ptr() && body.len() == buf.len())
            .cloned()
    })
}

/// Whether a list starting at `r` can be long enough for a helper, and the helper can hold the
/// body.
pub(super) fn worth_trying(r: &Reader<'_>) -> bool {
    #[cfg(test)]
    if DISABLED.load(Ordering::Relaxed) {
        return false;
    }
    r.remaining() >= CONFIG.start_after + CONFIG.min_remaining
        && SHARED_BODY.with_borrow(Option::is_some)
}

/// `predict::items`, with the helper once the list proves long: the same result in every case.
pub(super) fn items<T: Elem>(
    r: &mut Reader<'_>,
    inner: &[usize],
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
) -> Option<usize> {
    items_config(r, inner, out, scratch, &CONFIG).map(|(count, _)| count)
}

/// What the helper shares with the calling thread.
struct Shared {
    /// Where the helper starts: [`PENDING`], [`NONE`] or a position in the body.
    start: AtomicUsize,
    /// Set by the calling thread when the helper's work will not be used.
    stop: AtomicBool,
}

impl Shared {
    fn start(&self) -> usize {
        self.start.load(Ordering::Acquire)
    }
}

/// Where the helper looks for its start: from `guess`, at most `scan` bytes.
#[derive(Clone, Copy)]
struct Look {
    guess: usize,
    scan: usize,
}

/// What the helper decoded: the items from its start to the list's ']', and where it left off.
struct Part<T> {
    values: Vec<T>,
    count: usize,
    end: usize,
}

/// A list handed to the helper: what it shares, and where its part will come.
struct Handed<T> {
    shared: Arc<Shared>,
    part: mpsc::Receiver<Option<Part<T>>>,
}

/// [`items`] as `config` says; also tells whether the helper's work was used.
fn items_config<T: Elem>(
    r: &mut Reader<'_>,
    inner: &[usize],
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
    config: &Config,
) -> Option<(usize, bool)> {
    let buf = r.buf();
    let list_start = (r.pos(), out.len());
    // Whether the helper has been considered (once per list); the list handed to it, until its
    // part is taken; what it shares, to tell it to stop.
    let mut considered = false;
    let mut handed: Option<Handed<T>> = None;
    let mut shared = None;
    let mut helped = false;
    let mut items_seen = 0;
    let count = items_with(r, inner, out, scratch, |r, out| {
        let done = r.pos() - list_start.0;
        items_seen += 1;
        if !considered && done >= config.start_after && r.remaining() >= config.min_remaining {
            considered = true;
            let scan = MIN_SCAN.max(2 * done / (items_seen - 1).max(1));
            handed = hand_over(r, out, list_start, inner, scan, config);
            shared = handed.as_ref().map(|h| h.shared.clone());
            if let Some(h) = &handed {
                while config.wait && h.shared.start() == PENDING {
                    thread::yield_now();
                }
            }
        } else if handed.as_ref().is_some_and(|h| r.pos() == h.shared.start()) {
            // Exactly where the helper started: its result is what this loop would compute
            // from here. (If it failed, so will this loop: let it tell.)
            let part = handed.take().and_then(|h| join(&h.part));
            if let Some(mut part) = part {
                out.append(&mut part.values);
                *r = Reader::at(buf, part.end);
                helped = true;
                return Some(Next::Done(part.count));
            }
        }
        Some(Next::Item)
    });
    if let Some(shared) = shared {
        // Done, failed, or went past the helper's start: the helper's work is not used.
        shared.stop.store(true, Ordering::Relaxed);
    }
    Some((count?, helped))
}

/// Hands the rest of the list at `r` to the helper, unless the body cannot be shared, the helper
/// or the server is busy, or the helper cannot run.
fn hand_over<T: Elem>(
    r: &Reader<'_>,
    out: &mut Vec<T>,
    list_start: (usize, usize),
    inner: &[usize],
    scan: usize,
    config: &Config,
) -> Option<Handed<T>> {
    let body = shared_body(r.buf())?;
    let slot = if config.take_slot {
        Some(HelperSlot::take()?)
    } else {
        None
    };
    let capacity = reserve_for_halves(r, out, list_start)?;
    let guess = config.guess.unwrap_or_else(|| {
        r.pos() + (r.remaining() + config.head_start).min(r.remaining() * 2) / 2
    });
    let look = Look { guess, scan };
    let shared = Arc::new(Shared {
        start: AtomicUsize::new(PENDING),
        stop: AtomicBool::new(false),
    });
    let (send_part, part) = mpsc::sync_channel(1);
    let inner = inner.to_vec();
    let job_shared = shared.clone();
    let job: Job = Box::new(move || {
        // Free for the next list once this one is done with, whether its part is used or not.
        let _slot = slot;
        let _ = send_part.send(second_half(&body, look, &inner, capacity, &job_shared));
    });
    let helper = helper()?;
    if let Some(placement) = &helper.placement {
        placement.away_from_current_cpu();
    }
    helper.messages.send(Message::Job(job)).ok()?;
    EXPECTING.set(false);
    Some(Handed { shared, part })
}

/// Reserves room in `out` for the rest of the list, at the density of values seen since
/// `list_start` (its position and `out`'s length then); returns the room for the helper's half.
/// Both are charged to the call (the helper's thread has no call to charge); `None` when refused.
fn reserve_for_halves<T>(
    r: &Reader<'_>,
    out: &mut Vec<T>,
    list_start: (usize, usize),
) -> Option<usize> {
    let density = (out.len() - list_start.1) as f64 / (r.pos() - list_start.0).max(1) as f64;
    // Never more than the bytes could hold (each value takes at least two).
    let values_for = |bytes: usize| ((bytes as f64 * density) as usize).min(bytes / 2 + 1);
    reserve(out, values_for(r.remaining()))?;
    let half = values_for(r.remaining() / 2);
    memory_budget::take_current(half.saturating_mul(size_of::<T>())).ok()?;
    Some(half)
}

/// The helper's part of a list handed over: waited for awake a while, as [`JOIN_SPIN`] says.
fn join<T>(part: &mpsc::Receiver<Option<Part<T>>>) -> Option<Part<T>> {
    recv_patiently(part, JOIN_SPIN).ok().flatten()
}

/// The next message of `queue`: polled without sleeping for at most `limit`, then waited for.
fn recv_patiently<T>(queue: &mpsc::Receiver<T>, limit: Duration) -> Result<T, RecvError> {
    match recv_awake(queue, limit) {
        Ok(message) => Ok(message),
        Err(TryRecvError::Empty) => queue.recv(),
        Err(TryRecvError::Disconnected) => Err(RecvError),
    }
}

/// The next message of `queue`, polled without sleeping for at most `limit`.
fn recv_awake<T>(queue: &mpsc::Receiver<T>, limit: Duration) -> Result<T, TryRecvError> {
    let until = Instant::now() + limit;
    loop {
        match queue.try_recv() {
            Err(TryRecvError::Empty) if Instant::now() < until => std::hint::spin_loop(),
            received => return received,
        }
    }
}

/// Work for the helper thread.
type Job = Box<dyn FnOnce() + Send>;

/// What the helper thread is sent.
enum Message {
    /// A list may come soon: stay awake for it a while ([`EXPECT_SPIN`]).
    Expect,
    /// The list expected will not come: sleep until the next message.
    CallOff,
    Job(Job),
}

/// The helper thread: its queue, and where it may run.
struct Helper {
    messages: mpsc::Sender<Message>,
    placement: Option<Placement>,
}

/// The helper, started on first use; `None` when it cannot be started.
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<Helper>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let (messages, queue) = mpsc::channel::<Message>();
            let (send_placement, placement) = mpsc::sync_channel(1);
            thread::Builder::new()
                .name("json-decode".into())
                .spawn(move || {
                    let _ = send_placement.send(Placement::of_current_thread());
                    serve(&queue)
                })
                .ok()?;
            let placement = placement.recv().ok()?;
            Some(Helper {
                messages,
                placement,
            })
        })
        .as_ref()
}

/// The helper thread's loop: jobs as they come, until the process ends.
fn serve(queue: &mpsc::Receiver<Message>) {
    let mut next = queue.recv();
    while let Ok(message) = next {
        next = match message {
            Message::Job(job) => {
                job();
                queue.recv()
            }
            Message::Expect => recv_patiently(queue, EXPECT_SPIN),
            Message::CallOff => queue.recv(),
        };
    }
}

/// The right to hand a list to the helper, given back when dropped.
struct HelperSlot;

impl HelperSlot {
    /// The slot, unless the helper has a list or the server another request.
    fn take() -> Option<HelperSlot> {
        if oxserve_core::metrics::requests_in_flight() > 1 {
            return None;
        }
        (!HELPER_BUSY.swap(true, Ordering::Acquire)).then_some(HelperSlot)
    }
}

impl Drop for HelperSlot {
    fn drop(&mut self) {
        HELPER_BUSY.store(false, Ordering::Release);
    }
}

/// The helper: finds an item start as `look` says, publishes it, and decodes the items from there
/// to the list's ']' (into a buffer of `capacity` values) unless told to stop.
fn second_half<T: Elem>(
    buf: &[u8],
    look: Look,
    inner: &[usize],
    capacity: usize,
    shared: &Shared,
) -> Option<Part<T>> {
    let Some(start) = item_start_after(buf, look, inner.len()) else {
        shared.start.store(NONE, Ordering::Release);
        return None;
    };
    shared.start.store(start, Ordering::Release);
    let mut r = Reader::at(buf, start);
    let mut values = Vec::with_capacity(capacity);
    let mut scratch = Vec::new();
    let count = items_with(&mut r, inner, &mut values, &mut scratch, |_, _| {
        (!shared.stop.load(Ordering::Relaxed)).then_some(Next::Item)
    })?;
    Some(Part {
        values,
        count,
        end: r.pos(),
    })
}

/// A candidate start of an item of a list whose items are `depth` lists deep (0 for scalars):
/// just after the first ',' within `look` that follows exactly `depth` ']' (whitespace aside), and
/// the whitespace after it. The text alone cannot tell: it can be inside a string or a deeper list
/// of another value; the caller checks.
fn item_start_after(buf: &[u8], look: Look, depth: usize) -> Option<usize> {
    let end = look.guess.saturating_add(look.scan).min(buf.len());
    let mut p = look.guess;
    while p < end {
        let comma = p + buf.get(p..end)?.iter().position(|&c| c == b',')?;
        if closing_brackets_before(buf, comma) == depth {
            let after = comma + 1;
            let ws = buf
                .get(after..)?
                .iter()
                .take_while(|&&c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
                .count();
            return Some(after + ws);
        }
        p = comma + 1;
    }
    None
}

/// How many ']' end just before `pos`, whitespace between them aside.
fn closing_brackets_before(buf: &[u8], pos: usize) -> usize {
    buf[..pos]
        .iter()
        .rev()
        .filter(|&&c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
        .take_while(|&&c| c == b']')
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_starts() {
        let body = b"[[[1, 2], [3, 4]], [[5, 6],[7,8]] , \n [[9, 0], [1, 2]]]";
        // Items two deep: after "]]," only.
        let look = |guess| Look { guess, scan: 100 };
        let at = |from, depth| item_start_after(body, look(from), depth).map(|p| &body[p..p + 3]);
        assert_eq!(at(0, 2), Some(&b"[[5"[..]));
        assert_eq!(at(20, 2), Some(&b"[[9"[..]));
        assert_eq!(at(0, 1), Some(&b"[3,"[..]));
        assert_eq!(at(0, 0), Some(&b"2],"[..]));
        assert_eq!(at(40, 2), None);
        assert_eq!(item_start_after(body, look(500), 0), None);
        // Not further than told.
        assert_eq!(
            item_start_after(
                body,
                Look {
                    guess: 20,
                    scan: 10
                },
                2
            ),
            None
        );
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A scalar of any kind a numeric request holds, valid or not for the dtype at hand.
    fn number(rng: &mut Rng) -> String {
        let unit = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
        match rng.below(12) {
            0..=4 => format!("{:?}", f64::from(unit)),
            5 => format!("{:?}", -f64::from(unit) / 1000.0),
            6 => format!("{}", rng.next() % 1000),
            7 => format!("-{}", rng.next() % 100_000),
            8 => format!("{}e-{}", unit, rng.below(12)),
            9 => format!("{:?}", f64::from_bits(rng.next())),
            10 => rng
                .pick(&[
                    "NaN",
                    "-Infinity",
                    "Infinity",
                    "0",
                    "-0",
                    "1e400",
                    "1e39",
                    "1.5E+3",
                ])
                .to_string(),
            _ => format!("{}", rng.next()),
        }
    }

    fn string(rng: &mut Rng) -> String {
        rng.pick(&[r#""a""#, r#""],[""#, r#""x]], [[y""#, r#""\"],""#, r#""""#])
            .to_string()
    }

    fn ws(rng: &mut Rng) -> &'static str {
        if rng.below(4) == 0 {
            rng.pick(&["", " ", "\n", "\t ", "\r\n  "])
        } else {
            [" ", ""][rng.below(2)]
        }
    }

    /// An item of shape `inner` (one scalar for `[]`).
    fn item(rng: &mut Rng, inner: &[usize], scalar: fn(&mut Rng) -> String) -> String {
        match inner.split_first() {
            None => scalar(rng),
            Some((&n, rest)) => {
                let mut text = String::from("[");
                for i in 0..n {
                    if i > 0 {
                        text.push(',');
                        text.push_str(ws(rng));
                    }
                    text.push_str(&item(rng, rest, scalar));
                }
                text + ws(rng) + "]"
            }
        }
    }

    /// A request-like body holding a list of items of shape `inner`, a few of them malformed
    /// (wrong size, bytes changed, inserted or removed), followed by other values whose text
    /// looks like item boundaries; and the position of the list's first item.
    fn body(rng: &mut Rng, inner: &[usize], scalar: fn(&mut Rng) -> String) -> (Vec<u8>, usize) {
        let prefix = format!("{{\"x\": [{}", ws(rng));
        let mut text = prefix.clone();
        for i in 0..rng.below(120) + 1 {
            if i > 0 {
                text.push(',');
                text.push_str(ws(rng));
            }
            if rng.below(300) == 0 {
                // An item of another shape.
                let mut other = inner.to_vec();
                other.push(2);
                text.push_str(&item(rng, &other[1..], scalar));
            } else {
                text.push_str(&item(rng, inner, scalar));
            }
        }
        text.push_str(ws(rng));
        text.push_str(r#"], "y": [[1, 2]], [[3]], "z": "a, [[1]], [2]"}"#);
        let mut bytes = text.into_bytes();
        if rng.below(3) == 0 {
            for _ in 0..rng.below(3) + 1 {
                let at = prefix.len() + rng.below(bytes.len() - prefix.len());
                let byte = b"[],\" 0123456789.-eNx\n"[rng.below(20)];
                match rng.below(3) {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
        }
        (bytes, prefix.len())
    }

    /// Decodes the list of `body` from `first` with a helper as `config` says and alone: the
    /// same values, count and end, or both fail. Returns whether the helper's work was used.
    fn same_as_alone<T: Elem + std::fmt::Debug>(
        body: &Bytes,
        first: usize,
        inner: &[usize],
        config: &Config,
    ) -> bool {
        let mut alone = Reader::at(body, first);
        let mut alone_out: Vec<T> = Vec::new();
        let expected = items_with(
            &mut alone,
            inner,
            &mut alone_out,
            &mut Vec::new(),
            |_, _| Some(Next::Item),
        );
        let mut split = Reader::at(body, first);
        let mut split_out: Vec<T> = Vec::new();
        let got = with_shared_body(body, || {
            items_config(&mut split, inner, &mut split_out, &mut Vec::new(), config)
        });
        let text = String::from_utf8_lossy(body);
        assert_eq!(got.map(|(count, _)| count), expected, "{text}");
        if expected.is_some() {
            assert_eq!(format!("{split_out:?}"), format!("{alone_out:?}"), "{text}");
            assert_eq!(split.pos(), alone.pos(), "{text}");
        }
        got.is_some_and(|(_, helped)| helped)
    }

    fn random_config(rng: &mut Rng, len: usize) -> Config {
        Config {
            start_after: [0, rng.below(len / 2 + 1)][rng.below(2)],
            min_remaining: 0,
            guess: [None, Some(rng.below(len + 10))][rng.below(2)],
            head_start: rng.below(100),
            wait: true,
            take_slot: false,
        }
    }

    /// The helper's result is used only when it is exactly the sequential one, on many random
    /// bodies of every dtype family, with helpers starting anywhere (inside numbers, in other
    /// lists or strings, past the list) and errors in either half.
    #[test]
    fn split_decoding_is_sequential_decoding() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let shapes: [&[usize]; 5] = [&[], &[3], &[2, 2], &[1], &[0]];
        let (mut cases, mut helped) = (0, 0);
        for _ in 0..600 {
            let inner = shapes[rng.below(shapes.len())];
            let (body, first) = body(&mut rng, inner, number);
            let body = Bytes::from(body);
            for _ in 0..2 {
                let config = random_config(&mut rng, body.len());
                cases += 4;
                helped += same_as_alone::<f32>(&body, first, inner, &config) as usize;
                helped += same_as_alone::<f64>(&body, first, inner, &config) as usize;
                helped += same_as_alone::<i64>(&body, first, inner, &config) as usize;
                helped += same_as_alone::<u8>(&body, first, inner, &config) as usize;
            }
            let (body, first) = self::body(&mut rng, inner, string);
            let body = Bytes::from(body);
            let config = random_config(&mut rng, body.len());
            cases += 1;
            helped += same_as_alone::<Vec<u8>>(&body, first, inner, &config) as usize;
        }
        // The helper is actually used in a good share of the cases.
        assert!(
            helped * 10 > cases,
            "helper used in {helped} of {cases} cases"
        );
    }

    /// An image-like body (`[[[r, g, b], ...], ...]`, ~200 KB, long enough for the default
    /// configuration), sometimes with a byte changed in its second half; and its list's start.
    fn image_body(rng: &mut Rng) -> (Bytes, usize) {
        let (mut body, first) = body_of_rows(rng, 64);
        if rng.below(2) == 0 {
            let at = body.len() / 2 + rng.below(body.len() / 2 - 60);
            body[at] = b"x],[-.e\"\n"[rng.below(8)];
        }
        (Bytes::from(body), first)
    }

    /// A float in [0, 1) as `json.dumps` writes a float32 widened to double.
    fn pixel(rng: &mut Rng) -> String {
        format!(
            "{:?}",
            f64::from((rng.next() >> 40) as f32 / (1u64 << 24) as f32)
        )
    }

    /// `{"instances": [...]}` holding one image of `rows` rows of 64 pixels.
    fn body_of_rows(rng: &mut Rng, rows: usize) -> (Vec<u8>, usize) {
        let prefix = "{\"instances\": [";
        let mut text = String::from(prefix);
        for row in 0..rows {
            if row > 0 {
                text.push_str(", ");
            }
            text.push_str(&item(rng, &[64, 3], pixel));
        }
        text.push_str("]}");
        (text.into_bytes(), prefix.len())
    }

    /// Many long lists decoded at once through the process's one helper, most of them finding it
    /// busy, some with an error in the half the helper takes: every result is the
    /// sequential one, and the helper is used when it is free.
    #[test]
    fn concurrent_lists_share_the_helper() {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                    for _ in 0..12 {
                        let (body, first) = image_body(&mut rng);
                        same_as_alone::<f32>(&body, first, &[64, 3], &DEFAULT);
                        same_as_alone::<f64>(&body, first, &[64, 3], &DEFAULT);
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        // Alone now (other tests may still hold the helper for a moment): the helper is used.
        let mut rng = Rng(7);
        let (body, first) = body_of_rows(&mut rng, 64);
        let body = Bytes::from(body);
        let waiting = Config {
            wait: true,
            take_slot: false,
            ..DEFAULT
        };
        assert!(same_as_alone::<f32>(&body, first, &[64, 3], &waiting));
    }

    /// The helper is taken only while the request is alone in the server: with another one in
    /// flight, the other core is taken.
    #[test]
    fn no_helper_while_another_request_is_in_flight() {
        let (body, first) = body_of_rows(&mut Rng(13), 64);
        let body = Bytes::from(body);
        let waiting = Config {
            wait: true,
            ..DEFAULT
        };
        let this = oxserve_core::metrics::request_in_flight("REST");
        {
            let _other = oxserve_core::metrics::request_in_flight("GRPC");
            assert!(!same_as_alone::<f32>(&body, first, &[64, 3], &waiting));
        }
        // Alone again (other tests may hold the helper or count a request for a moment).
        let mut helped = false;
        for _ in 0..200 {
            helped = same_as_alone::<f32>(&body, first, &[64, 3], &waiting);
            if helped {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(this);
        assert!(helped);
    }

    /// A body not made available to the helper (or another one) is decoded alone.
    #[test]
    fn unshared_bodies_are_decoded_alone() {
        let (body, first) = body_of_rows(&mut Rng(11), 64);
        let waiting = Config {
            wait: true,
            take_slot: false,
            ..DEFAULT
        };
        let mut r = Reader::at(&body, first);
        let got = items_config::<f32>(&mut r, &[64, 3], &mut Vec::new(), &mut Vec::new(), &waiting);
        assert_eq!(got, Some((64, false)));
        // Another body with the same text.
        let other = Bytes::from(body.clone());
        let mut r = Reader::at(&body, first);
        let got = with_shared_body(&other, || {
            items_config::<f32>(&mut r, &[64, 3], &mut Vec::new(), &mut Vec::new(), &waiting)
        });
        assert_eq!(got, Some((64, false)));
    }

    /// The helper runs every job it is sent, whether it is still awake from an `Expect` or has
    /// gone back to a blocking wait, and ends when the process's sender is gone.
    #[test]
    fn the_helper_runs_jobs_awake_or_asleep() {
        let (messages, queue) = mpsc::channel::<Message>();
        let helper = thread::spawn(move || serve(&queue));
        let (ran, done) = mpsc::channel::<&str>();
        let job = |name: &'static str| {
            let ran = ran.clone();
            Message::Job(Box::new(move || ran.send(name).unwrap()))
        };
        messages.send(Message::Expect).unwrap();
        messages.send(job("awake")).unwrap();
        assert_eq!(done.recv().unwrap(), "awake");
        messages.send(Message::Expect).unwrap();
        thread::sleep(EXPECT_SPIN * 4);
        messages.send(job("after the wait")).unwrap();
        assert_eq!(done.recv().unwrap(), "after the wait");
        messages.send(Message::Expect).unwrap();
        messages.send(Message::Expect).unwrap();
        messages.send(job("twice expected")).unwrap();
        assert_eq!(done.recv().unwrap(), "twice expected");
        messages.send(Message::Expect).unwrap();
        messages.send(Message::CallOff).unwrap();
        messages.send(job("called off")).unwrap();
        assert_eq!(done.recv().unwrap(), "called off");
        messages.send(Message::CallOff).unwrap();
        messages.send(job("called off asleep")).unwrap();
        assert_eq!(done.recv().unwrap(), "called off asleep");
        drop(messages);
        assert!(helper.join().is_ok());
    }

    /// The helper's part is taken however late it comes; a helper gone without one gives none.
    #[test]
    fn the_part_is_joined_however_late() {
        let (send, part) = mpsc::sync_channel(1);
        let late = thread::spawn(move || {
            thread::sleep(JOIN_SPIN * 3);
            let part = Part {
                values: vec![1.5f32],
                count: 1,
                end: 7,
            };
            send.send(Some(part)).unwrap();
        });
        let got = join(&part).expect("the part");
        assert_eq!((got.values, got.count, got.end), (vec![1.5], 1, 7));
        assert!(late.join().is_ok());
        let (send, part) = mpsc::sync_channel::<Option<Part<f32>>>(1);
        drop(send);
        assert!(join(&part).is_none());
        let (_send, idle) = mpsc::channel::<()>();
        assert_eq!(
            recv_awake(&idle, Duration::from_micros(50)),
            Err(TryRecvError::Empty)
        );
    }

    /// The helper is woken ahead only for bodies whose middle is numbers in lists.
    #[test]
    fn numeric_bodies_are_told_apart() {
        let (rows, _) = body_of_rows(&mut Rng(5), 64);
        assert!(looks_numeric(&rows));
        let b64 = format!(
            "{{\"instances\": [{{\"b64\": \"{}\"}}]}}",
            "iVBORw0KGgoAAAANSUhEUg".repeat(500)
        );
        assert!(!looks_numeric(b64.as_bytes()));
        assert!(!looks_numeric(b"[1, 2]"));
    }
}
