//! `harrow-python`: the Python worker that harrow's Python backends share.
//!
//! A Python backend owns an interpreter's life: the subint backend (`harrow-spawn-subint`)
//! creates an own-GIL subinterpreter on a dedicated thread and ends it there; a backend running
//! Python in a child process starts CPython's main interpreter there. Whatever the interpreter,
//! the same code serves its calls, and that code is this crate:
//!
//! - the per-interpreter `harrow` module (functions, generators, contexts and streams,
//!   `Cancelled`, `shield`, `sleep`, async functions) and the conversion of
//!   [`Value`](harrow_ipc::Value)s to and from Python objects;
//! - the call server ([`ffi::serve`]): runs an actor's [`Job`]s on the interpreter's owning
//!   thread, the asyncio event loop of its async calls, and the actor's other calls nested on
//!   the stack of a call that waits with the GIL released;
//! - cancellation: `harrow.Cancelled` raised in running Python through
//!   `_PyEval_AddPendingCall`, re-armed until the call ends ([`Shared`], [`REARM_INTERVAL`]);
//! - the configuration both backends take ([`InterpConfig`]), keyword arguments ([`PyArgs`]),
//!   the seam to the protocol ([`CallHost`], [`StreamHost`]), diagnostics ([`python_stacks`]).
//!
//! The semantics a Python actor sees are documented on `harrow-spawn-subint`'s crate page.
//! Needs CPython >= 3.12 with a shared libpython at build time (pyo3 finds it through
//! `PYO3_PYTHON`); otherwise [`ffi`] is compiled out and [`ensure_main`] returns
//! [`Error::Unavailable`].
// With an unsupported Python the FFI layer is compiled out and much of the plumbing is unused.
#![cfg_attr(not(harrow_python), allow(dead_code))]

mod args;
mod config;
mod error;
mod handle;
mod host;
mod job;
mod main_interp;
pub mod nest;
mod reply;
mod resolver;
mod spin;
pub mod state;

/// The FFI layer: the only module allowed `unsafe` (every block documented, see its doc).
#[cfg(harrow_python)]
#[allow(unsafe_code)]
pub mod ffi;
#[cfg(harrow_python)]
use ffi as imp;

#[cfg(not(harrow_python))]
mod unavailable;
#[cfg(not(harrow_python))]
use unavailable as imp;

pub use args::{ARGS_KEY, KWARGS_KEY, PyArgs};
pub use config::{DEFAULT_STACK_SIZE, InterpConfig, MIN_STACK_SIZE};
pub use error::{Error, Result, unavailable_message};
pub use handle::{InterpHandle, PyCall};
pub use host::{CallHost, HostFuture, StreamHost};
pub use job::{BATCH_RUNNER, CallJob, Job, cancelled_error, is_batch_runner, not_exposed};
pub use main_interp::{MainInterp, SETUP_BOUND};
pub use reply::{Answer, ReplyTx};
pub use resolver::{Nesting, PyResolver};
pub use spin::{DEFAULT_REPLY_SPIN, reply_spin, reply_spin_stats};
pub use state::{
    InterpThreadInfo, JobState, REARM_INTERVAL, Shared, interp_threads, live_interpreters,
    python_stacks, warm_up,
};

/// Whether this build can run Python (built against CPython >= 3.12 with a shared libpython).
pub fn available() -> bool {
    cfg!(harrow_python)
}

/// The Python version this crate was built against (`"3.13"`).
pub fn python_version() -> &'static str {
    env!("HARROW_SUBINT_PY_VERSION")
}

/// Initialises the main interpreter once per process (thread-safe, lazily) and releases its GIL;
/// a failure is remembered ([`Error::Init`]). See `ffi::ensure_main`.
pub fn ensure_main() -> Result<()> {
    imp::ensure_main()
}
