//! One budget of request bytes held in memory at once, shared by REST and gRPC
//! (`--max_request_bytes_in_flight`).
//!
//! A request body is read whole before a call slot (`--rest_api_num_threads`,
//! `--grpc_max_threads`) takes it, as in TF Serving, so the slots bound the work but not the
//! memory: a thousand clients sending 100 MB bodies at once would take 100 GB, and the kernel
//! would kill the process with every model it serves. Here each body's bytes are charged as
//! they arrive and stay charged until the call is answered (or, for REST, until its work ends,
//! which may be after a timed-out answer). A body that finds no room ends at once with
//! RESOURCE_EXHAUSTED (REST 429), which tells clients to back off and retry. It does not wait
//! for room: bodies that waited while each held part of the budget could wait on each other for
//! ever.
//!
//! What a body decodes into can be many times its size, and is charged to its call too: gzip and
//! deflate gRPC messages as they inflate (`grpc::inflate`), gRPC messages before prost decodes
//! them (`oxserve_proto::codec::charge_decodes`), JSON bodies as they are decoded (the streaming
//! decoder's buffers and the reference path's document, through the thread's current charge,
//! [`Charge::enter`]), and by the handlers the tensors and serialized tf.Examples they hand to
//! TensorFlow ([`Charge::hold`]).

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use oxserve_core::Tensor;
use oxserve_proto::codec::{charge_decodes, DecodeCharge};
use oxserve_proto::tensorflow::Example;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a budget can hold: tokio's semaphores count at most `usize::MAX >> 3` permits.
const MAX_LIMIT: usize = Semaphore::MAX_PERMITS;

/// The budget: `limit` bytes, or no limit (the default).
#[derive(Debug, Default)]
pub struct MemoryBudget {
    room: Option<Arc<Semaphore>>,
    limit: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; 0 means no limit.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        let limit = limit.min(MAX_LIMIT);
        Arc::new(MemoryBudget {
            room: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
        })
    }

    /// The default: half the memory this process may use (its cgroup's limit, or the
    /// machine's RAM), leaving the rest to the models and to what requests decode into.
    pub fn default_limit() -> usize {
        let ram = nix::sys::sysinfo::sysinfo().map_or(0, |info| info.ram_total());
        let limit = cgroup_memory_limit().map_or(ram, |cgroup| cgroup.min(ram));
        usize::try_from(limit / 2).unwrap_or(MAX_LIMIT)
    }

    /// How many bytes the budget holds; 0 when unlimited.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A new call's charge, empty.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            held: Arc::new(Mutex::new(None)),
        }
    }
}

/// The memory limit of this process's cgroup: v2's `memory.max`, else v1's
/// `memory.limit_in_bytes` (in a container, `/sys/fs/cgroup` is mounted at the container's own
/// cgroup). `max`, or no file: none. v1 writes "no limit" as a huge number, which the machine's
/// RAM then caps.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse().ok())
}

/// The bytes charged for one call, given back when its last clone is dropped.
#[derive(Clone, Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl Charge {
    /// Charges `bytes` more to the call, or fails when the budget has no room for them.
    pub fn take(&self, bytes: usize) -> Result<(), tonic::Status> {
        let Some(room) = &self.budget.room else {
            return Ok(());
        };
        let permit = acquire(room, bytes).ok_or_else(|| {
            tonic::Status::resource_exhausted(format!(
                "The server holds as many request bytes in memory as it may \
                 (--max_request_bytes_in_flight={}); retry later",
                self.budget.limit
            ))
        })?;
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match held.as_mut() {
            Some(charged) => charged.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// [`Charge::take`] for bytes a call's work will hold, refused with a core error.
    pub fn hold(&self, bytes: usize) -> oxserve_core::Result<()> {
        self.take(bytes)
            .map_err(|refused| oxserve_core::Error::resource_exhausted(refused.message()))
    }

    /// Holds what decoded input tensors take, twice: here, and again in TensorFlow's copies.
    pub fn hold_tensors<'a>(
        &self,
        tensors: impl IntoIterator<Item = &'a Tensor>,
    ) -> oxserve_core::Result<()> {
        let decoded: usize = tensors.into_iter().map(|t| t.data().footprint()).sum();
        self.hold(decoded.saturating_mul(2))
    }

    /// Holds the tf.Examples a classify, regress or multi-inference call will serialize, twice:
    /// here, and again in TensorFlow's tensor (every serialized example repeats the context).
    pub fn hold_examples(
        &self,
        context: Option<&Example>,
        examples: &[Example],
    ) -> oxserve_core::Result<()> {
        let serialized = oxserve_core::inference::serialized_footprint(context, examples);
        self.hold(serialized.saturating_mul(2))
    }

    /// Runs `work` with this charge as the thread's current one (see [`take_current`]).
    pub fn enter<T>(&self, work: impl FnOnce() -> T) -> T {
        struct Restore(Option<Charge>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.set(self.0.take());
            }
        }
        let _restore = Restore(CURRENT.replace(Some(self.clone())));
        work()
    }
}

/// `bytes` permits of `room`, all or none. A semaphore hands out at most `u32::MAX` at a time;
/// those taken before a refusal go back as they drop.
fn acquire(room: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let first = u32::try_from(bytes).unwrap_or(u32::MAX);
    let mut permit = room.clone().try_acquire_many_owned(first).ok()?;
    let mut left = bytes - first as usize;
    while left > 0 {
        let n = u32::try_from(left).unwrap_or(u32::MAX);
        permit.merge(room.clone().try_acquire_many_owned(n).ok()?);
        left -= n as usize;
    }
    Some(permit)
}

thread_local! {
    /// The charge of the call this thread works on, for what code deep below the call decodes
    /// without being handed the charge (JSON bodies).
    static CURRENT: RefCell<Option<Charge>> = const { RefCell::new(None) };
}

/// Charges `bytes` to the call the thread works on ([`Charge::enter`]); nothing outside a call.
pub fn take_current(bytes: usize) -> Result<(), tonic::Status> {
    CURRENT.with_borrow(|current| current.as_ref().map_or(Ok(()), |charge| charge.take(bytes)))
}

/// A request body whose data is charged to its call as it arrives. It fails with a
/// RESOURCE_EXHAUSTED [`tonic::Status`] (which tonic answers as it is) when the budget is full.
pub struct ChargedBody<B> {
    inner: B,
    charge: Charge,
}

impl<B> Body for ChargedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if let Err(status) = self.charge.take(data.len()) {
                return Poll::Ready(Some(Err(Box::new(status))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Charges every request's body to the budget, and puts the call's [`Charge`] in the request's
/// extensions for handlers that hold it beyond the answer or charge more.
#[derive(Clone, Debug)]
pub struct MemoryBudgetLayer(pub Arc<MemoryBudget>);

impl<S> Layer<S> for MemoryBudgetLayer {
    type Service = Charged<S>;

    fn layer(&self, inner: S) -> Charged<S> {
        Charged {
            inner,
            budget: self.0.clone(),
        }
    }
}

/// The service [`MemoryBudgetLayer`] makes.
#[derive(Clone, Debug)]
pub struct Charged<S> {
    inner: S,
    budget: Arc<MemoryBudget>,
}

impl<S, B> Service<http::Request<B>> for Charged<S>
where
    S: Service<http::Request<ChargedBody<B>>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let charge = self.budget.charge();
        let (mut parts, inner) = request.into_parts();
        let grpc = crate::grpc::is_grpc_call(&parts);
        parts.extensions.insert(charge.clone());
        let body = ChargedBody {
            inner,
            charge: charge.clone(),
        };
        let call = self.inner.call(http::Request::from_parts(parts, body));
        // Only gRPC messages go through the decoder that charges them.
        if self.budget.room.is_none() || !grpc {
            return Box::pin(call);
        }
        let decodes = charge.clone();
        let decodes: DecodeCharge = Arc::new(move |decoded| decodes.take(decoded));
        Box::pin(async move {
            let answered = charge_decodes(decodes, call).await;
            drop(charge);
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_given_back_when_their_last_clone_goes() {
        let budget = MemoryBudget::new(100);
        let first = budget.charge();
        first.take(60).unwrap();
        first.take(30).unwrap();
        let second = budget.charge();
        let refused = second.take(11).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused
            .message()
            .contains("--max_request_bytes_in_flight=100"));
        second.take(10).unwrap();
        let kept = first.clone();
        drop(first);
        assert!(
            second.take(1).is_err(),
            "a clone still holds the first call's 90 bytes"
        );
        drop(kept);
        second.take(90).unwrap();
    }

    #[test]
    fn the_current_charge_is_the_entered_calls_and_only_while_it_runs() {
        let budget = MemoryBudget::new(100);
        take_current(1_000).unwrap();
        let outer = budget.charge();
        outer.enter(|| {
            take_current(60).unwrap();
            let inner = budget.charge();
            inner.enter(|| assert!(take_current(41).is_err()));
            take_current(40).unwrap();
            assert!(take_current(1).is_err());
        });
        take_current(1_000).unwrap();
        assert!(
            budget.charge().take(1).is_err(),
            "the outer call holds all 100"
        );
        drop(outer);
        budget.charge().take(100).unwrap();
    }

    #[test]
    fn charges_may_be_larger_than_a_semaphore_hands_out_at_once() {
        let limit = 3 * u32::MAX as usize;
        let budget = MemoryBudget::new(limit);
        let large = budget.charge();
        large.take(2 * u32::MAX as usize + 7).unwrap();
        let other = budget.charge();
        assert!(other.take(u32::MAX as usize).is_err());
        other.take(u32::MAX as usize - 7).unwrap();
        assert!(budget.charge().take(1).is_err());
        drop(large);
        budget
            .charge()
            .take(limit - (u32::MAX as usize - 7))
            .unwrap();
    }

    #[test]
    fn no_limit_refuses_nothing() {
        let budget = MemoryBudget::new(0);
        assert_eq!(budget.limit(), 0);
        budget.charge().take(usize::MAX).unwrap();
    }
}
