//! [`FnRegistry`]: the Rust [`Resolver`], functions registered by path.

use std::future::Future;
use std::sync::Arc;

use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CallError, CallFuture, CalleeContext, Invocation, Resolver};

pub(crate) type Handler = Arc<dyn Fn(Invocation) -> Result<CallFuture, CallError> + Send + Sync>;

struct Entry {
    kind: CallKind,
    handler: Handler,
}

/// Rust functions an actor serves, by [`FnPath`]. Build it once and share it (`Arc`).
///
/// ```
/// use harrow_portal::{FnRegistry, CallError};
/// use harrow_portal::ipc::Value;
///
/// let mut reg = FnRegistry::new();
/// reg.unary("math:double", |v: Value| async move {
///     let n = v.as_i64().ok_or_else(|| CallError::raised("TypeError", "expected an int"))?;
///     Ok(Value::Int(n * 2))
/// })
/// .unwrap();
/// assert!(reg.contains(&"math:double".parse().unwrap()));
/// ```
#[derive(Default)]
pub struct FnRegistry {
    /// Looked up on every call by the path a peer sent, but only this actor inserts: foldhash
    /// (a peer's paths can make a lookup no longer than the map's own collisions).
    entries: foldhash::HashMap<FnPath, Entry>,
}

impl std::fmt::Debug for FnRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.entries.keys().map(|p| p.to_string()).collect();
        names.sort();
        f.debug_struct("FnRegistry")
            .field("functions", &names)
            .finish()
    }
}

impl FnRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        FnRegistry::default()
    }

    pub(crate) fn insert(
        &mut self,
        path: &str,
        kind: CallKind,
        handler: Handler,
    ) -> Result<&mut Self, harrow_ipc::FnPathError> {
        let path = FnPath::parse(path)?;
        self.entries.insert(path, Entry { kind, handler });
        Ok(self)
    }

    /// Registers a unary function taking and returning [`Value`]s.
    pub fn unary<F, Fut>(&mut self, path: &str, f: F) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        self.insert(
            path,
            CallKind::Unary,
            Arc::new(move |call: Invocation| Ok(Box::pin(f(call.args)) as CallFuture)),
        )
    }

    /// Registers a unary function with typed (serde) arguments and result. Arguments of the
    /// wrong shape are a `BadArguments` error to the caller.
    #[deprecated(
        note = "declare an `Endpoint` once and use `FnRegistry::serve`: typed on both sides"
    )]
    pub fn unary_typed<A, R, F, Fut>(
        &mut self,
        path: &str,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    {
        self.insert(
            path,
            CallKind::Unary,
            Arc::new(move |call: Invocation| {
                let args: A = harrow_ipc::from_value(call.args).map_err(|e| {
                    CallError::new(
                        ErrorKind::BadArguments,
                        "BadArguments",
                        format!("bad arguments for {}: {e}", call.func),
                    )
                })?;
                let fut = f(args);
                let func = call.func;
                Ok(Box::pin(async move {
                    let out = fut.await?;
                    harrow_ipc::to_value(&out).map_err(|e| {
                        CallError::raised(
                            "ValueConversion",
                            format!("the result of {func} did not convert to a Value: {e}"),
                        )
                    })
                }) as CallFuture)
            }),
        )
    }

    /// Registers a context function: it gets the [`CalleeContext`] to call `started`, open a
    /// stream and watch for cancellation.
    pub fn context<F, Fut>(
        &mut self,
        path: &str,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(CalleeContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        self.insert(
            path,
            CallKind::Context,
            Arc::new(move |call: Invocation| Ok(Box::pin(f(call.ctx, call.args)) as CallFuture)),
        )
    }

    /// Whether `path` is registered.
    pub fn contains(&self, path: &FnPath) -> bool {
        self.entries.contains_key(path)
    }
}

impl Resolver for FnRegistry {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        let Some(entry) = self.entries.get(&call.func) else {
            return Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("no function {} in this actor", call.func),
            ));
        };
        if entry.kind != call.kind {
            let (is, asked) = match entry.kind {
                CallKind::Unary => ("a unary function", "a context"),
                CallKind::Context => ("a context function", "a unary call"),
            };
            return Err(CallError::new(
                ErrorKind::BadArguments,
                "BadCallKind",
                format!("{} is {is} but was called as {asked}", call.func),
            ));
        }
        (entry.handler)(call)
    }
}

/// A [`FnRegistry`] whose functions share one state value, handed to every call as an
/// `Arc<S>` (no globals). Served calls run concurrently, each as its own task on the actor's
/// executor (one thread per actor), so `S` needs its own interior mutability (a `Mutex`, atomics)
/// for what calls change; a call holding a lock across an `.await` holds it against the actor's
/// other calls.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use harrow_portal::{StateRegistry, ipc::Value};
///
/// let mut reg = StateRegistry::new(AtomicI64::new(0));
/// reg.unary("counter:add", |total, v: Value| async move {
///     let n = v.as_i64().unwrap_or(0);
///     Ok(Value::Int(total.fetch_add(n, Ordering::SeqCst) + n))
/// })
/// .unwrap();
/// let registry = reg.into_registry(); // serve it like any FnRegistry
/// # let _ = registry;
/// ```
pub struct StateRegistry<S> {
    reg: FnRegistry,
    state: Arc<S>,
}

impl<S> std::fmt::Debug for StateRegistry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRegistry")
            .field("functions", &self.reg.entries.len())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> StateRegistry<S> {
    /// A registry whose functions all get `state`.
    pub fn new(state: S) -> Self {
        Self::with_shared(Arc::new(state))
    }

    /// A registry whose functions all get `state` (already shared, e.g. with other actors).
    pub fn with_shared(state: Arc<S>) -> Self {
        StateRegistry {
            reg: FnRegistry::new(),
            state,
        }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    /// Registers a unary function that gets the state and the argument.
    pub fn unary<F, Fut>(&mut self, path: &str, f: F) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(Arc<S>, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.reg.unary(path, move |v| f(state.clone(), v))?;
        Ok(self)
    }

    /// Registers a context function that gets the state, its context and the argument.
    pub fn context<F, Fut>(
        &mut self,
        path: &str,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(Arc<S>, CalleeContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.reg
            .context(path, move |ctx, v| f(state.clone(), ctx, v))?;
        Ok(self)
    }

    /// The registry to serve (for example `ActorSpec::with_resolver(Arc::new(..))`).
    pub fn into_registry(self) -> FnRegistry {
        self.reg
    }
}

impl FnRegistry {
    /// Registers a one-way stream: `f(args)` returns a [`Stream`](futures_lite::Stream) of
    /// items, and each is sent to the caller as it comes (with credit flow control), without the
    /// context/`started`/`open_stream` ceremony. The caller reads it with
    /// [`Portal::open_stream_from`](crate::Portal::open_stream_from). The first `Err` item ends
    /// the call with that error; the end of the stream ends it with the number of items sent.
    pub fn stream<F, S>(&mut self, path: &str, f: F) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(Value) -> S + Send + Sync + 'static,
        S: futures_lite::Stream<Item = Result<Value, CallError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.context(path, move |ctx, args| {
            let items = f(args);
            async move {
                use futures_lite::StreamExt;
                ctx.started(Value::Null).await?;
                let stream = ctx.open_stream().await?;
                let mut items = std::pin::pin!(items);
                let mut n = 0i64;
                while let Some(item) = items.next().await {
                    stream.send(item?).await?;
                    n += 1;
                }
                stream.close().await?;
                Ok(Value::Int(n))
            }
        })
    }
}

impl<S: Send + Sync + 'static> StateRegistry<S> {
    /// Serves the typed unary `endpoint` with a handler that also gets the state. See
    /// [`FnRegistry::serve`].
    ///
    /// ```
    /// use std::sync::atomic::{AtomicI64, Ordering};
    /// use harrow_portal::{Endpoint, StateRegistry};
    ///
    /// const ADD: Endpoint<i64, i64> = Endpoint::new("counter:add");
    ///
    /// let mut reg = StateRegistry::new(AtomicI64::new(0));
    /// reg.serve(ADD, |total, n| async move { Ok(total.fetch_add(n, Ordering::SeqCst) + n) })
    ///     .unwrap();
    /// # let _ = reg.into_registry();
    /// ```
    pub fn serve<A, R, F, Fut>(
        &mut self,
        endpoint: crate::Endpoint<A, R>,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Arc<S>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.reg.serve(endpoint, move |a| f(state.clone(), a))?;
        Ok(self)
    }

    /// Serves the typed context `endpoint` with a handler that also gets the state. See
    /// [`FnRegistry::serve_context`].
    #[allow(clippy::type_complexity)]
    pub fn serve_context<A, St, ToCallee, ToCaller, R, F, Fut>(
        &mut self,
        endpoint: crate::ContextEndpoint<A, St, ToCallee, ToCaller, R>,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        St: Serialize + Send + 'static,
        ToCallee: DeserializeOwned + Send + 'static,
        ToCaller: Serialize + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Arc<S>, crate::TypedCalleeContext<St, ToCallee, ToCaller>, A) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.reg
            .serve_context(endpoint, move |ctx, a| f(state.clone(), ctx, a))?;
        Ok(self)
    }
}
