//! The caller side: [`Portal`], [`Context`], [`MsgStream`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use harrow_ipc::wait::deadline;
use harrow_ipc::{ActorId, CallKind, Cid, Msg, RemoteError, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::chan::{Chan, Side, WindowRule};
use crate::link::Shared;
use crate::{Error, Result};

/// A handle for calling functions in the peer actor. Cheap to clone.
///
/// A portal does not keep its link alive: once the [`Link`](crate::Link) is closed or dropped,
/// every operation fails with [`Error::Closed`].
#[derive(Clone, Debug)]
pub struct Portal {
    shared: Arc<Shared>,
}

/// Cancels a unary call when its future is dropped before the answer arrived.
struct CallGuard<'a> {
    shared: &'a Shared,
    chan: &'a Chan,
    armed: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared
                .abandon_call(self.chan, Error::Protocol("the call was dropped".into()));
        }
    }
}

impl Portal {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Portal { shared }
    }

    /// The actor this portal calls.
    pub fn peer(&self) -> &ActorId {
        &self.shared.peer.id
    }

    /// The actor this portal calls from (the link's local actor).
    pub fn local(&self) -> &ActorId {
        &self.shared.local.id
    }

    /// Runs `func` (`"module:function"`) in the peer with `args` and returns its result.
    ///
    /// Dropping the future before it completes sends `Cancel` to the peer without blocking.
    pub async fn run(&self, func: &str, args: Value) -> Result<Value> {
        let chan = self.shared.start_call(func, CallKind::Unary, args)?;
        let mut guard = CallGuard {
            shared: &self.shared,
            chan: &chan,
            armed: true,
        };
        let outcome = chan.wait_owner(|st| st.outcome.take()).await;
        guard.armed = false;
        outcome
    }

    /// [`run`](Portal::run) with typed arguments and result, converted through serde.
    #[deprecated(note = "declare an `Endpoint` once and use `Portal::call`: typed on both sides")]
    pub async fn run_typed<A: Serialize, R: DeserializeOwned>(
        &self,
        func: &str,
        args: &A,
    ) -> Result<R> {
        let args = harrow_ipc::to_value(args).map_err(|e| Error::Value(e.to_string()))?;
        let value = self.run(func, args).await?;
        harrow_ipc::from_value(value).map_err(|e| Error::Value(format!("result of {func}: {e}")))
    }

    /// Opens a context: starts `func` in the peer and waits for its `started` value.
    ///
    /// Dropping the returned [`Context`] before its result arrived sends `Cancel`.
    pub async fn open_context(&self, func: &str, args: Value) -> Result<(Context, Value)> {
        let chan = self.shared.start_call(func, CallKind::Context, args)?;
        let ctx = Context {
            shared: self.shared.clone(),
            chan,
            stream_opened: false,
        };
        let first = ctx
            .chan
            .wait(|st| {
                if let Some(v) = st.started.take() {
                    return Some(Ok(v));
                }
                match &st.outcome {
                    None => None,
                    Some(Err(e)) => Some(Err(e.clone())),
                    Some(Ok(_)) => Some(Err(Error::Protocol(format!(
                        "{func} returned without calling started"
                    )))),
                }
            })
            .await?;
        Ok((ctx, first))
    }

    /// [`open_context`](Portal::open_context) with typed arguments and first value.
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn open_context_typed<A: Serialize, S: DeserializeOwned>(
        &self,
        func: &str,
        args: &A,
    ) -> Result<(Context, S)> {
        let args = harrow_ipc::to_value(args).map_err(|e| Error::Value(e.to_string()))?;
        let (ctx, first) = self.open_context(func, args).await?;
        let first = harrow_ipc::from_value(first)
            .map_err(|e| Error::Value(format!("started value of {func}: {e}")))?;
        Ok((ctx, first))
    }

    /// Calls a one-way stream function (`FnRegistry::stream` in Rust, a generator in Python)
    /// and returns its items as they come. Dropping the returned stream cancels the call.
    ///
    /// ```
    /// use harrow_portal::{FnRegistry, ipc::Value};
    ///
    /// let mut reg = FnRegistry::new();
    /// reg.stream("nums:upto", |n: Value| {
    ///     futures_lite::stream::iter((0..n.as_i64().unwrap_or(0)).map(|i| Ok(Value::Int(i))))
    /// })
    /// .unwrap();
    /// # let exec = std::sync::Arc::new(async_executor::Executor::new());
    /// # async_io::block_on(exec.run(async {
    /// # let (ca, cb) = harrow_portal::ipc::mem::pair();
    /// # let info = |name: &str| harrow_portal::LocalInfo {
    /// #     id: harrow_portal::ipc::ActorId::new(name),
    /// #     backend: "thread".into(),
    /// # };
    /// # let (caller, _callee) = futures_lite::future::zip(
    /// #     harrow_portal::Link::establish(ca, info("caller"), None, &exec, Default::default()),
    /// #     harrow_portal::Link::establish(cb, info("callee"), Some(std::sync::Arc::new(reg)), &exec,
    /// #         Default::default()),
    /// # ).await;
    /// # let caller = caller.unwrap(); // keep the link: dropping it closes it
    /// # let portal = caller.portal();
    /// let mut items = portal.open_stream_from("nums:upto", Value::Int(3)).await.unwrap();
    /// let mut got = Vec::new();
    /// while let Some(v) = items.recv().await.unwrap() {
    ///     got.push(v);
    /// }
    /// assert_eq!(got, [Value::Int(0), Value::Int(1), Value::Int(2)]);
    /// # }));
    /// ```
    pub async fn open_stream_from(&self, func: &str, args: Value) -> Result<OneWayStream> {
        let (mut ctx, _first) = self.open_context(func, args).await?;
        let stream = ctx.open_stream().await?;
        let (_tx, rx) = stream.split();
        Ok(OneWayStream { rx, ctx })
    }

    /// Asks the peer to cancel its whole actor runtime. True when it acked within `timeout`;
    /// false on timeout or when the channel is already closed. Never waits longer than `timeout`.
    pub async fn cancel_actor(&self, timeout: Duration) -> bool {
        self.cancel_actor_ack(timeout).await.is_some()
    }

    /// [`cancel_actor`](Portal::cancel_actor), returning the peer's answer: `None` on timeout or
    /// a closed channel; `Some(teardown)` when it acked, where `teardown` is how long the peer
    /// said it still needs to tear down its own children before it exits (`None`: it has
    /// nothing left to do but exit). The ack comes once the peer's calls ended (their cleanup
    /// ran, bounded), so their answers arrived before it.
    pub async fn cancel_actor_ack(&self, timeout: Duration) -> Option<Option<Duration>> {
        self.request_cancel_actor()?.ack(timeout).await
    }

    /// Sends `CancelActor` without waiting: the answer waits for its `CancelAck`, as often as
    /// needed ([`CancelRequest::ack`]). `None` when the channel is already closed.
    ///
    /// For a caller that stops waiting for the ack at one bound but still wants to hear it
    /// later: a nursery's teardown ladder, which honours what a late ack says about the peer's
    /// own children's teardown while it waits for the peer to exit.
    pub fn request_cancel_actor(&self) -> Option<CancelRequest> {
        let reason = format!("cancel requested by {}", self.shared.local.id);
        let acks_before = self.shared.send_cancel_actor(reason)?;
        Some(CancelRequest {
            shared: self.shared.clone(),
            acks_before,
        })
    }

    /// [`cancel_actor`](Portal::cancel_actor) with an explicit reason (for the peer's logs).
    pub async fn cancel_actor_with_reason(&self, timeout: Duration, reason: &str) -> bool {
        self.shared
            .cancel_actor(timeout, reason.to_owned())
            .await
            .is_some()
    }

    /// Whether the link under this portal is closed (calls fail with [`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.shared.is_dead()
    }

    /// Refuses every call the peer starts on this link from now on, on behalf of `canceller`:
    /// each is answered at once with a cancellation that says it did not run
    /// ([`RemoteError::refused`](harrow_ipc::RemoteError::refused)), as after a `CancelActor`.
    /// For an actor that has begun to end on its own; the calls already served go on.
    pub fn refuse_calls(&self, canceller: &ActorId) {
        self.shared.refuse_starts(canceller);
    }

    /// How many calls the peer started on this link were refused (after
    /// [`refuse_calls`](Portal::refuse_calls), or after the peer's `CancelActor`).
    pub fn refused_calls(&self) -> u64 {
        self.shared.refused()
    }
}

/// A `CancelActor` sent by [`Portal::request_cancel_actor`], whose `CancelAck` may still come.
#[derive(Debug)]
pub struct CancelRequest {
    shared: Arc<Shared>,
    acks_before: u64,
}

impl CancelRequest {
    /// Waits at most `timeout` for the peer's ack: `Some(teardown)` once it acked (now or
    /// before this call), as [`Portal::cancel_actor_ack`] answers; `None` on timeout or once
    /// the channel closed. Never waits longer than `timeout`.
    pub async fn ack(&self, timeout: Duration) -> Option<Option<Duration>> {
        self.shared.cancel_ack(self.acks_before, timeout).await
    }
}

/// The items of a one-way stream call ([`Portal::open_stream_from`]). `recv` returns `Ok(None)`
/// once the callee finished; a failure or a cancel is an error. Dropping it cancels the call.
#[derive(Debug)]
pub struct OneWayStream {
    rx: StreamRx,
    ctx: Context,
}

impl OneWayStream {
    /// The next item; `Ok(None)` after the last one.
    pub fn recv(&mut self) -> impl Future<Output = Result<Option<Value>>> + Send + '_ {
        self.rx.recv()
    }

    /// The context behind it: its outcome, cancel, result.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The call's result once the stream ended (the number of items, for `FnRegistry::stream`).
    ///
    /// Items not read by then are given up: the stream is dropped first, which tells the
    /// producer ([`Error::NotRead`] for its further sends, so a producer that had more to send
    /// usually ends with that error), rather than leave it waiting for credit while this waits
    /// for its end.
    pub async fn result(self) -> Result<Value> {
        let OneWayStream { rx, ctx } = self;
        drop(rx);
        ctx.result().await
    }
}

/// The caller's end of a remote context.
///
/// Cancellation semantics: [`cancel`](Context::cancel) returns `Ok(())` once the callee
/// confirmed (after its cleanup ran, bounded), unless the callee failed meanwhile: a failure
/// raised during its cleanup is what `cancel` and [`result`](Context::result) return. After a
/// cancel, stream `recv` and `result` return `Err(Error::Remote)` with `is_cancelled()` and the
/// canceller, whoever asked: a cancelled stream never looks finished (`Ok(None)` means only
/// that the callee closed its side or returned).
#[derive(Debug)]
pub struct Context {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
    stream_opened: bool,
}

impl Context {
    /// The call id.
    pub fn cid(&self) -> Cid {
        self.chan.cid
    }

    /// Opens the bidirectional stream of this context.
    ///
    /// Grants the callee the link's credit window for sending to us: `credit_window` items,
    /// growing toward `credit_window_max` while the items received are small (see
    /// [`LinkConfig::credit_window_max`](crate::LinkConfig::credit_window_max)).
    /// Opening twice is an error.
    pub async fn open_stream(&mut self) -> Result<MsgStream> {
        let rule = self.shared.config.window_rule();
        self.open_stream_by(rule)
    }

    /// [`open_stream`](Self::open_stream) granting the callee `window` items in flight toward
    /// this side (at least 1) instead of the link's `credit_window`. Each side sets the window
    /// of what it receives.
    pub async fn open_stream_with_window(&mut self, window: u32) -> Result<MsgStream> {
        self.open_stream_by(WindowRule::fixed(window))
    }

    fn open_stream_by(&mut self, rule: WindowRule) -> Result<MsgStream> {
        if self.stream_opened {
            return Err(Error::Protocol(format!(
                "the stream of {} is already open",
                self.chan.func
            )));
        }
        {
            let mut st = self.chan.lock();
            match &st.outcome {
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(_)) => {} // returned: the stream is simply over
                None => {
                    st.tx_open = true;
                    let grant = st.open_rx(rule);
                    self.shared.enqueue(grant.msg(self.chan.cid));
                }
            }
        }
        self.stream_opened = true;
        Ok(MsgStream::new(self.shared.clone(), self.chan.clone()))
    }

    /// Waits for the context's final result (after the callee returned).
    pub async fn result(self) -> Result<Value> {
        self.wait_outcome().await
    }

    /// Waits for the context's final result, keeping the context: a wait given up (its future
    /// dropped, by a deadline or a cancel) leaves the context as it was, to be waited for again,
    /// used or cancelled. ([`result`](Self::result) consumes it: given up, it drops the context,
    /// which cancels the call.)
    pub async fn wait_outcome(&self) -> Result<Value> {
        let _awaited = Awaited::new(&self.shared, &self.chan);
        self.chan.wait(|st| st.outcome.clone()).await
    }

    /// Waits at most `bound` for the final result, keeping the context: `None` when it has not
    /// ended in time (the context is untouched and can still be used or cancelled).
    pub async fn wait_result(&self, bound: Duration) -> Option<Result<Value>> {
        let _awaited = Awaited::new(&self.shared, &self.chan);
        deadline(bound, self.chan.wait(|st| st.outcome.clone())).await
    }

    /// Runs `fut` (for example a loop over this context's stream, or other work done while the
    /// callee runs) and returns as soon as either ends: `fut`'s output, or the error the context
    /// ended with. So a remote failure reaches the caller at once, even while it is busy with
    /// something else and not reading the stream. A context that returns normally lets `fut`
    /// run to its end.
    ///
    /// ```
    /// use std::time::Duration;
    /// use harrow_portal::{CallError, FnRegistry, ipc::Value};
    ///
    /// let mut reg = FnRegistry::new();
    /// reg.context("job:fails", |ctx, _| async move {
    ///     ctx.started(Value::Null).await?;
    ///     Err::<Value, _>(CallError::raised("ValueError", "no luck"))
    /// })
    /// .unwrap();
    /// # let exec = std::sync::Arc::new(async_executor::Executor::new());
    /// # async_io::block_on(exec.run(async {
    /// # let (ca, cb) = harrow_portal::ipc::mem::pair();
    /// # let info = |name: &str| harrow_portal::LocalInfo {
    /// #     id: harrow_portal::ipc::ActorId::new(name),
    /// #     backend: "thread".into(),
    /// # };
    /// # let (caller, _callee) = futures_lite::future::zip(
    /// #     harrow_portal::Link::establish(ca, info("caller"), None, &exec, Default::default()),
    /// #     harrow_portal::Link::establish(cb, info("callee"), Some(std::sync::Arc::new(reg)), &exec,
    /// #         Default::default()),
    /// # ).await;
    /// # let caller = caller.unwrap(); // keep the link: dropping it closes it
    /// # let portal = caller.portal();
    /// let (ctx, _) = portal.open_context("job:fails", Value::Null).await.unwrap();
    /// // Busy elsewhere; the failure still ends the wait at once.
    /// let err = ctx.guard(std::future::pending::<()>()).await.unwrap_err();
    /// assert_eq!(err.remote_error().unwrap().message, "no luck");
    /// // The outcome stays available without consuming the context.
    /// assert!(ctx.error().is_some() && ctx.is_answered());
    /// assert!(ctx.wait_result(Duration::from_millis(1)).await.unwrap().is_err());
    /// # }));
    /// ```
    pub async fn guard<F: Future>(&self, fut: F) -> Result<F::Output> {
        use futures_lite::FutureExt;
        let _awaited = Awaited::new(&self.shared, &self.chan);
        async { Ok(fut.await) }
            .or(async {
                self.chan
                    .wait(|st| match &st.outcome {
                        Some(Err(e)) => Some(Err(e.clone())),
                        _ => None,
                    })
                    .await
            })
            .await
    }

    /// The outcome, if the context has ended: its result, or the error it ended with.
    pub fn outcome(&self) -> Option<Result<Value>> {
        self.chan.lock().outcome.clone()
    }

    /// The error the context ended with, if it ended with one.
    pub fn error(&self) -> Option<Error> {
        match &self.chan.lock().outcome {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Who cancelled the context, if it ended cancelled (this actor, the callee, or a third
    /// party).
    pub fn cancelled_by(&self) -> Option<ActorId> {
        match &self.chan.lock().outcome {
            Some(Err(e)) if e.is_cancelled() => e.canceller().cloned(),
            _ => None,
        }
    }

    /// Whether the callee answered this context's end itself (`Return` or `Error`, a confirmed
    /// cancel included), as opposed to an end decided locally (a cancel that was not confirmed
    /// in time, a closed link).
    pub fn is_answered(&self) -> bool {
        self.chan.lock().answered
    }

    /// Typed [`result`](Context::result).
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn result_typed<R: DeserializeOwned>(self) -> Result<R> {
        let func = self.chan.func.clone();
        let value = self.result().await?;
        harrow_ipc::from_value(value).map_err(|e| Error::Value(format!("result of {func}: {e}")))
    }

    /// Cancels the context and waits (bounded by the link's `cancel_timeout`) for the callee to
    /// confirm, which it does after its cleanup ran (bounded by its `cancel_cleanup`).
    ///
    /// `Ok(())` when the callee confirmed the cancel, or had already returned. `Err(Error::Remote)`
    /// when the callee failed instead (before the cancel landed, or while cleaning up): a cancel
    /// never hides a failure. `Err(Error::Closed)` when the link closed; `Err(Error::Timeout)`
    /// when the callee did not confirm in time (the call is then forgotten locally and ends as
    /// cancelled).
    pub async fn cancel(&self) -> Result<()> {
        self.canceller().cancel().await
    }

    /// A handle that cancels this context from elsewhere, for example from a task of its own
    /// while another task waits for the context's result (which [`result`](Self::result)
    /// consumes the context for).
    pub fn canceller(&self) -> ContextCanceller {
        ContextCanceller {
            shared: self.shared.clone(),
            chan: self.chan.clone(),
        }
    }
}

/// Cancels a [`Context`] from elsewhere, as [`Context::cancel`] does; made by
/// [`Context::canceller`]. It keeps no more than the call's state alive: cancelling a context
/// that has ended does nothing.
#[derive(Clone, Debug)]
pub struct ContextCanceller {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
}

impl ContextCanceller {
    /// [`Context::cancel`]: cancels the context and waits (bounded) for the callee to confirm.
    pub async fn cancel(&self) -> Result<()> {
        /// What a cancel returns for the context's `outcome`.
        fn answered(outcome: Result<Value>) -> Result<()> {
            match outcome {
                // Cancelled as asked, or it returned before the cancel landed.
                Ok(_) => Ok(()),
                Err(e) if e.is_cancelled() => Ok(()),
                // The link closed, or the callee failed (before the cancel, or in its cleanup):
                // that is the outcome, and it is not hidden behind the cancel.
                Err(e) => Err(e),
            }
        }
        {
            let mut st = self.chan.lock();
            if let Some(outcome) = &st.outcome {
                // Ended already (a failure included: the cancel does not hide it).
                return answered(outcome.clone());
            }
            if !st.cancel_sent {
                st.cancel_sent = true;
                self.shared.enqueue(Msg::Cancel { cid: self.chan.cid });
            }
        }
        let bound = self.shared.config.cancel_timeout;
        let confirmed = deadline(bound, self.chan.wait(|st| st.outcome.clone())).await;
        match confirmed {
            Some(outcome) => answered(outcome),
            None => {
                let err = RemoteError::cancelled(
                    self.shared.peer.id.clone(),
                    self.shared.local.id.clone(),
                );
                self.shared.abandon_call(&self.chan, Error::from(err));
                Err(Error::Timeout(format!(
                    "{} did not confirm the cancel of {} within {bound:?}",
                    self.shared.peer.id, self.chan.func
                )))
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if !self.chan.is_finished() {
            self.shared.abandon_call(
                &self.chan,
                Error::Protocol("the context was dropped".into()),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Streams (both sides).

/// How many items a stream sends at once, with credit, before its task yields to its executor
/// once, where the link's writer task sends them: the writer (and every other task of the
/// actor) gets a turn while a sender holds thousands of credits, and the peer gets the first
/// items while the sender makes the rest. A link that hands messages straight to its transport
/// (between threads of one process) wakes its peer during a burst by itself, and gains nothing.
const SEND_TURN: u32 = 512;

/// The future of one stream item's send ([`TxInner::send`]). Lazy, as an `async fn` is: the
/// item leaves at the first poll, not when the future is made, and a send dropped before it
/// left has sent nothing. Written out rather than `async` so that it holds only the item, or
/// the boxed wait for credit: 48 bytes that every item builds and moves, against 128 for the
/// `async fn` it replaced.
pub(crate) struct SendItem<'a> {
    inner: &'a TxInner,
    state: SendState<'a>,
}

enum SendState<'a> {
    /// Not polled yet: the item's depth is checked first.
    New(Value),
    /// Checked; leaves at the next poll if there is credit (after a turn given to the
    /// executor, [`SEND_TURN`]).
    Ready(Value),
    /// No credit when it tried: the wait for it.
    Waiting(Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>),
    /// Finished (or being polled).
    Done,
}

impl Future for SendItem<'_> {
    type Output = Result<()>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Result<()>> {
        let inner = self.inner;
        if let SendState::Waiting(wait) = &mut self.state {
            let polled = wait.as_mut().poll(cx);
            if polled.is_ready() {
                self.state = SendState::Done;
            }
            return polled;
        }
        let value = match std::mem::replace(&mut self.state, SendState::Done) {
            SendState::New(value) => {
                if let Err(e) = crate::error::check_depth(&value, || {
                    format!("stream item of {}", inner.chan.func)
                }) {
                    return Poll::Ready(Err(e));
                }
                value
            }
            SendState::Ready(value) => value,
            SendState::Waiting(_) | SendState::Done => {
                return Poll::Ready(Err(Error::Protocol(format!(
                    "a send on the stream of {} was polled after it finished",
                    inner.chan.func
                ))));
            }
        };
        let mut st = inner.chan.lock();
        if inner.turn_due(&mut st) {
            // The executor's turn, before the item leaves.
            drop(st);
            self.state = SendState::Ready(value);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match inner.send_with_credit(&mut st, value) {
            Ok(sent) => Poll::Ready(sent),
            Err(unsent) => {
                // The wait for credit gives the executor its turn.
                st.sent_in_a_row = 0;
                drop(st);
                let mut wait: Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> =
                    Box::pin(inner.send_when_credited(unsent));
                let polled = wait.as_mut().poll(cx);
                if polled.is_pending() {
                    self.state = SendState::Waiting(wait);
                }
                polled
            }
        }
    }
}

/// The state behind the sending half: sends `Stop` when the last sending handle is dropped.
#[derive(Debug)]
struct TxInner {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
}

impl TxInner {
    /// Why nothing more may be sent, if so.
    fn send_blocker(&self, st: &crate::chan::ChanState) -> Option<Error> {
        if st.local_stopped {
            return Some(Error::Protocol(format!(
                "send on the stream of {} after it was closed",
                self.chan.func
            )));
        }
        let blocker = self.ended_blocker(st);
        if blocker.is_none() && st.peer_stopped_reading {
            return Some(Error::NotRead(format!(
                "the peer of {} closed its side of the stream: it reads no more items",
                self.chan.func
            )));
        }
        blocker
    }

    /// Why nothing more may be sent because the call ended (or this side closed).
    fn ended_blocker(&self, st: &crate::chan::ChanState) -> Option<Error> {
        match self.chan.side {
            Side::Caller => match &st.outcome {
                Some(Ok(_)) => Some(Error::Protocol(format!(
                    "{} has returned: its stream is over",
                    self.chan.func
                ))),
                Some(Err(e)) => Some(e.clone()),
                None => None,
            },
            Side::Callee => match &st.outcome {
                Some(Err(e)) => Some(e.clone()),
                _ if st.wire_done => Some(Error::Protocol(format!(
                    "the call to {} has finished: its stream is over",
                    self.chan.func
                ))),
                _ => None,
            },
        }
    }

    /// Sends one item, waiting for credit when there is none.
    ///
    /// The item leaves at once, without the wait's future, when there is credit: the common
    /// case of a stream that keeps up. The wait is boxed, so this future stays small to create
    /// and move for every item ([`SendItem`]).
    fn send(&self, value: Value) -> SendItem<'_> {
        SendItem {
            inner: self,
            state: SendState::New(value),
        }
    }

    /// Under the chan's lock: sends `value` if the stream may send and has credit (`Ok` with
    /// the outcome: sent, or why nothing more may be sent); `Err(value)` back when it has no
    /// credit.
    fn send_with_credit(
        &self,
        st: &mut crate::chan::ChanState,
        value: Value,
    ) -> std::result::Result<Result<()>, Value> {
        // Nothing that could stop the item (the common case, checked inline per item); the
        // reason otherwise.
        let open =
            !st.local_stopped && st.outcome.is_none() && !st.wire_done && !st.peer_stopped_reading;
        if !open && let Some(err) = self.send_blocker(st) {
            return Ok(Err(err));
        }
        let config = &self.shared.config;
        if !st.may_send(config) {
            return Err(value);
        }
        st.credit -= 1;
        st.sent_in_a_row = st.sent_in_a_row.saturating_add(1);
        st.note_sent(value.approx_size(config.credit_window_bytes));
        self.shared.enqueue(Msg::Yield {
            cid: self.chan.cid,
            value,
        });
        Ok(Ok(()))
    }

    /// Whether the sending task is due to give its executor a turn before its next item
    /// ([`SEND_TURN`]); the count starts again when it says so.
    fn turn_due(&self, st: &mut crate::chan::ChanState) -> bool {
        if st.sent_in_a_row >= SEND_TURN && self.shared.writes_later() {
            st.sent_in_a_row = 0;
            true
        } else {
            false
        }
    }

    /// Waits for credit, then sends `value` (or fails, if the stream ends meanwhile).
    async fn send_when_credited(&self, value: Value) -> Result<()> {
        let mut value = Some(value);
        self.chan
            .wait_sender(|st| {
                let item = value.take()?;
                match self.send_with_credit(st, item) {
                    Ok(sent) => Some(sent),
                    Err(item) => {
                        value = Some(item);
                        None
                    }
                }
            })
            .await
    }

    /// Sends `value` if there is credit now; an error if not (the `Sink` contract: `start_send`
    /// follows a `poll_ready` that saw credit).
    fn try_send_now(&self, value: Value) -> Result<()> {
        crate::error::check_depth(&value, || format!("stream item of {}", self.chan.func))?;
        let mut st = self.chan.lock();
        self.send_with_credit(&mut st, value).unwrap_or_else(|_| {
            Err(Error::Protocol(format!(
                "start_send on the stream of {} without credit (call poll_ready first)",
                self.chan.func
            )))
        })
    }

    fn close(&self) -> Result<()> {
        let mut st = self.chan.lock();
        if st.local_stopped {
            return Ok(());
        }
        st.local_stopped = true;
        let over = match self.chan.side {
            Side::Caller => st.outcome.is_some(),
            Side::Callee => st.wire_done || st.outcome.is_some(),
        };
        if !over {
            self.shared.enqueue(Msg::Stop { cid: self.chan.cid });
        }
        drop(st);
        self.chan.notify();
        Ok(())
    }
}

impl Drop for TxInner {
    fn drop(&mut self) {
        // The caller's side ends its direction when its last sending handle goes. The callee's
        // does not: a function that fails drops its stream on the way out, and a `Stop` sent
        // then would make the caller read a normal end of stream before the failure. Its
        // direction ends with the call instead (`Return` is an end of stream, `Error` an error),
        // or with an explicit `close()`.
        if self.chan.side != Side::Caller {
            return;
        }
        let mut st = self.chan.lock();
        if st.local_stopped || st.outcome.is_some() {
            return;
        }
        st.local_stopped = true;
        if st.awaited > 0 {
            // The context is awaited, not being dropped: the input is complete.
            drop(st);
            self.shared.enqueue(Msg::Stop { cid: self.chan.cid });
        } else {
            // Locals drop in reverse order, so a context dropped in the same scope (a cancel)
            // goes right after its stream: its `Cancel` must not follow a `Stop` that the callee
            // would take for the caller's input being complete. The `Stop` goes when the
            // context is next awaited, or after a moment if it is neither awaited nor dropped.
            st.stop_due = true;
            drop(st);
            let (shared, chan) = (self.shared.clone(), self.chan.clone());
            self.shared
                .exec
                .spawn(async move {
                    async_io::Timer::after(DROPPED_STOP_GRACE).await;
                    send_due_stop(&shared, &chan);
                })
                .detach();
        }
        self.chan.notify();
    }
}

/// How long the `Stop` of a caller's stream whose sending handles were all dropped waits for its
/// context to be dropped too (which makes it a cancel, and no `Stop` goes), unless the context is
/// awaited meanwhile ([`TxInner`]'s drop).
const DROPPED_STOP_GRACE: Duration = Duration::from_millis(10);

/// Sends the `Stop` of a dropped sending side if it is still due (the context was neither
/// cancelled nor dropped meanwhile).
fn send_due_stop(shared: &Shared, chan: &Chan) {
    let mut st = chan.lock();
    if std::mem::take(&mut st.stop_due) && st.outcome.is_none() && !st.cancel_sent {
        drop(st);
        shared.enqueue(Msg::Stop { cid: chan.cid });
    }
}

/// A wait on a caller's context outcome, for as long as it runs: a stream's sending side
/// dropped before or meanwhile ends at once (see [`TxInner`]'s drop).
struct Awaited<'a>(&'a Chan);

impl<'a> Awaited<'a> {
    fn new(shared: &Shared, chan: &'a Chan) -> Self {
        chan.lock().awaited += 1;
        send_due_stop(shared, chan);
        Awaited(chan)
    }
}

impl Drop for Awaited<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.awaited = st.awaited.saturating_sub(1);
    }
}

/// A bidirectional stream of values inside a context (either side).
///
/// Flow control: the receiver grants the sender a window of items when it opens its stream
/// (`credit_window`, or the window given to `open_stream_with_window`), and re-grants consumed
/// items in batches of a quarter of the window; a default window grows toward
/// `credit_window_max` while the items are small ([`LinkConfig`](crate::LinkConfig)).
/// [`send`](MsgStream::send) waits while the sender has no credit. End of stream is explicit:
/// `recv` returns `Ok(None)` once the peer closed its side (or the call returned); `send` after
/// [`close`](MsgStream::close) is `Err(Error::Protocol)`. On the caller's side, dropping every
/// sending handle closes the sending side, unless the context is dropped right after (a cancel,
/// which the callee sees as one, not as the end of its input); on the callee's side the
/// direction ends with the call (or `close()`), so that a function failing mid-stream is seen as
/// that failure, never as a normal end.
#[derive(Debug)]
pub struct MsgStream {
    tx: StreamTx,
    rx: StreamRx,
}

impl MsgStream {
    pub(crate) fn new(shared: Arc<Shared>, chan: Arc<Chan>) -> Self {
        MsgStream {
            tx: StreamTx {
                inner: Arc::new(TxInner {
                    shared: shared.clone(),
                    chan: chan.clone(),
                }),
                waiting: None,
            },
            rx: StreamRx { shared, chan },
        }
    }

    /// Sends one item, waiting for credit when the peer's window is full.
    /// Fails after [`close`](MsgStream::close) or when the peer is gone.
    // Not an `async fn`: the future is the sender's own, not wrapped in one more state
    // machine that every item would build and move.
    pub fn send(&self, value: Value) -> impl Future<Output = Result<()>> + Send + '_ {
        self.tx.send(value)
    }

    /// Sends one typed item (converted through serde).
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn send_typed<T: Serialize>(&self, item: &T) -> Result<()> {
        let value = harrow_ipc::to_value(item).map_err(|e| Error::Value(e.to_string()))?;
        self.tx.send(value).await
    }

    /// Receives the next item; `Ok(None)` once the peer stopped its side.
    // Not an `async fn`, as `send`.
    pub fn recv(&mut self) -> impl Future<Output = Result<Option<Value>>> + Send + '_ {
        self.rx.recv()
    }

    /// Receives the next typed item.
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn recv_typed<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.rx.recv().await? {
            None => Ok(None),
            Some(v) => harrow_ipc::from_value(v)
                .map(Some)
                .map_err(|e| Error::Value(format!("stream item of {}: {e}", self.rx.chan.func))),
        }
    }

    /// Finishes this side of the stream (`Stop`). Idempotent.
    pub async fn close(&self) -> Result<()> {
        self.tx.close().await
    }

    /// Splits into a sending half (cloneable) and a receiving half.
    pub fn split(self) -> (StreamTx, StreamRx) {
        (self.tx, self.rx)
    }

    /// Items received and not yet consumed (introspection for tests).
    #[doc(hidden)]
    pub fn buffered(&self) -> usize {
        self.rx.buffered()
    }

    /// The most items ever buffered on the receiving side (introspection for tests).
    #[doc(hidden)]
    pub fn max_buffered(&self) -> usize {
        self.rx.max_buffered()
    }

    /// The receiving direction's current credit window (introspection for tests).
    #[doc(hidden)]
    pub fn window(&self) -> u32 {
        self.rx.window()
    }
}

/// The sending half of a [`MsgStream`]. Also a [`Sink`](futures_sink::Sink) of values:
/// `poll_ready` waits for credit, `start_send` sends one item, `poll_flush` has nothing to wait
/// for (items are queued for the link's writer), `poll_close` closes this side (`Stop`).
///
/// ```
/// use std::{future::poll_fn, pin::Pin};
/// use futures_sink::Sink;
/// use harrow_portal::{FnRegistry, ipc::Value};
///
/// let mut reg = FnRegistry::new();
/// reg.context("sum:items", |ctx, _| async move {
///     ctx.started(Value::Null).await?;
///     let mut s = ctx.open_stream_with_window(2).await?; // at most 2 items in flight to us
///     let mut total = 0;
///     while let Some(v) = s.recv().await? {
///         total += v.as_i64().unwrap_or(0);
///     }
///     Ok(Value::Int(total))
/// })
/// .unwrap();
/// # let exec = std::sync::Arc::new(async_executor::Executor::new());
/// # async_io::block_on(exec.run(async {
/// # let (ca, cb) = harrow_portal::ipc::mem::pair();
/// # let info = |name: &str| harrow_portal::LocalInfo {
/// #     id: harrow_portal::ipc::ActorId::new(name),
/// #     backend: "thread".into(),
/// # };
/// # let (caller, _callee) = futures_lite::future::zip(
/// #     harrow_portal::Link::establish(ca, info("caller"), None, &exec, Default::default()),
/// #     harrow_portal::Link::establish(cb, info("callee"), Some(std::sync::Arc::new(reg)), &exec,
/// #         Default::default()),
/// # ).await;
/// # let caller = caller.unwrap(); // keep the link: dropping it closes it
/// # let portal = caller.portal();
/// let (mut ctx, _) = portal.open_context("sum:items", Value::Null).await.unwrap();
/// let (mut tx, _rx) = ctx.open_stream().await.unwrap().split();
/// for i in 1..=10 {
///     poll_fn(|cx| Pin::new(&mut tx).poll_ready(cx)).await.unwrap(); // waits for credit
///     Pin::new(&mut tx).start_send(Value::Int(i)).unwrap();
/// }
/// poll_fn(|cx| Pin::new(&mut tx).poll_close(cx)).await.unwrap();
/// assert_eq!(ctx.result().await.unwrap(), Value::Int(55));
/// # }));
/// ```
#[derive(Debug)]
pub struct StreamTx {
    inner: Arc<TxInner>,
    /// The `Sink` side's wait for credit.
    waiting: Option<harrow_ipc::wait::EventListener>,
}

impl Clone for StreamTx {
    fn clone(&self) -> Self {
        StreamTx {
            inner: self.inner.clone(),
            waiting: None,
        }
    }
}

impl futures_sink::Sink<Value> for StreamTx {
    type Error = Error;

    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            {
                let mut st = this.inner.chan.lock();
                if let Some(err) = this.inner.send_blocker(&st) {
                    drop(st);
                    this.stop_waiting();
                    return Poll::Ready(Err(err));
                }
                if st.may_send(&this.inner.shared.config) {
                    let turn = this.inner.turn_due(&mut st);
                    drop(st);
                    this.stop_waiting();
                    if turn {
                        // The executor's turn, as `send` gives it: ready again right after.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            match this.waiting.as_mut() {
                // Then check again.
                None => this.waiting = Some(this.inner.chan.listen_counted()),
                Some(listener) => match std::pin::Pin::new(listener).poll(cx) {
                    Poll::Pending => {
                        // The wait for credit gives the executor its turn.
                        this.inner.chan.lock().sent_in_a_row = 0;
                        return Poll::Pending;
                    }
                    Poll::Ready(()) => this.stop_waiting(),
                },
            }
        }
    }

    fn start_send(self: std::pin::Pin<&mut Self>, item: Value) -> Result<()> {
        self.inner.try_send_now(item)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        std::task::Poll::Ready(self.inner.close())
    }
}

impl Drop for StreamTx {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl StreamTx {
    /// Drops the `Sink` side's listener, if any (it is counted: `Chan::listen_counted`).
    fn stop_waiting(&mut self) {
        if self.waiting.take().is_some() {
            self.inner.chan.unlisten();
        }
    }

    /// See [`MsgStream::send`].
    pub fn send(&self, value: Value) -> impl Future<Output = Result<()>> + Send + '_ {
        self.inner.send(value)
    }

    /// See [`MsgStream::send_typed`].
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn send_typed<T: Serialize>(&self, item: &T) -> Result<()> {
        let value = harrow_ipc::to_value(item).map_err(|e| Error::Value(e.to_string()))?;
        self.inner.send(value).await
    }

    /// See [`MsgStream::close`].
    pub async fn close(&self) -> Result<()> {
        self.inner.close()
    }

    /// Credit currently available for sending without waiting (introspection for tests).
    #[doc(hidden)]
    pub fn credit(&self) -> u32 {
        self.inner.chan.lock().credit
    }

    /// Items sent and not yet reported consumed by the receiver, and their estimated bytes
    /// (introspection for tests).
    #[doc(hidden)]
    pub fn unacked(&self) -> (usize, usize) {
        self.inner.chan.lock().unacked()
    }
}

/// The receiving half of a [`MsgStream`].
#[derive(Debug)]
pub struct StreamRx {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        // Dropped while the peer may still send: tell it, so that a sender waiting for credit
        // fails instead of waiting for ever (and items on their way are dropped on arrival).
        let mut st = self.chan.lock();
        let over = st.peer_stopped || st.outcome.is_some() || st.wire_done;
        if st.rx_open && !over && !st.stopped_reading {
            st.stopped_reading = true;
            st.items.clear();
            drop(st);
            if self.chan.side == Side::Callee && crate::callee::polling(&self.chan) {
                // Dropped by its function as it runs, which may be on its way out with a
                // failure: told once the poll ended without ending the call (`CallScope`).
                self.chan
                    .stop_reading_due
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                self.shared.enqueue(Msg::StopReading { cid: self.chan.cid });
            }
        }
    }
}

/// Tells the caller of served call `chan` that its function reads no more of its stream
/// (deferred by [`StreamRx`]'s drop to the end of the function's poll), unless the call ended.
pub(crate) fn send_stop_reading(shared: &Shared, chan: &Chan) {
    let st = chan.lock();
    if !(st.wire_done || st.peer_stopped) {
        drop(st);
        shared.enqueue(Msg::StopReading { cid: chan.cid });
    }
}

impl StreamRx {
    /// See [`MsgStream::recv`].
    pub fn recv(&mut self) -> impl Future<Output = Result<Option<Value>>> + Send + '_ {
        let shared = &self.shared;
        let chan = &self.chan;
        chan.wait_owner(move |st| {
            // A cancelled callee learns it at once (its remaining input is moot); a caller gets
            // what the callee sent before the error.
            if chan.side == Side::Callee
                && let Some(Err(e)) = &st.outcome
            {
                return Some(Err(e.clone()));
            }
            if let Some(v) = st.items.pop_front() {
                if let Some(grant) = st.consume_one() {
                    shared.enqueue(grant.msg(chan.cid));
                }
                return Some(Ok(Some(v)));
            }
            if let Some(grant) = st.ran_dry() {
                shared.enqueue(grant.msg(chan.cid));
            }
            // End of stream means the peer finished: it closed its side, or it returned. A
            // cancellation (ours too) or a broken link is an error, never an end.
            if st.peer_stopped {
                return Some(Ok(None));
            }
            match &st.outcome {
                None => None,
                Some(Ok(_)) => Some(Ok(None)),
                Some(Err(e)) => Some(Err(e.clone())),
            }
        })
    }

    /// This half as a [`Stream`](futures_lite::Stream) of items. It ends after the peer's `Stop`
    /// (or the call's return), and after yielding one error.
    ///
    /// The stream is `Unpin`, so `StreamExt::next` works on it directly.
    pub fn into_stream(
        self,
    ) -> impl futures_lite::Stream<Item = Result<Value>> + Send + Unpin + 'static {
        Box::pin(futures_lite::stream::unfold(Some(self), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(Some(v)) => Some((Ok(v), Some(rx))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }

    /// Receives the next typed item.
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn recv_typed<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.recv().await? {
            None => Ok(None),
            Some(v) => harrow_ipc::from_value(v)
                .map(Some)
                .map_err(|e| Error::Value(format!("stream item of {}: {e}", self.chan.func))),
        }
    }

    /// Items received and not yet consumed (introspection for tests).
    #[doc(hidden)]
    pub fn buffered(&self) -> usize {
        self.chan.lock().items.len()
    }

    /// The most items ever buffered (introspection for tests).
    #[doc(hidden)]
    pub fn max_buffered(&self) -> usize {
        self.chan.lock().max_buffered
    }

    /// The current credit window (introspection for tests).
    #[doc(hidden)]
    pub fn window(&self) -> u32 {
        self.chan.lock().window
    }
}
