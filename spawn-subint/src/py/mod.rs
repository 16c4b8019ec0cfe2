//! Everything that touches CPython (the only `unsafe` in the crate), compiled only when the
//! configured Python can host own-GIL subinterpreters (`cfg(harrow_subint)`).
//!
//! Invariants every `unsafe` block here relies on:
//! - The main interpreter is initialised once ([`ensure_main`]) and its GIL released at once; no
//!   code of this crate ever runs in the main interpreter afterwards.
//! - Each subinterpreter is created, used and ended by ONE dedicated OS thread (see
//!   `worker.rs`); every Python object of that interpreter is created, used and released on that
//!   thread while it holds that interpreter's GIL. [`obj::Obj`] is `!Send` to enforce it.
//! - Other threads only ever call `_PyEval_AddPendingCall` on an interpreter (no thread state
//!   needed), and only while holding `Shared::interp`'s lock with a non-null pointer; the owning
//!   thread nulls the pointer under that lock before `Py_EndInterpreter`.

mod convert;
mod module;
mod obj;
mod stacks;
mod worker;

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use pyo3_ffi as ffi;

pub(crate) use stacks::dump as dump_stack;
#[cfg(feature = "bench-internals")]
pub(crate) use worker::bare_create_end;
pub(crate) use worker::thread_main;

use crate::error::{Error, Result};
use crate::state::Shared;

// Private but exported by libpython 3.12 and 3.13 (`Include/internal/pycore_ceval.h`):
//   3.12: int _PyEval_AddPendingCall(PyInterpreterState *, int (*)(void *), void *, int mainthreadonly)
//   3.13: _Py_add_pending_call_result _PyEval_AddPendingCall(PyInterpreterState *,
//             _Py_pending_call_func, void *, int flags)
// with `_Py_add_pending_call_result` an int enum (0 success, -1 queue full) and
// `_Py_pending_call_func` = `int (*)(void *)`: the same ABI. We pass 0 (any thread of the
// interpreter, no flags). It takes a mutex and sets the eval-breaker bit of the interpreter's
// active thread; it needs no thread state or GIL.
unsafe extern "C" {
    fn _PyEval_AddPendingCall(
        interp: *mut ffi::PyInterpreterState,
        func: unsafe extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
        flags: c_int,
    ) -> c_int;
}

/// The main interpreter's thread state, released after init (kept, never used again: we never
/// finalize).
static MAIN: OnceLock<Result<usize, String>> = OnceLock::new();

/// Initialises the main interpreter once per process (thread-safe, lazily):
/// `Py_InitializeEx(0)` — no Python signal handlers, the harrow root owns SIGINT — then
/// releases its GIL with `PyEval_SaveThread`.
///
/// The process never calls `Py_FinalizeEx`: with a subinterpreter still alive (leaked) it would
/// abort or misbehave, and finalizing buys nothing at process exit.
pub(crate) fn ensure_main() -> Result<()> {
    let r = MAIN.get_or_init(|| {
        // SAFETY: runs once (OnceLock). If Python is already initialised by the host program we
        // leave it alone and assume the host released the main GIL. Otherwise this thread
        // initialises it (the GIL is then held by this thread) and releases the GIL at once.
        unsafe {
            if ffi::Py_IsInitialized() != 0 {
                return Ok(0);
            }
            ffi::Py_InitializeEx(0);
            if ffi::Py_IsInitialized() == 0 {
                return Err("Py_InitializeEx(0) did not initialise Python".to_owned());
            }
            stacks::install();
            let ts = ffi::PyEval_SaveThread();
            Ok(ts as usize)
        }
    });
    r.as_ref().map(|_| ()).map_err(|e| Error::Init(e.clone()))
}

/// Queues a cancel injection into `shared`'s interpreter if it is alive. Never blocks on Python.
pub(crate) fn inject_cancel(shared: &Shared) {
    let guard = shared.interp.lock();
    if *guard == 0 {
        return;
    }
    let interp = *guard as *mut ffi::PyInterpreterState;
    let arg = (shared as *const Shared).cast_mut().cast::<c_void>();
    // SAFETY: `interp` is alive: its owning thread nulls `shared.interp` under this lock before
    // `Py_EndInterpreter`. `_PyEval_AddPendingCall` needs no thread state. `arg` points to the
    // `Shared` that the owning thread keeps alive (it holds an `Arc`) until after the
    // interpreter ended, so the pending call (run only inside that interpreter) sees it alive.
    let rc = unsafe { _PyEval_AddPendingCall(interp, pending_cancel, arg, 0) };
    if rc != 0 {
        tracing::debug!(actor = %shared.name, "pending-call queue full; the re-arm will retry");
    }
}

/// The pending call: raises `harrow.Cancelled` in the running user code when the running call
/// has an outstanding cancel, is outside any shield, and this is the interpreter's owning thread.
/// Otherwise it is a no-op (the injector re-arms it).
unsafe extern "C" fn pending_cancel(arg: *mut c_void) -> c_int {
    // SAFETY: CPython runs pending calls on a thread of the target interpreter with its GIL held
    // and no exception set; `arg` is the interpreter's live `Shared` (see `inject_cancel`).
    unsafe {
        let shared = &*arg.cast::<Shared>();
        let me = ffi::PyThread_get_thread_ident() as u64;
        if shared.owner_ident.load(std::sync::atomic::Ordering::SeqCst) != me {
            return 0;
        }
        if shared.in_user.load(std::sync::atomic::Ordering::SeqCst)
            && shared
                .shield_depth
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            && shared.cancel_outstanding()
        {
            module::raise(&shared.types.cancelled, None);
            return -1;
        }
        0
    }
}
