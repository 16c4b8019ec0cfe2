//! `ThreadBackend`: harrow actors on dedicated OS threads, each with its own executor.
//!
//! Every actor gets one named OS thread of its own (never a pooled one) that runs the actor
//! runtime ([`run_actor_in_process`]) on the child's end of an in-memory channel. A child that never yields
//! stalls only its own thread. A Rust thread cannot be stopped from outside, so the hard kill
//! detaches it and the runtime reports it leaked, by name.
//!
//! ```
//! use std::sync::Arc;
//! use harrow_runtime_core::{run_root, ActorSpec, RootConfig};
//! use harrow_runtime_core::portal::FnRegistry;
//! use harrow_runtime_core::ipc::Value;
//! use harrow_spawn_thread::ThreadBackend;
//!
//! let mut reg = FnRegistry::new();
//! reg.unary("math:double", |v: Value| async move {
//!     Ok(Value::Int(v.as_i64().unwrap_or(0) * 2))
//! }).unwrap();
//! let reg = Arc::new(reg);
//! let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
//!     let child = n.start_actor("doubler", ThreadBackend::shared(), ActorSpec::with_resolver(reg)).await?;
//!     Ok(child.run("math:double", Value::Int(21)).await?)
//! }).unwrap();
//! assert_eq!(out, Value::Int(42));
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::ipc::{ActorId, Channel, mem};
use harrow_runtime_core::{
    ActorInit, BoxFuture, Capabilities, Child, DedicatedThread, Exit, HardKill, SpawnBackend,
    SpawnError, SpawnSpec, run_actor_in_process, thread_name,
};

/// The smallest stack an actor thread gets ([`ThreadBackend::with_stack_size`]): room for the
/// actor's runtime (its executor, link and the handshake) with a margin for small functions.
pub const MIN_STACK_SIZE: usize = 256 * 1024;

/// Actors on dedicated OS threads, running Rust functions.
#[derive(Debug, Default, Clone)]
pub struct ThreadBackend {
    stack_size: Option<usize>,
}

impl ThreadBackend {
    /// A backend with default thread settings.
    pub fn new() -> Self {
        ThreadBackend::default()
    }

    /// A new backend, ready to hand to a nursery.
    pub fn shared() -> Arc<dyn SpawnBackend> {
        Arc::new(ThreadBackend::new())
    }

    /// Sets the stack size of actor threads, at least [`MIN_STACK_SIZE`] (a smaller one is
    /// raised to it: an actor's own runtime needs that much before any function of yours runs,
    /// and a thread that overflows its stack aborts the whole process).
    pub fn with_stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes.max(MIN_STACK_SIZE));
        self
    }
}

impl SpawnBackend for ThreadBackend {
    fn name(&self) -> &'static str {
        "thread"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_hard_kill(HardKill::Detaches)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(self.spawn_now(spec))
    }
}

impl ThreadBackend {
    async fn spawn_now(&self, spec: SpawnSpec) -> Result<Box<dyn Child>, SpawnError> {
        let id = spec.id.clone();
        // Both ends have a thread of their own: a long burst (a stream) wakes the waiting side
        // before the sender's flush, so that the two work on it at once.
        let (parent_end, child_end) = mem::pair_waking_early();
        let mut init = ActorInit::from_spec(spec, "thread");
        // Once its thread exists nothing can keep the actor from coming up: say its `Hello`
        // for it now, so that the parent may call it before that thread has run at all.
        init.introduce_in_process(&child_end)
            .await
            .map_err(|e| SpawnError::Failed {
                actor: id.clone(),
                reason: format!("cannot queue its Hello: {e}"),
            })?;
        let mut builder = std::thread::Builder::new();
        if let Some(size) = self.stack_size {
            builder = builder.stack_size(size);
        }
        let thread = DedicatedThread::spawn_with(builder, id.name.clone(), move || {
            run_actor_in_process(child_end, init);
        })
        .map_err(|e| SpawnError::Failed {
            actor: id.clone(),
            reason: format!("cannot start its thread: {e}"),
        })?;
        tracing::debug!(actor = %id, "thread actor started");
        Ok(Box::new(ThreadChild {
            id,
            channel: Some(parent_end),
            thread,
            detached: false,
        }))
    }
}

#[derive(Debug)]
struct ThreadChild {
    id: ActorId,
    channel: Option<Channel>,
    thread: DedicatedThread<()>,
    detached: bool,
}

impl Child for ThreadChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        // A Rust thread cannot be stopped from outside: mark it detached. The runtime has dropped
        // the parent's channel end, so if the thread ever yields it sees its parent gone and exits.
        self.detached = true;
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move { self.thread.join(bound).await.into() })
    }

    fn describe(&self) -> String {
        format!(
            "thread actor {} (OS thread {:?}{})",
            self.id,
            thread_name(&self.id.name),
            if self.detached { ", detached" } else { "" }
        )
    }
}

impl Drop for ThreadChild {
    fn drop(&mut self) {
        if self.thread.detach() {
            tracing::warn!(actor = %self.id, "thread actor dropped while still running; detached");
        }
    }
}
