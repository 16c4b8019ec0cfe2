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

use harrow_runtime_core::ipc::{ActorId, Channel, mem};
use harrow_runtime_core::{
    ActorInit, BoxFuture, Capabilities, Child, DedicatedThread, Exit, HardKill, Joined,
    SpawnBackend, SpawnError, SpawnSpec, run_actor_in_process,
};

use crate::interp::InterpThread;
use harrow_python::InterpConfig;
use harrow_python::{InterpHandle, PyResolver};

/// Actors that run Python functions in CPython subinterpreters (own GIL by default).
///
/// The spawn spec's `params` are [`InterpConfig::to_params`] (modules to expose, `sys.path`
/// entries, legacy mode, threads).
#[derive(Debug, Default, Clone)]
pub struct SubintBackend {
    _private: (),
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
}

impl SpawnBackend for SubintBackend {
    fn name(&self) -> &'static str {
        "subint"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_hard_kill(HardKill::Interrupts)
            .with_nested(false)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(spawn(spec))
    }
}

async fn spawn(spec: SpawnSpec) -> Result<Box<dyn Child>, SpawnError> {
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
    start_on(spec, interp)
}

/// Starts the actor of `spec` on an interpreter already created (the fresh one of [`spawn`], or
/// a warm one from [`WarmSubintBackend`](crate::WarmSubintBackend)).
pub(crate) fn start_on(
    spec: SpawnSpec,
    interp: InterpThread,
) -> Result<Box<dyn Child>, SpawnError> {
    let id = spec.id.clone();
    let handle = interp.handle();
    let resolver = Arc::new(PyResolver::new(interp.handle()));
    let shutdown_bound = spec.timeouts().hard_kill;
    let init = ActorInit::from_spec(spec, "subint").with_resolver(resolver);
    let (parent_end, child_end) = mem::pair();
    let runtime = DedicatedThread::spawn(format!("rt-{}", id.name), move || {
        run_actor_in_process(child_end, init);
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
        // Interrupt the running Python (re-armed `harrow.Cancelled`) and stop taking calls. The
        // runtime drops its channel end, so the actor runtime sees its parent gone and returns.
        self.interp.begin_shutdown();
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
