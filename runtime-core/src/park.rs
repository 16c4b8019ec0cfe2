//! How an actor thread waits for work when none of its I/O is on a file descriptor.
//!
//! An actor's executor is driven by a `block_on`. `async_io::block_on` lets the parked thread
//! drive the reactor: whichever thread holds the reactor sleeps in `epoll_wait`, and waking it
//! costs an `eventfd` write, the `epoll_wait` return and a drain of the `eventfd` besides the
//! scheduler wake-up. An actor whose channel to its parent is in memory (the thread and subint
//! backends) has no file descriptor of its own to watch, so [`block_on_in_process`] parks it on
//! a futex instead (`std::thread::park`): a wake-up is one atomic swap and one `futex` call, with
//! no lock on either side. Timers and any descriptor such an actor does use (a process child it
//! starts, say) are still served, by whichever thread drives the reactor (the root's, or
//! async-io's own thread), which then wakes the actor like any other waker. An actor whose
//! parent channel is a socket (the process backend's children), and the root, park in
//! `harrow_ipc::park::block_on` instead: an epoll instance of the thread's own that watches the
//! sockets its unix channels read, so that a message wakes the thread directly.
//!
//! Both parkers spin briefly before they sleep, when the machine has a core to spare and recent
//! spins paid (`harrow_ipc::park::spin`: `HARROW_PARK_SPIN_US`, 50 µs by default, 0 turns it
//! off): once the executor runs out of work, the thread watches its wake flag for that long, so
//! a reply arriving within the window costs no syscall and no wake-up on either side. The spin
//! is bounded and only follows work: an idle actor spins once, after its last message, then
//! parks and costs nothing until it is woken.
//!
//! Two threads that spin for each other can end up on one CPU, where they only take turns
//! through the spin's yields while another CPU idles. A thread that sees its wake-up only after
//! yielding, from a waker on its own CPU (`HOP_AFTER` times in a row), while no thread on the
//! machine waits for a CPU, moves itself off that CPU (its affinity narrowed for a moment, then
//! given back), at most once per `HOP_EVERY`; see `harrow_ipc::park::spin::SharedCpu`. The
//! count belongs to the thread, not to one `block_on_in_process`: the subint interpreter thread
//! waits for each call in a `block_on` of its own. So does the spin gate's back-off. And a
//! wake-up that the thread gave itself (a task it ran woke another) neither counts nor ends the
//! run, nor counts as a spin that paid: it says nothing about where the thread's peers run or
//! whether they answer within a spin, and one comes with nearly every call.
//!
//! The other way round, on a crowded machine (CPU hogs, or too many runnable threads: nobody
//! spins), a thread woken from its sleep `HOP_AFTER` times in a row by a waker on one other CPU
//! moves onto that CPU (`SharedCpu::after_slept`): without spinning, two threads that hand work
//! back and forth are cheapest on one CPU, where a hand-off wakes no other CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use harrow_ipc::park::spin::{
    SharedCpu, SpinGate, Spun, WakeSource, WokenBy, crowded, now_ns, spin_watch_starting,
    wake_delay,
};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

pub use harrow_ipc::park::spin::{DEFAULT_SPIN, park_spin};

/// The longest one turn of the spinning wait keeps re-polling before it starts a new turn (its
/// clock, its look at how the last sleep went).
pub const BUDGET: Duration = Duration::from_millis(2);

/// Runs `fut` to completion on this thread, parking on a futex (not in the reactor) whenever it
/// waits, after spinning up to [`park_spin`] for new work. For threads whose own I/O is in
/// memory; see the module docs.
pub fn block_on_in_process<F: Future>(fut: F) -> F::Output {
    let spin = park_spin();
    if spin.is_zero() {
        return block_on_parked(fut);
    }
    SpinThenPark::new(fut, None).run()
}

/// The inner future is being polled or the thread spins; no wake-up since the last poll began.
const RUNNING: u8 = 0;
/// Woken since the last poll began: poll again.
const WOKEN: u8 = 1;
/// The thread sleeps (or is about to) in [`std::thread::park`]: a wake-up must unpark it.
const PARKED: u8 = 2;

/// Puts the thread to sleep until `state` no longer says [`PARKED`].
///
/// The thread's park token is shared by everything on the thread that parks (a nested wait, a
/// blocking channel in user code), so a wake-up meant for another wait can end this sleep, and
/// one meant for this wait can end another's: each wait's own state says whether it was woken,
/// and a sleep ended by another's wake-up goes back to sleep.
fn sleep_while_parked(state: &AtomicU8) {
    while state.load(Ordering::Acquire) == PARKED {
        std::thread::park();
    }
}

/// A waker that unparks the thread that made it, when that thread sleeps.
struct ThreadFlag {
    state: AtomicU8,
    thread: std::thread::Thread,
}

impl Wake for ThreadFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.swap(WOKEN, Ordering::AcqRel) == PARKED {
            self.thread.unpark();
        }
    }
}

/// [`block_on_in_process`] without the spin: polls `fut`, and sleeps in [`std::thread::park`]
/// whenever it waits. A wake-up of a sleeping thread is one atomic swap and one `futex` call,
/// with no lock on either side (a parker made of a mutex and a condition variable, as
/// `futures_lite::future::block_on`'s, takes and releases its mutex on both).
fn block_on_parked<F: Future>(fut: F) -> F::Output {
    let flag = Arc::new(ThreadFlag {
        state: AtomicU8::new(RUNNING),
        thread: std::thread::current(),
    });
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        flag.state.store(RUNNING, Ordering::Release);
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // Woken during the poll: poll again.
        if flag
            .state
            .compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            sleep_while_parked(&flag.state);
        }
    }
}

/// The inner future's waker: flips the flag, and only wakes the parked thread when it parked.
///
/// A waker writes `source` (its first word) and then `state`, and the spinning thread reads
/// both. Those 16 bytes sit alone in one cache line, so that a wake-up moves one line, and no
/// write by another thread to a neighbouring value (the `Arc`'s counts, another allocation)
/// takes that line from the spinner: at Flag offset 48, 16-aligned, with 48 bytes of the flag's
/// own before them and after them, whatever 16-aligned address the flag is given.
///
/// It is not aligned to a line (`align(64)`) for that: an alignment above 16 is an aligned
/// allocation, which glibc serves under its arena's lock, without its per-thread cache. The
/// subint interpreter thread makes a flag per call, and whenever another thread was freeing
/// memory of that arena at the same moment, one of the two slept on the lock and the call paid
/// a wake-up (docs/performance-log.md, "A lock in the allocator"). An alignment of 16 is one the
/// system allocator serves with a plain `malloc`.
#[repr(C, align(16))]
struct Flag {
    /// The thread that waits (unparked by a waker that finds it parked).
    thread: std::thread::Thread,
    /// When a waker last found the thread parked and woke it ([`now_ns`]): for the thread's
    /// [`wake_delay`].
    woke_at: AtomicU64,
    _before: [u8; HOT_AT - std::mem::size_of::<std::thread::Thread>() - 8],
    state: AtomicU8,
    /// Where the last wake-up came from.
    source: WakeSource,
    _after: [u8; FLAG_SIZE - HOT_AT - 8 - std::mem::size_of::<WakeSource>()],
}

/// Where a flag's hot words (`state`, then the first word of `source`) begin.
const HOT_AT: usize = 48;
/// A flag's size: its hot words, and 48 bytes of its own on either side of them.
const FLAG_SIZE: usize = HOT_AT + 16 + 48;

impl Flag {
    /// A flag for a wait on this thread (made on the thread that waits).
    fn new() -> Flag {
        Flag {
            thread: std::thread::current(),
            woke_at: AtomicU64::new(0),
            _before: [0; HOT_AT - std::mem::size_of::<std::thread::Thread>() - 8],
            state: AtomicU8::new(RUNNING),
            source: WakeSource::for_this_thread(),
            _after: [0; FLAG_SIZE - HOT_AT - 8 - std::mem::size_of::<WakeSource>()],
        }
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Published by the swap below, read by the spinner after its acquire load.
        self.source.record();
        if self.state.swap(WOKEN, Ordering::AcqRel) == PARKED {
            // Read by the thread once this wake-up (below) has reached it.
            self.woke_at.store(now_ns(), Ordering::Release);
            self.thread.unpark();
        }
    }
}

struct SpinThenPark<F> {
    fut: Pin<Box<F>>,
    flag: Arc<Flag>,
    waker: Waker,
    gate: SpinGate,
    /// `gate` is the thread's, taken from [`THREAD_GATE`], to be given back on drop.
    threads_gate: bool,
    /// Whether this thread and its wakers keep sharing a CPU: the thread's own watch, taken
    /// from [`THREAD_WATCH`] and given back on drop.
    shared_cpu: SharedCpu,
    /// When the future was last handed back to sleep (for [`SpinGate::slept`]).
    parked_at: Option<Instant>,
}

std::thread_local! {
    /// This thread's watch for a waker on its CPU, between its `block_on_in_process` calls. A
    /// thread that waits in many short `block_on`s (the subint interpreter thread waits for each
    /// call in its own) would otherwise start every wait with a run of zero and never move.
    static THREAD_WATCH: std::cell::Cell<SharedCpu> = const { std::cell::Cell::new(SharedCpu::new()) };

    /// This thread's spin gate (its back-off after spins that ran out), between its
    /// `block_on_in_process` calls, for the same reason. Started afresh for each call it waits
    /// for, the subint interpreter thread spun its whole spin after every call however far
    /// apart they came (with a call every 200 µs, 83-87 µs of the process's CPU per call
    /// against 50-57 µs with the thread's gate).
    static THREAD_GATE: std::cell::Cell<SpinGate> = const { std::cell::Cell::new(SpinGate::new()) };
}

impl<F> Drop for SpinThenPark<F> {
    fn drop(&mut self) {
        let watch = std::mem::take(&mut self.shared_cpu);
        // A thread being torn down has no watch to keep.
        let _ = THREAD_WATCH.try_with(|w| w.set(watch));
        if self.threads_gate {
            let gate = std::mem::take(&mut self.gate);
            let _ = THREAD_GATE.try_with(|g| g.set(gate));
        }
    }
}

impl<F: Future> SpinThenPark<F> {
    /// A wait with `gate`, or (`None`) with the thread's own gate.
    fn new(fut: F, gate: Option<SpinGate>) -> Self {
        let flag = Arc::new(Flag::new());
        let threads_gate = gate.is_none();
        // A `block_on` nested in another starts with a gate of its own.
        let gate = gate.unwrap_or_else(|| THREAD_GATE.try_with(|g| g.take()).unwrap_or_default());
        SpinThenPark {
            fut: Box::pin(fut),
            waker: Waker::from(flag.clone()),
            flag,
            gate,
            threads_gate,
            // A `block_on` nested in another starts a watch of its own.
            shared_cpu: THREAD_WATCH.try_with(|w| w.take()).unwrap_or_default(),
            parked_at: None,
        }
    }
}

impl<F: Future> SpinThenPark<F> {
    /// Runs the future to its end on this thread, spinning and sleeping in turns.
    fn run(&mut self) -> F::Output {
        loop {
            if let Some(v) = self.turn() {
                return v;
            }
        }
    }

    /// Polls the future until it is done (`Some`), or until it has waited once (spun, then slept
    /// until woken) or kept the thread busy for [`BUDGET`] (`None`: call again).
    fn turn(&mut self) -> Option<F::Output> {
        let began = Instant::now();
        if let Some(parked_at) = self.parked_at.take() {
            let woke = self.flag.woke_at.load(Ordering::Acquire);
            self.gate.slept(wake_delay(parked_at, woke, began));
            if let WokenBy::Cpu(waker) = self.flag.source.take() {
                self.shared_cpu.after_slept(waker, crowded());
            }
        }
        loop {
            self.flag.state.store(RUNNING, Ordering::Release);
            if let Poll::Ready(v) = self
                .fut
                .as_mut()
                .poll(&mut Context::from_waker(&self.waker))
            {
                return Some(v);
            }
            if began.elapsed() >= BUDGET {
                // Busy for a while: start a new turn (its clock, its look at the last sleep).
                return None;
            }
            let spin = self.gate.spin();
            if !spin.is_zero() {
                let state = &self.flag.state;
                match spin_watch_starting(spin, self.shared_cpu.spin_start(), || {
                    state.load(Ordering::Acquire) != RUNNING
                }) {
                    Spun::Caught { after_yield } => {
                        // A wake-up this thread gave itself (a task it ran woke another) was
                        // there before the spin began: it says nothing of whether spins pay.
                        if let WokenBy::Cpu(waker) = self.flag.source.take() {
                            self.gate.hit();
                            self.shared_cpu.after_caught(after_yield, waker);
                        }
                        continue;
                    }
                    Spun::Missed => self.gate.miss(),
                }
            }
            // Before the flag says parked: a waker that finds it parked records a later moment.
            let parking = Instant::now();
            match self.flag.state.compare_exchange(
                RUNNING,
                PARKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.parked_at = Some(parking);
                    sleep_while_parked(&self.flag.state);
                    return None;
                }
                // Woken between the last look and the hand-over: poll again.
                Err(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harrow_ipc::park::spin::{testing, this_cpu};

    /// `block_on_in_process` spinning `spin` before every park, whatever the load says; with
    /// `None`, as it waits when it may not spin.
    fn block_on<F: Future>(spin: impl Into<Option<Duration>>, fut: F) -> F::Output {
        match spin.into() {
            Some(spin) => SpinThenPark::new(fut, Some(SpinGate::always(spin))).run(),
            None => block_on_parked(fut),
        }
    }

    #[test]
    fn an_unpark_that_is_not_a_wake_up_does_not_poll_the_future_again() {
        // The thread's park token is everybody's: anything may unpark it (a blocking channel
        // in user code, a nested wait's waker). Only the wait's own waker may end its sleep.
        for spin in [Some(Duration::ZERO), None] {
            let (probe, wait) = crate::test_probe::Probe::new();
            let (thread_tx, thread_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let waiter = std::thread::spawn(move || {
                thread_tx.send(std::thread::current()).unwrap();
                block_on(spin, wait);
                done_tx.send(()).unwrap();
            });
            let thread = thread_rx.recv().unwrap();
            // Once the first poll has run (bounded: 30 s) ...
            let start = Instant::now();
            while probe.polls() == 0 {
                assert!(start.elapsed() < Duration::from_secs(30), "never polled");
                std::thread::yield_now();
            }
            // ... unparks that are not its waker's, whether the thread sleeps yet or not ...
            for _ in 0..10 {
                thread.unpark();
                std::thread::yield_now();
            }
            // ... then the wake-up.
            probe.finish();
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the wait ended once woken");
            waiter.join().unwrap();
            assert_eq!(
                probe.polls(),
                2,
                "polled once, then once after its wake-up ({spin:?})"
            );
        }
    }

    #[test]
    fn a_wake_from_another_thread_while_spinning_or_parked_is_seen() {
        // Replies arriving at once (caught while spinning) and after a pause (after parking);
        // through the spinning wait, and through the one without a spin.
        let waits = [Some(Duration::from_micros(50)), None];
        for (spin, pause) in waits
            .into_iter()
            .flat_map(|spin| [Duration::ZERO, Duration::from_millis(5)].map(|pause| (spin, pause)))
        {
            let (tx, rx) = async_channel::bounded::<u32>(1);
            let (back_tx, back_rx) = async_channel::bounded::<u32>(1);
            let echo = std::thread::spawn(move || {
                block_on(spin, async move {
                    while let Ok(v) = rx.recv().await {
                        if back_tx.send(v).await.is_err() {
                            break;
                        }
                    }
                })
            });
            let got = block_on(spin, async {
                let mut sum = 0;
                for i in 0..100 {
                    tx.send(i).await.unwrap();
                    // Bounded: a lost wake-up fails here instead of hanging the test.
                    let back = crate::move_on_after(Duration::from_secs(30), back_rx.recv());
                    sum += back.await.expect("the echo came back").unwrap();
                    std::thread::sleep(pause / 10);
                }
                sum
            });
            drop(tx);
            echo.join().unwrap();
            assert_eq!(got, (0..100).sum::<u32>());
        }
    }

    /// A 20 ms timer raced against a loop that keeps yielding (never runs out of work, never
    /// parks); `true` when the timer won. Bounded: the loop gives up after 30 s.
    async fn timer_beats_a_busy_loop() -> bool {
        let timer = async {
            async_io::Timer::after(Duration::from_millis(20)).await;
            true
        };
        let busy = async {
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                futures_lite::future::yield_now().await;
            }
            false
        };
        futures_lite::future::or(timer, busy).await
    }

    #[test]
    fn a_wakers_two_writes_land_in_one_cache_line() {
        use std::mem::{align_of, offset_of, size_of};
        // Served by a plain `malloc`: no aligned allocation, no arena lock.
        assert_eq!(align_of::<Flag>(), 16);
        // What a waker writes (`source`'s first word, then `state`) and the spinner reads: 16
        // bytes at a 16-aligned offset, which no 64-byte line boundary splits ...
        const { assert!(HOT_AT.is_multiple_of(16)) };
        assert_eq!(offset_of!(Flag, state), HOT_AT);
        assert_eq!(offset_of!(Flag, source), HOT_AT + 8);
        // ... with the flag's own 48 bytes on either side: whichever line holds them holds
        // nothing of another value.
        const { assert!(HOT_AT >= 48 && FLAG_SIZE - (HOT_AT + 16) >= 48) };
        assert_eq!(size_of::<Flag>(), FLAG_SIZE);
        let flag = Arc::new(Flag::new());
        let at = std::ptr::from_ref(&flag.state) as usize;
        assert_eq!(at % 16, 0, "an Arc's value keeps the flag's alignment");
    }

    #[test]
    fn a_wake_up_that_finds_the_flag_parked_records_its_moment() {
        let flag = Arc::new(Flag::new());
        let waker = Waker::from(flag.clone());
        // Not parked: nothing to record (the thread did not sleep).
        waker.wake_by_ref();
        assert_eq!(flag.woke_at.load(Ordering::Acquire), 0);
        flag.state.store(PARKED, Ordering::Release);
        let before = now_ns();
        waker.wake_by_ref();
        let woke = flag.woke_at.load(Ordering::Acquire);
        assert!(
            woke >= before && woke <= now_ns(),
            "recorded {woke}, before {before}"
        );
    }

    #[test]
    fn the_flag_records_where_its_wake_up_came_from() {
        // How a source tells the polling thread from another is `WakeSource`'s (tested in
        // `harrow-ipc`); here, that the flag's waker records into it.
        let parker = SpinThenPark::new(std::future::pending::<()>(), Some(SpinGate::new()));
        // A task run by the polling thread woke another: not evidence of where peers run.
        parker.waker.wake_by_ref();
        assert_eq!(parker.flag.source.take(), WokenBy::Itself);
        assert_eq!(parker.flag.source.take(), WokenBy::Cpu(None), "taken once");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_watch_for_a_shared_cpu_outlives_one_block_on() {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        // Held on one CPU, so that "the waker ran on this thread's CPU" stays true.
        let before = sched_getaffinity(None).expect("affinity");
        let here = this_cpu().expect("this CPU");
        let mut pin = CpuSet::new();
        pin.set(here);
        sched_setaffinity(None, &pin).expect("pin");

        let mut watch = SharedCpu::new();
        watch.after_caught(true, Some(here));
        assert_eq!(watch.run_len(), 1);
        THREAD_WATCH.with(|w| w.set(watch));
        {
            let outer = SpinThenPark::new(std::future::ready(()), Some(SpinGate::new()));
            assert_eq!(
                outer.shared_cpu.run_len(),
                1,
                "a wait takes up the thread's run"
            );
            // A wait nested inside it starts its own, and leaves the outer one's alone.
            let inner = SpinThenPark::new(std::future::ready(()), Some(SpinGate::new()));
            assert_eq!(inner.shared_cpu.run_len(), 0);
            drop(inner);
            drop(outer);
        }
        // Given back when the wait ended: the next wait goes on with it.
        assert_eq!(THREAD_WATCH.with(|w| w.take()).run_len(), 1);
        // And a whole `block_on_in_process` keeps it too.
        let mut watch = SharedCpu::new();
        watch.after_caught(true, Some(here));
        THREAD_WATCH.with(|w| w.set(watch));
        block_on_in_process(async {});
        assert_eq!(THREAD_WATCH.with(|w| w.take()).run_len(), 1);
        sched_setaffinity(None, &before).expect("unpin");
    }

    #[test]
    fn the_spin_gate_outlives_one_block_on() {
        let mut gate = SpinGate::new();
        // Two spins in a row ran out: the next one is skipped.
        gate.miss();
        gate.miss();
        assert_eq!(gate.backed_off(), (1, true));
        THREAD_GATE.with(|g| g.set(gate));
        {
            let outer = SpinThenPark::new(std::future::ready(()), None);
            assert_eq!(
                outer.gate.backed_off(),
                (1, true),
                "a wait takes up the thread's gate"
            );
            let inner = SpinThenPark::new(std::future::ready(()), None);
            assert_eq!(
                inner.gate.backed_off(),
                (0, false),
                "a nested wait has its own"
            );
            drop(inner);
            drop(outer);
        }
        // Given back when the wait ended: the next wait goes on with it ...
        assert_eq!(THREAD_GATE.with(|g| g.take()).backed_off(), (1, true));
        // ... and a gate given to one wait is not the thread's.
        let mut gate = SpinGate::new();
        gate.miss();
        gate.miss();
        drop(SpinThenPark::new(std::future::ready(()), Some(gate)));
        assert_eq!(THREAD_GATE.with(|g| g.take()).backed_off(), (0, false));
    }

    #[test]
    fn a_wake_up_the_thread_gave_itself_is_not_a_spin_that_paid() {
        // Its second poll comes from a spin that caught the future's own wake-up at once.
        let mut gate = SpinGate::always(Duration::from_micros(50));
        gate.miss();
        gate.miss();
        let mut parker = SpinThenPark::new(testing::wakes_itself_once(), Some(gate));
        parker.run();
        assert_eq!(
            parker.gate.backed_off(),
            (1, true),
            "not counted as a hit (which ends the back-off)"
        );
        // A wake-up from another thread caught by the spin (up to 500 ms) is one.
        let (fut, waker_thread) = testing::woken_from_another_thread();
        let mut gate = SpinGate::always(Duration::from_millis(500));
        gate.miss();
        gate.miss();
        let mut parker = SpinThenPark::new(fut, Some(gate));
        parker.run();
        waker_thread.join().expect("the waking thread");
        assert_eq!(
            parker.gate.backed_off(),
            (0, false),
            "a hit ends the back-off"
        );
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_lets_timers_fire() {
        // This thread never drives the reactor: the timer fires through whichever thread does.
        assert!(block_on(
            Duration::from_micros(50),
            timer_beats_a_busy_loop()
        ));
        assert!(block_on_in_process(timer_beats_a_busy_loop()));
    }
}
