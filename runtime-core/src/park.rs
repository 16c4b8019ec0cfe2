//! How an actor thread waits for work when none of its I/O is on a file descriptor.
//!
//! An actor's executor is driven by a `block_on`. `async_io::block_on` lets the parked thread
//! drive the reactor: whichever thread holds the reactor sleeps in `epoll_wait`, and waking it
//! costs an `eventfd` write, the `epoll_wait` return and a drain of the `eventfd` besides the
//! scheduler wake-up. An actor whose channel to its parent is in memory (the thread and subint
//! backends) has no file descriptor of its own to watch, so [`block_on_in_process`] parks it on
//! a futex instead (`futures_lite::future::block_on`): a wake-up is one `futex` call. Timers and
//! any descriptor such an actor does use (a process child it starts, say) are still served, by
//! whichever thread drives the reactor (the root's, or async-io's own thread), which then wakes
//! the actor like any other waker. An actor whose parent channel is a socket (the process
//! backend's children), and the root, park in `harrow_ipc::park::block_on` instead: an epoll
//! instance of the thread's own that watches the sockets its unix channels read, so that a
//! message wakes the thread directly.
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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

pub use harrow_ipc::park::spin::{DEFAULT_SPIN, park_spin};

/// The longest one poll of the spinning wrapper keeps re-polling before it hands back to the
/// `block_on` loop underneath.
pub const BUDGET: Duration = Duration::from_millis(2);

/// Runs `fut` to completion on this thread, parking on a futex (not in the reactor) whenever it
/// waits, after spinning up to [`park_spin`] for new work. For threads whose own I/O is in
/// memory; see the module docs.
pub fn block_on_in_process<F: Future>(fut: F) -> F::Output {
    let spin = park_spin();
    if spin.is_zero() {
        return futures_lite::future::block_on(fut);
    }
    futures_lite::future::block_on(SpinThenPark::new(fut, None))
}

/// The inner future is being polled or the thread spins; no wake-up since the last poll began.
const RUNNING: u8 = 0;
/// Woken since the last poll began: poll again.
const WOKEN: u8 = 1;
/// Handed back to the `block_on` loop: a wake-up must go through the outer waker.
const PARKED: u8 = 2;

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
    /// The `block_on` loop's waker (this thread's, and wakers' after a park).
    outer: Mutex<Option<Waker>>,
    /// When a waker last found the thread parked and woke it ([`now_ns`]): for the thread's
    /// [`wake_delay`].
    woke_at: AtomicU64,
    _before: [u8; HOT_AT - std::mem::size_of::<Mutex<Option<Waker>>>() - 8],
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
    /// A flag for a wait on this thread.
    fn new() -> Flag {
        Flag {
            outer: Mutex::new(None),
            woke_at: AtomicU64::new(0),
            _before: [0; HOT_AT - std::mem::size_of::<Mutex<Option<Waker>>>() - 8],
            state: AtomicU8::new(RUNNING),
            source: WakeSource::for_this_thread(),
            _after: [0; FLAG_SIZE - HOT_AT - 8 - std::mem::size_of::<WakeSource>()],
        }
    }

    fn outer(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.outer.lock().unwrap_or_else(|p| p.into_inner())
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
            let outer = self.outer().clone();
            if let Some(w) = outer {
                w.wake();
            }
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

impl<F: Future> Future for SpinThenPark<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            let mut outer = this.flag.outer();
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        let began = Instant::now();
        if let Some(parked_at) = this.parked_at.take() {
            let woke = this.flag.woke_at.load(Ordering::Acquire);
            this.gate.slept(wake_delay(parked_at, woke, began));
            if let WokenBy::Cpu(waker) = this.flag.source.take() {
                this.shared_cpu.after_slept(waker, crowded());
            }
        }
        loop {
            this.flag.state.store(RUNNING, Ordering::Release);
            if let Poll::Ready(v) = this
                .fut
                .as_mut()
                .poll(&mut Context::from_waker(&this.waker))
            {
                return Poll::Ready(v);
            }
            if began.elapsed() >= BUDGET {
                // Busy for a while: hand back to the `block_on` loop, then come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let spin = this.gate.spin();
            if !spin.is_zero() {
                match spin_watch_starting(spin, this.shared_cpu.spin_start(), || {
                    this.flag.state.load(Ordering::Acquire) != RUNNING
                }) {
                    Spun::Caught { after_yield } => {
                        // A wake-up this thread gave itself (a task it ran woke another) was
                        // there before the spin began: it says nothing of whether spins pay.
                        if let WokenBy::Cpu(waker) = this.flag.source.take() {
                            this.gate.hit();
                            this.shared_cpu.after_caught(after_yield, waker);
                        }
                        continue;
                    }
                    Spun::Missed => this.gate.miss(),
                }
            }
            // Before the flag says parked: a waker that finds it parked records a later moment.
            let parking = Instant::now();
            match this.flag.state.compare_exchange(
                RUNNING,
                PARKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    this.parked_at = Some(parking);
                    return Poll::Pending;
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

    /// `block_on_in_process` spinning `spin` before every park, whatever the load says.
    fn block_on<F: Future>(spin: Duration, fut: F) -> F::Output {
        futures_lite::future::block_on(SpinThenPark::new(fut, Some(SpinGate::always(spin))))
    }

    #[test]
    fn a_wake_from_another_thread_while_spinning_or_parked_is_seen() {
        // Replies arriving at once (caught while spinning) and after a pause (after parking).
        for pause in [Duration::ZERO, Duration::from_millis(5)] {
            let spin = Duration::from_micros(50);
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
        const { assert!(HOT_AT % 16 == 0) };
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
        futures_lite::future::block_on(&mut parker);
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
        futures_lite::future::block_on(&mut parker);
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
