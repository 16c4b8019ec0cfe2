//! [`ContextEndpoint`]: a context function declared once with all its types (arguments, started
//! value, the items each way on its stream, result), and the typed handles both sides get:
//! [`TypedContext`] (caller), [`TypedCalleeContext`] (callee), [`TypedStream`] and its halves
//! [`TypedTx`] / [`TypedRx`] (either side). [`StreamEndpoint`] declares a one-way stream the same
//! way, read as a [`TypedOneWayStream`].
//!
//! Every value still crosses as a [`Value`] (so a Python or dynamic peer speaks to a typed Rust
//! actor unchanged); the types only fix what each side converts to and from. A value of the wrong
//! shape from a peer is an [`Error::Value`] naming what and where, never a panic.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use harrow_ipc::{ActorId, CallKind, ErrorKind, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    CallError, CallFuture, CalleeContext, Context, Error, FnRegistry, Invocation, MsgStream,
    Portal, Result, StreamRx, StreamTx,
};

/// A context function's path with its five types, declared once (typically as a `const` shared
/// by the serving and the calling crate) and used by both sides:
///
/// - `A`: the arguments;
/// - `S`: the value the callee passes to `started`;
/// - `ToCallee`: the items the caller sends on the context's stream;
/// - `ToCaller`: the items the callee sends on it;
/// - `R`: the result.
///
/// The callee serves it with [`FnRegistry::serve_context`], the caller opens it with
/// [`Portal::open`]; a handler, an argument or a stream item of another type is a compile error.
/// Use `()` for a stream direction the context does not use.
///
/// ```
/// use std::sync::Arc;
/// use harrow_portal::{ContextEndpoint, FnRegistry, Link, LinkConfig, LocalInfo};
/// use harrow_portal::ipc::{mem, ActorId};
///
/// /// Greets with a prefix, then echoes each line upper-cased; returns how many it echoed.
/// const SHOUT: ContextEndpoint<String, String, String, String, u64> =
///     ContextEndpoint::new("chat:shout");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_context(SHOUT, |ctx, prefix| async move {
///     ctx.started(&format!("{prefix}: ready")).await?;
///     let mut lines = ctx.open_stream().await?;
///     let mut n = 0;
///     while let Some(line) = lines.recv().await? {
///         lines.send(&format!("{prefix}: {}", line.to_uppercase())).await?;
///         n += 1;
///     }
///     Ok(n)
/// })
/// .unwrap();
/// # let exec = Arc::new(async_executor::Executor::new());
/// # async_io::block_on(exec.run(async {
/// # let (ca, cb) = mem::pair();
/// # let info = |name: &str| LocalInfo { id: ActorId::new(name), backend: "thread".into() };
/// # let (caller, _callee) = futures_lite::future::zip(
/// #     Link::establish(ca, info("caller"), None, &exec, LinkConfig::default()),
/// #     Link::establish(cb, info("callee"), Some(Arc::new(reg)), &exec, LinkConfig::default()),
/// # ).await;
/// # let caller = caller.unwrap();
/// let portal = caller.portal();
/// let (mut ctx, greeting) = portal.open(SHOUT, &"bot".to_string()).await.unwrap();
/// assert_eq!(greeting, "bot: ready");
/// let mut stream = ctx.open_stream().await.unwrap();
/// stream.send(&"hi".to_string()).await.unwrap();
/// assert_eq!(stream.recv().await.unwrap().as_deref(), Some("bot: HI"));
/// stream.close().await.unwrap();
/// assert_eq!(ctx.result().await.unwrap(), 1);
/// # }));
/// ```
///
/// A handler of another shape, arguments of another type, or a stream item of another type do
/// not compile:
///
/// ```compile_fail
/// use harrow_portal::{ContextEndpoint, FnRegistry};
/// const SHOUT: ContextEndpoint<String, String, String, String, u64> =
///     ContextEndpoint::new("chat:shout");
/// let mut reg = FnRegistry::new();
/// // `started` takes a String here, not a number.
/// reg.serve_context(SHOUT, |ctx, _prefix| async move {
///     ctx.started(&42).await?;
///     Ok(0)
/// })
/// .unwrap();
/// ```
///
/// ```compile_fail
/// use harrow_portal::{ContextEndpoint, FnRegistry};
/// const SHOUT: ContextEndpoint<String, String, String, String, u64> =
///     ContextEndpoint::new("chat:shout");
/// let mut reg = FnRegistry::new();
/// // The result is a u64, not a String.
/// reg.serve_context(SHOUT, |_ctx, prefix: String| async move { Ok(prefix) }).unwrap();
/// ```
///
/// ```compile_fail
/// # async fn f(portal: harrow_portal::Portal) {
/// use harrow_portal::ContextEndpoint;
/// const SHOUT: ContextEndpoint<String, String, String, String, u64> =
///     ContextEndpoint::new("chat:shout");
/// let _ = portal.open(SHOUT, &7i64).await;
/// # }
/// ```
///
/// ```compile_fail
/// # async fn f(portal: harrow_portal::Portal) {
/// use harrow_portal::ContextEndpoint;
/// const SHOUT: ContextEndpoint<String, String, String, String, u64> =
///     ContextEndpoint::new("chat:shout");
/// let (mut ctx, _) = portal.open(SHOUT, &"bot".to_string()).await.unwrap();
/// let stream = ctx.open_stream().await.unwrap();
/// stream.send(&7i64).await.unwrap();
/// # }
/// ```
pub struct ContextEndpoint<A, S, ToCallee, ToCaller, R> {
    path: &'static str,
    #[allow(clippy::type_complexity)]
    _types: PhantomData<fn(A, ToCallee) -> (S, ToCaller, R)>,
}

impl<A, S, ToCallee, ToCaller, R> ContextEndpoint<A, S, ToCallee, ToCaller, R> {
    /// The context endpoint at `path` (`"module.path:function"`; checked where it is served or
    /// opened).
    pub const fn new(path: &'static str) -> Self {
        ContextEndpoint {
            path,
            _types: PhantomData,
        }
    }

    /// Its path.
    pub const fn path(&self) -> &'static str {
        self.path
    }
}

impl<A, S, ToCallee, ToCaller, R> Clone for ContextEndpoint<A, S, ToCallee, ToCaller, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, S, ToCallee, ToCaller, R> Copy for ContextEndpoint<A, S, ToCallee, ToCaller, R> {}

impl<A, S, ToCallee, ToCaller, R> std::fmt::Debug for ContextEndpoint<A, S, ToCallee, ToCaller, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ContextEndpoint({} : {} -> started {}, stream {} / {}, result {})",
            self.path,
            std::any::type_name::<A>(),
            std::any::type_name::<S>(),
            std::any::type_name::<ToCallee>(),
            std::any::type_name::<ToCaller>(),
            std::any::type_name::<R>()
        )
    }
}

fn encode<T: Serialize + ?Sized>(value: &T, what: impl FnOnce() -> String) -> Result<Value> {
    harrow_ipc::to_value(value).map_err(|e| Error::Value(format!("{}: {e}", what())))
}

fn decode<T: DeserializeOwned>(value: Value, what: impl FnOnce() -> String) -> Result<T> {
    harrow_ipc::from_value(value).map_err(|e| Error::Value(format!("{}: {e}", what())))
}

// ------------------------------------------------------------------------------------------------
// Serving and opening.

impl FnRegistry {
    /// Serves the context `endpoint` with `handler`, which gets a [`TypedCalleeContext`] and the
    /// arguments already converted to `A` (arguments of another shape are a `BadArguments`
    /// error to the caller, before the handler runs), and returns the typed result.
    pub fn serve_context<A, S, ToCallee, ToCaller, R, F, Fut>(
        &mut self,
        endpoint: ContextEndpoint<A, S, ToCallee, ToCaller, R>,
        handler: F,
    ) -> std::result::Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        S: Serialize + Send + 'static,
        ToCallee: DeserializeOwned + Send + 'static,
        ToCaller: Serialize + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(TypedCalleeContext<S, ToCallee, ToCaller>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, CallError>> + Send + 'static,
    {
        let path = endpoint.path;
        self.insert(
            path,
            CallKind::Context,
            Arc::new(move |call: Invocation| {
                let args: A = harrow_ipc::from_value(call.args).map_err(|e| {
                    CallError::new(
                        ErrorKind::BadArguments,
                        "BadArguments",
                        format!("bad arguments for {}: {e}", call.func),
                    )
                })?;
                let ctx = TypedCalleeContext {
                    ctx: call.ctx,
                    path,
                    _types: PhantomData,
                };
                let fut = handler(ctx, args);
                Ok(Box::pin(async move {
                    let out = fut.await?;
                    harrow_ipc::to_value(&out).map_err(|e| {
                        CallError::raised(
                            "ValueConversion",
                            format!("the result of {path} did not convert to a Value: {e}"),
                        )
                    })
                }) as CallFuture)
            }),
        )
    }
}

impl Portal {
    /// Opens the context `endpoint` in the peer with `args`: returns once the callee called
    /// `started`, with the typed context and the typed started value. A started value of another
    /// shape is an [`Error::Value`] (and the context is cancelled).
    ///
    /// Dropping the returned [`TypedContext`] before its result arrived cancels it.
    pub async fn open<A, S, ToCallee, ToCaller, R>(
        &self,
        endpoint: ContextEndpoint<A, S, ToCallee, ToCaller, R>,
        args: &A,
    ) -> Result<(TypedContext<ToCallee, ToCaller, R>, S)>
    where
        A: Serialize,
        S: DeserializeOwned,
        ToCallee: Serialize,
        ToCaller: DeserializeOwned,
        R: DeserializeOwned,
    {
        let path = endpoint.path;
        let args = encode(args, || format!("arguments of {path}"))?;
        let (ctx, first) = self.open_context(path, args).await?;
        let first = decode(first, || format!("started value of {path}"))?;
        Ok((
            TypedContext {
                ctx,
                path,
                _types: PhantomData,
            },
            first,
        ))
    }
}

// ------------------------------------------------------------------------------------------------
// The caller's context.

/// The caller's end of a context opened with [`Portal::open`]: a [`Context`] whose stream and
/// result have the endpoint's types. Dropping it before its result arrived cancels it.
///
/// ```
/// use std::time::Duration;
/// use harrow_portal::{CallError, ContextEndpoint, FnRegistry};
///
/// /// Checks a word; fails on an empty one.
/// const CHECK: ContextEndpoint<String, (), (), (), usize> = ContextEndpoint::new("words:check");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_context(CHECK, |ctx, word| async move {
///     ctx.started(&()).await?;
///     if word.is_empty() {
///         return Err(CallError::raised("ValueError", "empty word"));
///     }
///     Ok(word.len())
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
/// let (ctx, ()) = portal.open(CHECK, &"harrow".to_string()).await.unwrap();
/// assert_eq!(ctx.result().await.unwrap(), 6);
/// // The outcome can be waited for and asked without consuming the context.
/// let (ctx, ()) = portal.open(CHECK, &String::new()).await.unwrap();
/// let failed = ctx.wait_result(Duration::from_secs(5)).await.unwrap().unwrap_err();
/// assert_eq!(failed.remote_error().unwrap().message, "empty word");
/// assert!(ctx.is_answered() && ctx.error().is_some());
/// # }));
/// ```
pub struct TypedContext<ToCallee, ToCaller, R> {
    ctx: Context,
    path: &'static str,
    #[allow(clippy::type_complexity)]
    _types: PhantomData<fn(ToCallee) -> (ToCaller, R)>,
}

impl<ToCallee, ToCaller, R> std::fmt::Debug for TypedContext<ToCallee, ToCaller, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedContext")
            .field("path", &self.path)
            .field("cid", &self.ctx.cid())
            .finish()
    }
}

impl<ToCallee, ToCaller, R> TypedContext<ToCallee, ToCaller, R>
where
    ToCallee: Serialize,
    ToCaller: DeserializeOwned,
    R: DeserializeOwned,
{
    /// Opens the context's stream: send `ToCallee` items, receive `ToCaller` items. See
    /// [`Context::open_stream`].
    pub async fn open_stream(&mut self) -> Result<TypedStream<ToCallee, ToCaller>> {
        let stream = self.ctx.open_stream().await?;
        Ok(TypedStream::new(stream, self.path))
    }

    /// [`open_stream`](Self::open_stream) granting the callee `window` items in flight toward
    /// this side. See [`Context::open_stream_with_window`].
    pub async fn open_stream_with_window(
        &mut self,
        window: u32,
    ) -> Result<TypedStream<ToCallee, ToCaller>> {
        let stream = self.ctx.open_stream_with_window(window).await?;
        Ok(TypedStream::new(stream, self.path))
    }

    /// Waits for the context's typed result (after the callee returned).
    pub async fn result(self) -> Result<R> {
        let path = self.path;
        let value = self.ctx.result().await?;
        decode(value, || format!("result of {path}"))
    }

    /// Waits at most `bound` for the typed result, keeping the context: `None` when it has not
    /// ended in time. See [`Context::wait_result`].
    pub async fn wait_result(&self, bound: Duration) -> Option<Result<R>> {
        let out = self.ctx.wait_result(bound).await?;
        Some(out.and_then(|v| decode(v, || format!("result of {}", self.path))))
    }

    /// The typed outcome, if the context has ended. See [`Context::outcome`].
    pub fn outcome(&self) -> Option<Result<R>> {
        let out = self.ctx.outcome()?;
        Some(out.and_then(|v| decode(v, || format!("result of {}", self.path))))
    }

    /// Runs `fut` and returns as soon as either it ends or the context fails. See
    /// [`Context::guard`].
    pub async fn guard<F: Future>(&self, fut: F) -> Result<F::Output> {
        self.ctx.guard(fut).await
    }

    /// Cancels the context and waits (bounded) for the callee to confirm. See
    /// [`Context::cancel`].
    pub async fn cancel(&self) -> Result<()> {
        self.ctx.cancel().await
    }

    /// The error the context ended with, if any. See [`Context::error`].
    pub fn error(&self) -> Option<Error> {
        self.ctx.error()
    }

    /// Who cancelled the context, if it ended cancelled. See [`Context::cancelled_by`].
    pub fn cancelled_by(&self) -> Option<ActorId> {
        self.ctx.cancelled_by()
    }

    /// Whether the callee answered the context's end itself. See [`Context::is_answered`].
    pub fn is_answered(&self) -> bool {
        self.ctx.is_answered()
    }

    /// The endpoint's path.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// The untyped context underneath (its stream and result as [`Value`]s).
    pub fn into_untyped(self) -> Context {
        self.ctx
    }
}

// ------------------------------------------------------------------------------------------------
// The callee's context.

/// The callee's handle on a context served with [`FnRegistry::serve_context`]: a
/// [`CalleeContext`] whose started value and stream have the endpoint's types. Cheap to clone.
///
/// ```
/// use harrow_portal::{ContextEndpoint, FnRegistry};
///
/// /// Waits until cancelled; answers with who cancelled it.
/// const WAIT: ContextEndpoint<(), (), (), (), String> = ContextEndpoint::new("jobs:wait");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_context(WAIT, |ctx, ()| async move {
///     ctx.started(&()).await?;
///     // Waiting for the cancel makes the call cancel-aware: it runs on to answer.
///     let by = ctx.cancelled().await;
///     Ok(format!("cancelled by {}", by.name))
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
/// let (ctx, ()) = portal.open(WAIT, &()).await.unwrap();
/// ctx.cancel().await.unwrap();
/// assert_eq!(ctx.result().await.unwrap(), "cancelled by caller");
/// # }));
/// ```
pub struct TypedCalleeContext<S, ToCallee, ToCaller> {
    ctx: CalleeContext,
    path: &'static str,
    #[allow(clippy::type_complexity)]
    _types: PhantomData<fn(ToCallee) -> (S, ToCaller)>,
}

impl<S, ToCallee, ToCaller> Clone for TypedCalleeContext<S, ToCallee, ToCaller> {
    fn clone(&self) -> Self {
        TypedCalleeContext {
            ctx: self.ctx.clone(),
            path: self.path,
            _types: PhantomData,
        }
    }
}

impl<S, ToCallee, ToCaller> std::fmt::Debug for TypedCalleeContext<S, ToCallee, ToCaller> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedCalleeContext")
            .field("path", &self.path)
            .field("cid", &self.ctx.cid())
            .finish()
    }
}

impl<S, ToCallee, ToCaller> TypedCalleeContext<S, ToCallee, ToCaller>
where
    S: Serialize,
    ToCallee: DeserializeOwned,
    ToCaller: Serialize,
{
    /// Sends the typed started value to the caller (exactly once). See
    /// [`CalleeContext::started`].
    pub async fn started(&self, value: &S) -> Result<()> {
        let value = encode(value, || format!("started value of {}", self.path))?;
        self.ctx.started(value).await
    }

    /// Opens this side's stream: send `ToCaller` items, receive `ToCallee` items. See
    /// [`CalleeContext::open_stream`].
    pub async fn open_stream(&self) -> Result<TypedStream<ToCaller, ToCallee>> {
        let stream = self.ctx.open_stream().await?;
        Ok(TypedStream::new(stream, self.path))
    }

    /// [`open_stream`](Self::open_stream) granting the caller `window` items in flight toward
    /// this side. See [`CalleeContext::open_stream_with_window`].
    pub async fn open_stream_with_window(
        &self,
        window: u32,
    ) -> Result<TypedStream<ToCaller, ToCallee>> {
        let stream = self.ctx.open_stream_with_window(window).await?;
        Ok(TypedStream::new(stream, self.path))
    }

    /// The untyped context underneath: the caller, cancellation (`cancelled`, `cancel`,
    /// `observe_cancel`, `reserve_cleanup`) and the rest of [`CalleeContext`].
    pub fn untyped(&self) -> &CalleeContext {
        &self.ctx
    }

    /// The actor that called.
    pub fn caller(&self) -> &ActorId {
        self.ctx.caller()
    }

    /// Resolves when a cancel for this call arrives, with the canceller. See
    /// [`CalleeContext::cancelled`].
    pub async fn cancelled(&self) -> ActorId {
        self.ctx.cancelled().await
    }

    /// Cancels this call from inside. See [`CalleeContext::cancel`].
    pub fn cancel(&self) {
        self.ctx.cancel()
    }

    /// The endpoint's path.
    pub fn path(&self) -> &'static str {
        self.path
    }
}

// ------------------------------------------------------------------------------------------------
// Typed streams.

/// A context's stream with typed items: sends `T`, receives `U` (either side). A
/// [`Sink`](futures_sink::Sink) of `T` and a [`Stream`](futures_lite::Stream) of `Result<U>`,
/// like its halves ([`split`](Self::split)). Flow control, end of stream and cancellation are
/// those of [`MsgStream`].
///
/// ```
/// use std::{future::poll_fn, pin::Pin};
/// use futures_lite::StreamExt;
/// use futures_sink::Sink;
/// use harrow_portal::{ContextEndpoint, FnRegistry};
///
/// /// Doubles every number it receives.
/// const DOUBLER: ContextEndpoint<(), (), i64, i64, ()> = ContextEndpoint::new("math:doubler");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_context(DOUBLER, |ctx, ()| async move {
///     ctx.started(&()).await?;
///     let mut s = ctx.open_stream().await?;
///     while let Some(n) = s.recv().await? {
///         s.send(&(n * 2)).await?;
///     }
///     Ok(())
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
/// let (mut ctx, ()) = portal.open(DOUBLER, &()).await.unwrap();
/// let mut s = ctx.open_stream().await.unwrap();
/// // As a Sink of i64 ...
/// poll_fn(|cx| Pin::new(&mut s).poll_ready(cx)).await.unwrap();
/// Pin::new(&mut s).start_send(21).unwrap();
/// // ... and a Stream of Result<i64>.
/// assert_eq!(s.next().await.unwrap().unwrap(), 42);
/// # }));
/// ```
#[derive(Debug)]
pub struct TypedStream<T, U> {
    tx: TypedTx<T>,
    rx: TypedRx<U>,
}

impl<T, U> TypedStream<T, U> {
    fn new(stream: MsgStream, path: &'static str) -> Self {
        let (tx, rx) = stream.split();
        TypedStream {
            tx: TypedTx {
                tx,
                path,
                _types: PhantomData,
            },
            rx: TypedRx {
                state: std::sync::Mutex::new(RxState::Idle(rx)),
                path,
                ended: false,
                _types: PhantomData,
            },
        }
    }

    /// Splits into a sending half (cloneable) and a receiving half.
    pub fn split(self) -> (TypedTx<T>, TypedRx<U>) {
        (self.tx, self.rx)
    }
}

impl<T: Serialize, U: DeserializeOwned> TypedStream<T, U> {
    /// Sends one item, waiting for credit. See [`MsgStream::send`].
    pub async fn send(&self, item: &T) -> Result<()> {
        self.tx.send(item).await
    }

    /// Receives the next item; `Ok(None)` once the peer finished. An item of another shape is an
    /// [`Error::Value`] (the stream goes on with the next one). See [`MsgStream::recv`].
    pub async fn recv(&mut self) -> Result<Option<U>> {
        self.rx.recv().await
    }

    /// Finishes this side of the stream. See [`MsgStream::close`].
    pub async fn close(&self) -> Result<()> {
        self.tx.close().await
    }
}

impl<T: Serialize, U> futures_sink::Sink<T> for TypedStream<T, U> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<()> {
        Pin::new(&mut self.tx).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_close(cx)
    }
}

impl<T, U: DeserializeOwned> futures_lite::Stream for TypedStream<T, U> {
    type Item = Result<U>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<U>>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// The sending half of a [`TypedStream`]: sends `T` items. Cloneable; a
/// [`Sink`](futures_sink::Sink) of `T` (see [`StreamTx`]).
///
/// ```
/// use futures_lite::StreamExt;
/// use harrow_portal::{ContextEndpoint, FnRegistry};
///
/// /// Echoes lines.
/// const ECHO: ContextEndpoint<(), (), String, String, ()> = ContextEndpoint::new("chat:echo");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_context(ECHO, |ctx, ()| async move {
///     ctx.started(&()).await?;
///     let mut s = ctx.open_stream().await?;
///     while let Some(line) = s.recv().await? {
///         s.send(&line).await?;
///     }
///     Ok(())
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
/// let (mut ctx, ()) = portal.open(ECHO, &()).await.unwrap();
/// let (tx, rx) = ctx.open_stream().await.unwrap().split();
/// let other = tx.clone(); // two senders on one stream
/// tx.send(&"one".to_string()).await.unwrap();
/// other.send(&"two".to_string()).await.unwrap();
/// drop((tx, other)); // the last sending handle gone: our side is closed
/// let lines: Vec<String> = rx.map(Result::unwrap).collect().await;
/// assert_eq!(lines, ["one", "two"]);
/// # }));
/// ```
#[derive(Debug)]
pub struct TypedTx<T> {
    tx: StreamTx,
    path: &'static str,
    _types: PhantomData<fn(T)>,
}

impl<T> Clone for TypedTx<T> {
    fn clone(&self) -> Self {
        TypedTx {
            tx: self.tx.clone(),
            path: self.path,
            _types: PhantomData,
        }
    }
}

impl<T: Serialize> TypedTx<T> {
    /// Sends one item, waiting for credit. See [`MsgStream::send`].
    pub async fn send(&self, item: &T) -> Result<()> {
        let value = encode(item, || format!("stream item of {}", self.path))?;
        self.tx.send(value).await
    }

    /// Finishes this side of the stream. See [`MsgStream::close`].
    pub async fn close(&self) -> Result<()> {
        self.tx.close().await
    }
}

impl<T: Serialize> futures_sink::Sink<T> for TypedTx<T> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<()> {
        let value = encode(&item, || format!("stream item of {}", self.path))?;
        Pin::new(&mut self.tx).start_send(value)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.tx).poll_close(cx)
    }
}

type Receiving = Pin<Box<dyn Future<Output = (StreamRx, Result<Option<Value>>)> + Send>>;

enum RxState {
    Idle(StreamRx),
    /// A receive in progress; it owns the half until it completes, so a `recv` dropped halfway
    /// loses nothing (the next one goes on with it).
    Receiving(Receiving),
    /// Only while a poll runs.
    Taken,
}

/// The receiving half of a [`TypedStream`]: receives `U` items. A
/// [`Stream`](futures_lite::Stream) of `Result<U>` that ends after the peer finished, and after
/// yielding one error.
///
/// ```
/// use harrow_portal::{ContextEndpoint, FnRegistry, ipc::Value};
///
/// /// Sends its numbers, but the peer is untyped and slips in a string.
/// const NUMBERS: ContextEndpoint<(), (), (), i64, ()> = ContextEndpoint::new("math:numbers");
///
/// let mut reg = FnRegistry::new();
/// reg.context("math:numbers", |ctx, _| async move {
///     ctx.started(Value::Null).await?;
///     let s = ctx.open_stream().await?;
///     s.send(Value::Int(1)).await?;
///     s.send(Value::from("two")).await?;
///     s.send(Value::Int(3)).await?;
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
/// let (mut ctx, ()) = portal.open(NUMBERS, &()).await.unwrap();
/// let (_tx, mut rx) = ctx.open_stream().await.unwrap().split();
/// assert_eq!(rx.recv().await.unwrap(), Some(1));
/// let err = rx.recv().await.unwrap_err(); // a clear error, not a panic ...
/// assert!(err.to_string().contains("stream item of math:numbers"), "{err}");
/// assert_eq!(rx.recv().await.unwrap(), Some(3)); // ... and the stream goes on
/// assert_eq!(rx.recv().await.unwrap(), None);
/// # }));
/// ```
pub struct TypedRx<U> {
    /// Only ever used through `&mut self` (`get_mut`, no locking): the mutex only makes the half
    /// `Sync`, so that a `&TypedStream` can be held across an `.await` in a `Send` future.
    state: std::sync::Mutex<RxState>,
    path: &'static str,
    /// The `Stream` side is over (it ended, or yielded an error).
    ended: bool,
    _types: PhantomData<fn() -> U>,
}

impl<U> std::fmt::Debug for TypedRx<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedRx")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<U> TypedRx<U> {
    fn poll_value(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Option<Value>>> {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(state, RxState::Taken) {
                RxState::Idle(mut rx) => {
                    *state = RxState::Receiving(Box::pin(async move {
                        let got = rx.recv().await;
                        (rx, got)
                    }));
                }
                RxState::Receiving(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        *state = RxState::Receiving(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((rx, got)) => {
                        *state = RxState::Idle(rx);
                        return Poll::Ready(got);
                    }
                },
                // Only reachable if a receive panicked: the half is gone.
                RxState::Taken => {
                    return Poll::Ready(Err(Error::Protocol(format!(
                        "the stream of {} was lost by a receive that panicked",
                        self.path
                    ))));
                }
            }
        }
    }
}

impl<U: DeserializeOwned> TypedRx<U> {
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Option<U>>> {
        let path = self.path;
        self.poll_value(cx).map(|got| match got? {
            None => Ok(None),
            Some(v) => decode(v, || format!("stream item of {path}")).map(Some),
        })
    }

    /// Receives the next item; `Ok(None)` once the peer finished. An item of another shape is an
    /// [`Error::Value`] (the stream goes on with the next one). See [`MsgStream::recv`].
    pub async fn recv(&mut self) -> Result<Option<U>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<U: DeserializeOwned> futures_lite::Stream for TypedRx<U> {
    type Item = Result<U>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<U>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.poll_recv(cx).map(|got| match got {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Typed one-way streams.

/// A one-way stream function's path with its argument type `A` and item type `T`, declared once
/// and used by both sides: served with [`FnRegistry::serve_stream`] (a Rust
/// [`Stream`](futures_lite::Stream) of `T`), read with [`Portal::stream_from`]. A Python
/// generator serves one just as well.
///
/// ```
/// use std::sync::Arc;
/// use futures_lite::StreamExt;
/// use harrow_portal::{FnRegistry, Link, LinkConfig, LocalInfo, StreamEndpoint};
/// use harrow_portal::ipc::{mem, ActorId};
///
/// /// The squares of 0..n.
/// const SQUARES: StreamEndpoint<u32, u64> = StreamEndpoint::new("math:squares");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_stream(SQUARES, |n| futures_lite::stream::iter((0..u64::from(n)).map(|i| Ok(i * i))))
///     .unwrap();
/// # let exec = Arc::new(async_executor::Executor::new());
/// # async_io::block_on(exec.run(async {
/// # let (ca, cb) = mem::pair();
/// # let info = |name: &str| LocalInfo { id: ActorId::new(name), backend: "thread".into() };
/// # let (caller, _callee) = futures_lite::future::zip(
/// #     Link::establish(ca, info("caller"), None, &exec, LinkConfig::default()),
/// #     Link::establish(cb, info("callee"), Some(Arc::new(reg)), &exec, LinkConfig::default()),
/// # ).await;
/// # let caller = caller.unwrap();
/// let portal = caller.portal();
/// let squares = portal.stream_from(SQUARES, &4).await.unwrap();
/// let got: Vec<u64> = squares.map(|r| r.unwrap()).collect().await;
/// assert_eq!(got, [0, 1, 4, 9]);
/// # }));
/// ```
///
/// Items of another type do not compile:
///
/// ```compile_fail
/// use harrow_portal::{FnRegistry, StreamEndpoint};
/// const SQUARES: StreamEndpoint<u32, u64> = StreamEndpoint::new("math:squares");
/// let mut reg = FnRegistry::new();
/// reg.serve_stream(SQUARES, |_n| futures_lite::stream::iter(["one"].map(Ok))).unwrap();
/// ```
pub struct StreamEndpoint<A, T> {
    path: &'static str,
    _types: PhantomData<fn(A) -> T>,
}

impl<A, T> StreamEndpoint<A, T> {
    /// The one-way stream endpoint at `path`.
    pub const fn new(path: &'static str) -> Self {
        StreamEndpoint {
            path,
            _types: PhantomData,
        }
    }

    /// Its path.
    pub const fn path(&self) -> &'static str {
        self.path
    }
}

impl<A, T> Clone for StreamEndpoint<A, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, T> Copy for StreamEndpoint<A, T> {}

impl<A, T> std::fmt::Debug for StreamEndpoint<A, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StreamEndpoint({} : {} -> stream of {})",
            self.path,
            std::any::type_name::<A>(),
            std::any::type_name::<T>()
        )
    }
}

impl FnRegistry {
    /// Serves the one-way stream `endpoint`: `f(args)` returns a
    /// [`Stream`](futures_lite::Stream) of `T` items, each sent to the caller as it comes (with
    /// credit flow control). Arguments of another shape are a `BadArguments` error before `f`
    /// runs; the first `Err` item ends the call with that error; the end of the stream ends it
    /// with the number of items sent. See [`FnRegistry::stream`].
    pub fn serve_stream<A, T, F, S>(
        &mut self,
        endpoint: StreamEndpoint<A, T>,
        f: F,
    ) -> std::result::Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + Send + 'static,
        F: Fn(A) -> S + Send + Sync + 'static,
        S: futures_lite::Stream<Item = std::result::Result<T, CallError>> + Send + 'static,
    {
        let path = endpoint.path;
        self.insert(
            path,
            CallKind::Context,
            Arc::new(move |call: Invocation| {
                let args: A = harrow_ipc::from_value(call.args).map_err(|e| {
                    CallError::new(
                        ErrorKind::BadArguments,
                        "BadArguments",
                        format!("bad arguments for {}: {e}", call.func),
                    )
                })?;
                let items = f(args);
                let ctx = call.ctx;
                Ok(Box::pin(async move {
                    use futures_lite::StreamExt;
                    ctx.started(Value::Null).await?;
                    let stream = ctx.open_stream().await?;
                    let mut items = std::pin::pin!(items);
                    let mut n = 0i64;
                    while let Some(item) = items.next().await {
                        let value = harrow_ipc::to_value(&item?).map_err(|e| {
                            CallError::raised(
                                "ValueConversion",
                                format!("an item of {path} did not convert to a Value: {e}"),
                            )
                        })?;
                        stream.send(value).await?;
                        n += 1;
                    }
                    stream.close().await?;
                    Ok(Value::Int(n))
                }) as CallFuture)
            }),
        )
    }
}

impl Portal {
    /// Calls the one-way stream `endpoint` with `args` and returns its typed items as they come.
    /// An item of another shape is an [`Error::Value`]. Dropping the returned stream cancels the
    /// call. See [`Portal::open_stream_from`].
    pub async fn stream_from<A, T>(
        &self,
        endpoint: StreamEndpoint<A, T>,
        args: &A,
    ) -> Result<TypedOneWayStream<T>>
    where
        A: Serialize,
        T: DeserializeOwned,
    {
        let path = endpoint.path;
        let args = encode(args, || format!("arguments of {path}"))?;
        let (mut ctx, _first) = self.open_context(path, args).await?;
        let stream = ctx.open_stream().await?;
        let (_tx, rx) = TypedStream::<(), T>::new(stream, path).split();
        Ok(TypedOneWayStream { rx, ctx })
    }
}

/// The typed items of a one-way stream call ([`Portal::stream_from`]): `recv` returns `Ok(None)`
/// once the callee finished; a failure or a cancel is an error. A
/// [`Stream`](futures_lite::Stream) of `Result<T>`. Dropping it cancels the call.
///
/// ```
/// use harrow_portal::{FnRegistry, StreamEndpoint, ipc::Value};
///
/// /// The letters of a word.
/// const LETTERS: StreamEndpoint<String, char> = StreamEndpoint::new("words:letters");
///
/// let mut reg = FnRegistry::new();
/// reg.serve_stream(LETTERS, |word| {
///     futures_lite::stream::iter(word.chars().collect::<Vec<_>>().into_iter().map(Ok))
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
/// let mut letters = portal.stream_from(LETTERS, &"abc".to_string()).await.unwrap();
/// let mut got = String::new();
/// while let Some(c) = letters.recv().await.unwrap() {
///     got.push(c);
/// }
/// assert_eq!(got, "abc");
/// assert_eq!(letters.result().await.unwrap(), Value::Int(3)); // the items sent
/// # }));
/// ```
#[derive(Debug)]
pub struct TypedOneWayStream<T> {
    rx: TypedRx<T>,
    ctx: Context,
}

impl<T: DeserializeOwned> TypedOneWayStream<T> {
    /// The next item; `Ok(None)` after the last one.
    pub async fn recv(&mut self) -> Result<Option<T>> {
        self.rx.recv().await
    }

    /// The context behind it: its outcome, cancel, result.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The call's result once the stream ended (the number of items, for a Rust server).
    ///
    /// Items not read by then are given up, as
    /// [`OneWayStream::result`](crate::OneWayStream::result) says.
    pub async fn result(self) -> Result<Value> {
        let TypedOneWayStream { rx, ctx } = self;
        drop(rx);
        ctx.result().await
    }
}

impl<T: DeserializeOwned> futures_lite::Stream for TypedOneWayStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<T>>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}
