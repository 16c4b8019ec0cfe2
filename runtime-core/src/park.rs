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
//! given back), at most once per `HOP_EVERY`; see `harrow_ipc::park::spin::SharedCpu`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use harrow_ipc::park::spin::{SharedCpu, SpinGate, Spun, spin_watch, this_cpu};
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
    futures_lite::future::block_on(SpinThenPark::new(fut, SpinGate::new()))
}

/// The inner future is being polled or the thread spins; no wake-up since the last poll began.
const RUNNING: u8 = 0;
/// Woken since the last poll began: poll again.
const WOKEN: u8 = 1;
/// Handed back to the `block_on` loop: a wake-up must go through the outer waker.
const PARKED: u8 = 2;

/// The inner future's waker: flips the flag, and only wakes the parked thread when it parked.
struct Flag {
    state: AtomicU8,
    /// The CPU the last wake-up came from ([`NO_CPU`]: unknown).
    waker_cpu: AtomicUsize,
    outer: Mutex<Option<Waker>>,
}

impl Flag {
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
        self.waker_cpu
            .store(this_cpu().unwrap_or(NO_CPU), Ordering::Relaxed);
        if self.state.swap(WOKEN, Ordering::AcqRel) == PARKED {
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
    /// Whether this thread and its wakers keep sharing a CPU.
    shared_cpu: SharedCpu,
}

impl<F: Future> SpinThenPark<F> {
    fn new(fut: F, gate: SpinGate) -> Self {
        let flag = Arc::new(Flag {
            state: AtomicU8::new(RUNNING),
            waker_cpu: AtomicUsize::new(NO_CPU),
            outer: Mutex::new(None),
        });
        SpinThenPark {
            fut: Box::pin(fut),
            waker: Waker::from(flag.clone()),
            flag,
            gate,
            shared_cpu: SharedCpu::new(),
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
                match spin_watch(spin, || this.flag.state.load(Ordering::Acquire) != RUNNING) {
                    Spun::Caught { after_yield } => {
                        this.gate.hit();
                        let waker = this.flag.waker_cpu.swap(NO_CPU, Ordering::Relaxed);
                        this.shared_cpu
                            .after_caught(after_yield, (waker != NO_CPU).then_some(waker));
                        continue;
                    }
                    Spun::Missed => this.gate.miss(),
                }
            }
            match this.flag.state.compare_exchange(
                RUNNING,
                PARKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Poll::Pending,
                // Woken between the last look and the hand-over: poll again.
                Err(_) => continue,
            }
        }
    }
}

/// No CPU recorded.
const NO_CPU: usize = usize::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    /// `block_on_in_process` spinning `spin` before every park, whatever the load says.
    fn block_on<F: Future>(spin: Duration, fut: F) -> F::Output {
        futures_lite::future::block_on(SpinThenPark::new(fut, SpinGate::always(spin)))
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
    fn a_future_that_keeps_waking_itself_still_lets_timers_fire() {
        // This thread never drives the reactor: the timer fires through whichever thread does.
        assert!(block_on(
            Duration::from_micros(50),
            timer_beats_a_busy_loop()
        ));
        assert!(block_on_in_process(timer_beats_a_busy_loop()));
    }
}
