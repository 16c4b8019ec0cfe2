//! The callee side: the [`Resolver`] trait, what a served call sees, and how it fails.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use harrow_ipc::{ActorId, CallKind, Cid, ErrorKind, FnPath, Msg, RemoteError, Value};

use crate::chan::{Chan, WindowRule};
use crate::link::Shared;
use crate::{Error, MsgStream, Result};

/// The future a resolver returns for one call. Dropping it cancels the call.
pub type CallFuture = Pin<Box<dyn Future<Output = std::result::Result<Value, CallError>> + Send>>;

/// Finds and starts the functions an actor serves. [`FnRegistry`](crate::FnRegistry) is the Rust
/// implementation; the subint backend resolves Python functions.
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// Starts `call`. Returns the future that runs it, or an error (`NotFound`,
    /// `ModuleNotExposed`, `BadArguments`) that is sent to the caller instead of `StartAck`.
    fn start(&self, call: Invocation) -> std::result::Result<CallFuture, CallError>;
}

/// One incoming call, as handed to a [`Resolver`].
#[derive(Debug)]
pub struct Invocation {
    /// The function asked for.
    pub func: FnPath,
    /// Unary call or context.
    pub kind: CallKind,
    /// The arguments.
    pub args: Value,
    /// The callee's handle on the call (started, stream, cancellation).
    pub ctx: CalleeContext,
}

/// A failure of a served call, turned into a [`RemoteError`] on the wire (the link adds the
/// source actor). Like `anyhow::Error`, it converts from any error with `?`; an error that is
/// itself remote (a portal [`Error::Remote`](crate::Error::Remote) from a further actor) is relayed
/// as the same error with this actor added to its relay path.
pub struct CallError {
    repr: CallErrorRepr,
}

enum CallErrorRepr {
    Local {
        kind: ErrorKind,
        type_name: String,
        message: String,
        traceback: String,
    },
    Relayed(Box<RemoteError>),
}

impl CallError {
    /// A new error of `kind` with the given type name and message.
    pub fn new(kind: ErrorKind, type_name: impl Into<String>, message: impl Into<String>) -> Self {
        CallError {
            repr: CallErrorRepr::Local {
                kind,
                type_name: type_name.into(),
                message: message.into(),
                traceback: String::new(),
            },
        }
    }

    /// An application error (`ErrorKind::Raised`) with a free-form type name.
    pub fn raised(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        CallError::new(ErrorKind::Raised, type_name, message)
    }

    /// Sets the traceback text.
    pub fn with_traceback(mut self, tb: impl Into<String>) -> Self {
        if let CallErrorRepr::Local { traceback, .. } = &mut self.repr {
            *traceback = tb.into();
        }
        self
    }

    /// An error that came from a further actor, forwarded unchanged but for the relay hop.
    pub fn relay(remote: RemoteError) -> Self {
        CallError {
            repr: CallErrorRepr::Relayed(Box::new(remote)),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match &self.repr {
            CallErrorRepr::Local { kind, .. } => *kind,
            CallErrorRepr::Relayed(r) => r.kind,
        }
    }

    /// Converts to the wire error, raised in (or relayed by) `local`.
    pub fn into_remote(self, local: &ActorId) -> RemoteError {
        match self.repr {
            CallErrorRepr::Local {
                kind,
                type_name,
                message,
                traceback,
            } => {
                RemoteError::new(kind, type_name, message, local.clone()).with_traceback(traceback)
            }
            CallErrorRepr::Relayed(r) => {
                let mut r = *r;
                if r.source != *local && r.relay_path.last() != Some(local) {
                    r.relay_path.push(local.clone());
                }
                r
            }
        }
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            CallErrorRepr::Local {
                kind,
                type_name,
                message,
                ..
            } => write!(f, "CallError({kind:?}, {type_name}: {message})"),
            CallErrorRepr::Relayed(r) => write!(f, "CallError(relayed {r})"),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            // An empty message prints the type alone, as Python prints such an exception.
            CallErrorRepr::Local {
                type_name, message, ..
            } if message.is_empty() => write!(f, "{type_name}"),
            CallErrorRepr::Local {
                type_name, message, ..
            } => write!(f, "{type_name}: {message}"),
            CallErrorRepr::Relayed(r) => write!(f, "{r}"),
        }
    }
}

impl<E> From<E> for CallError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        // The error's type, as its users know it: `type_name` gives the module it is defined
        // in, which for this crate's own error is private.
        let mut type_name = std::any::type_name::<E>();
        // A remote error (possibly inside a portal error) is relayed, not wrapped.
        let boxed = match boxed.downcast::<crate::Error>() {
            Ok(portal_err) => match *portal_err {
                crate::Error::Remote(remote) => return CallError::relay(*remote),
                other => {
                    type_name = "harrow_portal::Error";
                    Box::new(other) as Box<dyn std::error::Error + Send + Sync>
                }
            },
            Err(b) => b,
        };
        let boxed = match boxed.downcast::<RemoteError>() {
            Ok(remote) => return CallError::relay(*remote),
            Err(b) => b,
        };
        // An error that stands for a group of remote failures (a nursery's error exposes its
        // group as its `source`) crosses the wire as that group, so its structure survives.
        if let Some(group) = boxed
            .source()
            .and_then(|s| s.downcast_ref::<RemoteError>())
            .filter(|r| r.is_group() || r.is_cancelled())
        {
            return CallError::relay(group.clone());
        }
        let mut message = boxed.to_string();
        let mut source = boxed.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        let err = CallError::raised(type_name, message);
        match backtrace_text() {
            Some(bt) => err.with_traceback(bt),
            None => err,
        }
    }
}

/// A backtrace of the current thread for an error crossing to a caller, when asked for with
/// `RUST_LIB_BACKTRACE=1` (std's switch for library backtraces); `None` otherwise.
///
/// `RUST_BACKTRACE` alone does not turn it on: it is often set for the sake of panics, and
/// capturing and symbolising a backtrace costs from tens of milliseconds to seconds (a debug
/// build, a fresh process), which would make every failure that much slower to report and skew
/// who wins a race against a cancel. A panic always keeps its location, and its backtrace follows
/// `RUST_BACKTRACE` as usual.
pub(crate) fn backtrace_text() -> Option<String> {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let wanted = *WANTED.get_or_init(|| {
        std::env::var("RUST_LIB_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0")
    });
    wanted.then(|| std::backtrace::Backtrace::force_capture().to_string())
}

/// The callee's handle on one served call. Cheap to clone (an `Arc` inside); clones may be
/// moved into sub-tasks of the call.
#[derive(Clone)]
pub struct CalleeContext {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
}

impl fmt::Debug for CalleeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CalleeContext")
            .field("cid", &self.chan.cid)
            .field("func", &self.chan.func)
            .field("caller", &self.shared.peer.id)
            .finish_non_exhaustive()
    }
}

impl CalleeContext {
    pub(crate) fn new(shared: Arc<Shared>, chan: Arc<Chan>) -> Self {
        CalleeContext { shared, chan }
    }

    /// The call id.
    pub fn cid(&self) -> Cid {
        self.chan.cid
    }

    /// The actor that called.
    pub fn caller(&self) -> &ActorId {
        &self.shared.peer.id
    }

    /// The actor serving the call (this one).
    pub fn local(&self) -> &ActorId {
        &self.shared.local.id
    }

    /// Whether the call is a unary call or a context.
    pub fn kind(&self) -> CallKind {
        self.chan.kind
    }

    /// Sends the context's first value to the caller. Exactly once: a second call is an error
    /// here and is reported to the caller as well. An error for unary calls.
    pub async fn started(&self, value: Value) -> Result<()> {
        crate::error::check_depth(&value, || format!("started value of {}", self.chan.func))?;
        let mut st = self.chan.lock();
        let problem = if self.chan.kind == CallKind::Unary {
            Some(format!("started() called in unary call {}", self.chan.func))
        } else if st.started_sent {
            Some(format!("started() called twice in {}", self.chan.func))
        } else {
            None
        };
        if let Some(message) = problem {
            self.shared
                .protocol_error_to_caller(&self.chan, &mut st, &message);
            drop(st);
            self.chan.notify();
            return Err(Error::Protocol(message));
        }
        if let Some(Err(e)) = &st.outcome {
            return Err(e.clone());
        }
        if st.wire_done {
            return Err(Error::Protocol(format!(
                "started() after the call to {} finished",
                self.chan.func
            )));
        }
        st.started_sent = true;
        self.shared.enqueue(Msg::Started {
            cid: self.chan.cid,
            value,
        });
        Ok(())
    }

    /// [`started`](CalleeContext::started) with a typed value (converted through serde).
    #[deprecated(
        note = "declare a `ContextEndpoint` once and use `Portal::open` and `FnRegistry::serve_context`: typed on both sides"
    )]
    pub async fn started_typed<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        let value = harrow_ipc::to_value(value).map_err(|e| Error::Value(e.to_string()))?;
        self.started(value).await
    }

    /// Opens this side of the context's stream. Before `started` it is an error here and is
    /// reported to the caller as well.
    ///
    /// Grants the caller the link's credit window for sending to us: `credit_window` items,
    /// growing toward `credit_window_max` while the items received are small (see
    /// [`LinkConfig::credit_window_max`](crate::LinkConfig::credit_window_max)).
    /// Opening twice is an error here only.
    pub async fn open_stream(&self) -> Result<MsgStream> {
        self.open_stream_by(self.shared.config.window_rule())
    }

    /// [`open_stream`](Self::open_stream) granting the caller `window` items in flight toward
    /// this side (at least 1) instead of the link's `credit_window`: a larger window for a fast
    /// stream, a smaller one to bound memory. Each side sets the window of what it receives.
    pub async fn open_stream_with_window(&self, window: u32) -> Result<MsgStream> {
        self.open_stream_by(WindowRule::fixed(window))
    }

    fn open_stream_by(&self, rule: WindowRule) -> Result<MsgStream> {
        let mut st = self.chan.lock();
        if !st.started_sent {
            let message = format!("stream opened before started() in {}", self.chan.func);
            self.shared
                .protocol_error_to_caller(&self.chan, &mut st, &message);
            drop(st);
            self.chan.notify();
            return Err(Error::Protocol(message));
        }
        if st.tx_open {
            return Err(Error::Protocol(format!(
                "the stream of {} is already open",
                self.chan.func
            )));
        }
        if let Some(Err(e)) = &st.outcome {
            return Err(e.clone());
        }
        st.tx_open = true;
        let grant = st.open_rx(rule);
        if !st.wire_done {
            self.shared.enqueue(grant.msg(self.chan.cid));
        }
        drop(st);
        Ok(MsgStream::new(self.shared.clone(), self.chan.clone()))
    }

    /// Answers this (unary) call now, from any thread, with what its function ended with:
    /// the answer goes to the caller from here, instead of through the call's future and this
    /// link's executor (one thread hand-off less, for a function whose work runs on a thread of
    /// its own: a Python actor's interpreter thread answers this way). It is the call's answer
    /// exactly as if its future had returned `result` (a `Cancelled` error after a cancel gives
    /// the canonical cancelled answer). The call's future must still end, soon: what it ends
    /// with is dropped. Nothing is sent when the call has already ended (cancelled and dropped,
    /// its cleanup time up, the link closed); a second answer is ignored. (A call that said
    /// [`ends_with_answer_now`](Self::ends_with_answer_now) may have its future dropped here
    /// instead.)
    ///
    /// For unary calls only: a context's or stream's messages go through the link's executor,
    /// and an answer sent around them could overtake them.
    pub fn answer_now(&self, result: Result<Value, CallError>) {
        self.shared.answer_served_now(self.chan.cid, result);
    }

    /// Says that this call's future has nothing left to do once
    /// [`answer_now`](Self::answer_now) has answered it: it only waits for that answer (and for
    /// a cancel). Call it in [`Resolver::start`](crate::Resolver::start), before the future is
    /// first polled.
    ///
    /// The link then keeps the waiting future with the call, without a task of its own: a task
    /// is made only when something wakes the future (its cancel, or an answer that comes
    /// through it after all). Once `answer_now` has answered the call, a future that was not
    /// woken is dropped right there, on the answering thread, without another poll. A call
    /// answered by another thread is then spared a task's making, scheduling and end.
    pub fn ends_with_answer_now(&self) {
        self.chan
            .ends_with_answer_now
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a cancel for this call has arrived.
    pub fn is_cancelled(&self) -> bool {
        self.chan.lock().cancelled_by.is_some()
    }

    /// Who cancelled this call, once a cancel has arrived (this actor, when the link itself
    /// closed or broke).
    pub fn cancelled_by(&self) -> Option<ActorId> {
        self.chan.lock().cancelled_by.clone()
    }

    /// Resolves when a cancel for this call arrives, with the canceller. (When the link itself
    /// closes or breaks, the canceller is this actor.)
    ///
    /// Calling it declares the call cancel-aware (see [`observe_cancel`](Self::observe_cancel)):
    /// a function that waits for its cancel gets to react to it.
    pub async fn cancelled(&self) -> ActorId {
        self.chan.wait_cancelled().await
    }

    /// Cancels this call from inside (the callee gives up on its own context). Its stream
    /// operations then fail with the cancel (so `?` on the next one ends the function), and the
    /// caller is told `ContextCancelled` naming this actor, the callee, as the canceller. The
    /// function gets the usual cleanup bound to end; if it returns a value instead, that value is
    /// the answer.
    ///
    /// ```
    /// use harrow_portal::{FnRegistry, ipc::Value};
    ///
    /// let mut reg = FnRegistry::new();
    /// reg.context("feed:two_then_give_up", |ctx, _| async move {
    ///     ctx.started(Value::Null).await?;
    ///     let s = ctx.open_stream().await?;
    ///     s.send(Value::Int(1)).await?;
    ///     s.send(Value::Int(2)).await?;
    ///     ctx.cancel();
    ///     s.send(Value::Int(3)).await?; // fails: the call was cancelled
    ///     Ok(Value::Null)
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
    /// let (mut ctx, _) = portal.open_context("feed:two_then_give_up", Value::Null).await.unwrap();
    /// let mut s = ctx.open_stream().await.unwrap();
    /// assert_eq!(s.recv().await.unwrap(), Some(Value::Int(1)));
    /// assert_eq!(s.recv().await.unwrap(), Some(Value::Int(2)));
    /// let err = s.recv().await.unwrap_err(); // not an end of stream: a cancel, by the callee
    /// assert!(err.is_cancelled());
    /// assert_eq!(err.canceller(), Some(&_callee.unwrap().local().id));
    /// # }));
    /// ```
    pub fn cancel(&self) {
        self.observe_cancel();
        let local = self.shared.local.id.clone();
        self.shared.cancel_served(&[self.chan.cid], &local);
    }

    /// Declares that this call observes its own cancellation, so that a cancel does not drop its
    /// future at once: its stream operations fail with the cancel, [`cancelled`](Self::cancelled)
    /// resolves, and the future is polled until it ends, for at most the link's
    /// `cancel_cleanup` (or what [`extend_cleanup`](Self::extend_cleanup) made of it); then it
    /// is dropped. What it ends with is the caller's answer: a failure (raised before the cancel
    /// or during the cleanup) is reported as such, an `Err` of kind `Cancelled` or a dropped
    /// future as `ContextCancelled`, a value as the call's result.
    ///
    /// Calls that never declare it are dropped as soon as the cancel arrives (dropping a future
    /// is how Rust cancels it). A nursery opened inside a served call declares it for its call.
    pub fn observe_cancel(&self) {
        self.chan.lock().cancel_aware = true;
    }

    /// Declares that, if cancelled, this call needs up to `d` to clean up (for example to tear
    /// down the children of a nursery it holds, within their bounded ladder). Applied the moment
    /// a cancel arrives, whether or not the call is polled in time; bounded by what it says.
    /// Implies [`observe_cancel`](Self::observe_cancel).
    pub fn reserve_cleanup(&self, d: std::time::Duration) {
        let mut st = self.chan.lock();
        st.cancel_aware = true;
        st.cleanup_reserved = st.cleanup_reserved.max(d);
    }

    /// Lets this cancel-aware call, once cancelled, run until `extra` from now if that is later
    /// than its cleanup bound: for example to tear its own children down with their bounded
    /// ladder, or to finish reporting what it ended with. Whether the cancel arrived before or
    /// arrives after this call. The `CancelAck` of an actor cancel tells the canceller how long
    /// that is. Does nothing for a call that did not [`observe_cancel`](Self::observe_cancel).
    pub fn extend_cleanup(&self, extra: std::time::Duration) {
        let mut st = self.chan.lock();
        if !st.cancel_aware {
            return;
        }
        let until = harrow_ipc::wait::instant_after(extra);
        if st.cleanup_until.is_none_or(|t| t < until) {
            st.cleanup_until = Some(until);
        }
        // Only a cancelled call has waiters on its cleanup bound (they wait for `cancelled_by`
        // first, and read the bound when it is set); before the cancel, a wake-up would only
        // make the call's tasks poll again for nothing (a Python actor extends on every call).
        let cancelled = st.cancelled_by.is_some();
        drop(st);
        if cancelled {
            self.chan.notify_cancel();
        }
    }
}

thread_local! {
    static CURRENT_CALL: std::cell::RefCell<Option<CalleeContext>> =
        const { std::cell::RefCell::new(None) };
}

/// The served call whose future is being polled on this thread, if any: what a library called
/// from a served function (a nursery, for one) uses to follow that call's cancellation.
pub fn current_call() -> Option<CalleeContext> {
    CURRENT_CALL.with(|c| c.borrow().clone())
}

/// Makes `ctx` the [`current_call`] while `inner` is polled (moved in and out: no clone per poll).
pub(crate) struct CallScope<F> {
    ctx: Option<CalleeContext>,
    inner: F,
}

impl<F> CallScope<F> {
    pub(crate) fn new(ctx: CalleeContext, inner: F) -> Self {
        CallScope {
            ctx: Some(ctx),
            inner,
        }
    }
}

impl<F: Future + Unpin> Future for CallScope<F> {
    type Output = F::Output;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        /// Puts the context back and the previous one in place, even if `inner` panics.
        struct Restore<'a> {
            slot: &'a mut Option<CalleeContext>,
            prev: Option<CalleeContext>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let prev = self.prev.take();
                *self.slot = CURRENT_CALL.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
            }
        }
        let CallScope { ctx, inner } = &mut *self;
        let polled = {
            let prev = CURRENT_CALL.with(|c| std::mem::replace(&mut *c.borrow_mut(), ctx.take()));
            let _restore = Restore { slot: ctx, prev };
            Pin::new(inner).poll(cx)
        };
        // The function goes on without reading its stream: the caller is told now. (One that
        // ended has its answer told instead.)
        if polled.is_pending()
            && let Some(ctx) = ctx.as_ref()
            && ctx
                .chan
                .stop_reading_due
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            ctx.chan
                .stop_reading_due
                .store(false, std::sync::atomic::Ordering::Relaxed);
            crate::caller::send_stop_reading(&ctx.shared, &ctx.chan);
        }
        polled
    }
}

/// Whether `chan` is the call whose function is being polled on this thread right now (its
/// [`CallScope`]).
pub(crate) fn polling(chan: &Arc<Chan>) -> bool {
    CURRENT_CALL.with(|c| {
        c.try_borrow()
            .is_ok_and(|cur| cur.as_ref().is_some_and(|ctx| Arc::ptr_eq(&ctx.chan, chan)))
    })
}
