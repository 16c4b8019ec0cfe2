//! The callee side: running the peer's calls, their answers, their cancellation and the
//! `CancelActor` acks owed for them.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use futures_lite::FutureExt;
use harrow_ipc::{ActorId, CallKind, Cid, ErrorKind, FnPath, Msg, RemoteError, Value};
use tracing::{debug, warn};

use super::{LinkEnd, LinkState, Served, ServedBy, Shared};
use crate::chan::{Chan, Side};
use crate::{CallError, CalleeContext, Error, Invocation};

impl Shared {
    pub(super) fn serve_start(
        self: &Arc<Self>,
        cid: Cid,
        func: FnPath,
        kind: CallKind,
        args: Value,
    ) {
        let chan = Arc::new(Chan::new(cid, Side::Callee, kind, func.clone()));
        {
            let mut st = self.lock();
            if st.dead.is_some() {
                return;
            }
            if let Some(canceller) = &st.refuse_starts {
                let err =
                    RemoteError::refused(self.local.id.clone(), canceller.clone(), func.as_str());
                st.refused += 1;
                self.enqueue(Msg::Error {
                    cid: Some(cid),
                    error: Box::new(err),
                });
                return;
            }
            let entry = Served {
                chan: chan.clone(),
                run: ServedBy::Nothing,
            };
            if st.served.insert_new(cid, entry).is_err() {
                let msg = format!("call id {cid} is already in use for another call");
                self.enqueue(Msg::Error {
                    cid: Some(cid),
                    error: Box::new(RemoteError::new(
                        ErrorKind::Protocol,
                        "ProtocolError",
                        msg,
                        self.local.id.clone(),
                    )),
                });
                return;
            }
        }
        let ctx = CalleeContext::new(self.clone(), chan.clone());
        // The call's path moves into the invocation (`chan.func` names it from here on).
        let started = match &self.resolver {
            Some(resolver) => resolver.start(Invocation {
                func,
                kind,
                args,
                ctx,
            }),
            None => Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{func}: this actor serves no functions"),
            )),
        };
        let mut st = self.lock();
        if !st.served.contains_key(&cid) {
            // Cancelled (or the link closed) while resolving: the answer was already sent.
            return;
        }
        match started {
            Err(err) => {
                debug!(%cid, func = %chan.func, %err, "resolver refused the call");
                st.served.remove(&cid);
                drop(st);
                let mut cst = chan.lock();
                if !cst.wire_done {
                    cst.wire_done = true;
                    self.enqueue(Msg::Error {
                        cid: Some(cid),
                        error: Box::new(err.into_remote(&self.local.id)),
                    });
                }
                drop(cst);
                self.progress.notify_all();
            }
            Ok(fut) => {
                // User code runs below: not under the link's lock.
                drop(st);
                self.run_served(cid, chan, fut);
            }
        }
    }

    /// Runs a served call: its first poll right here, in the reader (a call that finishes at
    /// once, as most unary calls do, then needs no task of its own: one task hop less per call),
    /// and, if it is not done by then, the rest in a task of its own.
    fn run_served(self: &Arc<Self>, cid: Cid, chan: Arc<Chan>, fut: crate::CallFuture) {
        // The ack goes out before anything the function sends, and with it: it wakes the
        // caller for nothing (callers ignore it), so it travels with the call's next message
        // (its `Return`, made in the first poll or later; a context's `Started`), on either kind
        // of outlet. A call answered later (by another thread: a Python actor's interpreter)
        // then costs the caller one wake-up, not two.
        {
            let mut cst = chan.lock();
            if !cst.wire_done && !cst.ack_sent {
                cst.ack_sent = true;
                self.enqueue_quiet(Msg::StartAck { cid });
            }
        }
        let scope_ctx = CalleeContext::new(self.clone(), chan.clone());
        // `Unpin` (the function's future is boxed already): polled here in place, and moved
        // into a task only if it is pending, so a call done in its first poll allocates nothing
        // for it.
        let mut run = ServedRun(crate::panic_trace::Watched::new(
            crate::callee::CallScope::new(scope_ctx, AssertUnwindSafe(fut).catch_unwind()),
        ));
        if chan.ends_with_answer_now.load(Ordering::Relaxed) {
            self.run_parked(cid, chan, run);
            return;
        }
        // Polled without a waker of its own: if it is pending, the task below polls it again at
        // once, which registers the task's waker wherever the future waits.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = std::pin::Pin::new(&mut run).poll(&mut cx) {
            self.complete_served(cid, result);
            return;
        }
        let mut st = self.lock();
        let Some(entry) = st.served.get_mut(&cid) else {
            // Cancelled (or the link closed) in its first poll: answered already; the future
            // is dropped here, outside the lock.
            drop(st);
            drop(run);
            return;
        };
        entry.run = ServedBy::Task(self.served_task(cid, chan, run));
    }

    /// [`run_served`](Self::run_served) for a call that ends with `answer_now`: its first poll
    /// registers a [`Parked`] waker, and while nothing wakes it the pending future stays in
    /// the call's entry, with no task.
    fn run_parked(self: &Arc<Self>, cid: Cid, chan: Arc<Chan>, mut run: ServedRun) {
        let parked = Arc::new(Parked {
            shared: self.clone(),
            cid,
            chan,
            st: Mutex::new(ParkedState::default()),
        });
        // The entry names it before its first poll: a cancel that lands during that poll finds
        // it and wakes it (the wake is noted, and acted on below), and an end of the call
        // during the poll marks it ended. Named only after the poll, a cancel in between found
        // nothing to wake, and a future that does not wait for its cancel stayed parked with
        // no task to run its cleanup or to enforce its bound.
        {
            let mut st = self.lock();
            let Some(entry) = st.served.get_mut(&cid) else {
                // Ended while it was resolved (cancelled, the link closed).
                drop(st);
                drop(run);
                return;
            };
            entry.run = ServedBy::Parked(parked.clone());
        }
        let waker = Waker::from(parked.clone());
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(result) = std::pin::Pin::new(&mut run).poll(&mut cx) {
            self.complete_served(cid, result);
            return;
        }
        drop(waker);
        // An end (`Parked::end`) may come at any time.
        let mut pst = parked.lock();
        if pst.ended {
            drop(pst);
            drop(run);
            return;
        }
        pst.run = Some(run);
        // Woken during the first poll or since (a cancel, an answer through the future): the
        // wake found nothing to move into a task then; it does now.
        let woken = std::mem::take(&mut pst.woken);
        drop(pst);
        if woken {
            parked.wake_by_ref();
        }
    }

    /// The task that runs a served call's future until it ends, or until its cleanup time after
    /// a cancel is up.
    fn served_task(
        self: &Arc<Self>,
        cid: Cid,
        chan: Arc<Chan>,
        run: ServedRun,
    ) -> async_executor::Task<()> {
        let shared = self.clone();
        self.exec.spawn(async move {
            let run = async { Some(run.await) };
            let expired = async {
                cleanup_expired(&chan).await;
                None
            };
            match run.or(expired).await {
                Some(result) => shared.complete_served(cid, result),
                None => {
                    debug!(%cid, func = %chan.func, "cancelled call's cleanup time is up");
                    shared.end_served(cid, |shared, chan, st| {
                        Some(shared.cancelled_answer(chan, st))
                    });
                }
            }
        })
    }

    /// The `ContextCancelled` answer for a served call cancelled by `st.cancelled_by`.
    pub(super) fn cancelled_answer(&self, chan: &Chan, st: &crate::chan::ChanState) -> Msg {
        let canceller = st
            .cancelled_by
            .clone()
            .unwrap_or_else(|| self.local.id.clone());
        Msg::Error {
            cid: Some(chan.cid),
            error: Box::new(RemoteError::cancelled(self.local.id.clone(), canceller)),
        }
    }

    /// Ends served call `cid`: removes it, queues `answer`'s message as its last one (unless one
    /// went out already), and sends the `CancelAck`s owed once no served call is left. All under
    /// the link lock, so that every call's answer precedes the ack on the wire. Returns the entry
    /// (whose task the caller drops or detaches), or `None` when the call had already ended.
    fn end_served(
        &self,
        cid: Cid,
        answer: impl FnOnce(&Self, &Chan, &crate::chan::ChanState) -> Option<Msg>,
    ) -> Option<Served> {
        self.end_served_with(cid, false, answer)
    }

    /// [`end_served`](Self::end_served); with `from_outside` (an answer from another thread:
    /// [`answer_served_now`](Self::answer_served_now)), the call has started, so its
    /// `StartAck` goes first if its first poll has not queued it yet (the answer can come
    /// before that poll), and both are handed over without scheduling a wake-up of the peer:
    /// the peer is woken here, as soon as the link's lock is released, before the local
    /// waiters are told (the caller waits for this answer; nobody here waits for them).
    fn end_served_with(
        &self,
        cid: Cid,
        from_outside: bool,
        answer: impl FnOnce(&Self, &Chan, &crate::chan::ChanState) -> Option<Msg>,
    ) -> Option<Served> {
        let mut st = self.lock();
        let entry = st.served.remove(&cid)?;
        {
            let mut cst = entry.chan.lock();
            if !cst.wire_done
                && let Some(msg) = answer(self, &entry.chan, &cst)
            {
                cst.wire_done = true;
                if from_outside {
                    if !cst.ack_sent {
                        cst.ack_sent = true;
                        self.enqueue_urgent(Msg::StartAck { cid });
                    }
                    self.enqueue_urgent(msg);
                } else {
                    self.enqueue(msg);
                }
            }
        }
        let timer = if st.served.is_empty() && st.acks_owed > 0 {
            self.send_owed_acks(&mut st, None);
            st.ack_timer.take()
        } else {
            None
        };
        drop(st);
        if from_outside {
            self.wake_peer_now();
        }
        if let Some(timer) = timer {
            timer.detach(); // it may be this very task; it finds nothing owed and ends
        }
        entry.chan.notify();
        self.progress.notify_all();
        Some(entry)
    }

    pub(super) fn send_owed_acks(&self, st: &mut LinkState, teardown_ms: Option<u64>) {
        for _ in 0..std::mem::take(&mut st.acks_owed) {
            self.enqueue(Msg::CancelAck { teardown_ms });
        }
    }

    fn complete_served(
        &self,
        cid: Cid,
        result: std::result::Result<std::result::Result<Value, CallError>, Panicked>,
    ) {
        let mut result = Some(result);
        let entry = self.end_served(cid, |shared, chan, st| {
            result.take().map(|r| shared.answer_msg(cid, chan, st, r))
        });
        if let Some(entry) = entry {
            entry.detach(); // its task is this very task, about to finish
        }
        // A call whose link closed while it cleaned up has no caller to tell: its failure is
        // logged rather than dropped without a word.
        let failure = match result {
            Some(Ok(Err(e))) if e.kind() != ErrorKind::Cancelled => Some(e.to_string()),
            Some(Err((payload, _))) => Some(format!("panic: {}", panic_text(payload.as_ref()))),
            _ => None,
        };
        if let Some(failure) = failure
            && self.is_dead()
        {
            warn!(%cid, local = %self.local.id, peer = %self.peer.id, %failure,
                "a served call failed after its link closed; its caller cannot be told");
        }
    }

    /// Answers served call `cid` with `result` from any thread, at once, as its future would
    /// have when it completed: the answer is handed to the transport and the peer woken from
    /// here, without a hop through this link's executor. The call's future is left to finish
    /// on its own (whatever it ends with then is not sent: the call is over). Nothing is sent
    /// when the call has already ended (cancelled, its cleanup time up, the link closed).
    pub(crate) fn answer_served_now(
        &self,
        cid: Cid,
        result: std::result::Result<Value, CallError>,
    ) {
        let entry = self.end_served_with(cid, true, |shared, chan, st| {
            Some(shared.answer_msg(cid, chan, st, Ok(result)))
        });
        if let Some(entry) = entry {
            entry.detach();
        }
    }

    /// The message that answers served call `cid` with what its future ended with.
    fn answer_msg(
        &self,
        cid: Cid,
        chan: &Chan,
        st: &crate::chan::ChanState,
        result: std::result::Result<std::result::Result<Value, CallError>, Panicked>,
    ) -> Msg {
        let local = &self.local.id;
        match result {
            Ok(Ok(value)) => {
                match crate::error::check_depth(&value, || format!("result of {}", chan.func)) {
                    Ok(()) => Msg::Return { cid, value },
                    Err(e) => Msg::Error {
                        cid: Some(cid),
                        error: Box::new(RemoteError::new(
                            ErrorKind::Runtime,
                            "ValueError",
                            e.to_string(),
                            local.clone(),
                        )),
                    },
                }
            }
            // Cancelled and ended by that cancel: the canonical answer, naming the canceller.
            Ok(Err(err)) if st.cancelled_by.is_some() && err.kind() == ErrorKind::Cancelled => {
                self.cancelled_answer(chan, st)
            }
            // A failure, before or during the cleanup of a cancel: the outcome is the failure.
            Ok(Err(err)) => {
                debug!(%cid, func = %chan.func, %err, "served call failed");
                Msg::Error {
                    cid: Some(cid),
                    error: Box::new(err.into_remote(local)),
                }
            }
            Err((payload, trace)) => {
                let text = panic_text(payload.as_ref());
                debug!(%cid, func = %chan.func, panic = %text, "served call panicked");
                Msg::Error {
                    cid: Some(cid),
                    error: Box::new(
                        RemoteError::new(ErrorKind::Raised, "panic", text, local.clone())
                            .with_traceback(trace.unwrap_or_default()),
                    ),
                }
            }
        }
    }

    /// A served call whose answer was already sent for it (a message of its own could not be
    /// sent, and a `SendError` went instead): nothing more of it goes out, and its function,
    /// if it still runs, is cancelled by this actor.
    pub(crate) fn stop_served_after_answer(&self, cid: Cid) {
        let chan = self.lock().served.get(&cid).map(|e| e.chan.clone());
        if let Some(chan) = chan {
            chan.lock().wire_done = true;
            self.cancel_served(&[cid], &self.local.id.clone());
        }
    }

    /// Cancels served calls `cids` on behalf of `canceller`. A call that observes its own
    /// cancellation is told (its stream operations fail, `cancelled()` resolves) and gets until
    /// its cleanup bound to end; its answer is then whatever it ended with (a failure raised
    /// during cleanup reaches the caller). Any other call is dropped at once and answered with
    /// `ContextCancelled { canceller }`.
    pub(crate) fn cancel_served(&self, cids: &[Cid], canceller: &ActorId) {
        for &cid in cids {
            let Some((chan, parked)) = self.lock().served.get(&cid).map(|e| {
                let parked = match &e.run {
                    ServedBy::Parked(p) => Some(p.clone()),
                    _ => None,
                };
                (e.chan.clone(), parked)
            }) else {
                continue;
            };
            let aware = {
                let mut st = chan.lock();
                if st.cancelled_by.is_some() {
                    continue; // already being cancelled
                }
                st.cancelled_by = Some(canceller.clone());
                if st.outcome.is_none() {
                    let err = RemoteError::cancelled(self.local.id.clone(), canceller.clone());
                    st.outcome = Some(Err(Error::from(err)));
                }
                if st.cancel_aware {
                    // The bound, or later if the call asked for more (before the cancel too).
                    let bound = harrow_ipc::wait::instant_after(
                        self.config.cancel_cleanup.max(st.cleanup_reserved),
                    );
                    st.cleanup_until = Some(st.cleanup_until.map_or(bound, |t| t.max(bound)));
                }
                st.cancel_aware
            };
            chan.notify_cancel();
            if aware && let Some(parked) = parked {
                // A parked future runs its cleanup in a task, whatever it waited for.
                parked.wake_by_ref();
            }
            if !aware {
                let entry = self.end_served(cid, |shared, chan, st| {
                    Some(shared.cancelled_answer(chan, st))
                });
                drop(entry); // drops the call's future
            }
        }
        self.progress.notify_all();
    }

    /// Refuses every later `Start` from the peer, as cancelled by `canceller` (the first reason
    /// given stands).
    pub(crate) fn refuse_starts(&self, canceller: &ActorId) {
        self.lock()
            .refuse_starts
            .get_or_insert_with(|| canceller.clone());
    }

    /// How many `Start`s from the peer were refused ([`Shared::refuse_starts`]).
    pub(crate) fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// A `CancelActor` from the peer: refuse new calls, cancel every served one, and ack once
    /// they all ended (or at the cleanup bound, saying how long the rest still needs).
    pub(super) fn cancel_actor_requested(self: &Arc<Self>, reason: String) {
        let cids: Vec<Cid> = {
            let mut st = self.lock();
            st.refuse_starts.get_or_insert_with(|| self.peer.id.clone());
            st.served.cids()
        };
        debug!(local = %self.local.id, peer = %self.peer.id, %reason, n = cids.len(),
            "CancelActor: cancelling served calls");
        self.cancel_served(&cids, &self.peer.id.clone());
        {
            let mut st = self.lock();
            st.acks_owed += 1;
            if st.served.is_empty() {
                self.send_owed_acks(&mut st, None);
            } else if st.ack_timer.is_none() {
                let shared = self.clone();
                let bound = self.config.cancel_cleanup;
                st.ack_timer = Some(self.exec.spawn(async move {
                    async_io::Timer::after(bound).await;
                    shared.ack_at_bound();
                }));
            }
        }
        self.set_end(LinkEnd::CancelRequested {
            canceller: self.peer.id.clone(),
            reason,
        });
    }

    /// The cleanup bound passed with calls still running (they extended their cleanup, for
    /// example to tear down their own children): ack now, saying until when they may run.
    fn ack_at_bound(&self) {
        let mut st = self.lock();
        if st.acks_owed == 0 {
            return;
        }
        let now = Instant::now();
        let latest = st
            .served
            .values()
            .filter_map(|e| e.chan.lock().cleanup_until)
            .max();
        let teardown_ms = latest
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        debug!(local = %self.local.id, n = st.served.len(), ?teardown_ms,
            "acking CancelActor with calls still cleaning up");
        self.send_owed_acks(&mut st, teardown_ms);
        if let Some(timer) = st.ack_timer.take() {
            timer.detach(); // this very task
        }
    }

    /// A protocol violation in a served call: answer with a `Protocol` error and drop the task.
    pub(super) fn fail_served(&self, cid: Cid, message: String) {
        debug!(%cid, %message, "protocol violation by the caller");
        let entry = self.end_served(cid, |shared, _, _| {
            Some(Msg::Error {
                cid: Some(cid),
                error: Box::new(RemoteError::new(
                    ErrorKind::Protocol,
                    "ProtocolError",
                    message.clone(),
                    shared.local.id.clone(),
                )),
            })
        });
        if let Some(entry) = entry {
            {
                let mut st = entry.chan.lock();
                if st.outcome.is_none() {
                    st.outcome = Some(Err(Error::Protocol(message)));
                }
            }
            entry.chan.notify();
        }
    }

    /// Sends a protocol error for a served call from the callee's own handle (`started` twice,
    /// stream before `started`): the caller sees it; the function keeps running.
    pub(crate) fn protocol_error_to_caller(
        &self,
        chan: &Chan,
        st: &mut crate::chan::ChanState,
        message: &str,
    ) {
        if !st.wire_done {
            st.wire_done = true;
            self.enqueue(Msg::Error {
                cid: Some(chan.cid),
                error: Box::new(RemoteError::new(
                    ErrorKind::Protocol,
                    "ProtocolError",
                    message,
                    self.local.id.clone(),
                )),
            });
        }
    }
}

/// Resolves when a cancelled, cancel-aware call's cleanup time is up (never for other calls).
async fn cleanup_expired(chan: &Chan) {
    let mut until = chan
        .wait_cancel(|st| st.cancelled_by.as_ref().and(st.cleanup_until))
        .await;
    loop {
        async_io::Timer::at(until).await;
        match chan.lock().cleanup_until {
            Some(later) if later > until => until = later, // extended meanwhile
            _ => return,
        }
    }
}

/// A served call's future kept with its call, without a task, while nothing wakes it
/// ([`CalleeContext::ends_with_answer_now`]). It is also the waker of that future: a wake moves
/// the future into a task, which runs it as any other served call's.
pub(crate) struct Parked {
    shared: Arc<Shared>,
    cid: Cid,
    chan: Arc<Chan>,
    st: Mutex<ParkedState>,
}

#[derive(Default)]
struct ParkedState {
    /// The pending future, while no task runs it.
    run: Option<ServedRun>,
    /// The task a wake moved it into.
    task: Option<async_executor::Task<()>>,
    /// Woken while the future was not here (during its first poll): a task is due.
    woken: bool,
    /// The call ended: nothing runs the future any more.
    ended: bool,
}

impl Parked {
    fn lock(&self) -> MutexGuard<'_, ParkedState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call ended and its entry is gone: the future, if still here, is dropped (on this
    /// thread, outside every lock); its task, if a wake made one, is detached (`detach`: it
    /// finishes on its own) or cancelled.
    pub(crate) fn end(&self, detach: bool) {
        let (run, task) = {
            let mut st = self.lock();
            st.ended = true;
            (st.run.take(), st.task.take())
        };
        drop(run);
        match task {
            Some(task) if detach => task.detach(),
            _ => {}
        }
    }
}

impl Parked {
    /// [`Served::clean_up`](super::Served::clean_up) for a parked future: moved into its task
    /// (as a wake does), which is then left to finish on its own.
    pub(crate) fn clean_up(self: &Arc<Self>) {
        self.wake_by_ref();
        self.end(true);
    }
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let run = {
            let mut st = self.lock();
            if st.ended {
                return;
            }
            match st.run.take() {
                Some(run) => run,
                None => {
                    // Not here yet (its first poll runs), or already in its task.
                    st.woken = st.task.is_none();
                    return;
                }
            }
        };
        let task = self.shared.served_task(self.cid, self.chan.clone(), run);
        let mut st = self.lock();
        if st.ended {
            // Ended meanwhile: the task goes as its entry did (it had said its future may go).
            drop(st);
            drop(task);
        } else {
            st.task = Some(task);
        }
    }
}

/// A served call that panicked: the payload and, when recorded, where it panicked.
type Panicked = (Box<dyn std::any::Any + Send>, Option<String>);

/// A served call's future as the link runs it: the function's future, with the call as the
/// [`current_call`](crate::current_call) and panics caught, their trace taken on the thread
/// that polled the panicking future, right after the unwind (the hook only sees the thread).
struct ServedRun(
    crate::panic_trace::Watched<
        crate::callee::CallScope<
            futures_lite::future::CatchUnwind<AssertUnwindSafe<crate::CallFuture>>,
        >,
    >,
);

impl std::future::Future for ServedRun {
    type Output = std::result::Result<std::result::Result<Value, CallError>, Panicked>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|payload| (payload, crate::panic_trace::take())))
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
