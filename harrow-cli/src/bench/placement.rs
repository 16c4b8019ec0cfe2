//! How far apart two of the machine's CPUs are: the time a cache line takes to go from one to
//! the other and back, measured before and after a run.
//!
//! On a virtual machine the host decides where the guest's CPUs run, and it may move them
//! while the guest runs. On the 2-core VM these figures were taken on, two CPUs passed a cache
//! line back and forth in about 55 ns at some moments (sharing a cache on the host) and in about
//! 330 ns at others, switching every few seconds. Every exchange between two threads on the two
//! CPUs pays that: the thread RPC round trip's p50 was 2.5 µs in the first placement and
//! 4.4–5.2 µs in the second, the thread stream echo about 4 M and 1.3–2.2 M items per second.
//! The raw baselines that the RPC rows hold on one CPU do not pay it. So a figure is read with
//! the placement it was taken in, which this probe prints (see `docs/PERFORMANCE.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::stats::round;

/// Round trips per timed chunk; the figure is the fastest chunk's mean, so that a chunk in which
/// either thread lost its CPU (to a CPU hog, say) does not count.
const CHUNK: u64 = 512;
/// How long one probe may take in all. Idle, its chunks take 2-20 ms; beside CPU hogs the two
/// threads run at once only now and then: with 30 ms, the probe before each of two runs beside
/// two `yes` hogs ended with no chunk done.
const BUDGET: Duration = Duration::from_millis(200);
/// The most chunks one probe times.
const CHUNKS: u32 = 64;

/// One probe: the two CPUs, and a cache line's round trip between them in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    cpus: (usize, usize),
    round_trip_ns: f64,
}

/// The probes taken before and after a run (`None`: not measured: fewer than two CPUs allowed,
/// an affinity that cannot be set, or a machine so busy that the two threads never ran at the
/// same time within [`BUDGET`]).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Placement {
    pub(super) before: Option<Probe>,
    pub(super) after: Option<Probe>,
}

impl Placement {
    pub(super) fn to_json(self) -> serde_json::Value {
        let one = |p: Option<Probe>| p.map(|p| round(p.round_trip_ns));
        json!({
            "cpus": self.before.or(self.after).map(|p| [p.cpus.0, p.cpus.1]),
            "before_ns": one(self.before),
            "after_ns": one(self.after),
            "definition": "a cache line's round trip between the two CPUs (two threads, one held on each, passing a counter back and forth), the fastest of up to 64 chunks of 512; on a VM it tells where the host ran the two CPUs at that moment",
        })
    }

    /// One line for the text output.
    pub(super) fn line(self) -> String {
        let show =
            |p: Option<Probe>| p.map_or("?".to_owned(), |p| format!("{:.0} ns", p.round_trip_ns));
        match self.before.or(self.after) {
            Some(p) => format!(
                "CPUs {} and {}: a cache line there and back in {} before the run, {} after",
                p.cpus.0,
                p.cpus.1,
                show(self.before),
                show(self.after)
            ),
            None => "CPU placement: not measured (fewer than two CPUs, an affinity that cannot \
                     be set, or two threads that never ran at once within the probe's 200 ms)"
                .to_owned(),
        }
    }
}

/// Measures the round trip between the first two CPUs this thread may run on, with this
/// thread held on the first and a helper thread on the second for at most [`BUDGET`]; this
/// thread's affinity is given back after. `None` where that cannot be done, or no chunk of
/// round trips finished within the budget.
pub(super) fn probe() -> Option<Probe> {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let mine = sched_getaffinity(None).ok()?;
    let mut allowed = (0..CpuSet::MAX_CPU).filter(|&c| mine.is_set(c));
    let (a, b) = (allowed.next()?, allowed.next()?);
    let on = |cpu: usize| {
        let mut one = CpuSet::new();
        one.set(cpu);
        one
    };
    let flag = Arc::new(AtomicU64::new(0));
    // The helper answers every odd value with the next even one until it sees `u64::MAX`.
    let helper = {
        let flag = flag.clone();
        let there = on(b);
        std::thread::Builder::new()
            .name("harrow-bench-probe".into())
            .spawn(move || {
                if sched_setaffinity(None, &there).is_err() {
                    flag.store(u64::MAX - 1, Ordering::Release);
                    return;
                }
                loop {
                    let v = flag.load(Ordering::Acquire);
                    if v == u64::MAX {
                        return;
                    }
                    answer(&flag, v);
                    std::hint::spin_loop();
                }
            })
            .ok()?
    };
    let measured = if sched_setaffinity(None, &on(a)).is_ok() {
        let best = timed_chunks(&flag);
        let _ = sched_setaffinity(None, &mine);
        best
    } else {
        None
    };
    flag.store(u64::MAX, Ordering::Release);
    let _ = helper.join();
    measured.map(|ns| Probe {
        cpus: (a, b),
        round_trip_ns: ns,
    })
}

/// The helper's answer to `v`, the value it read: an odd value is a question, answered with the
/// next even one; an even one (an answer) is not answered again. Only if the flag still holds
/// `v`: the stop (`u64::MAX`), stored after a question that the deadline gave up on, must not
/// be written over, or the helper would spin on for ever and the probe's `join` with it.
fn answer(flag: &AtomicU64, v: u64) {
    if v % 2 == 1 {
        let _ = flag.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The fastest chunk's mean round trip, in ns, within [`BUDGET`]; `None` when no chunk
/// finished in time (the helper never ran, or could not be held on its CPU).
fn timed_chunks(flag: &AtomicU64) -> Option<f64> {
    let start = Instant::now();
    let mut next = 1u64;
    let mut best: Option<f64> = None;
    for _ in 0..CHUNKS {
        let t = Instant::now();
        for _ in 0..CHUNK {
            flag.store(next, Ordering::Release);
            // Wait for the helper's answer, looking at the clock now and then: the helper may
            // have lost its CPU, or failed to start where it should.
            let mut spins = 0u32;
            loop {
                let v = flag.load(Ordering::Acquire);
                if v == next + 1 {
                    break;
                }
                if v == u64::MAX - 1 {
                    return None;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(4096) && start.elapsed() > BUDGET {
                    return best;
                }
                std::hint::spin_loop();
            }
            next += 2;
        }
        let mean = t.elapsed().as_nanos() as f64 / CHUNK as f64;
        best = Some(best.map_or(mean, |b: f64| b.min(mean)));
        if start.elapsed() > BUDGET {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stop_stored_while_a_question_is_answered_is_not_written_over() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let flag = AtomicU64::new(0);
        // The helper read a question; the prober gave up on it and stored the stop before the
        // answer went out.
        flag.store(7, Ordering::SeqCst);
        let read = flag.load(Ordering::SeqCst);
        flag.store(u64::MAX, Ordering::SeqCst);
        super::answer(&flag, read);
        assert_eq!(flag.load(Ordering::SeqCst), u64::MAX);
        // Otherwise a question is answered once, and an answer is left alone.
        flag.store(9, Ordering::SeqCst);
        super::answer(&flag, 9);
        assert_eq!(flag.load(Ordering::SeqCst), 10);
        super::answer(&flag, 10);
        assert_eq!(flag.load(Ordering::SeqCst), 10);
    }

    use super::*;

    #[test]
    fn a_probe_measures_two_cpus_or_says_it_cannot() {
        let allowed = rustix::thread::sched_getaffinity(None).expect("affinity");
        let two = allowed.count() >= 2;
        // A probe gives up after its budget when the two threads never run at once (other
        // tests may keep the CPUs busy): a few tries, each bounded.
        match (0..10).find_map(|_| probe()) {
            Some(p) => {
                assert!(two, "a probe with fewer than two CPUs: {p:?}");
                assert_ne!(p.cpus.0, p.cpus.1);
                // A cache line's round trip: more than nothing, far less than a millisecond.
                assert!(p.round_trip_ns > 0.0 && p.round_trip_ns < 1e6, "{p:?}");
            }
            None => assert!(!two, "two CPUs, yet no probe"),
        }
    }

    #[test]
    fn a_probe_gives_this_thread_its_affinity_back() {
        use rustix::thread::sched_getaffinity;
        let before = sched_getaffinity(None).expect("affinity");
        let _ = probe();
        assert_eq!(sched_getaffinity(None).expect("affinity"), before);
    }

    #[test]
    fn the_json_and_the_line_say_what_was_measured() {
        let p = Probe {
            cpus: (0, 1),
            round_trip_ns: 54.6,
        };
        let both = Placement {
            before: Some(p),
            after: None,
        };
        let j = both.to_json();
        assert_eq!(j["cpus"], json!([0, 1]));
        assert_eq!(j["before_ns"], json!(54.6));
        assert!(j["after_ns"].is_null());
        assert_eq!(
            both.line(),
            "CPUs 0 and 1: a cache line there and back in 55 ns before the run, ? after"
        );
        assert!(Placement::default().line().contains("not measured"));
        assert!(Placement::default().to_json()["cpus"].is_null());
    }
}
