//! harrow: a structured-concurrency actor runtime.
//!
//! A program is a tree of actors. [`run_root`] runs the root actor and hands its body an
//! [`ActorNursery`]; the nursery starts children on a backend — a dedicated OS thread
//! ([`ThreadBackend`]), a child process, or a CPython subinterpreter — and supervises them
//! one-cancels-all. Actors talk through portals: remote calls, contexts and bidirectional
//! streams with flow control. Teardown goes from graceful to forced within fixed bounds
//! ([`Timeouts`]), so nothing hangs and nothing leaks.
//!
//! ```
//! use std::sync::Arc;
//! use harrow::{run_root, ActorSpec, FnRegistry, RootConfig, ThreadBackend, Value};
//!
//! let mut functions = FnRegistry::new();
//! functions.unary("math:add", |args: Value| async move {
//!     let xs = args.as_list().unwrap_or(&[]).iter().filter_map(Value::as_i64).sum::<i64>();
//!     Ok(Value::Int(xs))
//! }).unwrap();
//! let functions = Arc::new(functions);
//!
//! let sum = run_root(RootConfig::default(), |nursery| async move {
//!     let worker = nursery
//!         .start_actor("adder", ThreadBackend::shared(), ActorSpec::with_resolver(functions))
//!         .await?;
//!     Ok(worker.run("math:add", Value::List(vec![1.into(), 2.into(), 3.into()])).await?)
//! })
//! .unwrap();
//! assert_eq!(sum, Value::Int(6));
//! ```
//!
//! Features (each adds a backend): `thread` (default).
#![forbid(unsafe_code)]

pub use harrow_runtime_core::ipc::{
    self, ActorId, Channel, ErrorKind, FnPath, Msg, RemoteError, Value, from_value, to_value,
};
pub use harrow_runtime_core::portal::{
    self, CallError, CalleeContext, Context, FnRegistry, MsgStream, Portal, Resolver,
};
pub use harrow_runtime_core::{
    ActorCtx, ActorNursery, ActorSpec, Capabilities, ChildFailure, ChildHandle, ChildOutcome,
    HardKill, NurseryError, RootConfig, Runs, SpawnBackend, Timeouts, current_actor, exit_code,
    fail_after, move_on_after, open_nursery, run_root, shield,
};

#[cfg(feature = "thread")]
pub use harrow_spawn_thread::ThreadBackend;

/// The backends compiled into this build, by name.
pub fn available_backends() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(feature = "thread")]
    v.push("thread");
    v
}
