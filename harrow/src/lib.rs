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
//! Features, one per backend, all on by default:
//!
//! - `thread`: [`ThreadBackend`], actors on dedicated OS threads running Rust functions;
//! - `process`: [`ProcessBackend`], actors in child processes (the running binary re-executed).
//!   A program that uses it calls [`maybe_run_child`] first thing in `main`; with `child-log` as
//!   well, a child started with `RUST_LOG` set logs to stderr;
//! - `subint`: [`SubintBackend`], actors running Python functions in CPython subinterpreters
//!   with their own GIL, configured with [`InterpConfig`]. It needs a CPython >= 3.12 with a
//!   shared libpython at build time (pyo3 finds it through `PYO3_PYTHON`), and binaries that run
//!   Python actors need an rpath to that libpython: `harrow_build::link_python()` in the
//!   build.rs of the crate that builds them adds it. A build without a suitable Python still
//!   compiles, warns, and [`subint_status`] says why the backend is unavailable.
//!
//! A Python actor on the subint backend (its module found through `sys_path`):
//!
//! ```no_run
//! # #[cfg(feature = "subint")] {
//! use harrow::{run_root, ActorSpec, InterpConfig, RootConfig, SubintBackend, Value};
//!
//! let config = InterpConfig::new("py").expose("mymodule").sys_path("/path/to/modules");
//! let out = run_root(RootConfig::default(), |n| async move {
//!     let py = n
//!         .start_actor("py", SubintBackend::shared(), ActorSpec::new().params(config.to_params()))
//!         .await?;
//!     // `Value::Null` calls `f()`, any other value is its one positional argument.
//!     Ok(py.run("mymodule:f", Value::Int(7)).await?)
//! });
//! # let _ = out; }
//! ```
#![forbid(unsafe_code)]

pub use harrow_runtime_core::ipc::{
    self, ActorId, Channel, ErrorKind, FnPath, Msg, RemoteError, Value, from_value, to_value,
};
pub use harrow_runtime_core::portal::{
    self, CallError, CalleeContext, Context, Endpoint, FnRegistry, MsgStream, Portal, Resolver,
    StateRegistry, StreamRx, StreamTx, current_call,
};
/// Typed contexts and one-way streams declared once ([`ContextEndpoint`], [`StreamEndpoint`])
/// and the handles both sides get.
pub use harrow_runtime_core::portal::{
    ContextEndpoint, StreamEndpoint, TypedCalleeContext, TypedContext, TypedOneWayStream, TypedRx,
    TypedStream, TypedTx,
};
pub use harrow_runtime_core::{
    ActorCtx, ActorNursery, ActorSpec, BoxError, ChildFailure, ChildHandle, ChildOutcome,
    NurseryError, RootConfig, RootHandle, Timeouts, current_actor, exit_code, fail_after,
    move_on_after, open_nursery, run_root, shield, spawn_root,
};

/// Discovery: find actors of the tree by name and call them over peer portals
/// (`docs/DISCOVERY.md` in the repository).
pub use harrow_runtime_core::{
    ActorEntry, DiscoveryError, discovery, find_actor, query_actors, wait_for_actor,
};

/// Restarting supervision and actor pools, above nurseries.
pub use harrow_runtime_core::{
    ActorPool, MAX_POOL_QUEUE, MAX_POOL_SIZE, OnStarted, PoolConfig, PoolError, PoolMap,
    PoolResult, PoolTask, Restart, Strategy, SupervisedChild, Supervisor, SupervisorEnd,
    SupervisorEvent, SupervisorEvents, SupervisorSpec,
};

/// The backend contract, complete: what a crate needs to implement [`SpawnBackend`] for a new
/// place actors can live (see `docs/BACKENDS.md` in the repository, and `harrow-testkit` for the
/// conformance suite every backend must pass).
pub use harrow_runtime_core::{
    ActorExit, ActorInit, BoxFuture, CancelToken, Capabilities, Child, DedicatedThread, Exit,
    HardKill, Joined, SpawnBackend, SpawnError, SpawnSpec, SpecError, TreeGrant, bootstrap,
    run_actor, run_actor_in_process,
};

#[cfg(feature = "thread")]
pub use harrow_spawn_thread::ThreadBackend;

#[cfg(feature = "process")]
pub use harrow_spawn_process::{ProcessBackend, is_child, maybe_run_child};

/// Python actors in child processes (with both `process` and `subint`): the same Python API as
/// [`SubintBackend`] in a child's main interpreter, where every extension module loads.
#[cfg(all(feature = "process", feature = "subint"))]
pub use harrow_spawn_process::PyProcessBackend;

/// [`maybe_run_child`] for a program whose Python process actors may start children on more
/// than `"pyprocess"` and `"process"`: pass [`offer_backends`] (or a closure of your own adding
/// registries of Rust functions for thread children).
#[cfg(all(feature = "process", feature = "subint"))]
pub use harrow_spawn_process::{PyOffers, maybe_run_child_offering};

/// What a Python process actor's code may start children on in this build, for
/// [`maybe_run_child_offering`]: besides `"pyprocess"` and `"process"` (always offered there),
/// `"thread"` (with the `thread` feature) and `"subint"` (the [`subint_backend`], also offering
/// `"pyprocess"`).
///
/// ```no_run
/// // First thing in `main`:
/// harrow::maybe_run_child_offering(
///     || std::sync::Arc::new(harrow::portal::FnRegistry::new()),
///     harrow::offer_backends,
/// );
/// ```
#[cfg(all(feature = "process", feature = "subint"))]
pub fn offer_backends(offers: &mut PyOffers) {
    #[cfg(feature = "thread")]
    offers.add_backend("thread", ThreadBackend::shared());
    let subint = subint_backend().offer_backend("pyprocess", PyProcessBackend::shared());
    offers.add_backend("subint", subint.into_shared());
}
#[cfg(feature = "subint")]
pub use harrow_spawn_subint::{InterpConfig, PyArgs, SubintBackend};

/// Subint interpreters created ahead of demand, for pools and restarting supervisors.
#[cfg(feature = "subint")]
pub use harrow_spawn_subint::WarmSubintBackend;

#[cfg(feature = "remote")]
pub use harrow_spawn_remote::RemoteBackend;

/// Actors on other hosts (the `remote` feature): [`RemoteBackend`] and the child side,
/// [`remote::maybe_run_child`], which a program calls first in `main` (beside
/// [`maybe_run_child`] when it also uses the process backend).
#[cfg(feature = "remote")]
pub mod remote {
    pub use harrow_spawn_remote::{Launcher, RemoteBackend, SshTarget, is_child, maybe_run_child};
}

/// The backend crates themselves, for what the re-exports above leave out.
pub mod backends {
    #[cfg(feature = "process")]
    pub use harrow_spawn_process as process;
    #[cfg(feature = "remote")]
    pub use harrow_spawn_remote as remote;
    #[cfg(feature = "subint")]
    pub use harrow_spawn_subint as subint;
    #[cfg(feature = "thread")]
    pub use harrow_spawn_thread as thread;
}

/// A subint backend whose Python actors may start children on every backend compiled into
/// this build: `"subint"` (itself), `"process"` and `"thread"` (with the `process` / `thread`
/// features). Python code names them in `n.start_actor(name, backend=...)`. A process child is
/// this program re-executed: `maybe_run_child` must come first in `main`. To offer Rust
/// functions to thread children, add a registry with
/// [`SubintBackend::offer_resolver`](harrow_spawn_subint::SubintBackend::offer_resolver).
#[cfg(feature = "subint")]
pub fn subint_backend() -> SubintBackend {
    #[allow(unused_mut)]
    let mut b = SubintBackend::new();
    #[cfg(feature = "process")]
    {
        b = b.offer_backend("process", ProcessBackend::shared());
    }
    #[cfg(feature = "thread")]
    {
        b = b.offer_backend("thread", ThreadBackend::shared());
    }
    b
}

/// The backends compiled into this build, by name (a compiled-in backend may still be
/// unavailable at run time: see [`subint_status`]). The remote backend, which needs a host to
/// reach, is [`remote_compiled`].
#[allow(clippy::vec_init_then_push)] // which pushes happen depends on the features
pub fn compiled_backends() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(feature = "thread")]
    v.push("thread");
    #[cfg(feature = "process")]
    v.push("process");
    #[cfg(feature = "subint")]
    v.push("subint");
    v
}

/// Whether the remote backend (feature `remote`: actors on other hosts, through OpenSSH) is
/// compiled into this build.
pub fn remote_compiled() -> bool {
    cfg!(feature = "remote")
}

/// The backends that can start actors in this process, by name: the compiled-in ones, less
/// `subint` when [`subint_status`] reports it unavailable.
pub fn available_backends() -> Vec<&'static str> {
    let subint_ok = subint_status().is_ok();
    compiled_backends()
        .into_iter()
        .filter(|b| *b != "subint" || subint_ok)
        .collect()
}

/// Whether the subint backend can run Python here: `Err` says why not (the feature is off, or
/// the build has no suitable Python, or the main interpreter failed to start).
pub fn subint_status() -> Result<(), String> {
    #[cfg(feature = "subint")]
    {
        if build_has_no_python() || !harrow_spawn_subint::available() {
            return Err(format!(
                "subint backend unavailable{}",
                unavailable_reason()
            ));
        }
        harrow_spawn_subint::warm_up().map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "subint"))]
    {
        Err("the `subint` feature is off in this build of harrow".to_owned())
    }
}

/// Whether the build was told that there is no Python (`HARROW_NO_PYTHON=1`, which harrow's own
/// `scripts/setup` records when it finds none).
#[cfg(feature = "subint")]
fn build_has_no_python() -> bool {
    option_env!("HARROW_NO_PYTHON").is_some_and(|v| !v.is_empty() && v != "0")
}

/// What to do about it, said for a project that depends on harrow.
#[cfg(feature = "subint")]
const SUBINT_FIX: &str = "point PYO3_PYTHON at a CPython >= 3.12 built with a shared libpython \
                          (for example in the [env] table of your project's .cargo/config.toml) \
                          and rebuild";

#[cfg(feature = "subint")]
fn unavailable_reason() -> String {
    if build_has_no_python() {
        format!(
            ": it was built with HARROW_NO_PYTHON=1 (no Python linked; harrow's own scripts/setup \
             records that when it finds no suitable Python); unset it and {SUBINT_FIX}"
        )
    } else {
        format!(
            ": harrow-spawn-subint was built against Python {}, which cannot host own-GIL \
             subinterpreters (needs CPython >= 3.12 with a shared libpython); {SUBINT_FIX}",
            harrow_spawn_subint::python_version()
        )
    }
}

#[cfg(all(test, feature = "process", feature = "subint", feature = "thread"))]
mod tests {
    #[test]
    fn a_python_process_actor_is_offered_every_backend_of_the_build() {
        let mut offers = crate::PyOffers::default();
        crate::offer_backends(&mut offers);
        assert_eq!(
            offers.backend_names_with("pyprocess"),
            ["pyprocess", "subint", "thread"]
        );
    }
}
