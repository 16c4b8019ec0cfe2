//! The harrow actor runtime: the actor tree, nurseries with one-cancels-all supervision,
//! restarting [`Supervisor`]s and [`ActorPool`]s above them, the bounded teardown ladder, cancel scopes, SIGINT handling at the root, and the
//! [`SpawnBackend`] contract every backend implements.
//!
//! A program is a tree of actors. [`run_root`] runs the root on the calling thread and hands its
//! body an [`ActorNursery`]; children are started on a backend (`Arc<dyn SpawnBackend>`) and
//! reached through a [`Portal`](harrow_portal::Portal). Any function served by an actor can open
//! a nursery of its own with [`open_nursery`].
//!
//! ```
//! use harrow_runtime_core::{run_root, RootConfig};
//! let answer = run_root(RootConfig::default().handle_sigint(false), |nursery| async move {
//!     // nursery.start_actor("worker", backend, spec).await? ...
//!     let _ = nursery;
//!     Ok(6 * 7)
//! })
//! .unwrap();
//! assert_eq!(answer, 42);
//! ```
#![forbid(unsafe_code)]

mod actor;
mod backend;
mod beside;
pub mod bootstrap;
pub mod codrive;
pub mod discovery;
mod error;
mod nursery;
pub mod park;
mod pool;
mod root;
mod scope;
mod spec;
mod supervisor;
#[cfg(test)]
mod test_probe;
mod thread;

pub use actor::{
    ActorCtx, ActorExit, ActorInit, current_actor, run_actor, run_actor_codriven,
    run_actor_in_process, run_actor_in_process_codriven, shield, with_current_actor,
};
pub use backend::{
    BoxFuture, Capabilities, Child, Exit, HardKill, SpawnBackend, SpawnError, Timeouts,
};
pub use codrive::CoDriver;
pub use discovery::{ActorEntry, DiscoveryError, find_actor, query_actors, wait_for_actor};
pub use error::{BoxError, ChildFailure, Error, NurseryError, Result};
pub use harrow_ipc as ipc;
pub use harrow_portal as portal;
pub use nursery::{
    ActorNursery, ChildHandle, ChildOutcome, MAX_ACTOR_NAME, open_nursery, teardown_bound,
};
pub use pool::{
    ActorPool, MAX_POOL_QUEUE, MAX_POOL_SIZE, PoolConfig, PoolError, PoolMap, PoolResult, PoolTask,
};
pub use root::{RootConfig, RootHandle, exit_code, run_root, spawn_root};
pub use scope::{
    CancelFlag, CancelToken, CancelWatch, Cancelled, DeadlineExceeded, FailAfter, MoveOnAfter,
    fail_after, move_on_after,
};
pub use spec::{ActorSpec, SpawnSpec, SpecError, TreeGrant};
pub use supervisor::{
    OnStarted, Restart, Strategy, SupervisedChild, Supervisor, SupervisorEnd, SupervisorEvent,
    SupervisorEvents, SupervisorSpec,
};
pub use thread::{DedicatedThread, Joined, panic_message, thread_name};
