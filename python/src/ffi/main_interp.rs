//! Serving an actor's calls in CPython's main interpreter, on a thread of its own: what a Python
//! actor in a child process runs (the process has no other Python user). The same call server
//! as in a subinterpreter ([`serve`](super::serve)); only what surrounds it differs: a thread
//! state of the main interpreter instead of a new interpreter, and nothing to end (the process
//! never finalizes Python; it exits).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pyo3_ffi as ffi;

use super::serve::{Served, serve};
use crate::config::InterpConfig;
use crate::job::Job;
use crate::state::Shared;

/// Serves `jobs` in the main interpreter on the calling thread until [`Job::Shutdown`] (or every
/// sender is gone); `ready` hears whether the harness could be set up. Returns why the serving
/// ended badly, if it did: Python threads still alive (they are left running: the process is
/// about to exit) or a panic outside a call (the GIL is released first).
///
/// Call it on a fresh thread with no Python thread state, after
/// [`ensure_main`](super::ensure_main) succeeded.
pub fn serve_main(
    shared: &Arc<Shared>,
    config: &InterpConfig,
    jobs: flume::Receiver<Job>,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    let mut ready = Some(ready);
    // SAFETY: the main interpreter is initialised (`ensure_main`, caller) and never finalized;
    // reading its pointer is always valid.
    let main = unsafe { ffi::PyInterpreterState_Main() };
    // SAFETY: needs no GIL; `main` is alive for the process.
    let ts = unsafe { ffi::PyThreadState_New(main) };
    if ts.is_null() {
        let why = "could not create a main-interpreter thread state".to_owned();
        if let Some(r) = ready.take() {
            r(Err(why.clone()));
        }
        return Err(why);
    }
    // SAFETY: `ts` is a fresh, detached thread state of the main interpreter and this thread has
    // none current (a fresh thread, caller): this takes the main GIL.
    unsafe { ffi::PyEval_RestoreThread(ts) };
    // SAFETY: `gettid` has no preconditions.
    *shared.tid.lock() = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    // SAFETY: callable from any thread.
    let ident = unsafe { ffi::PyThread_get_thread_ident() } as u64;
    shared.owner_ident.store(ident, Ordering::SeqCst);
    *shared.interp.lock() = main as usize;
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: this thread owns `ts`, a thread state of the main interpreter, current with
        // its GIL held; `shared` names this thread and interpreter.
        unsafe {
            serve(shared, config, jobs, || {
                if let Some(r) = ready.take() {
                    r(Ok(()));
                }
            })
        }
    }));
    let outcome = match served {
        Ok(Served::Done) => Ok(()),
        Ok(Served::NotSetUp(msg)) => {
            if let Some(r) = ready.take() {
                r(Err(msg.clone()));
            }
            Err(msg)
        }
        Ok(Served::ThreadsAlive(alive)) => Err(format!(
            "{} Python thread(s) still alive {:?} after being asked to stop ({})",
            alive.len(),
            config.thread_join_bound,
            alive.join(", ")
        )),
        Err(payload) => {
            let why = format!(
                "the main-interpreter thread {}",
                harrow_runtime_core::panic_message(&*payload)
            );
            if let Some(r) = ready.take() {
                r(Err(why.clone()));
            }
            // SAFETY: reads this thread's current thread state; no precondition.
            let current = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
            if current.is_null() {
                // Detached (the panic came while the GIL was released outside a guard).
                // SAFETY: `ts` is alive (only this thread deletes it) and detached.
                unsafe { ffi::PyEval_RestoreThread(ts) };
            }
            // SAFETY: GIL held with `ts` current.
            unsafe { ffi::PyErr_Clear() };
            Err(why)
        }
    };
    // No injection may target this thread from now on; the types go before the state.
    // SAFETY: GIL held with `ts` current, on the thread that stored them.
    unsafe { super::module::release_types(shared) };
    *shared.interp.lock() = 0;
    shared.owner_ident.store(0, Ordering::SeqCst);
    // SAFETY: `ts` is current with the GIL held; no Python frame of this thread is running.
    unsafe { ffi::PyThreadState_Clear(ts) };
    // SAFETY: as above; deletes `ts` and releases the main GIL.
    unsafe { ffi::PyThreadState_DeleteCurrent() };
    *shared.tid.lock() = 0;
    outcome
}
