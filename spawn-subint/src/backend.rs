//! [`SubintBackend`]: the `SpawnBackend` whose actors run Python in subinterpreters.
//!
//! Per actor, two dedicated OS threads: the interpreter thread ([`InterpThread`]) that owns the
//! subinterpreter and runs every Python call, and the actor's Rust runtime thread that runs
//! `run_actor_in_process` (dispatcher, link, cancel protocol) with a [`PyResolver`] handing calls to the
//! interpreter thread. When the runtime returns (cancelled or orphaned) the runtime thread shuts
//! the interpreter down, bounded by the spec's `hard_kill` timeout; an interpreter that cannot be
//! ended in time is leaked and `Child::join` reports `Running` (the runtime then reports it).

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::CoDriver;
use harrow_runtime_core::ipc::{ActorId, Channel, mem};
use harrow_runtime_core::{
    ActorInit, BoxFuture, Capabilities, Child, DedicatedThread, Exit, HardKill, Joined,
    SpawnBackend, SpawnError, SpawnSpec, run_actor_in_process, run_actor_in_process_codriven,
};

use harrow_python::nest::Offers;
use harrow_python::{InterpConfig, InterpHandle, Nesting, PyResolver};
use harrow_runtime_core::portal::Resolver;

use crate::interp::InterpThread;

/// Actors that run Python functions in CPython subinterpreters (own GIL by default).
///
/// The spawn spec's `params` are [`InterpConfig::to_params`] (modules to expose, `sys.path`
/// entries, legacy mode, threads).
///
/// Its actors are full actors: their Python code opens nurseries (`harrow.open_nursery()`),
/// starts children on the backends this one offers by name (`"subint"` always: this backend,
/// with the same offers; others with [`offer_backend`](Self::offer_backend)), and reaches its
/// parent (`harrow.current_actor().parent`).
///
/// ```
/// use harrow_spawn_subint::SubintBackend;
/// // A host that lets its Python actors start subint children only (the default), and one
/// // that also offers a backend under the name "subint2" (any `SpawnBackend` will do).
/// let plain = SubintBackend::new();
/// let more = SubintBackend::new().offer_backend("subint2", SubintBackend::shared());
/// assert_eq!(plain.offered_backends(), ["subint"]);
/// assert_eq!(more.offered_backends(), ["subint", "subint2"]);
/// ```
#[derive(Debug, Default, Clone)]
pub struct SubintBackend {
    offers: Offers,
}

impl SubintBackend {
    /// A backend.
    pub fn new() -> Self {
        SubintBackend::default()
    }

    /// A new backend, ready to hand to a nursery.
    pub fn shared() -> Arc<dyn SpawnBackend> {
        Arc::new(SubintBackend::new())
    }

    /// Offers `backend` to this backend's Python actors under `name`: `n.start_actor(name,
    /// backend=name)` in Python starts a child there. (`"subint"` is always offered: this
    /// backend itself; offering another under that name replaces it.)
    pub fn offer_backend(mut self, name: &str, backend: Arc<dyn SpawnBackend>) -> Self {
        self.offers.add_backend(name, backend);
        self
    }

    /// Offers a registry of Rust functions under `name`: a child started from Python with
    /// `resolver=name` serves them (for a backend that runs Rust functions in-process, such as
    /// thread).
    pub fn offer_resolver(mut self, name: &str, resolver: Arc<dyn Resolver>) -> Self {
        self.offers.add_resolver(name, resolver);
        self
    }

    /// The names of the backends offered to Python actors, sorted.
    pub fn offered_backends(&self) -> Vec<String> {
        self.offers.backend_names()
    }

    /// This backend, ready to hand to a nursery.
    pub fn into_shared(self) -> Arc<dyn SpawnBackend> {
        Arc::new(self)
    }
}

impl SpawnBackend for SubintBackend {
    fn name(&self) -> &'static str {
        "subint"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_hard_kill(HardKill::Interrupts)
            .with_nested(true)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(spawn(self.clone(), spec))
    }
}

async fn spawn(backend: SubintBackend, spec: SpawnSpec) -> Result<Box<dyn Child>, SpawnError> {
    let id = spec.id.clone();
    if !crate::available() {
        return Err(SpawnError::Unavailable {
            actor: id,
            backend: "subint",
            reason: harrow_python::unavailable_message(),
        });
    }
    let config = InterpConfig::from_params(id.name.clone(), spec.params()).map_err(|e| {
        SpawnError::BadSpec {
            actor: id.clone(),
            reason: e.to_string(),
        }
    })?;
    let interp = InterpThread::spawn_async(config)
        .await
        .map_err(|e| match e {
            crate::Error::Unavailable(reason) => SpawnError::Unavailable {
                actor: id.clone(),
                backend: "subint",
                reason,
            },
            other => SpawnError::Failed {
                actor: id.clone(),
                reason: other.to_string(),
            },
        })?;
    start_on(backend, spec, interp)
}

/// Starts the actor of `spec` on an interpreter already created (the fresh one of [`spawn`], or
/// a warm one from [`WarmSubintBackend`](crate::WarmSubintBackend)).
///
/// `backend` is what the actor's Python code reaches: the backends and resolvers it offers by
/// name, and itself for subint children (which inherit this interpreter's configuration).
pub(crate) fn start_on(
    backend: SubintBackend,
    spec: SpawnSpec,
    interp: InterpThread,
) -> Result<Box<dyn Child>, SpawnError> {
    let id = spec.id.clone();
    let handle = interp.handle();
    let nesting = Nesting {
        offers: Arc::new(backend.offers.clone()),
        config: Arc::new(handle.config().clone()),
        subint: Arc::new(backend),
    };
    let resolver = Arc::new(PyResolver::nested(interp.handle(), nesting));
    let shutdown_bound = spec.timeouts().hard_kill;
    let init = ActorInit::from_spec(spec, "subint").with_resolver(resolver);
    let (parent_end, child_end) = mem::pair();
    let shared = Arc::clone(handle.shared());
    let runtime = DedicatedThread::spawn(format!("rt-{}", id.name), move || {
        if codrive() {
            let co = CoDriver::new();
            shared.set_codriver(Some(co.clone()));
            run_actor_in_process_codriven(child_end, init, &co);
            shared.set_codriver(None);
        } else {
            run_actor_in_process(child_end, init);
        }
        interp.shutdown(shutdown_bound)
    })
    .map_err(|e| SpawnError::Failed {
        actor: id.clone(),
        reason: format!("cannot start its runtime thread: {e}"),
    })?;
    Ok(Box::new(SubintChild {
        id,
        channel: Some(parent_end),
        runtime,
        interp: handle,
        leaked: None,
    }))
}

/// Whether the interpreter thread runs the actor's tasks while it waits for a call
/// (`HARROW_SUBINT_CODRIVE=0` turns it off: every call then goes through the actor's thread).
fn codrive() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| harrow_ipc::env_switch("HARROW_SUBINT_CODRIVE"))
}

struct SubintChild {
    id: ActorId,
    channel: Option<Channel>,
    runtime: DedicatedThread<Exit>,
    interp: InterpHandle,
    leaked: Option<String>,
}

impl std::fmt::Debug for SubintChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Child for SubintChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        // Interrupt the running Python (re-armed `harrow.Cancelled`, in a plain call or in the
        // event loop's tasks) and stop taking calls. The runtime drops its channel end, so the
        // actor runtime sees its parent gone and returns.
        self.interp.hard_kill();
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            if self.leaked.is_some() {
                return Exit::Running;
            }
            // Cancel-safe (DedicatedThread keeps the handle until the thread is done), so a join
            // dropped mid-wait (an escalated ladder step) loses nothing.
            match self.runtime.join(bound).await {
                Joined::Running => Exit::Running,
                Joined::AlreadyJoined => Exit::Exited,
                Joined::Finished(Exit::Leaked(reason)) => {
                    self.leaked = Some(reason);
                    Exit::Running
                }
                Joined::Finished(exit) => exit,
                Joined::Panicked(why) => Exit::Failed(format!("the actor runtime thread {why}")),
            }
        })
    }

    fn describe(&self) -> String {
        match &self.leaked {
            Some(reason) => format!(
                "subint actor {} (interpreter thread subint-{}, leaked: {reason})",
                self.id,
                self.interp.name()
            ),
            None => format!(
                "subint actor {} (interpreter thread subint-{})",
                self.id,
                self.interp.name()
            ),
        }
    }
}
