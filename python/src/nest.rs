//! What a Python actor reaches from Python: its nurseries, its portals (to its children and to
//! its parent), and its own identity. No Python is touched here.
//!
//! The interpreter thread is not the actor's runtime thread: the actor's executor runs on the
//! runtime thread (`rt-<name>`, inside `run_actor`), the Python code on the interpreter thread.
//! So every operation Python asks for is a future run as a task **on the actor's executor**
//! (`ActorEnv::spawn`), and the interpreter thread waits for that task with its GIL released
//! (serving the actor's other calls meanwhile, and waking up early on a cancel: see the Python
//! layer). Dropping the wait drops the task, which is how a cancelled Python call abandons an
//! operation.
//!
//! The Python layer calls `ActorEnv::op` with an operation code, a target handle and one
//! argument, and gets a future of an `Out`: one entry point keeps the FFI layer small.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use harrow_ipc::wait::{Event, wait_until_some};
use harrow_ipc::{ActorId, RemoteError, Value};
use harrow_portal::{
    CalleeContext, Context, ContextCanceller, Portal, Resolver, StreamRx, StreamTx,
};
use harrow_runtime_core::{
    ActorCtx, ActorNursery, ActorSpec, CancelWatch, ChildHandle, ChildOutcome, NurseryError,
    SpawnBackend, open_nursery,
};

use crate::config::InterpConfig;

/// Discovery from Python (`harrow.find_actor` and friends).
pub(crate) mod discover;

/// A boxed future the interpreter thread waits for.
pub(crate) type OpFuture = Pin<Box<dyn Future<Output = Result<Out, Fail>> + Send + 'static>>;

/// What the host process offers Python actors to start children on, by name: backends, and the
/// Rust function registries (resolvers) children on in-process Rust backends (thread) serve.
///
/// A subint backend (`harrow_spawn_subint::SubintBackend`) carries one; the children its Python actors start
/// on `"subint"` get the same offers, so the whole Python part of a tree sees one set. A Python
/// process actor (`harrow_spawn_process::PyProcessBackend`) builds its own in the child process.
#[derive(Clone, Default)]
pub struct Offers {
    backends: HashMap<String, Arc<dyn SpawnBackend>>,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
}

impl fmt::Debug for Offers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b: Vec<_> = self.backends.keys().collect();
        b.sort();
        let mut r: Vec<_> = self.resolvers.keys().collect();
        r.sort();
        f.debug_struct("Offers")
            .field("backends", &b)
            .field("resolvers", &r)
            .finish()
    }
}

impl Offers {
    /// Offers `backend` under `name`.
    pub fn add_backend(&mut self, name: &str, backend: Arc<dyn SpawnBackend>) {
        self.backends.insert(name.to_owned(), backend);
    }

    /// Offers the function registry `resolver` under `name`.
    pub fn add_resolver(&mut self, name: &str, resolver: Arc<dyn Resolver>) {
        self.resolvers.insert(name.to_owned(), resolver);
    }

    /// The names of the offered backends (`"subint"` always among them), sorted.
    pub fn backend_names(&self) -> Vec<String> {
        self.backend_names_with("subint")
    }

    /// The names of the offered backends with `own` (the backend of the actor asking, always
    /// offered to it) among them, sorted. A subint actor's list is [`backend_names`](Self::backend_names).
    pub fn backend_names_with(&self, own: &str) -> Vec<String> {
        let mut names: Vec<String> = self.backends.keys().cloned().collect();
        if !names.iter().any(|n| n == own) {
            names.push(own.to_owned());
        }
        names.sort();
        names
    }
}

/// The backends whose spawn parameters are an [`InterpConfig`] (Python children, which inherit
/// their parent's configuration).
const PYTHON_BACKENDS: [&str; 2] = ["subint", "pyprocess"];

/// Why an operation failed, as Python will see it.
#[derive(Clone, Debug)]
pub(crate) enum Fail {
    /// The operation was interrupted: `harrow.Cancelled`.
    Cancelled,
    /// An error raised in (or relayed by) another actor: `harrow.RemoteError`, whose
    /// `_harrow_remote` is this error as a `Value` (so that it crosses the next hop unchanged
    /// but for the relay).
    Remote(Box<RemoteError>),
    /// A nursery's failures: `harrow.NurseryError`, an `ExceptionGroup` of the children's errors.
    Nursery(Box<RemoteError>),
    /// Bad input from Python: `TypeError`/`ValueError`-like, raised as `harrow.HarrowError`.
    Usage(String),
    /// A runtime failure (a spawn that failed, a closed link): `harrow.HarrowError`.
    Runtime(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Cancelled => f.write_str("cancelled"),
            Fail::Remote(r) | Fail::Nursery(r) => write!(f, "{r}"),
            Fail::Usage(m) | Fail::Runtime(m) => f.write_str(m),
        }
    }
}

impl From<harrow_portal::Error> for Fail {
    fn from(e: harrow_portal::Error) -> Self {
        match e {
            harrow_portal::Error::Remote(r) => Fail::Remote(r),
            other => Fail::Runtime(other.to_string()),
        }
    }
}

/// How a call of this actor (`me`) into another failed, as Python gets it: ended here as
/// cancelled by another actor, the call is part of this actor's own cancel (its calls into the
/// child that asked it to cancel end so: `Link::close_cancelled`), `harrow.Cancelled`, even
/// before the cancel reached the Python call itself; anything else as it is.
fn call_fail(e: harrow_portal::Error, me: &ActorId) -> Fail {
    match &e {
        harrow_portal::Error::Remote(r)
            if r.is_cancelled()
                && &r.source == me
                && r.canceller.as_ref().is_some_and(|c| c != me) =>
        {
            Fail::Cancelled
        }
        _ => e.into(),
    }
}

impl From<harrow_runtime_core::Error> for Fail {
    fn from(e: harrow_runtime_core::Error) -> Self {
        match e {
            harrow_runtime_core::Error::Portal(p) => p.into(),
            other => Fail::Runtime(other.to_string()),
        }
    }
}

impl Fail {
    /// The nursery's failure as Python gets it.
    fn nursery(err: &NurseryError) -> Fail {
        Fail::Nursery(Box::new(err.as_remote().clone()))
    }
}

/// What an operation gives back to Python.
pub(crate) enum Out {
    None,
    Value(Value),
    Bool(bool),
    Str(String),
    Handle(Handle),
    /// A context and its first (`started`) value.
    Opened(Handle, Value),
    /// A stream's end (`stream.recv()` raises `EndOfStream`).
    End,
}

/// An object Python holds on to (in a capsule): a nursery, a portal, a context or a stream.
#[derive(Clone)]
pub(crate) enum Handle {
    Nursery(Arc<PyNursery>),
    Portal(Arc<PyPortal>),
    Context(Arc<PyContext>),
    Stream(Arc<PyStream>),
}

impl Handle {
    fn kind(&self) -> &'static str {
        match self {
            Handle::Nursery(_) => "nursery",
            Handle::Portal(_) => "portal",
            Handle::Context(_) => "context",
            Handle::Stream(_) => "stream",
        }
    }
}

/// The operations Python can ask for (the first argument of the native entry point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub(crate) enum Op {
    /// `harrow.open_nursery()` (no target, no argument) -> nursery handle.
    OpenNursery = 0,
    /// `nursery.__exit__` (target nursery, argument: the body's error text or None) -> None,
    /// or the nursery's failure.
    CloseNursery = 1,
    /// `n.start_actor(name, backend=..., ...)` (target nursery, argument: the spec map) ->
    /// portal handle.
    StartActor = 2,
    /// `n.run_in_actor(func, arg, name=..., ...)` (target nursery, argument: the spec map with
    /// `func` and `args`) -> portal handle (with a result).
    RunInActor = 3,
    /// `portal.run(func, arg)` (target portal, argument: `[func, args]`) -> value.
    Run = 4,
    /// `portal.open_context(func, arg)` (target portal, argument `[func, args]`) -> (context,
    /// first value).
    OpenContext = 5,
    /// `portal.cancel_actor()` (target portal) -> bool (acked / ended cleanly).
    CancelActor = 6,
    /// `portal.result()` of a `run_in_actor` child (target portal) -> value.
    Result = 7,
    /// `ctx.open_stream()` (target context) -> stream handle.
    CtxOpenStream = 8,
    /// `ctx.result()` (target context) -> value.
    CtxResult = 9,
    /// `ctx.cancel()` (target context) -> None (the cancel's outcome is the context's result).
    CtxCancel = 10,
    /// `stream.send(v)` (target stream) -> None.
    Send = 11,
    /// `stream.recv()` (target stream) -> value, or [`Out::End`] (Python raises
    /// `EndOfStream`).
    Recv = 12,
    /// `stream.close()` (target stream) -> None.
    Close = 13,
    /// The `with` block of the stream's context ended (target stream) -> None: it reads no more.
    /// Its receiving half is dropped, which tells the peer; never waits.
    StopReading = 14,
}

impl Op {
    pub(crate) fn from_i64(op: i64) -> Option<Op> {
        use Op::*;
        Some(match op {
            0 => OpenNursery,
            1 => CloseNursery,
            2 => StartActor,
            3 => RunInActor,
            4 => Run,
            5 => OpenContext,
            6 => CancelActor,
            7 => Result,
            8 => CtxOpenStream,
            9 => CtxResult,
            10 => CtxCancel,
            11 => Send,
            12 => Recv,
            13 => Close,
            14 => StopReading,
            _ => return None,
        })
    }
}

/// What one Python call can reach: its actor, the call itself, what the host offers, and the
/// interpreter configuration its subint children inherit. Made by a Python backend's resolver
/// (on the actor's runtime thread) and handed to the call
/// ([`JobState::set_env`](crate::JobState::set_env)).
#[derive(Clone)]
pub struct ActorEnv {
    base: Arc<EnvBase>,
    call: Option<CalleeContext>,
}

/// What every call of one actor reaches alike: one reference count per call, not one per
/// part (see [`ActorEnv::for_call`]).
pub(crate) struct EnvBase {
    actor: ActorCtx,
    offers: Arc<Offers>,
    /// The backend that made this actor: its children's default, under its own name (a
    /// subint actor's `"subint"` children, a Python process actor's `"pyprocess"` ones, unless
    /// the offers name another backend so).
    subint: Arc<dyn SpawnBackend>,
    config: Arc<InterpConfig>,
}

impl fmt::Debug for EnvBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvBase")
            .field("actor", self.actor.id())
            .finish_non_exhaustive()
    }
}

impl EnvBase {
    /// What the calls of `actor` reach, besides the call itself.
    pub(crate) fn new(
        actor: ActorCtx,
        offers: Arc<Offers>,
        subint: Arc<dyn SpawnBackend>,
        config: Arc<InterpConfig>,
    ) -> Arc<EnvBase> {
        Arc::new(EnvBase {
            actor,
            offers,
            subint,
            config,
        })
    }

    /// Whether these are `actor`'s.
    pub(crate) fn is_of(&self, actor: &ActorCtx) -> bool {
        self.actor.ptr_eq(actor)
    }
}

impl fmt::Debug for ActorEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorEnv")
            .field("actor", self.base.actor.id())
            .finish_non_exhaustive()
    }
}

/// Identity of the actor, for `harrow.current_actor()`.
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) backend: String,
}

impl ActorEnv {
    /// The environment of a call served by `actor` (taken on the actor's runtime thread, where
    /// the resolver runs).
    pub fn new(
        actor: ActorCtx,
        call: Option<CalleeContext>,
        offers: Arc<Offers>,
        subint: Arc<dyn SpawnBackend>,
        config: Arc<InterpConfig>,
    ) -> Self {
        ActorEnv {
            base: EnvBase::new(actor, offers, subint, config),
            call,
        }
    }

    /// The environment of `call`, served by the actor `base` is of.
    pub(crate) fn for_call(base: Arc<EnvBase>, call: Option<CalleeContext>) -> Self {
        ActorEnv { base, call }
    }

    pub(crate) fn identity(&self) -> Identity {
        let id = self.base.actor.id();
        Identity {
            name: id.name.clone(),
            uid: id.uid.clone(),
            backend: self.base.actor.backend().to_owned(),
        }
    }

    /// The portal to this actor's parent (none before the handshake, which precedes any call).
    pub(crate) fn parent(&self) -> Option<Handle> {
        self.base.actor.parent().map(|p| {
            Handle::Portal(Arc::new(PyPortal {
                portal: p,
                child: None,
                is_parent: true,
            }))
        })
    }

    pub(crate) fn backend_names(&self) -> Vec<String> {
        self.base.offers.backend_names_with(self.base.subint.name())
    }

    /// Runs `fut` as a task on the actor's executor; dropping the returned future drops it.
    /// The interpreter thread, which starts it, will wait for it (blocked, or in its event
    /// loop): the actor's own thread runs the actor's tasks meanwhile.
    fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> async_executor::Task<T> {
        crate::handle::away_here();
        self.base.actor.executor().spawn(fut)
    }

    /// Starts operation `op` on `target` with `arg`. Errors in the input are returned at once;
    /// the future does the rest on the actor's executor.
    pub(crate) fn op(&self, op: Op, target: Option<&Handle>, arg: Value) -> Result<OpFuture, Fail> {
        let wrong = |want: &str| {
            Fail::Usage(format!(
                "internal: operation {op:?} wants a {want}, not {}",
                target.map_or("nothing", Handle::kind)
            ))
        };
        match op {
            Op::OpenNursery => Ok(self.open_nursery()),
            Op::CloseNursery => match target {
                Some(Handle::Nursery(n)) => Ok(n.close(arg)),
                _ => Err(wrong("nursery")),
            },
            Op::StartActor | Op::RunInActor => match target {
                Some(Handle::Nursery(n)) => self.start_child(n, op == Op::RunInActor, arg),
                _ => Err(wrong("nursery")),
            },
            Op::Run | Op::OpenContext | Op::CancelActor | Op::Result => match target {
                Some(Handle::Portal(p)) => self.portal_op(p, op, arg),
                _ => Err(wrong("portal")),
            },
            Op::CtxOpenStream | Op::CtxResult | Op::CtxCancel => match target {
                Some(Handle::Context(c)) => Ok(self.context_op(c, op, arg)),
                _ => Err(wrong("context")),
            },
            Op::Send | Op::Recv | Op::Close | Op::StopReading => match target {
                Some(Handle::Stream(s)) => Ok(self.stream_op(s, op, arg)),
                _ => Err(wrong("stream")),
            },
        }
    }

    fn open_nursery(&self) -> OpFuture {
        // The nursery runs as a task of the actor: its body is a future that waits for Python's
        // `__exit__` to say how the `with` block ended. The task ends when the nursery has
        // ended (every child gone or reported leaked).
        let (open_tx, open_rx) = flume::bounded::<ActorNursery>(1);
        let (body_tx, body_rx) = flume::bounded::<Option<String>>(1);
        if let Some(call) = &self.call {
            // A cancelled call keeps running until its nursery has torn its children down.
            call.reserve_cleanup(harrow_runtime_core::teardown_bound(
                &self.base.actor.timeouts(),
            ));
        }
        let task = self.spawn(async move {
            open_nursery(|n| async move {
                let _ = open_tx.send(n);
                match body_rx.recv_async().await {
                    Ok(None) | Err(_) => Ok(()),
                    Ok(Some(err)) => Err(err.into()),
                }
            })
            .await
        });
        Box::pin(async move {
            let nursery = match open_rx.recv_async().await {
                Ok(n) => n,
                Err(_) => {
                    // The nursery ended before its body started: that is its error.
                    return match task.await {
                        Err(e) => Err(Fail::Runtime(e.to_string())),
                        Ok(()) => Err(Fail::Runtime("the nursery ended at once".into())),
                    };
                }
            };
            Ok(Out::Handle(Handle::Nursery(Arc::new(PyNursery {
                nursery,
                body: Mutex::new(Some(body_tx)),
                done: Mutex::new(Some(task)),
            }))))
        })
    }

    /// `start_actor` / `run_in_actor`: the spec map from Python is
    /// `{name, backend, modules, sys_path, resolver, params, func, args}` (all optional but
    /// `name`, and `func` for `run_in_actor`).
    fn start_child(&self, n: &Arc<PyNursery>, run: bool, spec: Value) -> Result<OpFuture, Fail> {
        let get_str = |k: &str| spec.get(k).and_then(Value::as_str).map(str::to_owned);
        let name = get_str("name").ok_or_else(|| Fail::Usage("a child needs a name".into()))?;
        // By default a child runs on this actor's own backend.
        let backend_name = get_str("backend").unwrap_or_else(|| self.base.subint.name().to_owned());
        let (backend, aspec) = self.child_spec(&backend_name, &spec)?;
        let nursery = n.nursery.clone();
        if run {
            let func = get_str("func")
                .ok_or_else(|| Fail::Usage("run_in_actor needs a function".into()))?;
            let args = spec.get("args").cloned().unwrap_or(Value::Null);
            let task = self.spawn(async move {
                nursery
                    .run_in_actor(&name, backend, &func, args, aspec)
                    .await
            });
            Ok(Box::pin(async move {
                let h = task.await?;
                Ok(Out::Handle(Handle::Portal(Arc::new(PyPortal::child(h)))))
            }))
        } else {
            let task = self.spawn(async move { nursery.start_actor(&name, backend, aspec).await });
            Ok(Box::pin(async move {
                let h = task.await?;
                Ok(Out::Handle(Handle::Portal(Arc::new(PyPortal::child(h)))))
            }))
        }
    }

    /// The backend named `name` and the spec of a child on it.
    ///
    /// The backend is the one offered under `name`, or this actor's own backend when `name` is
    /// its name.
    ///
    /// - a Python backend (`subint`, `pyprocess`): the parent's interpreter configuration (its
    ///   modules and `sys.path`), with `modules` replacing the exposed modules and `sys_path`
    ///   adding entries when given; `params` (an `InterpConfig::to_params` map) replaces it
    ///   whole.
    /// - any other offered backend: `params` as given, and the resolver offered under the name
    ///   `resolver` (for a backend running Rust functions in-process, such as thread).
    fn child_spec(
        &self,
        name: &str,
        spec: &Value,
    ) -> Result<(Arc<dyn SpawnBackend>, ActorSpec), Fail> {
        let strings = |k: &str| -> Result<Option<Vec<String>>, Fail> {
            match spec.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::List(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_owned).ok_or_else(|| {
                            Fail::Usage(format!("{k} must be a list of str, not {v:?}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(other) => Err(Fail::Usage(format!(
                    "{k} must be a list of str, not {other:?}"
                ))),
            }
        };
        let mut aspec = ActorSpec::new();
        let params = spec
            .get("params")
            .filter(|v| !matches!(v, Value::Null))
            .cloned();
        let backend = match self.base.offers.backends.get(name) {
            Some(b) => b.clone(),
            None if name == self.base.subint.name() => self.base.subint.clone(),
            None => {
                return Err(Fail::Usage(format!(
                    "no backend {name:?} is offered to Python actors here (offered: {})",
                    self.backend_names().join(", ")
                )));
            }
        };
        if PYTHON_BACKENDS.contains(&name) {
            aspec.params = match params {
                Some(p) => p,
                None => {
                    let mut config = (*self.base.config).clone();
                    if let Some(modules) = strings("modules")? {
                        config.modules = modules;
                    }
                    if let Some(paths) = strings("sys_path")? {
                        config.sys_path.extend(paths.into_iter().map(Into::into));
                    }
                    config.to_params()
                }
            };
        } else if let Some(p) = params {
            aspec.params = p;
        }
        if let Some(r) = spec.get("resolver").and_then(Value::as_str) {
            let Some(res) = self.base.offers.resolvers.get(r) else {
                let mut names: Vec<_> = self.base.offers.resolvers.keys().cloned().collect();
                names.sort();
                return Err(Fail::Usage(format!(
                    "no function registry {r:?} is offered to Python actors here (offered: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                )));
            };
            aspec.resolver = Some(res.clone());
        }
        Ok((backend, aspec))
    }

    fn portal_op(&self, p: &Arc<PyPortal>, op: Op, arg: Value) -> Result<OpFuture, Fail> {
        let p = p.clone();
        match op {
            Op::Run | Op::OpenContext => {
                let (func, args) = func_args(arg)?;
                let me = self.base.actor.id().clone();
                if op == Op::Run {
                    let task = self.spawn(async move { p.portal.run(&func, args).await });
                    Ok(Box::pin(async move {
                        Ok(Out::Value(task.await.map_err(|e| call_fail(e, &me))?))
                    }))
                } else {
                    let task = self.spawn(async move { p.portal.open_context(&func, args).await });
                    Ok(Box::pin(async move {
                        let (ctx, first) = task.await.map_err(|e| call_fail(e, &me))?;
                        Ok(Out::Opened(
                            Handle::Context(Arc::new(PyContext {
                                canceller: ctx.canceller(),
                                ctx: Mutex::new(Slot::Here(ctx)),
                                outcome: Mutex::new(None),
                                changed: Event::new(),
                            })),
                            first,
                        ))
                    }))
                }
            }
            Op::CancelActor => {
                let bound = self.base.actor.timeouts().cancel_ack;
                let task = self.spawn(async move {
                    match &p.child {
                        // A child: the whole ladder; true when it ended by itself.
                        Some(h) => matches!(h.cancel().await, ChildOutcome::Exited),
                        None => p.portal.cancel_actor(bound).await,
                    }
                });
                Ok(Box::pin(async move { Ok(Out::Bool(task.await)) }))
            }
            Op::Result => {
                let Some(h) = p.child.clone() else {
                    return Err(Fail::Usage("the parent's portal has no result".into()));
                };
                let task = self.spawn(async move { h.result().await });
                Ok(Box::pin(async move { Ok(Out::Value(task.await?)) }))
            }
            _ => Err(Fail::Usage(format!(
                "internal: {op:?} is not a portal operation"
            ))),
        }
    }

    fn context_op(&self, c: &Arc<PyContext>, op: Op, _arg: Value) -> OpFuture {
        let c = c.clone();
        match op {
            Op::CtxOpenStream => {
                let task = self.spawn(async move {
                    let mut lent = Lent::take(&c).map_err(|why| ctx_absent(why, "open_stream"))?;
                    match lent.value.as_mut() {
                        Some(ctx) => ctx.open_stream().await.map_err(Fail::from),
                        None => Err(ctx_absent(Absent::Gone, "open_stream")),
                    }
                });
                Box::pin(async move {
                    let (tx, rx) = task.await?.split();
                    Ok(Out::Handle(Handle::Stream(Arc::new(PyStream {
                        tx,
                        rx: Mutex::new(Slot::Here(rx)),
                    }))))
                })
            }
            Op::CtxResult => {
                let task = self.spawn(async move {
                    // Another task's wait holds the context: wait for that one to end. Its
                    // outcome is then every later wait's; a wait given up (a deadline, a
                    // cancel) puts the context back, and this one waits on it itself.
                    let mut lent = match wait_until_some(&c.changed, || match Lent::take(&c) {
                        Ok(lent) => Some(Ok(lent)),
                        Err(Absent::Busy) => None,
                        Err(Absent::Gone) => Some(Err(())),
                    })
                    .await
                    {
                        Ok(lent) => lent,
                        Err(()) => {
                            let known = c.outcome.lock().unwrap_or_else(|p| p.into_inner());
                            return known
                                .clone()
                                .unwrap_or_else(|| Err(ctx_absent(Absent::Gone, "result")));
                        }
                    };
                    let out = match lent.value.as_ref() {
                        Some(ctx) => ctx.wait_outcome().await.map_err(Fail::from),
                        None => Err(ctx_absent(Absent::Gone, "result")),
                    };
                    // Answered: the result is taken with the context, as `Context::result`
                    // does, and kept for the other waits.
                    *c.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(out.clone());
                    drop(lent.value.take());
                    out
                });
                Box::pin(async move { Ok(Out::Value(task.await?)) })
            }
            _ => {
                // Through the canceller, so that a cancel reaches the context while another
                // operation holds it (an async task awaiting its result): it used to find the
                // context lent out and do nothing. A context that has ended ignores it.
                let task =
                    self.spawn(async move { c.canceller.cancel().await.map_err(Fail::from) });
                Box::pin(async move {
                    task.await?;
                    Ok(Out::None)
                })
            }
        }
    }

    fn stream_op(&self, s: &Arc<PyStream>, op: Op, arg: Value) -> OpFuture {
        let s = s.clone();
        if op == Op::StopReading {
            // The receiving half goes now, unless a receive holds it (that one then ends).
            if let Ok(mut lent) = Lent::take(&s) {
                drop(lent.value.take());
            }
            return Box::pin(async { Ok(Out::None) });
        }
        let task = self.spawn(async move {
            let out = match op {
                // The sending half is shared: one task may send while another receives.
                Op::Send => s.tx.send(arg).await.map(|()| Out::None),
                Op::Recv => {
                    // Lent to the receive: another receive meanwhile is an error, and one
                    // given up (a deadline, a cancel) puts the receiving half back as it was.
                    let mut lent = Lent::take(&s).map_err(|why| stream_absent(why, "recv"))?;
                    let rx = lent
                        .value
                        .as_mut()
                        .ok_or_else(|| stream_absent(Absent::Gone, "recv"))?;
                    rx.recv().await.map(|v| match v {
                        Some(v) => Out::Value(v),
                        None => Out::End,
                    })
                }
                _ => s.tx.close().await.map(|()| Out::None),
            };
            out.map_err(Fail::from)
        });
        Box::pin(task)
    }
}

/// The error of a context operation `op` that found no context to work with.
fn ctx_absent(why: Absent, op: &str) -> Fail {
    Fail::Usage(match why {
        Absent::Busy => format!(
            "context.{op}(): another operation on this context is in progress (a task awaiting \
             its result or opening its stream); a context's operations run one at a time, \
             except cancel()"
        ),
        Absent::Gone => format!("context.{op}(): the context's result was already taken"),
    })
}

/// The error of a stream operation `op` that found no receiving half to work with.
fn stream_absent(why: Absent, op: &str) -> Fail {
    Fail::Usage(match why {
        Absent::Busy => format!(
            "stream.{op}(): another task is receiving on this stream; one task receives at a \
             time (sending meanwhile is fine)"
        ),
        Absent::Gone => format!("stream.{op}(): the stream has ended"),
    })
}

/// Splits `[func, args]`.
fn func_args(arg: Value) -> Result<(String, Value), Fail> {
    if let Value::List(v) = &arg
        && v.len() == 2
    {
        return match &v[0] {
            Value::Str(f) => Ok((f.clone(), v[1].clone())),
            other => Err(Fail::Usage(format!(
                "the function must be a str \"module:function\", not {other:?}"
            ))),
        };
    }
    Err(Fail::Usage(format!(
        "internal: want [func, args], got {arg:?}"
    )))
}

/// What Python's `__exit__` says when the block ended with `harrow.Cancelled`.
const BODY_CANCELLED: &str = "harrow.Cancelled";

/// The group of a nursery whose block was cancelled: its children's failures (and an interrupt),
/// without the cancel itself.
fn failures_group(local: &ActorId, e: &NurseryError) -> RemoteError {
    let mut members = Vec::new();
    if e.is_interrupted() {
        members.push(RemoteError::new(
            harrow_ipc::ErrorKind::Runtime,
            "Interrupted",
            "interrupted (SIGINT)",
            local.clone(),
        ));
    }
    members.extend(e.failures().iter().map(|f| f.to_remote(local)));
    let n = members.len();
    let message = format!(
        "{n} failure{} in the nursery of {}",
        if n == 1 { "" } else { "s" },
        local.name
    );
    RemoteError::group(message, local.clone(), members)
}

/// A nursery opened from Python (`with harrow.open_nursery() as n:`).
pub(crate) struct PyNursery {
    nursery: ActorNursery,
    /// Tells the nursery's body how the `with` block ended (None: normally).
    body: Mutex<Option<flume::Sender<Option<String>>>>,
    /// The nursery's task: ends once every child has ended.
    done: Mutex<Option<async_executor::Task<Result<(), NurseryError>>>>,
}

impl PyNursery {
    /// The scope of this nursery's `with` block: it fires as soon as the nursery tears down
    /// (one-cancels-all: a child failed), so that Python's waits in the block end with
    /// `Cancelled`. It is the teardown's own signal, not the drop of the nursery's body, which
    /// comes only at the nursery task's next poll: by then the teardown may have ended the
    /// calls the block awaits, and a wait polled in between would see those ends instead.
    pub(crate) fn scope(&self) -> Scope {
        Scope {
            teardown: Some(self.nursery.tearing_down()),
            deadline: None,
        }
    }

    /// Ends the body (with `body_error` when the block raised) and waits for the nursery.
    fn close(&self, body_error: Value) -> OpFuture {
        let err = match &body_error {
            Value::Null => None,
            Value::Str(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        };
        let cancelled_body = err.as_deref() == Some(BODY_CANCELLED);
        let local = self.nursery.actor().id().clone();
        if let Some(tx) = self.body.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(err);
        }
        let task = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            let Some(task) = task else {
                return Err(Fail::Usage("the nursery was already closed".into()));
            };
            match task.await {
                Ok(()) => Ok(Out::None),
                // The block's own error and nothing else: Python re-raises the block's exception.
                Err(e) if e.failures().is_empty() && !e.is_interrupted() => Ok(Out::Str(
                    e.body_error().map(|b| b.to_string()).unwrap_or_default(),
                )),
                // The block was cancelled (its call, or one-cancels-all): as in Rust, a cancel is
                // not one of the nursery's failures; the group holds the children's.
                Err(e) if cancelled_body => {
                    Err(Fail::Nursery(Box::new(failures_group(&local, &e))))
                }
                Err(e) => Err(Fail::nursery(&e)),
            }
        })
    }
}

impl Drop for PyNursery {
    fn drop(&mut self) {
        // A nursery handle dropped without `__exit__` (Python never closed it): end the body so
        // the nursery tears its children down; its task was detached with the actor tracking
        // it (open_nursery hands a dropped teardown to the actor), so nothing is left behind.
        if let Some(tx) = self
            .body
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Some("the nursery was dropped without being closed".into()));
        }
        if let Some(task) = self
            .done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.detach();
        }
    }
}

/// A portal from Python: to a child (with its handle, for the ladder and `run_in_actor`
/// results) or to the actor's parent.
pub(crate) struct PyPortal {
    portal: Portal,
    child: Option<ChildHandle>,
    is_parent: bool,
}

impl PyPortal {
    fn child(h: ChildHandle) -> Self {
        PyPortal {
            portal: h.portal().clone(),
            child: Some(h),
            is_parent: false,
        }
    }

    /// `(name, uid, backend)` of the actor at the other end (backend empty for the parent).
    pub(crate) fn peer(&self) -> (String, String, String) {
        let id: &ActorId = self.portal.peer();
        let backend = self
            .child
            .as_ref()
            .map(|h| h.backend().to_owned())
            .unwrap_or_default();
        (id.name.clone(), id.uid.clone(), backend)
    }

    pub(crate) fn is_parent(&self) -> bool {
        self.is_parent
    }
}

/// A context opened from Python (`p.open_context(...)`).
pub(crate) struct PyContext {
    ctx: Mutex<Slot<Context>>,
    /// Cancels the context even while an operation holds it (a task waiting for its result).
    canceller: ContextCanceller,
    /// The outcome the result wait got, for the waits after it.
    outcome: Mutex<Option<Result<Value, Fail>>>,
    /// Notified whenever the context is put back or consumed.
    changed: Event,
}

/// What a Python handle holds for one operation at a time: a context or a stream.
trait Holds: Send + Sync + 'static {
    type Value: Send + 'static;
    fn slot(&self) -> &Mutex<Slot<Self::Value>>;
    /// Notified whenever the slot changes hands, for holders whose operations wait for it
    /// (a context's `result`); `None` where a busy slot is an error instead.
    fn changed(&self) -> Option<&Event>;
}

impl Holds for PyContext {
    type Value = Context;
    fn slot(&self) -> &Mutex<Slot<Context>> {
        &self.ctx
    }
    fn changed(&self) -> Option<&Event> {
        Some(&self.changed)
    }
}

impl Holds for PyStream {
    type Value = StreamRx;
    fn slot(&self) -> &Mutex<Slot<StreamRx>> {
        &self.rx
    }
    fn changed(&self) -> Option<&Event> {
        None
    }
}

/// Where a Python handle's context or stream is.
enum Slot<V> {
    /// In the handle, for the next operation.
    Here(V),
    /// With an operation in progress (another task's, in an `async def` call).
    Lent,
    /// Consumed: the context's result was taken.
    Gone,
}

/// Why an operation found no context or stream to work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Another operation has it (operations other than a context's cancel run one at a time).
    Busy,
    /// It was consumed.
    Gone,
}

/// A Python handle's context or stream, lent to one operation: put back when the operation
/// ends or is given up (its future dropped by a deadline or a cancel), so that giving up a wait
/// neither ends nor cancels the context, nor ends the stream. An operation that consumes it
/// takes it out of `value` first.
struct Lent<H: Holds> {
    holder: Arc<H>,
    value: Option<H::Value>,
}

impl<H: Holds> Lent<H> {
    /// What `holder` holds, unless it was consumed or another operation has it.
    fn take(holder: &Arc<H>) -> Result<Lent<H>, Absent> {
        let mut slot = holder.slot().lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, Slot::Lent) {
            Slot::Here(value) => Ok(Lent {
                holder: holder.clone(),
                value: Some(value),
            }),
            Slot::Lent => Err(Absent::Busy),
            Slot::Gone => {
                *slot = Slot::Gone;
                Err(Absent::Gone)
            }
        }
    }
}

impl<H: Holds> Drop for Lent<H> {
    /// Puts the value back, or marks it consumed when the operation took it out of `value`.
    fn drop(&mut self) {
        let back = match self.value.take() {
            Some(value) => Slot::Here(value),
            None => Slot::Gone,
        };
        *self.holder.slot().lock().unwrap_or_else(|p| p.into_inner()) = back;
        if let Some(changed) = self.holder.changed() {
            changed.notify(usize::MAX);
        }
    }
}

/// A stream of a context opened from Python.
pub(crate) struct PyStream {
    /// The sending half, shared by every send and the close.
    tx: StreamTx,
    /// The receiving half, lent to one receive at a time.
    rx: Mutex<Slot<StreamRx>>,
}

/// A cancel scope of a Python call: a nursery's block, or a deadline
/// (`harrow.move_on_after`, `harrow.fail_after`). The call's waits end with `Cancelled` when
/// one of its scopes fires.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    /// A nursery's block: the nursery's teardown.
    teardown: Option<CancelWatch>,
    deadline: Option<Instant>,
}

impl Scope {
    /// A scope that fires at `now + seconds` (never, for a duration too long to represent).
    pub(crate) fn deadline(seconds: f64) -> Scope {
        let secs = if seconds > 0.0 { seconds } else { 0.0 };
        let deadline = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| Instant::now().checked_add(d));
        Scope {
            teardown: None,
            deadline,
        }
    }

    /// Whether it fired (its nursery tears down or its deadline passed).
    pub(crate) fn fired(&self) -> bool {
        self.teardown
            .as_ref()
            .is_some_and(CancelWatch::is_cancelled)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Resolves once one of `scopes` fires; never when there is none.
pub(crate) async fn any_fired(scopes: Vec<Scope>) {
    use futures_lite::FutureExt;
    if scopes.is_empty() {
        return std::future::pending().await;
    }
    let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    for s in scopes {
        if let Some(watch) = s.teardown {
            waits.push(Box::pin(async move { watch.cancelled().await }));
        }
        if let Some(d) = s.deadline {
            waits.push(Box::pin(async move {
                async_io::Timer::at(d).await;
            }));
        }
    }
    let mut all = waits.into_iter();
    let first = all
        .next()
        .unwrap_or_else(|| Box::pin(std::future::pending()));
    all.fold(first, |acc, w| Box::pin(acc.or(w))).await
}

/// `op`, ended early with `Fail::Cancelled` once one of `scopes` fires.
///
/// The scopes are looked at first, at every poll. A nursery's one-cancels-all fires the
/// block's scope and tears down the children, and the teardown ends the calls the block awaits;
/// when both have happened by the time the wait is polled (its thread was busy or preempted),
/// the block must see `Cancelled`, not the end of a call its own cancel brought about. With the
/// operation looked at first, a Python block awaiting a child's call got the call's failure now
/// and then under CPU hogs instead of `harrow.Cancelled`.
///
/// A fired scope still takes one look at the operation: one that already has its value (an
/// item it took off a stream, a call that returned) gives it, since dropping it would lose an
/// item from the stream; the cancel is then raised at the next wait, which looks at the scopes
/// before it starts. One that failed, or has not ended, gives `Cancelled`.
pub(crate) async fn or_cancelled<T>(
    scopes: Vec<Scope>,
    op: impl Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    let mut op = std::pin::pin!(op);
    let mut fired = std::pin::pin!(any_fired(scopes));
    std::future::poll_fn(|cx| {
        if fired.as_mut().poll(cx).is_ready() {
            return match op.as_mut().poll(cx) {
                Poll::Ready(Ok(v)) => Poll::Ready(Ok(v)),
                Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(Err(Fail::Cancelled)),
            };
        }
        op.as_mut().poll(cx)
    })
    .await
}

/// A `RemoteError` as the `Value` Python keeps on the exception (`_harrow_remote`).
pub(crate) fn remote_to_value(r: &RemoteError) -> Value {
    harrow_ipc::to_value(r).unwrap_or(Value::Null)
}

/// The `RemoteError` a Python exception carries back (`_harrow_remote`), if it is one.
pub(crate) fn remote_from_value(v: Value) -> Option<RemoteError> {
    harrow_ipc::from_value(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use harrow_ipc::ErrorKind;
    use harrow_runtime_core::CancelToken;

    #[test]
    fn remote_errors_cross_as_values() {
        let leaf = RemoteError::new(
            ErrorKind::Raised,
            "ValueError",
            "deep",
            ActorId::new("leaf"),
        )
        .relayed_by(ActorId::new("mid"));
        let group = RemoteError::group("2 failed", ActorId::new("top"), vec![leaf.clone()]);
        for e in [leaf, group] {
            let v = remote_to_value(&e);
            assert!(matches!(v, Value::Map(_)), "{v:?}");
            assert_eq!(remote_from_value(v), Some(e));
        }
        assert_eq!(remote_from_value(Value::Int(3)), None);
    }

    #[test]
    fn func_args_wants_a_function_and_a_value() {
        let ok = func_args(Value::List(vec![Value::from("m:f"), Value::Int(1)]));
        assert!(matches!(ok, Ok((f, Value::Int(1))) if f == "m:f"));
        assert!(matches!(
            func_args(Value::List(vec![Value::Int(1), Value::Null])),
            Err(Fail::Usage(_))
        ));
        assert!(matches!(func_args(Value::Null), Err(Fail::Usage(_))));
    }

    #[test]
    fn an_actors_own_backend_is_always_offered_to_it() {
        let offers = Offers::default();
        assert_eq!(offers.backend_names(), ["subint"]);
        assert_eq!(offers.backend_names_with("pyprocess"), ["pyprocess"]);
        assert!(PYTHON_BACKENDS.contains(&"pyprocess") && PYTHON_BACKENDS.contains(&"subint"));
    }

    #[test]
    fn op_codes_round_trip() {
        for i in 0..15 {
            let op = Op::from_i64(i).expect("a known op");
            assert_eq!(op as i64, i);
        }
        assert_eq!(Op::from_i64(15), None);
        assert_eq!(Op::from_i64(-1), None);
    }

    #[test]
    fn a_fired_scope_wins_over_a_failed_operation_and_keeps_a_value_already_there() {
        use futures_lite::future::block_on;
        let token = CancelToken::new();
        let fired = Scope {
            teardown: Some(token.watch()),
            deadline: None,
        };
        token.cancel();
        let torn_down = || async { Err::<i64, _>(Fail::Runtime("the child was torn down".into())) };
        // Both ready at the first poll: the cancel, for an operation that failed (what the
        // teardown did to it) ...
        let r = block_on(or_cancelled(vec![fired.clone()], torn_down()));
        assert!(matches!(r, Err(Fail::Cancelled)), "{r:?}");
        // ... but a value the operation already has is given, not dropped (an item it took off
        // a stream would be lost) ...
        let r = block_on(or_cancelled(vec![fired.clone()], async {
            Ok::<_, Fail>(5)
        }));
        assert!(matches!(r, Ok(5)), "{r:?}");
        // ... and an operation that has not ended is given up.
        let r = block_on(or_cancelled(
            vec![fired],
            std::future::pending::<Result<i64, Fail>>(),
        ));
        assert!(matches!(r, Err(Fail::Cancelled)), "{r:?}");
        // A deadline that passed counts as fired.
        let r = block_on(or_cancelled(vec![Scope::deadline(0.0)], torn_down()));
        assert!(matches!(r, Err(Fail::Cancelled)), "{r:?}");
        // Nothing fired, or no scope at all (a shielded wait): the operation's own end.
        let r = block_on(or_cancelled(vec![Scope::deadline(3600.0)], torn_down()));
        assert!(matches!(r, Err(Fail::Runtime(_))), "{r:?}");
        let r = block_on(or_cancelled(Vec::new(), async { Ok::<_, Fail>(7) }));
        assert!(matches!(r, Ok(7)), "{r:?}");
    }

    #[test]
    fn deadline_scopes_fire() {
        assert!(Scope::deadline(0.0).fired());
        assert!(!Scope::deadline(3600.0).fired());
        assert!(!Scope::deadline(f64::INFINITY).fired());
        let token = CancelToken::new();
        let s = Scope {
            teardown: Some(token.watch()),
            deadline: Instant::now().checked_add(Duration::from_secs(3600)),
        };
        assert!(!s.fired());
        token.cancel();
        assert!(s.fired());
        futures_lite::future::block_on(any_fired(vec![
            Scope::deadline(3600.0),
            Scope::deadline(0.0),
        ]));
    }
}
