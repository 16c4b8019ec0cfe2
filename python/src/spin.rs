//! A short, bounded, self-limiting spin for a call's reply, before the caller's thread parks.
//!
//! A call to a Python interpreter crosses two threads: the caller's (for an actor, its runtime
//! thread) hands the job to the interpreter thread and later wakes for the reply. A trivial
//! Python function answers within microseconds, less than it costs to park the caller and wake
//! it again (a futex wait and wake, and a scheduler hand-off). So the first time a call's
//! future finds no reply yet, it watches for the reply for up to [`reply_spin`]; a reply within
//! that window costs the caller no park and no wake-up, and lets an actor answer the call in the
//! same turn of its executor (one message batch to its caller instead of two).
//!
//! A unary call whose host sends its answer from the interpreter thread itself (an actor's
//! calls through the portal: [`CallHost::answer_now`](crate::CallHost::answer_now)) does not
//! spin: its answer does not come back through the caller's thread. Contexts, and calls made
//! without such a host, do.
//!
//! Only a call alone in flight on its interpreter spins: with other calls queued ahead of it or
//! behind it (a pool feeding a worker several items), its thread has their messages to handle,
//! and spinning would hold them back.
//!
//! The spin pays only when the interpreter thread runs at once on another core. It is made
//! only when the machine has a core to spare, as the parkers' spin decides it
//! (`harrow_ipc::park::spin::cores_to_spare`: not beside CPU hogs, say). When it does
//! not pay (long calls, or a machine with more runnable threads than cores), a missed spin is
//! CPU taken from everyone else, so misses back off: after a miss the next 1, then 3, 7 ... up to
//! [`MAX_SKIP`] calls of that interpreter do not spin; a hit resets the back-off.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The spin when `HARROW_PY_REPLY_SPIN_US` is not set.
pub const DEFAULT_REPLY_SPIN: Duration = Duration::from_micros(50);

/// The most calls a run of misses makes an interpreter's callers skip spinning for.
pub(crate) const MAX_SKIP: u32 = 255;

/// How long a call's future spins for its reply before the caller's thread parks
/// (`HARROW_PY_REPLY_SPIN_US`, microseconds, capped at 1 ms; 0 turns the spin off; a value that
/// does not parse is ignored).
pub fn reply_spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        harrow_ipc::park::spin::spin_from_env("HARROW_PY_REPLY_SPIN_US", DEFAULT_REPLY_SPIN)
    })
}

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// How the reply spins of this process went so far: (replies caught while spinning, spins that
/// ran out, spins skipped by a back-off). For benchmarks; not part of the API.
#[doc(hidden)]
pub fn reply_spin_stats() -> (u64, u64, u64) {
    (
        HITS.load(Ordering::Relaxed),
        MISSES.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed),
    )
}

/// One interpreter's spin back-off, shared by its handles.
#[derive(Debug, Default)]
pub(crate) struct SpinGate {
    /// Calls of the interpreter queued or running, not answered yet.
    in_flight: AtomicUsize,
    /// Calls still to skip spinning for.
    skip: AtomicU32,
    /// The skip a next miss sets (0 after a hit).
    backoff: AtomicU32,
    /// Spin whatever the machine's load says (tests of the back-off).
    ignore_load: bool,
}

impl SpinGate {
    /// A call of the interpreter is queued.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A call that [`begin`](Self::begin) counted was answered or dropped.
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Spins up to [`reply_spin`] for `poll` to give something, unless a back-off says not to
    /// or another call is in flight on the interpreter.
    pub(crate) fn spin<T>(&self, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        let bound = reply_spin();
        if bound.is_zero()
            || self.in_flight.load(Ordering::SeqCst) > 1
            || (!self.ignore_load && !harrow_ipc::park::spin::cores_to_spare())
        {
            return None;
        }
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(v) = poll() {
                self.backoff.store(0, Ordering::Relaxed);
                HITS.fetch_add(1, Ordering::Relaxed);
                return Some(v);
            }
            if start.elapsed() >= bound {
                let next = (self.backoff.load(Ordering::Relaxed) * 2 + 1).min(MAX_SKIP);
                self.backoff.store(next, Ordering::Relaxed);
                self.skip.store(next, Ordering::Relaxed);
                MISSES.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // Let a thread woken onto this core (the interpreter's, often) run at once.
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_backs_off_and_a_hit_resets() {
        // Whatever the machine's load: this is about the back-off.
        let gate = SpinGate {
            ignore_load: true,
            ..SpinGate::default()
        };
        if reply_spin().is_zero() {
            // Turned off in this environment: never spins, never polls.
            assert_eq!(gate.spin(|| -> Option<()> { panic!("polled") }), None);
            return;
        }
        assert_eq!(gate.spin(|| Some(7)), Some(7));
        // A miss: the next call skips spinning (its poll is not even tried).
        assert_eq!(gate.spin(|| -> Option<()> { None }), None);
        assert_eq!(
            gate.spin(|| -> Option<()> { panic!("polled while backing off") }),
            None
        );
        // Then it spins again; a second miss backs off for 3 calls.
        assert_eq!(gate.spin(|| -> Option<()> { None }), None);
        for _ in 0..3 {
            assert_eq!(
                gate.spin(|| -> Option<u8> { panic!("polled while backing off") }),
                None
            );
        }
        // A hit resets the back-off: a miss after it skips 1 call again.
        assert_eq!(gate.spin(|| Some(1)), Some(1));
        assert_eq!(gate.spin(|| -> Option<()> { None }), None);
        assert_eq!(
            gate.spin(|| -> Option<()> { panic!("polled while backing off") }),
            None
        );
        assert_eq!(gate.spin(|| Some(2)), Some(2));
        // With another call in flight it does not spin (nor count a skip).
        gate.begin();
        gate.begin();
        assert_eq!(
            gate.spin(|| -> Option<()> { panic!("polled with two in flight") }),
            None
        );
        gate.end();
        assert_eq!(gate.spin(|| Some(3)), Some(3));
        gate.end();
    }
}
