//! Per-call state shared between the link's reader and the handles of one call
//! ([`Context`](crate::Context), [`CalleeContext`](crate::CalleeContext), [`MsgStream`](crate::MsgStream)).
//!
//! Flow control (per stream direction): the sender starts with **zero** credit. The receiver
//! grants the whole window (`LinkConfig::credit_window`) with one `Credit` when it opens its side
//! of the stream, then re-grants what it consumed in batches of `window / 4` (at least 1; smaller
//! batches keep a fast producer from stalling on the credit round trip). A re-grant also moves
//! the window of a stream opened with the link's defaults toward the size its items allow
//! ([`WindowRule`]): it adds the growth, or withholds the shrinking. So the items sent but not
//! yet consumed never exceed the current window, and the receiving queue is bounded by it. An
//! item that arrives without credit is a protocol violation for that call only.
//!
//! Waiting: whoever changes the state does it under the chan's lock, then calls
//! [`Chan::notify`]. The waits that happen per message wait in a **slot** of their own (one
//! waker, no allocation): the call's owner (a unary call's `run`, the stream receiver), one
//! stream sender waiting for credit, and a served call's cleanup timer (woken by cancels only).
//! Every other wait listens on the chan's event, and the event is notified only while it has
//! listeners, because notifying an `event_listener::Event` always takes its lock.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use atomic_waker::AtomicWaker;

use harrow_ipc::wait::{Event, EventListener};
use harrow_ipc::{ActorId, CallKind, Cid, FnPath, Value};

use crate::{Error, LinkConfig};

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
    pub(crate) func: FnPath,
    st: Mutex<ChanState>,
    /// Waiters that are not in a slot (see [`wait`](Chan::wait)). Listen through
    /// [`listen_counted`](Chan::listen_counted) only.
    pub(crate) ev: Event,
    /// How many listeners `ev` has (counted by their owners), so `notify` can skip it.
    ev_listeners: AtomicUsize,
    /// The waker of the one task that owns the call's receiving end: a unary call's
    /// [`run`](crate::Portal::run), or the stream's receiver. It waits here
    /// ([`wait_owner`](Chan::wait_owner)) instead of on `ev`: no listener to allocate, queue and
    /// remove per wait, which every stream item and every call's answer paid.
    owner: Slot,
    /// The waker of a stream sender waiting for credit ([`wait_sender`](Chan::wait_sender)):
    /// the first one to wait takes it (`ChanState::sender_slot_taken`), any other sender waiting
    /// at the same time (a cloned `StreamTx`) waits on `ev`.
    sender: Slot,
    /// The waker of a served call's task waiting for its cancel's cleanup time
    /// ([`wait_cancel`](Chan::wait_cancel)): woken by [`notify_cancel`](Chan::notify_cancel)
    /// only, so that the task's stream traffic does not wake (and re-arm) that wait.
    cancel: Slot,
    /// Callee: the call's future has nothing left to do once
    /// [`answer_now`](crate::CalleeContext::answer_now) answered it
    /// ([`CalleeContext::ends_with_answer_now`](crate::CalleeContext::ends_with_answer_now)).
    /// Set by the resolver and read by the link's reader, on the same thread, before the
    /// future's first poll.
    pub(crate) ends_with_answer_now: AtomicBool,
    /// Callee: its function dropped its stream's receiving end while it was polled, and the
    /// `StopReading` that tells the caller waits for that poll's end: if the poll ends the
    /// call, its answer goes instead (a function failing mid-stream drops its stream on the way
    /// out, and a `StopReading` ahead of its `Error` would fail the caller's sends as "not
    /// read" instead of with that failure).
    pub(crate) stop_reading_due: AtomicBool,
}

/// One waiting task's waker, registered under the chan's lock. `waiting` spares
/// [`notify`](Chan::notify) the waker's locked instructions when nobody waits (a stream's
/// receiver is usually busy when its items arrive): it is set under the chan's lock after the
/// registration, and a notifier changes the state under that lock before it looks, so it sees
/// the flag of every wait whose probe missed its change.
#[derive(Debug, Default)]
struct Slot {
    waker: AtomicWaker,
    waiting: AtomicBool,
}

impl Slot {
    /// Under the chan's lock.
    fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// Under the chan's lock: the wait is over.
    fn done(&self) {
        if self.waiting.load(Ordering::Relaxed) {
            self.waiting.store(false, Ordering::Relaxed);
        }
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// The wakers of the tasks waiting for a served call's cancel, under the chan's lock: the first
/// in place (a call usually has one such waiter), more in a list; each known by the id its wait
/// was given, so that a wait that ends or is dropped takes its waker out.
#[derive(Default)]
pub(crate) struct CancelWaiters {
    first: Option<(u64, std::task::Waker)>,
    more: Vec<(u64, std::task::Waker)>,
    next_id: u64,
}

impl std::fmt::Debug for CancelWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelWaiters")
            .field(
                "waiting",
                &(usize::from(self.first.is_some()) + self.more.len()),
            )
            .finish()
    }
}

impl CancelWaiters {
    /// Registers `waker` for the wait `id` (a new id when `None`), replacing the one it had.
    fn register(&mut self, id: &mut Option<u64>, waker: &std::task::Waker) {
        if let Some(id) = *id {
            let slot = match &mut self.first {
                Some((i, w)) if *i == id => Some(w),
                _ => self.more.iter_mut().find(|(i, _)| *i == id).map(|(_, w)| w),
            };
            if let Some(w) = slot {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
                return;
            }
        }
        // New, or taken out by a notification since (then registered again).
        let new = id.unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id
        });
        *id = Some(new);
        if self.first.is_none() {
            self.first = Some((new, waker.clone()));
        } else {
            self.more.push((new, waker.clone()));
        }
    }

    /// Takes the waker of the wait `id` out, if it is still there.
    fn remove(&mut self, id: u64) {
        if self.first.as_ref().is_some_and(|(i, _)| *i == id) {
            self.first = None;
        } else {
            self.more.retain(|(i, _)| *i != id);
        }
    }

    /// Takes every waker out, to be woken once the lock is released.
    fn take(&mut self) -> (Option<std::task::Waker>, Vec<std::task::Waker>) {
        (
            self.first.take().map(|(_, w)| w),
            self.more.drain(..).map(|(_, w)| w).collect(),
        )
    }
}

/// How a stream's receiving window is sized (see [`LinkConfig::credit_window`]).
///
/// The window starts at `base`. At each re-grant it moves to as many of the largest item
/// received recently ([`RecentLargest`]) as fit in `bytes`, between `base` and `max` items: it
/// grows while the items are small, shrinks back (never below `base`, by withholding re-grants)
/// when a larger one comes, and grows again once a window's worth or two of smaller items
/// followed it.
///
/// [`LinkConfig::credit_window`]: crate::LinkConfig::credit_window
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowRule {
    base: u32,
    max: u32,
    bytes: usize,
    /// Beyond this item size the window is `base` whatever the exact size, so measuring an
    /// item stops there; 0 for a window that does not move (nothing is measured).
    size_cap: usize,
}

impl WindowRule {
    /// A window of `base` items (at least 1) that grows toward `max` while `bytes` hold as many
    /// items as large as the largest received recently.
    pub(crate) fn new(base: u32, max: u32, bytes: usize) -> WindowRule {
        let base = base.max(1);
        let max = max.max(base);
        let size_cap = if max > base {
            (bytes / base as usize).saturating_add(1)
        } else {
            0
        };
        WindowRule {
            base,
            max,
            bytes,
            size_cap,
        }
    }

    /// A window that does not move.
    pub(crate) fn fixed(window: u32) -> WindowRule {
        WindowRule::new(window, window, 0)
    }

    /// The window for items of at most `largest` bytes each.
    pub(crate) fn target(&self, largest: usize) -> u32 {
        if self.max <= self.base {
            return self.base;
        }
        let fit = self.bytes / largest.max(1);
        u32::try_from(fit)
            .unwrap_or(u32::MAX)
            .clamp(self.base, self.max)
    }
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
    /// Callee: `StartAck` was queued (by the call's first poll, or ahead of an answer sent from
    /// another thread before that poll: see `Shared::answer_served_now`).
    pub(crate) ack_sent: bool,
    /// Callee: the terminal message (`Return`/`Error`) for this cid is queued; nothing more may be
    /// sent for it.
    pub(crate) wire_done: bool,
    /// Callee: who cancelled the call.
    pub(crate) cancelled_by: Option<ActorId>,
    /// Callee: the tasks waiting in [`Chan::wait_cancelled`], woken by
    /// [`notify_cancel`](Chan::notify_cancel).
    pub(crate) cancel_waiters: CancelWaiters,
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
    /// The credit window this side granted for its receiving direction: items sent to us and
    /// not yet consumed never exceed it. Moves within `rule` as the items' sizes are learned.
    pub(crate) window: u32,
    /// How far `window` may move (fixed when the stream was opened with a window of its own).
    rule: WindowRule,
    /// The largest item received recently, as [`Value::approx_size`] estimates it (measured
    /// only as far as the rule's `size_cap`, and only where the window may move).
    largest: RecentLargest,
    pub(crate) items: VecDeque<Value>,
    pub(crate) peer_stopped: bool,
    /// This side reads no more (its receiving side was dropped; `StopReading` sent): items
    /// that still arrive are dropped.
    pub(crate) stopped_reading: bool,
    /// Credit granted to the peer and not yet used by it.
    pub(crate) allowance: u32,
    /// Items consumed since the last grant.
    pub(crate) consumed: u32,
    /// Items consumed in all (reported with every grant).
    consumed_total: u64,
    /// High-water mark of `items.len()` (introspection for tests).
    pub(crate) max_buffered: usize,

    // --- sending direction of the stream ---
    pub(crate) tx_open: bool,
    pub(crate) credit: u32,
    /// The estimated sizes of the items sent and not yet reported consumed, oldest first.
    unacked: VecDeque<u32>,
    /// Their sum.
    unacked_bytes: usize,
    /// The peer's latest report of the items it consumed.
    acked: u64,
    pub(crate) local_stopped: bool,
    /// Caller: its last sending handle was dropped while its context lived and nobody awaited
    /// it; the `Stop` waits a moment for the context's own drop (a cancel), see
    /// `caller::DROPPED_STOP_GRACE`.
    pub(crate) stop_due: bool,
    /// Caller: how many waits on the context's outcome run now (a dropped sending handle's
    /// `Stop` then goes at once: the context is not being dropped).
    pub(crate) awaited: u32,
    /// The peer reads no more (`StopReading`): sends fail.
    pub(crate) peer_stopped_reading: bool,
    /// A sender waits in `Chan::sender`.
    pub(crate) sender_slot_taken: bool,
    /// Items sent at once, without the sending task giving its executor a turn since.
    pub(crate) sent_in_a_row: u32,
}

impl ChanState {
    /// Queues an item that arrived with credit, noting its size where the window may move.
    pub(crate) fn push_item(&mut self, value: Value) {
        if self.rule.size_cap > 0 {
            let size = value.approx_size(self.rule.size_cap);
            self.largest.note(size, self.window);
        }
        self.allowance -= 1;
        if self.stopped_reading {
            return;
        }
        self.items.push_back(value);
        self.max_buffered = self.max_buffered.max(self.items.len());
    }

    /// Opens the receiving direction: the whole starting window is granted (the caller sends
    /// the `Credit` for the returned count).
    pub(crate) fn open_rx(&mut self, rule: WindowRule) -> Grant {
        self.rx_open = true;
        self.rule = rule;
        self.window = rule.base;
        self.allowance = rule.base;
        Grant {
            n: rule.base,
            consumed: 0,
        }
    }

    /// Counts one item taken by the receiver; when a re-grant is due, returns the `Credit` to
    /// send (the items consumed since the last one, plus the window's growth or less its
    /// shrinking, possibly none), already added to `allowance`. `None`: nothing to send now.
    pub(crate) fn consume_one(&mut self) -> Option<Grant> {
        self.consumed += 1;
        self.consumed_total += 1;
        if self.consumed < (self.window / 4).max(1) {
            return None;
        }
        self.regrant()
    }

    /// The receiver found its queue empty: if it consumed [`DRY_REPORT`] items or more since
    /// its last `Credit`, the re-grant is due now, so that a sender waiting on its bytes in
    /// flight ([`may_send`](Self::may_send)) learns they were consumed.
    pub(crate) fn ran_dry(&mut self) -> Option<Grant> {
        if self.consumed < DRY_REPORT {
            return None;
        }
        self.regrant()
    }

    fn regrant(&mut self) -> Option<Grant> {
        if self.peer_stopped || self.outcome.is_some() {
            return None;
        }
        let consumed = std::mem::take(&mut self.consumed);
        let target = self.rule.target(self.largest.get());
        let n = if target >= self.window {
            let grow = target - self.window;
            self.window = target;
            consumed + grow
        } else {
            let shrink = (self.window - target).min(consumed);
            self.window -= shrink;
            consumed - shrink
        };
        self.allowance += n;
        Some(Grant {
            n,
            consumed: self.consumed_total,
        })
    }

    /// Whether the sending direction may send its next item now: it has credit, and fewer than
    /// `credit_window` items (at least [`GUARD_FLOOR`]) or fewer than `credit_window_bytes`
    /// estimated bytes are sent and not yet reported consumed. So one item more than that is
    /// the most the receiver ever holds beyond its consumption, whatever credit it granted.
    pub(crate) fn may_send(&self, config: &LinkConfig) -> bool {
        self.credit > 0
            && (self.unacked.len() < config.credit_window.max(GUARD_FLOOR) as usize
                || self.unacked_bytes < config.credit_window_bytes)
    }

    /// Notes an item sent, of `size` estimated bytes.
    pub(crate) fn note_sent(&mut self, size: usize) {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        self.unacked.push_back(size);
        self.unacked_bytes = self.unacked_bytes.saturating_add(size as usize);
    }

    /// Takes the peer's report that it consumed `total` items in all: the oldest items in
    /// flight are consumed. A report that goes backwards, or past what was sent, changes no
    /// more than what was sent.
    pub(crate) fn note_consumed(&mut self, total: u64) {
        let newly = total.saturating_sub(self.acked);
        self.acked = self.acked.max(total);
        let newly = usize::try_from(newly).unwrap_or(usize::MAX);
        for size in self.unacked.drain(..newly.min(self.unacked.len())) {
            self.unacked_bytes = self.unacked_bytes.saturating_sub(size as usize);
        }
    }

    /// Items sent and not yet reported consumed (introspection for tests).
    pub(crate) fn unacked(&self) -> (usize, usize) {
        (self.unacked.len(), self.unacked_bytes)
    }
}

/// The largest of the items a stream received recently: of the current span of items and of
/// the span before it, a span ending once it holds as many items as the window is. So a large
/// item keeps the window small for one to two windows' worth of items after it, and a stream
/// that once carried a large item does not keep a small window for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecentLargest {
    current: usize,
    previous: usize,
    /// Items noted in the current span.
    count: u32,
}

impl RecentLargest {
    /// Notes an item of `size` estimated bytes; a span of `span` items (at least 1) ends with it.
    pub(crate) fn note(&mut self, size: usize, span: u32) {
        self.current = self.current.max(size);
        self.count += 1;
        if self.count >= span.max(1) {
            self.previous = std::mem::take(&mut self.current);
            self.count = 0;
        }
    }

    /// The largest item of the current span and the one before it.
    pub(crate) fn get(&self) -> usize {
        self.current.max(self.previous)
    }
}

/// A `Credit` to send: `n` more items, and the items consumed in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) n: u32,
    pub(crate) consumed: u64,
}

impl Grant {
    pub(crate) fn msg(self, cid: Cid) -> harrow_ipc::Msg {
        harrow_ipc::Msg::Credit {
            cid,
            n: self.n,
            consumed: self.consumed,
        }
    }
}

/// A receiver whose queue runs dry with this many items consumed since its last `Credit`
/// sends the re-grant at once ([`ChanState::ran_dry`]).
pub(crate) const DRY_REPORT: u32 = 16;

/// A sender always may have this many items in flight, whatever their bytes
/// ([`ChanState::may_send`]). Twice [`DRY_REPORT`]: a sender that waits on its bytes has more
/// items unreported than a receiver holds back when its queue runs dry, so some are still
/// coming to the receiver, which then reports them. The two never wait on each other.
pub(crate) const GUARD_FLOOR: u32 = 2 * DRY_REPORT;

impl Chan {
    pub(crate) fn new(cid: Cid, side: Side, kind: CallKind, func: FnPath) -> Self {
        Chan {
            cid,
            side,
            kind,
            func,
            st: Mutex::new(ChanState::default()),
            ev: Event::new(),
            ev_listeners: AtomicUsize::new(0),
            owner: Slot::default(),
            sender: Slot::default(),
            cancel: Slot::default(),
            ends_with_answer_now: AtomicBool::new(false),
            stop_reading_due: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter: the listeners of `ev` and the slots. Called after the state changed
    /// under the lock.
    ///
    /// Relaxed (no SeqCst fence per notification, which every stream item paid): every waiter
    /// listens or registers before it probes the state under the lock, so a change its probe
    /// missed was made in a later critical section, which the listener's registration
    /// happens-before.
    pub(crate) fn notify(&self) {
        // An event's notification always takes its list's lock (and allocates the list the first
        // time): skipped while nobody listens, which is how a stream's items and a unary call's
        // answer find it. A listener is counted before its probe under the state's lock, so a
        // change its probe missed is made later, and the count is seen here.
        if self.ev_listeners.load(Ordering::Relaxed) != 0 {
            self.ev.notify_relaxed(usize::MAX);
        }
        self.owner.wake();
        self.sender.wake();
    }

    /// [`wait`](Chan::wait) for the one task that owns the call's receiving end (at most one
    /// such wait at a time per chan: a unary call's `run`, or the stream receiver's `recv`,
    /// which takes `&mut self`). The waker is registered under the state's lock, so a change
    /// made after the probe (under that lock, then [`notify`](Chan::notify)) always wakes it.
    pub(crate) fn wait_owner<R>(
        &self,
        f: impl FnMut(&mut ChanState) -> Option<R>,
    ) -> impl Future<Output = R> {
        self.wait_in(&self.owner, f)
    }

    /// [`notify`](Chan::notify), and wakes the [`wait_cancel`](Chan::wait_cancel) waiter: for a
    /// change of `cancelled_by` or `cleanup_until`.
    pub(crate) fn notify_cancel(&self) {
        self.notify();
        self.cancel.wake();
        let (first, more) = self.lock().cancel_waiters.take();
        if let Some(w) = first {
            w.wake();
        }
        for w in more {
            w.wake();
        }
    }

    /// Waits for a served call's cancel (`cancelled_by`), with its canceller; declares the
    /// call cancel-aware at its first poll. Any number of such waits at once, each a waker
    /// under the chan's lock (no event listener, nothing allocated for the first), woken by
    /// [`notify_cancel`](Chan::notify_cancel), which every setter of `cancelled_by` calls after.
    pub(crate) fn wait_cancelled(&self) -> WaitCancelled<'_> {
        WaitCancelled {
            chan: self,
            id: None,
        }
    }

    /// [`wait`](Chan::wait) for a served call's task on `cancelled_by` and `cleanup_until` (one
    /// such wait per chan), woken by [`notify_cancel`](Chan::notify_cancel) only.
    pub(crate) fn wait_cancel<R>(
        &self,
        f: impl FnMut(&mut ChanState) -> Option<R>,
    ) -> impl Future<Output = R> {
        self.wait_in(&self.cancel, f)
    }

    /// The wait itself: a bare `poll_fn`, not an `async fn` around one, so that a wait taken
    /// per stream item is a small future to build and move (its captures, nothing more).
    fn wait_in<R>(
        &self,
        slot: &Slot,
        mut f: impl FnMut(&mut ChanState) -> Option<R>,
    ) -> impl Future<Output = R> {
        std::future::poll_fn(move |cx| {
            let mut st = self.lock();
            if let Some(r) = f(&mut st) {
                slot.done();
                return Poll::Ready(r);
            }
            slot.register(cx.waker());
            Poll::Pending
        })
    }

    /// [`wait`](Chan::wait) for a stream sender (credit): in the sender slot when no other
    /// sender holds it, else on `ev` as before.
    pub(crate) async fn wait_sender<R>(&self, mut f: impl FnMut(&mut ChanState) -> Option<R>) -> R {
        /// Gives the slot back if the wait is dropped while holding it.
        struct Wait<'a> {
            chan: &'a Chan,
            holds_slot: bool,
            listener: Option<EventListener>,
        }
        impl Wait<'_> {
            fn release(&mut self, st: &mut ChanState) {
                if std::mem::take(&mut self.holds_slot) {
                    st.sender_slot_taken = false;
                    self.chan.sender.done();
                }
            }
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                if self.listener.take().is_some() {
                    self.chan.unlisten();
                }
                if self.holds_slot {
                    let chan = self.chan;
                    self.release(&mut chan.lock());
                }
            }
        }
        let mut w = Wait {
            chan: self,
            holds_slot: false,
            listener: None,
        };
        std::future::poll_fn(|cx| {
            loop {
                if let Some(listener) = w.listener.as_mut() {
                    match std::pin::Pin::new(listener).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) => {
                            w.listener = None;
                            self.unlisten();
                        }
                    }
                }
                let mut st = self.lock();
                if let Some(r) = f(&mut st) {
                    w.release(&mut st);
                    return Poll::Ready(r);
                }
                if !w.holds_slot && !st.sender_slot_taken {
                    st.sender_slot_taken = true;
                    w.holds_slot = true;
                }
                if w.holds_slot {
                    self.sender.register(cx.waker());
                    return Poll::Pending;
                }
                // Listening under the lock: a change made after the probe notifies it.
                w.listener = Some(self.listen_counted());
            }
        })
        .await
    }

    /// Waits until `f` returns `Some`. `f` runs under the lock and must be side-effect free when
    /// it returns `None`.
    pub(crate) async fn wait<R>(&self, mut f: impl FnMut(&mut ChanState) -> Option<R>) -> R {
        /// Uncounts the listener of one round of the loop.
        struct Counted<'a>(&'a Chan);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.unlisten();
            }
        }
        loop {
            if let Some(r) = f(&mut self.lock()) {
                return r;
            }
            // Counted before it listens (see `listen_counted`); the listener lives in this
            // future, not in an allocation of its own.
            self.ev_listeners.fetch_add(1, Ordering::Relaxed);
            let _counted = Counted(self);
            harrow_ipc::wait::listener!(self.ev => listener);
            if let Some(r) = f(&mut self.lock()) {
                return r;
            }
            listener.await;
        }
    }

    /// A listener of `ev`, counted in `ev_listeners` (so that [`notify`](Chan::notify) skips the
    /// event while nobody listens): the caller probes the state under the lock after this, and
    /// calls [`unlisten`](Chan::unlisten) once it drops the listener.
    pub(crate) fn listen_counted(&self) -> EventListener {
        self.ev_listeners.fetch_add(1, Ordering::Relaxed);
        self.ev.listen()
    }

    /// See [`listen_counted`](Chan::listen_counted).
    pub(crate) fn unlisten(&self) {
        self.ev_listeners.fetch_sub(1, Ordering::Relaxed);
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

    /// The callee's answer arrived: the call was answered (whatever ended it first), and
    /// `outcome` is its outcome unless it already had one. One lock of the chan for both.
    pub(crate) fn answer_arrived(&self, outcome: Result<Value, Error>) {
        {
            let mut st = self.lock();
            st.answered = true;
            if st.outcome.is_none() {
                st.outcome = Some(outcome);
            }
        }
        self.notify();
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().outcome.is_some()
    }
}

/// The future of [`Chan::wait_cancelled`].
pub(crate) struct WaitCancelled<'a> {
    chan: &'a Chan,
    /// This wait's id among the chan's cancel waiters, once registered.
    id: Option<u64>,
}

impl Future for WaitCancelled<'_> {
    type Output = ActorId;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<ActorId> {
        let this = self.get_mut();
        let mut st = this.chan.lock();
        st.cancel_aware = true;
        if let Some(by) = st.cancelled_by.clone() {
            if let Some(id) = this.id.take() {
                st.cancel_waiters.remove(id);
            }
            return Poll::Ready(by);
        }
        st.cancel_waiters.register(&mut this.id, cx.waker());
        Poll::Pending
    }
}

impl Drop for WaitCancelled<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.chan.lock().cancel_waiters.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use harrow_ipc::wait::testing::counting_waker;

    use super::*;

    fn chan() -> Chan {
        let func = FnPath::parse("t:f").expect("a valid path");
        Chan::new(Cid(2), Side::Callee, CallKind::Unary, func)
    }

    /// One poll of `wait` by the task of `waker`.
    fn poll(wait: &mut WaitCancelled<'_>, waker: &Waker) -> Poll<ActorId> {
        std::pin::Pin::new(wait).poll(&mut std::task::Context::from_waker(waker))
    }

    fn waiting(chan: &Chan) -> usize {
        let st = chan.lock();
        usize::from(st.cancel_waiters.first.is_some()) + st.cancel_waiters.more.len()
    }

    fn cancel(chan: &Chan, by: &str) {
        chan.lock().cancelled_by = Some(ActorId::new(by));
        chan.notify_cancel();
    }

    #[test]
    fn every_wait_for_the_cancel_is_woken_with_the_canceller() {
        let chan = chan();
        let (a, wa) = counting_waker();
        let (b, wb) = counting_waker();
        let mut first = chan.wait_cancelled();
        let mut second = chan.wait_cancelled();
        assert!(poll(&mut first, &wa).is_pending());
        assert!(poll(&mut second, &wb).is_pending());
        // Polled again by the same tasks: still one waker each.
        assert!(poll(&mut first, &wa).is_pending());
        assert_eq!(waiting(&chan), 2);
        assert!(
            chan.lock().cancel_aware,
            "a wait for the cancel makes the call cancel-aware"
        );
        cancel(&chan, "canceller");
        assert_eq!(a.get(), 1);
        assert_eq!(b.get(), 1);
        for (wait, waker) in [(&mut first, &wa), (&mut second, &wb)] {
            match poll(wait, waker) {
                Poll::Ready(by) => assert_eq!(by.name, "canceller"),
                Poll::Pending => panic!("a cancelled call's wait is over"),
            }
        }
        assert_eq!(waiting(&chan), 0);
    }

    #[test]
    fn a_wait_moved_to_another_task_wakes_that_one() {
        let chan = chan();
        let (a, wa) = counting_waker();
        let (b, wb) = counting_waker();
        let mut wait = chan.wait_cancelled();
        assert!(poll(&mut wait, &wa).is_pending());
        assert!(poll(&mut wait, &wb).is_pending());
        assert_eq!(waiting(&chan), 1);
        cancel(&chan, "x");
        assert_eq!(a.get(), 0);
        assert_eq!(b.get(), 1);
    }

    #[test]
    fn a_dropped_wait_leaves_no_waker_behind() {
        let chan = chan();
        let (_a, wa) = counting_waker();
        for _ in 0..3 {
            let mut wait = chan.wait_cancelled();
            assert!(poll(&mut wait, &wa).is_pending());
            let mut other = chan.wait_cancelled();
            assert!(poll(&mut other, &wa).is_pending());
            assert_eq!(waiting(&chan), 2);
        }
        assert_eq!(waiting(&chan), 0);
    }

    #[test]
    fn a_wait_begun_after_the_cancel_is_over_at_once() {
        let chan = chan();
        cancel(&chan, "early");
        let (a, wa) = counting_waker();
        let mut wait = chan.wait_cancelled();
        assert!(poll(&mut wait, &wa).is_ready());
        assert_eq!(a.get(), 0);
        assert_eq!(waiting(&chan), 0);
    }

    #[test]
    fn a_large_item_is_remembered_for_one_to_two_spans() {
        let mut l = RecentLargest::default();
        l.note(8192, 4);
        for i in 0..3 {
            l.note(32, 4);
            assert_eq!(l.get(), 8192, "small item {i} of the large item's span");
        }
        // The span is over: the large item is the previous span's.
        assert_eq!(l.get(), 8192);
        for _ in 0..3 {
            l.note(32, 4);
            assert_eq!(l.get(), 8192);
        }
        l.note(32, 4);
        assert_eq!(l.get(), 32, "two spans later, only small items");
        // A span of 0 is taken as 1: every item is a span, and the next one's end forgets it.
        let mut l = RecentLargest::default();
        l.note(100, 0);
        assert_eq!(l.get(), 100);
        l.note(10, 0);
        assert_eq!(l.get(), 10);
    }

    /// A receiver and a sender that sends whenever it has credit, item by item: one 8 KiB
    /// item, then ints. The window stays at its base while the large item is recent, then grows
    /// to its most; the items in the queue, the credit not yet used and the items consumed
    /// since the last grant always add up to the window.
    #[test]
    fn the_window_grows_again_once_smaller_items_followed_a_large_one() {
        let rule = WindowRule::new(64, 1024, 256 << 10);
        let mut st = ChanState::default();
        let mut credit = st.open_rx(rule).n;
        let items: Vec<Value> = std::iter::once(Value::Bytes(vec![7; 8 << 10]))
            .chain((1..3_000).map(Value::Int))
            .collect();
        let mut next = items.into_iter();
        let mut windows = Vec::new();
        loop {
            while credit > 0 {
                let Some(v) = next.next() else { break };
                credit -= 1;
                st.push_item(v);
            }
            let Some(_) = st.items.pop_front() else { break };
            if let Some(grant) = st.consume_one() {
                credit += grant.n;
            }
            assert_eq!(
                st.items.len() as u32 + st.allowance + st.consumed,
                st.window,
                "queued + unused credit + unreported = the window"
            );
            assert_eq!(st.allowance, credit);
            windows.push(st.window);
        }
        assert_eq!(windows.len(), 3_000, "every item consumed");
        assert!(
            windows[..64].iter().all(|&w| w == 64),
            "{:?}",
            &windows[..64]
        );
        let regrown = windows.iter().position(|&w| w == 1024);
        assert!(
            matches!(regrown, Some(at) if at < 3 * 64),
            "grown again at {regrown:?}"
        );
        assert_eq!(windows.last(), Some(&1024));
    }

    proptest::proptest! {
        /// Any sizes, any pace of consumption: the window stays within its rule, the queue,
        /// the unused credit and the unreported items add up to it, and the size it follows
        /// covers at least the last `base` items received and no item older than the last
        /// `2 * max`.
        #[test]
        fn the_window_follows_the_recent_items(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![3 => proptest::strategy::Just(0usize), 1 => 1usize..2_000],
                1..1_500,
            ),
            paces in proptest::collection::vec(1usize..40, 1..50),
        ) {
            let (base, max) = (8u32, 64u32);
            let rule = WindowRule::new(base, max, 4096);
            let mut st = ChanState::default();
            let mut credit = st.open_rx(rule).n;
            let item = |n: usize| match n {
                0 => Value::Int(1),
                n => Value::Bytes(vec![7; n]),
            };
            let mut received: Vec<usize> = Vec::new();
            let mut next = sizes.iter().copied();
            let mut paces = paces.iter().copied().cycle();
            let mut consumed = 0usize;
            while consumed < sizes.len() {
                while credit > 0 {
                    let Some(n) = next.next() else { break };
                    let v = item(n);
                    received.push(v.approx_size(rule.size_cap));
                    credit -= 1;
                    st.push_item(v);
                    let got = st.largest.get();
                    let recent = |k: usize| {
                        received[received.len().saturating_sub(k)..].iter().copied().max()
                    };
                    proptest::prop_assert!(Some(got) >= recent(base as usize));
                    proptest::prop_assert!(Some(got) <= recent(2 * max as usize));
                }
                for _ in 0..paces.next().unwrap_or(1) {
                    if st.items.pop_front().is_none() {
                        if let Some(grant) = st.ran_dry() {
                            credit += grant.n;
                        }
                        break;
                    }
                    consumed += 1;
                    if let Some(grant) = st.consume_one() {
                        credit += grant.n;
                    }
                }
                proptest::prop_assert!((base..=max).contains(&st.window));
                proptest::prop_assert_eq!(
                    st.items.len() as u32 + st.allowance + st.consumed,
                    st.window
                );
                proptest::prop_assert_eq!(st.allowance, credit);
            }
        }
    }
}
