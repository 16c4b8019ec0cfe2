//! An own-GIL subinterpreter's life on its dedicated thread: create it, serve its calls (the
//! shared Python worker's call server), end it, all on this one OS thread, which then exits; or
//! leak it when ending it is unsafe.

use std::cell::Cell;
use std::ffi::CStr;
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use harrow_python::ffi::{self as py, Served};
use harrow_python::{Error, InterpConfig, Job, Result, Shared, state};
use pyo3_ffi as ffi;

use crate::interp::Exit;

/// Where this thread's interpreter is in its life (for the panic path of [`thread_main`]).
#[derive(Clone, Copy)]
enum Life {
    /// Not created yet (or its creation failed).
    NotCreated,
    /// Alive, owned by this thread through this thread state.
    Alive(*mut ffi::PyThreadState),
    /// Ended, or deliberately leaked.
    Gone,
}

/// Runs one interpreter's whole life on the calling (fresh, dedicated) thread. Reports creation
/// success or failure on `ready`, serves `jobs` until `Job::Shutdown` (or every sender is gone),
/// then ends the interpreter here, or leaks it when ending it is unsafe (a Python thread is
/// still alive).
///
/// A panic on this thread outside a call (a call's own panic fails only that call) is caught
/// here: the thread reports [`Exit::Failed`] with the panic message after releasing what it
/// held (the GIL, shared with every legacy interpreter in legacy mode) and ending its
/// interpreter when that is safe (leaking it otherwise).
pub(crate) fn thread_main(
    shared: &Arc<Shared>,
    config: &InterpConfig,
    jobs: flume::Receiver<Job>,
    ready: flume::Sender<Result<()>>,
) -> Exit {
    // SAFETY: `gettid` has no preconditions.
    *shared.tid.lock() = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let life = Cell::new(Life::NotCreated);
    let ready = Cell::new(Some(ready));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: a fresh thread with no thread state, the main interpreter initialised (the
        // caller of `InterpThread::spawn` ran `ensure_main`).
        unsafe { live(shared, config, jobs, &ready, &life) }
    }));
    match run {
        Ok(exit) => exit,
        Err(payload) => {
            let why = format!(
                "the interpreter thread {}",
                harrow_runtime_core::panic_message(&*payload)
            );
            tracing::error!(actor = %config.name, "{why}");
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(Error::Create {
                    actor: config.name.clone(),
                    message: why.clone(),
                }));
            }
            // SAFETY: the owning thread, after unwinding: every `Released` guard re-attached
            // the thread state and every `Obj` was dropped.
            unsafe { after_panic(shared, life.get(), why) }
        }
    }
}

/// [`thread_main`] without the panic net.
///
/// # Safety
/// As [`thread_main`]'s body: a fresh thread, main interpreter initialised.
unsafe fn live(
    shared: &Arc<Shared>,
    config: &InterpConfig,
    jobs: flume::Receiver<Job>,
    ready: &Cell<Option<flume::Sender<Result<()>>>>,
    life: &Cell<Life>,
) -> Exit {
    let create_err = |message: String| Error::Create {
        actor: config.name.clone(),
        message,
    };
    let report = |r: Result<()>| {
        if let Some(ready) = ready.take() {
            let _ = ready.send(r);
        }
    };
    // SAFETY: this thread is fresh (no thread state); `create` follows the lifecycle in the
    // module doc.
    let ts = match unsafe { create(config) } {
        Ok(ts) => ts,
        Err(msg) => {
            report(Err(create_err(msg)));
            return Exit::Exited;
        }
    };
    life.set(Life::Alive(ts));
    // From here on this thread holds the new interpreter's GIL with `ts` current.
    state::interp_created();
    // SAFETY: `ts` is this thread's current, valid thread state.
    let interp = unsafe { ffi::PyThreadState_GetInterpreter(ts) };
    // SAFETY: callable from any thread.
    let ident = unsafe { ffi::PyThread_get_thread_ident() } as u64;
    shared.owner_ident.store(ident, Ordering::SeqCst);
    *shared.interp.lock() = interp as usize;

    // SAFETY: GIL of the new interpreter held on its owning thread, which the interpreter's
    // `shared` names; no other thread touches it but through `shared`.
    let served = unsafe { py::serve(shared, config, jobs, || report(Ok(()))) };
    let alive = match served {
        Served::NotSetUp(msg) => {
            // SAFETY: owning thread, GIL held, no Python running, no other thread.
            unsafe { end(shared, ts) };
            life.set(Life::Gone);
            report(Err(create_err(msg)));
            return Exit::Exited;
        }
        Served::Done => Vec::new(),
        Served::ThreadsAlive(alive) => alive,
    };
    if !alive.is_empty() {
        life.set(Life::Gone);
        // Ending now would join the thread forever or abort the process: leak instead.
        // SAFETY: owning thread, GIL held; the interpreter is leaked, never ended.
        unsafe { leak(shared) };
        let reason = format!(
            "{} Python thread(s) still alive {:?} after being asked to stop ({}); the \
             interpreter is leaked",
            alive.len(),
            config.thread_join_bound,
            alive.join(", ")
        );
        tracing::warn!(actor = %config.name, "{reason}");
        return Exit::Leaked(reason);
    }
    // SAFETY: owning thread, GIL held, no Python frame, no other thread state.
    unsafe { end(shared, ts) };
    life.set(Life::Gone);
    match shared.exit_reason.lock().clone() {
        Some(reason) => Exit::Failed(reason),
        None => Exit::Exited,
    }
}

/// Leaks this thread's interpreter: keeps its `Shared` alive for the rest of the process (the
/// interpreter may still run pending calls and `harrow` functions that point at it), drops the
/// type references, and detaches the thread state so that the interpreter's Python threads (and
/// in legacy mode every interpreter sharing the GIL) go on.
///
/// # Safety
/// Owning thread, GIL held with its thread state current; the interpreter is never ended.
unsafe fn leak(shared: &Arc<Shared>) {
    state::keep_forever(shared);
    // SAFETY: owning thread, GIL held (caller).
    unsafe { py::release_types(shared) };
    // SAFETY: a thread state is current (caller); it stays alive, detached: the interpreter is
    // leaked and the thread exits without deleting it.
    unsafe { ffi::PyEval_SaveThread() };
}

/// After a panic unwound `serve`: ends the interpreter if that is safe, else leaks it, and
/// releases its GIL either way. Returns the thread's exit.
///
/// # Safety
/// Owning thread, right after `serve` unwound; `life` is where the interpreter was.
unsafe fn after_panic(shared: &Arc<Shared>, life: Life, why: String) -> Exit {
    let Life::Alive(ts) = life else {
        return Exit::Failed(why);
    };
    *shared.current.lock() = None;
    shared.in_user.store(false, Ordering::SeqCst);
    // SAFETY: reads this thread's current thread state; no precondition.
    let current = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
    if current.is_null() {
        // Detached (the panic came while the GIL was released outside a guard): re-attach.
        // SAFETY: `ts` is alive (only this thread ends it) and detached.
        unsafe { ffi::PyEval_RestoreThread(ts) };
    } else if current != ts {
        // Not a state this thread made: touch nothing more.
        return Exit::Failed(format!(
            "{why}; its interpreter is leaked (unknown thread state)"
        ));
    }
    // SAFETY: GIL held with `ts` current.
    let pending = unsafe { ffi::PyErr_Occurred() };
    if !pending.is_null() {
        // SAFETY: GIL held.
        unsafe { ffi::PyErr_Clear() };
    }
    // SAFETY: GIL held.
    let others = unsafe { py::count_other_tstates() };
    if others == 0 {
        // SAFETY: owning thread, GIL held, `ts` current, no Python frame (unwound), no other
        // thread state; every `Obj` was dropped while unwinding.
        unsafe { end(shared, ts) };
        Exit::Failed(why)
    } else {
        // SAFETY: owning thread, GIL held.
        unsafe { leak(shared) };
        Exit::Failed(format!(
            "{why}; its interpreter is leaked ({others} Python thread(s) still alive)"
        ))
    }
}

/// How many times an interpreter's creation is tried before its failure is reported.
///
/// CPython 3.12 and 3.13 keep some state of all interpreters in process-wide variables that a
/// creation updates while other interpreters run, start and end, and a creation that overlaps
/// them now and then fails in its own set-up with `Failed to import encodings module`
/// (python/cpython#109700, #127108, #128381, #131485; here: one spawn in one of 29 runs of the
/// subint conformance suite, docs/subint-notes.md). CPython deletes the half-made interpreter
/// without finalizing it and gives the thread back its temporary state, so it is tried again; a
/// failure that is not such a collision fails every attempt, and is reported with each attempt's
/// message. What the half-made interpreter held is abandoned: memory, and no file descriptor,
/// since harrow's open-code hook (`harrow-python`, `ffi/opencode.rs`) reads code files without
/// leaving one open.
pub(crate) const CREATE_ATTEMPTS: usize = 3;

/// Creations to fail on purpose before calling CPython (tests of the retry).
#[cfg(test)]
static FAIL_NEXT_CREATIONS: AtomicU32 = AtomicU32::new(0);

/// Creates the interpreter on this thread and returns its (current, GIL-holding) thread state,
/// trying up to [`CREATE_ATTEMPTS`] times.
///
/// # Safety
/// A fresh thread with no thread state; the main interpreter is initialised with its GIL
/// released.
unsafe fn create(config: &InterpConfig) -> Result<*mut ffi::PyThreadState, String> {
    let mut failures: Vec<String> = Vec::new();
    for attempt in 1..=CREATE_ATTEMPTS {
        // SAFETY: see the contract; a failed attempt leaves the thread with no thread state,
        // as it found it.
        match unsafe { create_once(config) } {
            Ok(ts) => {
                if !failures.is_empty() {
                    tracing::warn!(
                        actor = %config.name,
                        "interpreter created on attempt {attempt}, after: {}",
                        failures.join("; ")
                    );
                }
                return Ok(ts);
            }
            Err(e) => failures.push(e),
        }
    }
    failures.dedup();
    Err(format!(
        "{} ({CREATE_ATTEMPTS} attempts)",
        failures.join("; then: ")
    ))
}

/// One attempt of [`create`].
///
/// # Safety
/// As [`create`].
unsafe fn create_once(config: &InterpConfig) -> Result<*mut ffi::PyThreadState, String> {
    #[cfg(test)]
    if FAIL_NEXT_CREATIONS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err("a failure injected by a test".into());
    }
    let legacy = config.legacy;
    let cfg = ffi::PyInterpreterConfig {
        // Own GIL needs its own allocator; legacy mode shares both.
        use_main_obmalloc: legacy as _,
        allow_fork: 0,
        allow_exec: 0,
        allow_threads: config.allow_threads as _,
        allow_daemon_threads: 0,
        check_multi_interp_extensions: (!legacy) as _,
        gil: if legacy {
            ffi::PyInterpreterConfig_SHARED_GIL
        } else {
            ffi::PyInterpreterConfig_OWN_GIL
        },
    };
    // CPython's documented sequence: `Py_NewInterpreterFromConfig` needs a current thread
    // state holding the GIL of the calling interpreter. A fresh thread has none, so a temporary
    // main-interpreter thread state takes the main GIL first. On success the new thread state is
    // current and holds the new interpreter's GIL (the main GIL is released with an own GIL;
    // with a shared GIL it is that same GIL). On failure CPython makes `tmp` current again.
    // SAFETY: the main interpreter is initialised (caller); reading its pointer is always valid.
    let main = unsafe { ffi::PyInterpreterState_Main() };
    // SAFETY: needs no GIL; `main` is alive for the process (never finalized).
    let tmp = unsafe { ffi::PyThreadState_New(main) };
    if tmp.is_null() {
        return Err("could not create a main-interpreter thread state".into());
    }
    // SAFETY: `tmp` is a fresh, detached thread state of the main interpreter, and this thread
    // has none current (caller): this takes the main GIL.
    unsafe { ffi::PyEval_RestoreThread(tmp) };
    let mut ts: *mut ffi::PyThreadState = std::ptr::null_mut();
    // SAFETY: `tmp` is current with the main GIL held; `cfg` and `ts` outlive the call.
    let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut ts, &cfg) };
    // SAFETY: reads a status CPython returned.
    let failed = unsafe { ffi::PyStatus_Exception(status) } != 0 || ts.is_null();
    if !failed {
        // Back to `tmp` to delete it: detach the new state (releasing its GIL), attach `tmp`.
        // SAFETY: `ts` is current on this thread; it is re-attached below.
        let new = unsafe { ffi::PyEval_SaveThread() };
        debug_assert_eq!(new, ts);
        // SAFETY: `tmp` is alive and detached; this thread has no current state now.
        unsafe { ffi::PyEval_RestoreThread(tmp) };
    }
    // `tmp` is current, holding the main GIL, in both cases.
    // SAFETY: `tmp` is current with its GIL held.
    unsafe { ffi::PyThreadState_Clear(tmp) };
    // SAFETY: as above; this deletes `tmp` and releases the main GIL.
    unsafe { ffi::PyThreadState_DeleteCurrent() };
    if failed {
        return Err(status_message(&status));
    }
    // SAFETY: `ts` is alive and detached; this thread has no current state.
    unsafe { ffi::PyEval_RestoreThread(ts) };
    Ok(ts)
}

fn status_message(status: &ffi::PyStatus) -> String {
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            None
        } else {
            // SAFETY: CPython's status strings are static NUL-terminated C strings.
            Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        }
    };
    match (text(status.func), text(status.err_msg)) {
        (Some(f), Some(m)) => format!("{f}: {m}"),
        (None, Some(m)) => m,
        _ => "Py_NewInterpreterFromConfig failed (no message)".to_owned(),
    }
}

/// Ends the interpreter on its owning thread.
///
/// # Safety
/// Owning thread, GIL held with `ts` current, no Python frame, no other thread state alive,
/// every `Obj` of this interpreter dropped.
unsafe fn end(shared: &Shared, ts: *mut ffi::PyThreadState) {
    // SAFETY: see the contract.
    unsafe { py::release_types(shared) };
    {
        // No injection may target the interpreter from now on.
        let mut g = shared.interp.lock();
        *g = 0;
    }
    // SAFETY: see the contract. On 3.12+ this leaves the thread with no thread state and the
    // (own or shared) GIL released.
    unsafe { ffi::Py_EndInterpreter(ts) };
    state::interp_ended();
}

/// Creates and ends one interpreter on a fresh thread with nothing else (no harrow module, no
/// call): the baseline for the spawn benchmarks. Returns the time from thread start to end.
#[cfg(feature = "bench-internals")]
pub(crate) fn bare_create_end(config: &InterpConfig) -> Result<std::time::Duration> {
    let config = config.clone();
    let t = std::thread::Builder::new()
        .name("subint-bare".into())
        .spawn(move || -> Result<std::time::Duration> {
            let began = std::time::Instant::now();
            // SAFETY: fresh thread, main interpreter initialised by the caller.
            let ts = unsafe { create(&config) }.map_err(|message| Error::Create {
                actor: config.name.clone(),
                message,
            })?;
            state::interp_created();
            // SAFETY: owning thread, GIL held, no Python run, no other thread state.
            unsafe {
                ffi::Py_EndInterpreter(ts);
            }
            state::interp_ended();
            Ok(began.elapsed())
        })
        .map_err(|e| Error::Thread {
            actor: "bare".into(),
            message: e.to_string(),
        })?;
    t.join().map_err(|_| Error::Create {
        actor: "bare".into(),
        message: "the bare create/end thread panicked".into(),
    })?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use harrow_ipc::{CallKind, FnPath, Value};

    use super::*;
    use crate::InterpThread;

    const BOUND: Duration = Duration::from_secs(30);

    fn config(name: &str) -> InterpConfig {
        InterpConfig::new(name)
            .expose("harrow_testfns")
            .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"))
    }

    #[test]
    fn a_failed_creation_is_tried_again_and_reported_with_each_attempt() {
        // Fails twice, then succeeds: the spawn does not see the failures.
        FAIL_NEXT_CREATIONS.store(2, Ordering::SeqCst);
        let t = InterpThread::spawn(config("retried")).expect("created on the third attempt");
        assert_eq!(FAIL_NEXT_CREATIONS.load(Ordering::SeqCst), 0);
        let call = t.handle().call(
            FnPath::parse("harrow_testfns:echo").expect("a valid path"),
            CallKind::Unary,
            Value::Int(7),
            None,
        );
        let answer = futures_lite::future::block_on(harrow_ipc::wait::deadline(BOUND, call));
        assert_eq!(answer.expect("in time").expect("echoed"), Value::Int(7));
        assert_eq!(t.shutdown(BOUND), Exit::Exited);

        // Fails every attempt: the spawn fails, saying what failed and how often.
        FAIL_NEXT_CREATIONS.store(CREATE_ATTEMPTS as u32, Ordering::SeqCst);
        let err = InterpThread::spawn(config("never")).expect_err("every attempt failed");
        assert_eq!(FAIL_NEXT_CREATIONS.load(Ordering::SeqCst), 0);
        let text = err.to_string();
        assert!(
            text.contains("never") && text.contains("a failure injected by a test (3 attempts)"),
            "{text}"
        );
    }
}
