//! Lets a protocol adapter give back its slot for a running call while the call's request only
//! waits in a batching queue.
//!
//! An adapter may bound the model calls it runs at once (gRPC's `--grpc_max_threads`: 8 on 2
//! cores). If a request waiting for its batch kept its slot, no more requests than that could be
//! queued, and the batches formed under load would stay far below `max_batch_size` (measured on
//! the Planet CNN at 32 clients: 2.2 requests per batch on average instead of 8). Waiting
//! requests are bounded by the batching queue's own limit (`max_enqueued_batches`) instead.
//! Like [`crate::deadline`], the hook travels on the calling thread, so `Model::run` keeps its
//! signature.

use std::cell::RefCell;

type Release = Box<dyn FnOnce()>;

thread_local! {
    static RELEASE: RefCell<Option<Release>> = const { RefCell::new(None) };
}

/// Runs `work` on this thread; the first time it queues a request for batching, `release` runs
/// (once), just before the thread starts waiting for the batch. If nothing is queued, `release`
/// is dropped when `work` returns. Scopes nest: the outer hook is restored afterwards.
pub fn release_when_queued<R>(release: impl FnOnce() + 'static, work: impl FnOnce() -> R) -> R {
    struct Restore(Option<Release>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let unused = RELEASE.with(|cell| cell.replace(self.0.take()));
            drop(unused);
        }
    }
    let _restore = Restore(RELEASE.with(|cell| cell.replace(Some(Box::new(release)))));
    work()
}

/// Called by the batcher once a request is in its queue: runs this thread's release hook, if any.
pub(crate) fn queued() {
    let release = RELEASE.with(|cell| cell.borrow_mut().take());
    if let Some(release) = release {
        release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn the_hook_runs_once_and_scopes_restore_the_outer_one() {
        let count = Rc::new(Cell::new(0));
        let outer = count.clone();
        release_when_queued(
            move || outer.set(outer.get() + 10),
            || {
                let inner = count.clone();
                release_when_queued(
                    move || inner.set(inner.get() + 1),
                    || {
                        queued();
                        queued();
                    },
                );
                assert_eq!(count.get(), 1);
                queued();
                assert_eq!(count.get(), 11);
            },
        );
        queued();
        assert_eq!(count.get(), 11);
    }

    #[test]
    fn an_unused_hook_is_dropped_with_its_scope() {
        let held = Rc::new(());
        let moved = held.clone();
        release_when_queued(move || drop(moved), || {});
        assert_eq!(Rc::strong_count(&held), 1);
    }
}
