//! A future for tests that counts its polls and ends when told ([`Probe::new`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The future's half: counts its polls, keeps its last waker, ends once told.
pub(crate) struct Counted {
    polls: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Future for Counted {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Counted last: whoever sees the count has seen the look at `done` that poll made (a
        // poll still under way when `finish` is called cannot end on it unseen).
        let done = self.done.load(Ordering::SeqCst);
        if !done {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
        }
        self.polls.fetch_add(1, Ordering::SeqCst);
        if done { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// The test's half of a [`Counted`] future (its fields shared with it, for tests that look at
/// them directly).
pub(crate) struct Probe {
    pub(crate) polls: Arc<AtomicUsize>,
    pub(crate) done: Arc<AtomicBool>,
    pub(crate) waker: Arc<Mutex<Option<Waker>>>,
}

impl Probe {
    pub(crate) fn new() -> (Probe, Counted) {
        let p = Probe {
            polls: Arc::default(),
            done: Arc::default(),
            waker: Arc::default(),
        };
        let c = Counted {
            polls: p.polls.clone(),
            done: p.done.clone(),
            waker: p.waker.clone(),
        };
        (p, c)
    }

    pub(crate) fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Wakes the future through the waker of its last pending poll.
    pub(crate) fn wake(&self) {
        let w = self
            .waker
            .lock()
            .unwrap()
            .take()
            .expect("the future was polled");
        w.wake();
    }

    /// Tells the future to end, and wakes it.
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.wake();
    }
}
