//! The waiting primitives every harrow crate uses: waiting for a condition signalled through an
//! [`Event`] ([`wait_until`], [`wait_until_some`]; a [`Watched`] event where notifications far
//! outnumber waits), and bounding a future in time ([`deadline`]).
//!
//! They live here, in the lowest crate, so that the link engine, the runtime and the backends
//! share one implementation; `harrow-runtime-core` re-exports the deadline as `move_on_after`.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use event_listener::Event;
//! use harrow_ipc::wait::{deadline, wait_until};
//! # futures_lite::future::block_on(async {
//! let flag = AtomicBool::new(false);
//! let event = Event::new();
//! // Nobody sets the flag: the bounded wait gives up.
//! let waited = deadline(Duration::from_millis(5), wait_until(&event, || flag.load(Ordering::SeqCst)));
//! assert!(waited.await.is_none());
//! flag.store(true, Ordering::SeqCst);
//! event.notify(usize::MAX);
//! wait_until(&event, || flag.load(Ordering::SeqCst)).await;
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::task::{Context, Poll};
use std::time::Duration;

/// `listener!(event => name)`: a listener of `event` kept in the waiting future itself rather
/// than in an allocation of its own (event-listener's stack listener; `name` is then awaited).
pub use event_listener::listener;
pub use event_listener::{Event, EventListener};

/// Resolves once `cond` returns true.
///
/// Whoever makes `cond` true must notify `event` afterwards (all listeners, or as many as may
/// wait). `cond` is checked before and after registering a listener, so a notification between
/// the check and the registration is never lost.
///
/// Unbounded by itself: wrap it in a [`deadline`] where the condition may never come.
pub async fn wait_until(event: &Event, mut cond: impl FnMut() -> bool) {
    wait_until_some(event, || cond().then_some(())).await
}

/// Resolves with the first `Some` that `probe` returns; [`wait_until`] for a condition that
/// carries a value.
pub async fn wait_until_some<T>(event: &Event, mut probe: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(t) = probe() {
            return t;
        }
        listener!(event => listener);
        if let Some(t) = probe() {
            return t;
        }
        listener.await;
    }
}

/// An [`Event`] notified often and waited on rarely: it counts its waiters, so that a
/// notification with nobody waiting is a fence and one atomic load. (An `event-listener`
/// notification takes the event's lock every time, listeners or not.) Waiters wait through
/// [`Watched::wait_until`] only; [`Watched::notify_all`] wakes every one of them.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use harrow_ipc::wait::Watched;
/// # futures_lite::future::block_on(async {
/// let (flag, watched) = (AtomicBool::new(false), Watched::new());
/// watched.notify_all(); // nobody waits: no lock taken
/// let waiter = watched.wait_until(|| flag.load(Ordering::SeqCst));
/// flag.store(true, Ordering::SeqCst);
/// watched.notify_all();
/// waiter.await;
/// # });
/// ```
#[derive(Debug, Default)]
pub struct Watched {
    event: Event,
    waiters: AtomicUsize,
}

impl Watched {
    /// A new event, with nobody waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every waiter, once the caller has made the change they may wait for.
    pub fn notify_all(&self) {
        // Either this load sees a waiter's count, or that waiter's look at its condition, made
        // after it counted itself, sees the change made before this fence.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.event.notify(usize::MAX);
        }
    }

    /// Resolves once `cond` returns true; whoever makes it true calls
    /// [`notify_all`](Self::notify_all) afterwards. Unbounded by itself, as [`wait_until`].
    pub async fn wait_until(&self, cond: impl FnMut() -> bool) {
        /// Uncounts the waiter when the wait ends or is dropped.
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.waiters);
        // Pairs with the fence in `notify_all`.
        fence(Ordering::SeqCst);
        wait_until(&self.event, cond).await
    }
}

/// The moment `bound` from now; for a bound too long to represent (a user's `Duration::MAX`), a
/// moment a century away, which no wait reaches. So a deadline made from any duration never
/// overflows.
pub fn instant_after(bound: Duration) -> std::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = std::time::Instant::now();
    now.checked_add(bound)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Runs `fut` for at most `bound`: `Some(output)` if it finished first, `None` if the bound passed
/// first (the future is then dropped, which cancels it).
///
/// The bound counts from the first poll. The returned [`Deadline`] holds `fut` and a timer side
/// by side, so a deadline adds a constant to the size of the future it wraps (nesting deadlines
/// adds one constant per level, never a multiple).
pub fn deadline<F: Future>(bound: Duration, fut: F) -> Deadline<F> {
    Deadline {
        fut,
        bound,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`deadline`]: `Some(output)` if the wrapped future finished first, `None` if
    /// the bound passed first.
    ///
    /// The wrapped future is polled before the timer, so a future that is ready when the bound
    /// passes still wins. It is dropped with this future (at the end of the `.await`).
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Deadline<F> {
        #[pin]
        fut: F,
        bound: Duration,
        // Started at the first poll.
        timer: Option<async_io::Timer>,
    }
}

impl<F> Deadline<F> {
    /// The bound this deadline was created with.
    pub fn bound(&self) -> Duration {
        self.bound
    }
}

impl<F> std::fmt::Debug for Deadline<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("bound", &self.bound)
            .field("started", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let bound = *this.bound;
        let timer = this
            .timer
            .get_or_insert_with(|| async_io::Timer::after(bound));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// For tests of waits: a waker that counts its wake-ups (here, so that the tests of every crate
/// that builds on these waits share it).
#[doc(hidden)]
pub mod testing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// How often the waker of [`counting_waker`] was woken.
    #[derive(Debug, Default)]
    pub struct WakeCount(AtomicUsize);

    impl WakeCount {
        /// The wake-ups so far.
        pub fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker, and the count of its wake-ups.
    pub fn counting_waker() -> (Arc<WakeCount>, Waker) {
        let count = Arc::new(WakeCount::default());
        (count.clone(), Waker::from(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn wait_until_wakes_on_notify_from_another_thread() {
        let state = Arc::new((AtomicBool::new(false), Event::new()));
        let s2 = state.clone();
        let h = std::thread::spawn(move || {
            block_on(deadline(
                Duration::from_secs(10),
                wait_until(&s2.1, || s2.0.load(Ordering::SeqCst)),
            ))
        });
        state.0.store(true, Ordering::SeqCst);
        state.1.notify(usize::MAX);
        assert_eq!(h.join().unwrap(), Some(()));
    }

    /// A notifier and a waiter race, 20,000 times: each change is made while the waiter may be
    /// counting itself, looking at its condition or listening. A notification lost to that race
    /// would leave a wait to its bound.
    #[test]
    fn a_watched_event_loses_no_notification_to_a_waiter_counting_itself() {
        const ROUNDS: u64 = 20_000;
        let state = Arc::new((std::sync::atomic::AtomicU64::new(0), Watched::new()));
        let s2 = state.clone();
        let waiter = std::thread::spawn(move || {
            for round in 1..=ROUNDS {
                let done = block_on(deadline(
                    Duration::from_secs(10),
                    s2.1.wait_until(|| s2.0.load(Ordering::Relaxed) >= round),
                ));
                if done.is_none() {
                    return Err(round);
                }
            }
            Ok(())
        });
        for _ in 0..ROUNDS {
            state.0.fetch_add(1, Ordering::Relaxed);
            state.1.notify_all();
            // Now and then, let the waiter be parked before the next change.
            if state.0.load(Ordering::Relaxed).is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        assert_eq!(
            waiter.join().unwrap(),
            Ok(()),
            "a wait missed its notification"
        );
        // Every wait ended, and uncounted itself.
        assert_eq!(state.1.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_dropped_wait_on_a_watched_event_uncounts_itself() {
        let watched = Watched::new();
        let waited = block_on(deadline(
            Duration::from_millis(5),
            watched.wait_until(|| false),
        ));
        assert!(waited.is_none());
        assert_eq!(watched.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn wait_until_some_returns_the_value() {
        let n = AtomicUsize::new(0);
        let event = Event::new();
        let got = block_on(wait_until_some(&event, || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            (k >= 1).then_some(k * 10)
        }));
        // The first probe failed, the second (after registering the listener) succeeded.
        assert_eq!(got, 10);
    }

    #[test]
    fn deadline_gives_up_and_a_ready_future_wins() {
        let r = block_on(deadline(
            Duration::from_millis(5),
            std::future::pending::<()>(),
        ));
        assert_eq!(r, None);
        assert_eq!(block_on(deadline(Duration::ZERO, async { 5 })), Some(5));
    }

    #[test]
    fn deadline_adds_a_constant_to_the_size() {
        async fn big() -> usize {
            let buf = [7u8; 4096];
            futures_lite::future::yield_now().await;
            buf.iter().map(|b| *b as usize).sum()
        }
        const PER_DEADLINE: usize = 128;
        let base = std::mem::size_of_val(&big());
        let d = Duration::from_secs(30);
        let twice = deadline(d, deadline(d, big()));
        assert!(std::mem::size_of_val(&twice) <= base + 2 * PER_DEADLINE);
        assert_eq!(block_on(twice), Some(Some(7 * 4096)));
    }
}
