//! Keeps the decode helper thread off the CPU of the thread handing it a list.
//!
//! Linux wakes a sleeping thread on the CPU of the thread that woke it when it can ("wake
//! affine"), and a freshly woken thread preempts the one running there. After a pause between
//! requests, the helper woken by the decoding thread landed on that thread's own CPU 393 times in
//! 400 and ran its half first, while the other CPU stayed idle: the two halves ran one after the
//! other and the split decode of a 1 MB image took 1.9 ms, against 1.2 ms on one thread and
//! 0.9 ms split across both CPUs. Restricting the helper to the other CPUs before waking it
//! makes the kernel wake it there: 1.05 ms in the same test. In the server (Planet, REST, one
//! request at a time among raw and gRPC ones) the decode went from 1.09 to 1.03 ms at the median
//! and from 1.84 to 1.54 ms at the 90th percentile. One system call per list handed over.

use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::{gettid, Pid};

/// The helper thread, as the scheduler knows it.
pub(super) struct Placement {
    thread: Pid,
    /// The CPUs the helper may run on when it started (the process's, or its cgroup's).
    allowed: CpuSet,
}

impl Placement {
    /// The calling thread's; `None` where its affinity cannot be read.
    pub(super) fn of_current_thread() -> Option<Placement> {
        let thread = gettid();
        let allowed = sched_getaffinity(thread).ok()?;
        Some(Placement { thread, allowed })
    }

    /// Lets the helper run anywhere it may but on the calling thread's CPU, when it may run on
    /// another one. Best effort: on failure the helper goes where the scheduler puts it.
    pub(super) fn away_from_current_cpu(&self) {
        let Ok(cpu) = sched_getcpu() else { return };
        let mut others = self.allowed;
        if others.unset(cpu).is_ok() && others != CpuSet::new() {
            let _ = sched_setaffinity(self.thread, &others);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the caller held on one CPU, the helper may run on every allowed CPU but that one.
    #[test]
    fn the_helper_is_kept_off_the_callers_cpu() {
        let (send, placement) = std::sync::mpsc::channel();
        let (done, finish) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            send.send(Placement::of_current_thread()).unwrap();
            let _ = finish.recv();
        });
        let placement = placement.recv().unwrap().expect("affinity readable");
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&cpu| placement.allowed.is_set(cpu).unwrap())
            .collect();
        // Pin this thread to each allowed CPU in turn.
        let caller = sched_getaffinity(Pid::from_raw(0)).unwrap();
        for &cpu in &cpus {
            let mut one = CpuSet::new();
            one.set(cpu).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            placement.away_from_current_cpu();
            let got = sched_getaffinity(placement.thread).unwrap();
            for &other in &cpus {
                // On a single CPU there is nowhere else to go: the helper keeps it.
                let expected = other != cpu || cpus.len() == 1;
                assert_eq!(
                    got.is_set(other).unwrap(),
                    expected,
                    "caller on {cpu}, CPU {other}"
                );
            }
        }
        sched_setaffinity(Pid::from_raw(0), &caller).unwrap();
        drop(done);
        helper.join().unwrap();
    }
}
