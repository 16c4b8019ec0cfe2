//! Everything that touches CPython (the only `unsafe` in the crate), compiled only when the
//! configured Python is one harrow supports (`cfg(harrow_python)`: CPython >= 3.12 with a shared
//! libpython). The backends drive an interpreter's life; this module serves its calls
//! (`serve`).
//!
//! The files, by job: `module.rs` builds the per-interpreter `harrow` module (`harrow.py` plus
//! native functions) and owns the interface it needs from the call server (`ServerHooks`);
//! `serve.rs` is that call server (the job loop, the event loop, nested serving while a call
//! waits); `calls.rs` runs one call; `harness.rs` sets up and tears down what surrounds the calls
//! in an interpreter; `exc.rs` describes the exceptions that leave calls; `convert.rs` and `obj.rs` convert values and
//! own references; `stacks.rs`
//! dumps Python stacks; `opencode.rs` is how a Python harrow starts reads code files.
//!
//! Invariants every `unsafe` block here relies on:
//! - The main interpreter is initialised once ([`ensure_main`]) and its GIL released at once.
//! - Each interpreter whose calls are served is served by ONE OS thread (its owning thread,
//!   the one calling `serve`); every Python object of that interpreter is created, used and
//!   released on that thread while it holds that interpreter's GIL (Python threads that user
//!   code starts aside). `obj::Obj` is `!Send` to enforce it.
//! - Other threads only ever call `_PyEval_AddPendingCall` on an interpreter (no thread state
//!   needed), and only while holding `Shared::interp`'s lock with a non-null pointer; the owning
//!   thread nulls the pointer under that lock before `Py_EndInterpreter`.

//!
//! Every `unsafe` block holds ONE unsafe operation with its own `// SAFETY:` comment (enforced by
//! the two clippy lints below); a comment heading a group of blocks states what they all rely
//! on (usually the enclosing function's contract: which interpreter's GIL is held, on which
//! thread).
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]

mod batch;
mod calls;
mod convert;
mod exc;
mod harness;
mod main_interp;
mod module;
mod nest;
mod obj;
mod opencode;
mod resolve;
mod serve;
mod stacks;

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use pyo3_ffi as ffi;

pub use harness::count_other_tstates;
pub use main_interp::serve_main;
pub use serve::{Served, serve};
pub(crate) use stacks::dump as dump_stack;

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

/// Initialises the main interpreter once per process (thread-safe, lazily), configured as
/// `Py_InitializeEx(0)` would (no Python signal handlers: the harrow root owns SIGINT) but
/// through `Py_InitializeFromConfig`, so that a failure (typically a deployed binary whose Python
/// finds no standard library) is an [`Error::Init`] instead of CPython ending the process; then
/// releases its GIL with `PyEval_SaveThread`. A failure is remembered: Python is never retried in
/// that process.
///
/// The process never calls `Py_FinalizeEx`: with a subinterpreter still alive (leaked) it would
/// abort or misbehave, and finalizing buys nothing at process exit.
pub fn ensure_main() -> Result<()> {
    let r = MAIN.get_or_init(|| {
        // Runs once (OnceLock). If Python is already initialised by the host program we leave it
        // alone and assume the host released the main GIL. Otherwise this thread initialises it
        // (the GIL is then held by this thread) and releases the GIL at once.
        // SAFETY: callable at any time.
        if unsafe { ffi::Py_IsInitialized() } != 0 {
            return Ok(0);
        }
        // SAFETY: Python is not initialised; only this thread (in the OnceLock) initialises it.
        unsafe { initialize() }?;
        // SAFETY: callable at any time.
        if unsafe { ffi::Py_IsInitialized() } == 0 {
            return Err("Py_InitializeFromConfig did not initialise Python".to_owned());
        }
        // SAFETY: the main interpreter is initialised and this thread holds its GIL.
        unsafe { stacks::install() };
        // SAFETY: this thread's main thread state is current with the GIL held; it is kept
        // (never used again: we never finalize).
        let ts = unsafe { ffi::PyEval_SaveThread() };
        Ok(ts as usize)
    });
    r.as_ref().map(|_| ()).map_err(|e| Error::Init(e.clone()))
}

/// The thread state that initialised the main interpreter and was kept detached ([`MAIN`]), as
/// an address (0 when Python was initialised by the host program, or not yet).
pub(crate) fn kept_main_tstate() -> usize {
    match MAIN.get() {
        Some(Ok(ts)) => *ts,
        _ => 0,
    }
}

/// `Py_InitializeEx(0)`'s configuration (CPython's "compat" one: no argv parsing, no C locale
/// coercion or UTF-8 mode, C stdio left alone, no signal handlers), built on the public
/// "python" configuration, with the failure returned instead of ending the process. Sets
/// harrow's open-code hook first, so that importing reads code files whole and holds no
/// descriptor on them (`opencode.rs`).
///
/// # Safety
/// Python must not be initialised yet; called once, from [`ensure_main`].
#[allow(clippy::multiple_unsafe_ops_per_block)] // one sequence of CPython's init API, one contract
unsafe fn initialize() -> std::result::Result<(), String> {
    // First, the open-code hook (see `opencode.rs`): CPython keeps one set before it starts.
    // SAFETY: Python is not initialised (contract).
    if !unsafe { opencode::install() } {
        tracing::debug!("an open-code hook was already set; code files are read as it decides");
    }
    // SAFETY: the Init functions fill every field of the structs they get; the structs live on
    // this stack frame until CPython has copied them (`Py_PreInitialize`,
    // `Py_InitializeFromConfig`), and `PyConfig_Clear` frees what `PyConfig_InitPythonConfig`
    // allocated.
    unsafe {
        let mut pre = std::mem::MaybeUninit::<ffi::PyPreConfig>::uninit();
        ffi::PyPreConfig_InitPythonConfig(pre.as_mut_ptr());
        let mut pre = pre.assume_init();
        pre.parse_argv = 0;
        pre.coerce_c_locale = 0;
        pre.coerce_c_locale_warn = 0;
        pre.utf8_mode = 0;
        let status = ffi::Py_PreInitialize(&pre);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(init_failure(status));
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.parse_argv = 0;
        config.install_signal_handlers = 0;
        config.configure_c_stdio = 0;
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(init_failure(status));
        }
        Ok(())
    }
}

/// What a failed initialisation status says, and what to do about it on the machine running it.
///
/// # Safety
/// `status` comes from CPython: its strings are null or NUL-terminated and static.
unsafe fn init_failure(status: ffi::PyStatus) -> String {
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: see the function's contract.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
    };
    // SAFETY: `status` is a value CPython returned.
    let what = if unsafe { ffi::PyStatus_IsExit(status) } != 0 {
        format!("CPython asked to exit with status {}", status.exitcode)
    } else {
        match (text(status.func), text(status.err_msg)) {
            (f, m) if f.is_empty() => m,
            (f, m) => format!("{f}: {m}"),
        }
    };
    let v = env!("HARROW_SUBINT_PY_VERSION");
    format!(
        "{what}. The Python {v} this program is linked against could not start; it needs its \
         standard library (lib/python{v}): it looks under the prefix that Python was built with \
         unless PYTHONHOME names another, so install that Python here or set PYTHONHOME to the \
         prefix holding lib/python{v}"
    )
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
    // interpreter ended, or, when it leaks the interpreter, for the rest of the process
    // (`state::keep_forever`); so the pending call (run only inside that interpreter) sees it
    // alive.
    let rc = unsafe { _PyEval_AddPendingCall(interp, pending_cancel, arg, 0) };
    if rc != 0 {
        tracing::debug!(actor = %shared.name, "pending-call queue full; the re-arm will retry");
    }
}

/// The pending call: raises `harrow.Cancelled` in the running user code when the running call
/// has an outstanding cancel, is outside any shield, and this is the interpreter's owning thread.
/// Otherwise it is a no-op (the injector re-arms it).
unsafe extern "C" fn pending_cancel(arg: *mut c_void) -> c_int {
    // SAFETY: CPython runs pending calls with the target interpreter's GIL held; a panic in the
    // body becomes a Python exception (the -1 return says one is set).
    obj::guarded("cancel injection", -1, || unsafe {
        pending_cancel_body(arg)
    })
}

unsafe fn pending_cancel_body(arg: *mut c_void) -> c_int {
    // CPython runs pending calls on a thread of the target interpreter with its GIL held and no
    // exception set.
    // SAFETY: `arg` is the interpreter's live `Shared` (see `inject_cancel`).
    let shared = unsafe { &*arg.cast::<Shared>() };
    // SAFETY: callable from any thread.
    let me = unsafe { ffi::PyThread_get_thread_ident() } as u64;
    if shared.owner_ident.load(std::sync::atomic::Ordering::SeqCst) != me {
        return 0;
    }
    // Hard-killed while the event loop runs: whatever it runs is interrupted, shielded or not
    // (an `async def` call that never awaits cannot be reached any other way).
    if shared.loop_interrupted() {
        // SAFETY: the owning thread of the interpreter whose types `shared` holds, GIL held.
        unsafe { module::raise(&shared.types.cancelled, None) };
        return -1;
    }
    if shared.in_user.load(std::sync::atomic::Ordering::SeqCst)
        && shared
            .shield_depth
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
        // A cleanup is left alone until the hard kill, which cuts it short.
        && (shared.hard_killed.load(std::sync::atomic::Ordering::SeqCst)
            // SAFETY: GIL held.
            || !unsafe { handling_exception() })
        && shared.take_cancel_delivery()
    {
        // SAFETY: the owning thread of the interpreter whose types `shared` holds, GIL held.
        unsafe { module::raise(&shared.types.cancelled, None) };
        return -1;
    }
    0
}

/// Whether the running code is handling an exception: an `except`, `finally` or `with` exit
/// block running because that exception was raised. The injection waits until the block is
/// left (the injector re-arms it), or until the actor's hard kill; `harrow.checkpoint()`,
/// `harrow.sleep()` and the harrow operations still see the cancel inside it.
///
/// - Another exception may be a failure still unwinding (out of a shield, through a `finally`),
///   which is the call's outcome: an asynchronous `harrow.Cancelled` raised there would replace
///   it, and the caller would see a cancellation instead of the failure.
/// - `harrow.Cancelled` itself being handled is the cancel's cleanup running: raised again
///   there, it would cut the cleanup short and lose the failure the cleanup may end with. The
///   re-arm is for code that swallowed the cancel, that is left the block without raising.
///
/// # Safety
/// GIL held.
unsafe fn handling_exception() -> bool {
    // SAFETY: GIL held; a new reference, or null (or `None`) when nothing is being handled.
    let exc = unsafe { ffi::PyErr_GetHandledException() };
    if exc.is_null() {
        return false;
    }
    // SAFETY: reading the address of the `None` singleton.
    let handling = exc != unsafe { ffi::Py_None() };
    // SAFETY: GIL held; drops the reference `PyErr_GetHandledException` returned.
    unsafe { ffi::Py_DECREF(exc) };
    handling
}

/// Writes one byte to a wake pipe's write end (non-blocking: a full pipe is already a wake).
pub(crate) fn wake_write(fd: c_int) {
    let byte = [1u8];
    // SAFETY: `fd` is a live pipe write end (its owner clears it under the lock the caller
    // holds before closing it); the buffer is local.
    let _ = unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
}

/// Releases the exception types the Rust side keeps of the interpreter (`shared`'s), before it
/// ends or is leaked.
///
/// # Safety
/// The interpreter's owning thread with its GIL held.
pub unsafe fn release_types(shared: &Shared) {
    // SAFETY: forwarded (caller).
    unsafe { module::release_types(shared) }
}

/// Clears the Python exception set on this thread, if any.
///
/// # Safety
/// GIL held.
pub unsafe fn clear_error() {
    // SAFETY: forwarded (caller).
    unsafe { obj::err_clear() }
}
