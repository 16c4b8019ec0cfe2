//! `harrow-spawn-subint`: harrow actors that run Python functions in CPython subinterpreters,
//! each with its own GIL, each owned by a dedicated OS thread (`docs/ARCHITECTURE.md`).
//!
//! - [`InterpThread`] creates one subinterpreter on a fresh `std::thread` named
//!   `subint-<actor>`, runs every Python call of that actor there, and ends it there
//!   (`Py_EndInterpreter`) before the thread exits. No pooled thread ever enters an interpreter,
//!   so the seed's destroy race (a cached worker holding a stale thread state) is impossible by
//!   construction.
//! - Calls are `"package.module:function"` ([`FnPath`](harrow_ipc::FnPath)) into modules the
//!   [`InterpConfig`] exposes. A plain function is a unary call; a generator streams its items;
//!   a context function gets a `harrow.Context` first (`started`, `open_stream` -> `Stream` with
//!   `send`, `recv` (raises `harrow.EndOfStream` at the end), iteration, `close`). Context
//!   functions are marked with `@harrow.context`; a function whose FIRST parameter is named `ctx`
//!   is one too (fallback rule).
//! - `async def` functions and async generators run as tasks of one asyncio event loop per
//!   interpreter, kept across calls; the actor's async calls run concurrently (interleaving at
//!   their `await`s) and the loop takes new calls meanwhile (a wake pipe). A cancel is
//!   `CancelledError` at the current `await`, reported as `Cancelled`.
//! - Arguments: the call's `Value` reaches Python exactly as a Rust function would see it:
//!   `Null` -> the function is called with no argument (give it a default, `def f(v=None)`);
//!   any other value -> exactly ONE positional argument (a `List` stays one `list`, a `Map` one
//!   `dict`). Keyword arguments travel beside it, encoded by [`PyArgs`].
//!   Generators follow the same rule; a context function gets `ctx` first, then the argument.
//! - `os._exit()` in an actor raises `harrow.ActorExit`: the call fails and that actor ends
//!   ([`Exit::Failed`]); the process goes on. (`os.abort()` and C code calling `exit()` cannot
//!   be intercepted.)
//! - Calls of one actor all run on its interpreter thread. While a call waits in a harrow
//!   operation (`ctx.started`, stream `send`/`recv`/`close`, `harrow.sleep`) with the GIL
//!   released, the thread serves the actor's other queued calls, each nested on its stack: calls
//!   interleave at those waits, last in first out (a waiting call resumes once the calls nested
//!   in it have returned; at most 32 deep). A call running Python code holds the thread.
//! - `Value` <-> Python: None, bool, int (i64; larger is an error), float, str, bytes
//!   (bytearray accepted), list/tuple -> `List`, dict -> `Map`, nested at most 200 deep;
//!   anything else is an error naming the Python type.
//! - Panics on the Rust side never cross into CPython: a call's panic fails that call, a panic
//!   in a native `harrow` function is a Python `SystemError`, and a panicking interpreter thread
//!   reports [`Exit::Failed`] after releasing its GIL.
//! - Cancellation raises `harrow.Cancelled` (a `BaseException`) at the next bytecode boundary
//!   through `_PyEval_AddPendingCall`, re-armed every [`REARM_INTERVAL`] while the call runs;
//!   `with harrow.shield():` defers it; `harrow.sleep()` is a cancellable sleep. A call blocked
//!   in C (`time.sleep`) sees the cancel when the C call returns; shutdown's bound covers the
//!   rest by leaking the interpreter ([`Exit::Leaked`]).
//! - The main interpreter is initialised lazily once (`Py_InitializeEx(0)`: no Python signal
//!   handlers) and its GIL released. The process never calls `Py_FinalizeEx`.
//! - [`PyResolver`] plugs an interpreter into the portal as the actor's `Resolver`.
//! - [`WarmSubintBackend`] keeps interpreters of one configuration created ahead of demand, so
//!   an actor (a pool worker, a restarted child) starts without waiting for one.
//!
//! Needs CPython >= 3.12 with a shared libpython at build time (pyo3 finds it through
//! `PYO3_PYTHON`); otherwise everything returns [`Error::Unavailable`].
//!
//! ```no_run
//! use std::time::Duration;
//! use harrow_ipc::{CallKind, FnPath, Value};
//! use harrow_spawn_subint::{Exit, InterpConfig, InterpThread};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `math.fsum` takes one iterable: the list arrives as ONE argument.
//! let actor = InterpThread::spawn(InterpConfig::new("calc").expose("math"))?;
//! let call = actor.handle().call(
//!     FnPath::parse("math:fsum")?,
//!     CallKind::Unary,
//!     Value::List(vec![Value::Float(1.5), Value::Float(2.5)]),
//!     None,
//! );
//! assert_eq!(futures_lite::future::block_on(call).map_err(|e| e.to_string())?, Value::Float(4.0));
//! assert_eq!(actor.shutdown(Duration::from_secs(5)), Exit::Exited);
//! # Ok(()) }
//! ```
// With an unsupported Python the FFI layer is compiled out and much of the plumbing is unused.
#![cfg_attr(not(harrow_subint), allow(dead_code))]

mod backend;
mod interp;
mod warm;

// The FFI layer: the only module allowed `unsafe` (every block documented, see its doc).
#[cfg(harrow_subint)]
#[allow(unsafe_code)]
mod py;
#[cfg(harrow_subint)]
use py as imp;

#[cfg(not(harrow_subint))]
mod unavailable;
#[cfg(not(harrow_subint))]
use unavailable as imp;

pub use backend::SubintBackend;
// The Python worker shared with the other Python backend lives in `harrow-python`; its public
// types are this crate's API too.
pub use harrow_python::{
    ARGS_KEY, BATCH_RUNNER, CallHost, DEFAULT_REPLY_SPIN, DEFAULT_STACK_SIZE, Error, HostFuture,
    InterpConfig, InterpThreadInfo, KWARGS_KEY, MIN_STACK_SIZE, PyArgs, REARM_INTERVAL, Result,
    StreamHost, interp_threads, live_interpreters, python_stacks, reply_spin, warm_up,
};
pub use harrow_python::{InterpHandle, PyCall, PyResolver};
pub use interp::{CREATE_BOUND, Exit, InterpThread};
pub use warm::WarmSubintBackend;

/// Whether this build can host subinterpreters (built against Python >= 3.12 with a shared
/// libpython).
pub fn available() -> bool {
    cfg!(harrow_subint)
}

/// The Python version this crate was built against (`"3.13"`).
pub fn python_version() -> &'static str {
    env!("HARROW_SUBINT_PY_VERSION")
}

/// What the benchmarks (this crate's and `harrow bench`) measure harrow against. Not part of the
/// API: hidden, behind the `bench-internals` feature, and free to change in any release.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod __bench {
    use crate::{InterpConfig, Result, imp};

    /// Creates and ends one bare subinterpreter (no `harrow` module, no call) on a fresh thread
    /// and returns how long that took: the baseline spawning is compared with. Only
    /// `config.legacy` and `config.allow_threads` are used.
    pub fn bare_create_end(config: &InterpConfig) -> Result<std::time::Duration> {
        harrow_python::ensure_main()?;
        imp::bare_create_end(config)
    }

    /// How calls' reply spins went so far: (caught, ran out, skipped by a back-off).
    pub fn reply_spin_stats() -> (u64, u64, u64) {
        harrow_python::reply_spin_stats()
    }
}
