//! Cancel scopes: deadlines ([`move_on_after`], [`fail_after`]) and the [`CancelToken`] the
//! runtime signals with. (The shield, which needs the current actor, is in `actor.rs`: this
//! module depends on nothing else in the crate.)
//!
//! In Rust, cancelling a task is dropping its future. A deadline drops the future when it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use harrow_ipc::wait::{Event, wait_until};

/// A one-way cancellation signal. Cheap to clone; all clones see the same state.
#[derive(Clone, Default, Debug)]
pub struct CancelToken {
    inner: Arc<CancelFlag>,
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: every current and future waiter wakes. Idempotent.
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Resolves once the token is cancelled.
    pub fn cancelled(&self) -> Cancelled<'_> {
        self.inner.cancelled()
    }

    /// A view of this token that can wait for its cancel but not cancel it.
    pub fn watch(&self) -> CancelWatch {
        CancelWatch {
            inner: self.inner.clone(),
        }
    }
}

/// A view of a [`CancelToken`] for those who may only look: it sees the token's cancel and
/// waits for it, but has no `cancel` of its own. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CancelWatch {
    inner: Arc<CancelFlag>,
}

impl CancelWatch {
    /// Whether the token was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Resolves once the token is cancelled.
    pub fn cancelled(&self) -> Cancelled<'_> {
        self.inner.cancelled()
    }
}

/// The signal a [`CancelToken`] shares, for an owner that does not share it: held in place
/// (in a struct that is itself shared already) rather than in an allocation of its own.
#[derive(Default)]
pub struct CancelFlag {
    cancelled: AtomicBool,
    event: Event,
}

impl std::fmt::Debug for CancelFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelFlag")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelFlag {
    /// A flag not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag: every current and future waiter wakes. Idempotent.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::SeqCst) {
            self.event.notify(usize::MAX);
        }
    }

    /// Whether [`cancel`](CancelFlag::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the flag is set.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            flag: self,
            listener: None,
            registered: None,
        }
    }
}

/// The future of [`CancelToken::cancelled`] and [`CancelFlag::cancelled`].
///
/// Most waits for a cancel never see one: the future is polled again each time its task wakes
/// for something else (a body raced against its cancel is polled on every step of the body). A
/// poll that finds the token not cancelled and the listener already registered with this very
/// task's waker returns at once, without the listener's lock: the token's event is notified only
/// after the flag is set, so a listener that was notified is never missed by the flag's check.
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    flag: &'a CancelFlag,
    listener: Option<harrow_ipc::wait::EventListener>,
    /// The waker the listener holds (cloned when it was registered).
    registered: Option<std::task::Waker>,
}

impl std::fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancelled")
            .field("cancelled", &self.flag.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.flag.is_cancelled() {
                return Poll::Ready(());
            }
            let Some(listener) = this.listener.as_mut() else {
                // Listen, then check the flag again: a cancel in between is seen either way.
                this.listener = Some(this.flag.event.listen());
                continue;
            };
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            match Pin::new(listener).poll(cx) {
                Poll::Ready(()) => {
                    this.listener = None;
                    this.registered = None;
                }
                Poll::Pending => {
                    this.registered = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Counts outstanding pieces of work and lets others wait for the count to reach zero.
#[derive(Clone, Default)]
pub(crate) struct WaitGroup {
    inner: Arc<WaitGroupInner>,
}

#[derive(Default)]
struct WaitGroupInner {
    count: AtomicUsize,
    event: Event,
}

/// Decrements its [`WaitGroup`] when dropped.
pub(crate) struct WaitGroupGuard {
    inner: Arc<WaitGroupInner>,
}

impl Drop for WaitGroupGuard {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.event.notify(usize::MAX);
        }
    }
}

impl WaitGroup {
    pub(crate) fn add(&self) -> WaitGroupGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        WaitGroupGuard {
            inner: self.inner.clone(),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Waits until the count is zero.
    pub(crate) async fn wait(&self) {
        wait_until(&self.inner.event, || self.count() == 0).await
    }

    /// Waits until the count is zero or `bound` passes; true if it reached zero.
    pub(crate) async fn wait_for(&self, bound: Duration) -> bool {
        move_on_after(bound, self.wait()).await.is_some()
    }
}

/// Runs `fut`, cancelling (dropping) it after `bound`. Returns `None` if it was cancelled.
///
/// The deadline counts from the first poll. The returned [`MoveOnAfter`] holds `fut` and a timer
/// side by side, so a deadline adds a constant to the size of the future it wraps (nesting
/// deadlines adds one constant per level, never a multiple). It is the one deadline of harrow,
/// [`harrow_ipc::wait::deadline`], under its structured-concurrency name.
///
/// ```
/// use std::time::Duration;
/// # futures_lite::future::block_on(async {
/// let r = harrow_runtime_core::move_on_after(Duration::from_millis(10), std::future::pending::<()>()).await;
/// assert!(r.is_none());
/// # });
/// ```
pub fn move_on_after<F: Future>(bound: Duration, fut: F) -> MoveOnAfter<F> {
    harrow_ipc::wait::deadline(bound, fut)
}

/// The future of [`move_on_after`]: `Some(output)` if the wrapped future finished first, `None`
/// if the deadline passed first.
///
/// The wrapped future is polled before the timer, so a future that is ready when the deadline
/// passes still wins. It is dropped with this future (at the end of the `.await`).
pub type MoveOnAfter<F> = harrow_ipc::wait::Deadline<F>;

/// The deadline of a [`fail_after`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline of {0:?} passed")]
pub struct DeadlineExceeded(pub Duration);

/// Runs `fut`, failing with [`DeadlineExceeded`] (and dropping it) after `bound`.
///
/// Like [`move_on_after`], it adds a constant to the size of the future it wraps.
pub fn fail_after<F: Future>(bound: Duration, fut: F) -> FailAfter<F> {
    FailAfter {
        inner: move_on_after(bound, fut),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`fail_after`]: the wrapped future's output, or [`DeadlineExceeded`].
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct FailAfter<F> {
        #[pin]
        inner: MoveOnAfter<F>,
    }
}

impl<F> std::fmt::Debug for FailAfter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FailAfter").field(&self.inner).finish()
    }
}

impl<F: Future> Future for FailAfter<F> {
    type Output = Result<F::Output, DeadlineExceeded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        let bound = inner.bound();
        inner.poll(cx).map(|out| out.ok_or(DeadlineExceeded(bound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use harrow_ipc::wait::testing::counting_waker;

    #[test]
    fn token_wakes_waiters() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let h = std::thread::spawn(move || block_on(t2.cancelled()));
        t.cancel();
        h.join().unwrap();
        assert!(t.is_cancelled());
    }

    #[test]
    fn a_watch_sees_its_tokens_cancel() {
        let t = CancelToken::new();
        let w = t.watch();
        let w2 = w.clone();
        assert!(!w.is_cancelled());
        let h = std::thread::spawn(move || block_on(w2.cancelled()));
        t.cancel();
        h.join().unwrap();
        assert!(w.is_cancelled());
        // A watch made after the cancel sees it too.
        assert!(t.watch().is_cancelled());
    }

    #[test]
    fn a_wait_repolled_by_its_task_is_woken_by_the_cancel() {
        let t = CancelToken::new();
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut wait = t.cancelled();
        for _ in 0..3 {
            // The first poll registers; the others find it registered with this waker.
            assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
        }
        assert_eq!(count.get(), 0);
        t.cancel();
        assert_eq!(count.get(), 1, "the cancel woke the task");
        assert!(Pin::new(&mut wait).poll(&mut cx).is_ready());
    }

    #[test]
    fn a_wait_polled_by_another_task_wakes_that_one() {
        let t = CancelToken::new();
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let mut wait = t.cancelled();
        assert!(
            Pin::new(&mut wait)
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // Moved to another task: the listener must hold the new waker, not the first.
        assert!(
            Pin::new(&mut wait)
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        t.cancel();
        assert_eq!(second.get(), 1, "the current task is woken");
        assert_eq!(first.get(), 0);
        assert!(
            Pin::new(&mut wait)
                .poll(&mut Context::from_waker(&second_waker))
                .is_ready()
        );
    }

    #[test]
    fn a_token_cancelled_before_the_wait_is_ready_at_once() {
        let t = CancelToken::new();
        t.cancel();
        let (count, waker) = counting_waker();
        assert!(
            Pin::new(&mut t.cancelled())
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        );
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn fail_after_times_out() {
        let r = block_on(fail_after(
            Duration::from_millis(5),
            std::future::pending::<()>(),
        ));
        assert_eq!(r, Err(DeadlineExceeded(Duration::from_millis(5))));
        let r = block_on(fail_after(Duration::from_secs(5), async { 3 }));
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn wait_group_counts() {
        let wg = WaitGroup::default();
        let g = wg.add();
        assert!(!block_on(wg.wait_for(Duration::from_millis(5))));
        drop(g);
        assert!(block_on(wg.wait_for(Duration::from_secs(5))));
    }
}
