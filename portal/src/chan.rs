//! Per-call state shared between the link's reader task and the handles of one call
//! ([`Context`](crate::Context), [`CalleeContext`](crate::CalleeContext), [`MsgStream`](crate::MsgStream)).
//!
//! Flow control (per stream direction): the sender starts with **zero** credit. The receiver
//! grants the whole window (`LinkConfig::credit_window`) with one `Credit` when it opens its side
//! of the stream, then re-grants what it consumed in batches of `window / 4` (at least 1; smaller
//! batches keep a fast producer from stalling on the credit round trip). So the
//! items sent but not yet consumed never exceed the window, and the receiving queue is bounded by
//! it. An item that arrives without credit is a protocol violation for that call only.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use atomic_waker::AtomicWaker;

use harrow_ipc::wait::{Event, wait_until_some};
use harrow_ipc::{ActorId, CallKind, Cid, Value};

use crate::Error;

/// Which end of the call this state belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// We called: `Context` / `run`.
    Caller,
    /// We serve the call: `CalleeContext`.
    Callee,
}

#[derive(Debug)]
pub(crate) struct Chan {
    pub(crate) cid: Cid,
    pub(crate) side: Side,
    pub(crate) kind: CallKind,
    /// The function, for messages.
    pub(crate) func: String,
    st: Mutex<ChanState>,
    pub(crate) ev: Event,
    /// The waker of the one task that owns the call's receiving end: a unary call's
    /// [`run`](crate::Portal::run), or the stream's receiver. It waits here
    /// ([`wait_owner`](Chan::wait_owner)) instead of on `ev`: no listener to allocate, queue and
    /// remove per wait, which every stream item and every call's answer paid.
    owner: AtomicWaker,
}

#[derive(Debug, Default)]
pub(crate) struct ChanState {
    // --- caller-side progress ---
    /// The `Started` value, until `open_context` takes it.
    pub(crate) started: Option<Value>,
    /// `Started` arrived (even if taken).
    pub(crate) started_seen: bool,
    /// Terminal outcome of the call. Caller: `Return` / `Error` / closed. Callee: the call was
    /// cancelled or the link closed (the function's future is being dropped).
    pub(crate) outcome: Option<Result<Value, Error>>,
    /// Caller: a local cancel is in progress (`Context::cancel` or drop).
    pub(crate) cancel_sent: bool,

    // --- callee-side progress ---
    /// Callee: `Started` was sent.
    pub(crate) started_sent: bool,
    /// Callee: the terminal message (`Return`/`Error`) for this cid is queued; nothing more may be
    /// sent for it.
    pub(crate) wire_done: bool,
    /// Callee: who cancelled the call.
    pub(crate) cancelled_by: Option<ActorId>,
    /// Callee: the function observes its own cancellation (it asked for
    /// [`CalleeContext::cancelled`](crate::CalleeContext::cancelled) or opted in): on a cancel it
    /// is polled until it ends, up to `cleanup_until`, instead of being dropped at once.
    pub(crate) cancel_aware: bool,
    /// Callee: when a cancel-aware call's cleanup time is up once cancelled (set at the cancel,
    /// or before it by `extend_cleanup`).
    pub(crate) cleanup_until: Option<std::time::Instant>,
    /// Callee: how long the call said it will need to clean up after a cancel (applied at the
    /// cancel, so nothing depends on the call being polled in time).
    pub(crate) cleanup_reserved: std::time::Duration,

    /// Caller: the terminal outcome came from the callee (`Return`/`Error`), not from a local
    /// decision (a cancel that timed out, a closed link, a dropped context).
    pub(crate) answered: bool,

    // --- receiving direction of the stream ---
    pub(crate) rx_open: bool,
    /// The credit window this side granted for its receiving direction.
    pub(crate) window: u32,
    pub(crate) items: VecDeque<Value>,
    pub(crate) peer_stopped: bool,
    /// Credit granted to the peer and not yet used by it.
    pub(crate) allowance: u32,
    /// Items consumed since the last grant.
    pub(crate) consumed: u32,
    /// High-water mark of `items.len()` (introspection for tests).
    pub(crate) max_buffered: usize,

    // --- sending direction of the stream ---
    pub(crate) tx_open: bool,
    pub(crate) credit: u32,
    pub(crate) local_stopped: bool,
}

impl Chan {
    pub(crate) fn new(cid: Cid, side: Side, kind: CallKind, func: String) -> Self {
        Chan {
            cid,
            side,
            kind,
            func,
            st: Mutex::new(ChanState::default()),
            ev: Event::new(),
            owner: AtomicWaker::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter: the listeners of `ev` and the owner. Called after the state changed
    /// (and its lock was released).
    pub(crate) fn notify(&self) {
        self.ev.notify(usize::MAX);
        self.owner.wake();
    }

    /// [`wait`](Chan::wait) for the one task that owns the call's receiving end (at most one
    /// such wait at a time per chan: a unary call's `run`, or the stream receiver's `recv`,
    /// which takes `&mut self`). The waker is registered under the state's lock, so a change
    /// made after the probe (under that lock, then [`notify`](Chan::notify)) always wakes it.
    pub(crate) async fn wait_owner<R>(&self, mut f: impl FnMut(&mut ChanState) -> Option<R>) -> R {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if let Some(r) = f(&mut st) {
                return Poll::Ready(r);
            }
            self.owner.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Waits until `f` returns `Some`. `f` runs under the lock and must be side-effect free when
    /// it returns `None`.
    pub(crate) async fn wait<R>(&self, mut f: impl FnMut(&mut ChanState) -> Option<R>) -> R {
        wait_until_some(&self.ev, || f(&mut self.lock())).await
    }

    /// Sets the terminal outcome unless one is already there; wakes every waiter.
    pub(crate) fn finish(&self, outcome: Result<Value, Error>) -> bool {
        let set = {
            let mut st = self.lock();
            if st.outcome.is_none() {
                st.outcome = Some(outcome);
                true
            } else {
                false
            }
        };
        self.notify();
        set
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().outcome.is_some()
    }
}
