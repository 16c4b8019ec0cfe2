//! `ToyBackend`: the smallest complete harrow backend, written against the `harrow` facade alone.
//! It is the worked example of `docs/BACKENDS.md` and passes the whole conformance suite
//! (`tests/conformance.rs`).
//!
//! Each actor runs [`run_actor`] on an OS thread of its own, on the child's end of an in-memory
//! channel. To show what a real backend has to get right, its start-up takes an await: the new
//! thread first "boots" (for [`ToyBackend::with_boot_delay`], standing in for exec'ing a program
//! or creating an interpreter) and reports that it is ready; only then is it told to run the
//! actor. A spawn future dropped at any await — the nursery drops it when it outlives its
//! hello timeout — leaves nothing behind: the thread, told nothing, ends by itself.
//!
//! ```
//! use std::sync::Arc;
//! use harrow::{run_root, ActorSpec, FnRegistry, RootConfig, Value};
//! use harrow_toy_backend::ToyBackend;
//!
//! let mut f = FnRegistry::new();
//! f.unary("m:inc", |v: Value| async move { Ok(Value::Int(v.as_i64().unwrap_or(0) + 1)) })
//!     .unwrap();
//! let f = Arc::new(f);
//! let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
//!     let child = n.start_actor("toy", ToyBackend::shared(), ActorSpec::with_resolver(f)).await?;
//!     Ok(child.run("m:inc", Value::Int(41)).await?)
//! })
//! .unwrap();
//! assert_eq!(out, Value::Int(42));
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use harrow::ipc::{ActorId, Channel, mem};
use harrow::{
    ActorInit, BoxFuture, Capabilities, Child, DedicatedThread, Exit, HardKill, SpawnBackend,
    SpawnError, SpawnSpec, run_actor,
};

/// Actors on OS threads, started in two steps (boot, then run) to show a cancel-safe `spawn`.
#[derive(Debug, Default, Clone)]
pub struct ToyBackend {
    boot_delay: Duration,
}

impl ToyBackend {
    /// A backend whose threads boot at once.
    pub fn new() -> Self {
        ToyBackend::default()
    }

    /// A new backend, ready to hand to a nursery.
    pub fn shared() -> Arc<dyn SpawnBackend> {
        Arc::new(ToyBackend::new())
    }

    /// Wraps this backend for a nursery.
    pub fn into_shared(self) -> Arc<dyn SpawnBackend> {
        Arc::new(self)
    }

    /// Each new thread takes `delay` to boot before it reports ready (a slow start, to exercise
    /// the nursery's hello timeout).
    pub fn with_boot_delay(mut self, delay: Duration) -> Self {
        self.boot_delay = delay;
        self
    }
}

impl SpawnBackend for ToyBackend {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn capabilities(&self) -> Capabilities {
        // A Rust thread cannot be stopped from outside: the hard kill can only give up on it.
        Capabilities::new().with_hard_kill(HardKill::Detaches)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        let boot_delay = self.boot_delay;
        Box::pin(async move {
            let id = spec.id.clone();
            let (parent_end, child_end) = mem::pair();
            let init = ActorInit::from_spec(spec, "toy");
            let (ready_tx, ready_rx) = async_channel::bounded::<()>(1);
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let thread = DedicatedThread::spawn(id.name.clone(), move || {
                // "Booting". Nothing is ever sent on `go` before `ready`, so this wait ends by
                // its timeout, or at once when the spawn was abandoned (the sender dropped).
                if let Err(mpsc::RecvTimeoutError::Disconnected) = go_rx.recv_timeout(boot_delay) {
                    return;
                }
                if ready_tx.send_blocking(()).is_err() {
                    return; // abandoned while booting
                }
                // Run the actor only when the parent has taken the child over.
                if go_rx.recv().is_ok() {
                    run_actor(child_end, init);
                }
            })
            .map_err(|e| SpawnError::Failed {
                actor: id.clone(),
                reason: format!("cannot start its thread: {e}"),
            })?;
            // From here until the hand-over, dropping this future drops `starting`, which
            // releases the thread (see `Starting::drop`).
            let mut starting = Starting {
                id: id.clone(),
                thread: Some(thread),
                go: Some(go_tx),
            };
            if ready_rx.recv().await.is_err() {
                return Err(SpawnError::Failed {
                    actor: id,
                    reason: "its thread ended before it was ready".into(),
                });
            }
            let (Some(thread), Some(go)) = (starting.thread.take(), starting.go.take()) else {
                return Err(SpawnError::Failed {
                    actor: id,
                    reason: "its start-up was handed over twice".into(),
                });
            };
            if go.send(()).is_err() {
                return Err(SpawnError::Failed {
                    actor: id,
                    reason: "its thread ended before it could run the actor".into(),
                });
            }
            Ok(Box::new(ToyChild {
                id,
                channel: Some(parent_end),
                thread,
                detached: false,
            }) as Box<dyn Child>)
        })
    }
}

/// A thread that has not been handed over to the runtime yet: dropping this (the spawn future
/// was dropped) tells the thread to end instead of running the actor.
struct Starting {
    id: ActorId,
    thread: Option<DedicatedThread<()>>,
    go: Option<mpsc::Sender<()>>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut thread) = self.thread.take() {
            // Dropping `go` disconnects it: the thread returns from its boot wait, or from its
            // wait for `go`, without running the actor. Nothing waits here (a drop never blocks).
            self.go.take();
            thread.detach();
            tracing::debug!(actor = %self.id, "spawn abandoned; its thread ends by itself");
        }
    }
}

#[derive(Debug)]
struct ToyChild {
    id: ActorId,
    channel: Option<Channel>,
    thread: DedicatedThread<()>,
    detached: bool,
}

impl Child for ToyChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        // Nothing can stop a Rust thread from outside, and the channel may already be gone (the
        // ladder drops it first): the only lever is to stop waiting for it. If the thread ever
        // yields to its executor it sees its parent gone and exits as an orphan.
        self.detached = true;
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        // Cancel-safe and bounded: DedicatedThread keeps its join handle until the thread ended.
        Box::pin(async move { self.thread.join(bound).await.into() })
    }

    fn describe(&self) -> String {
        let detached = if self.detached { ", detached" } else { "" };
        format!(
            "toy actor {} (thread {:?}{detached})",
            self.id,
            self.thread.name()
        )
    }
}

impl Drop for ToyChild {
    fn drop(&mut self) {
        if self.thread.detach() {
            tracing::warn!(actor = %self.id, "toy actor dropped while still running; detached");
        }
    }
}
