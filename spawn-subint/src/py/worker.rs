//! The body of an interpreter thread: create the interpreter, run jobs, end it — all on this
//! one OS thread, which then exits.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;
use parking_lot::Mutex;
use pyo3_ffi as ffi;

use super::convert::{self, ConvError};
use super::module::{self, Blocked, CallCtx, HarrowModule};
use super::obj::{
    Obj, PyErrSet, PyResult, Released, call0, call1, call2, err_clear, getattr, panic_text,
};
use crate::config::InterpConfig;
use crate::error::{Error, Result};
use crate::interp::{CallJob, Exit, Job, cancelled_error};
use crate::state::{self, JobState, Shared};

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
        unsafe { serve(shared, config, jobs, &ready, &life) }
    }));
    SERVER.with(|s| s.set(std::ptr::null()));
    match run {
        Ok(exit) => exit,
        Err(payload) => {
            let why = format!("the interpreter thread {}", panic_text(&*payload));
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
unsafe fn serve(
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

    // SAFETY: GIL of the new interpreter held on its owning thread.
    let setup = unsafe { Setup::new(shared, config) };
    let py = match setup {
        Ok(py) => py,
        Err(msg) => {
            // SAFETY: owning thread, GIL held, no Python running, no other thread.
            unsafe { end(shared, ts) };
            life.set(Life::Gone);
            report(Err(create_err(msg)));
            return Exit::Exited;
        }
    };
    report(Ok(()));

    let server = Server {
        setup: py,
        shared: Arc::clone(shared),
        config: config.clone(),
        jobs,
        depth: Cell::new(0),
        stop: Cell::new(false),
        async_live: Cell::new(0),
    };
    SERVER.with(|s| s.set(&server as *const Server));
    while !server.stop.get() || server.async_live.get() > 0 {
        if server.async_live.get() > 0 {
            // Async calls run: the event loop serves them and takes new calls meanwhile (a
            // queued call or a cancel wakes it through the wake pipe).
            // SAFETY: owning thread, GIL held.
            if unsafe { !server.run_loop() } {
                break;
            }
            continue;
        }
        // Idle: release the GIL while waiting (essential in legacy mode, where it is shared).
        let job = {
            // SAFETY: GIL held with `ts` current; no Python object is touched until the guard
            // re-attaches it.
            let _released = unsafe { Released::save() };
            server.jobs.recv()
        };
        match job {
            Ok(Job::Call(call)) => {
                // SAFETY: GIL held on the owning thread.
                unsafe { server.setup.run(shared, config, call) }
            }
            Ok(Job::Panic(msg)) => panic!("{msg}"),
            Ok(Job::Shutdown) | Err(_) => break,
        }
    }
    SERVER.with(|s| s.set(std::ptr::null()));
    let Server {
        setup: py, jobs, ..
    } = server;
    // Reject whatever is still queued: the replies' senders drop, their callers see "gone".
    drop(jobs);

    // SAFETY: GIL held on the owning thread, no user code running.
    let alive = unsafe { py.stop_threads(shared, config) };
    if alive.is_empty() {
        // SAFETY: GIL held; a harness function of this interpreter.
        if unsafe { call0(&py.harrow.before_end) }.is_err() {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
        }
    }
    drop(py);
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
    unsafe { module::release_types(shared) };
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
    let others = unsafe { count_other_tstates() };
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

/// How deep calls may nest on the interpreter thread (see [`wait_released`]); beyond that, new
/// calls wait in the queue until a nested one returns.
const MAX_NESTED: u32 = 32;

/// The interpreter thread's call server: what a call waiting with the GIL released needs in
/// order to run the actor's other queued calls meanwhile. Lives in `thread_main`'s frame.
struct Server {
    setup: Setup,
    shared: Arc<Shared>,
    config: InterpConfig,
    jobs: flume::Receiver<Job>,
    /// Calls running nested inside a waiting call right now.
    depth: Cell<u32>,
    /// A `Job::Shutdown` was taken (or every sender is gone): serve no more calls.
    stop: Cell<bool>,
    /// Async calls whose task has not ended yet.
    async_live: Cell<usize>,
}

thread_local! {
    /// The `Server` of this interpreter thread (null on every other thread, and outside the
    /// serving loop).
    static SERVER: Cell<*const Server> = const { Cell::new(std::ptr::null()) };
}

/// How a call's function ran.
enum Outcome {
    /// It returned (a plain function, or a generator driven to its end).
    Value(Value),
    /// It is async: this awaitable (a coroutine, or the driver of an async generator) is to run
    /// as a task of the interpreter's event loop.
    Async(Obj),
}

/// An async call running as a task of the interpreter's event loop (held by a capsule that the
/// task's done callback passes back to `_native_finish`).
pub(crate) struct AsyncCall {
    ctx: Arc<CallCtx>,
    kind: CallKind,
    func: String,
    /// Taken when the result is sent; still here if the task never ended (the capsule's
    /// destructor then drops it: the caller sees the interpreter gone).
    reply: Mutex<Option<flume::Sender<Result<Value, CallError>>>>,
}

impl AsyncCall {
    /// Whether the task should be cancelled: its call was, or the actor is shutting down.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.ctx.job.is_cancelled() || self.ctx.shared.closing.load(Ordering::SeqCst)
    }
}

const ASYNC_CAPSULE: &CStr = c"harrow._async_call";

unsafe extern "C" fn drop_async_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    super::obj::guarded_quiet("harrow._async_call capsule destructor", || {
        // SAFETY: GIL held.
        let p = unsafe { ffi::PyCapsule_GetPointer(capsule, ASYNC_CAPSULE.as_ptr()) };
        if !p.is_null() {
            // SAFETY: the `Box<AsyncCall>` made for this capsule name, freed once, here.
            drop(unsafe { Box::from_raw(p.cast::<AsyncCall>()) });
        }
    })
}

/// The `AsyncCall` behind a `harrow._async_call` capsule (a Python error set if `o` is not one).
///
/// # Safety
/// GIL held; the returned reference is valid while `o` is alive.
pub(crate) unsafe fn async_call_from<'a>(o: *mut ffi::PyObject) -> Option<&'a AsyncCall> {
    // SAFETY: GIL held (caller); a wrong object is a Python error, not UB.
    let p = unsafe { ffi::PyCapsule_GetPointer(o, ASYNC_CAPSULE.as_ptr()) };
    // SAFETY: the capsule owns a live `AsyncCall` until its destructor runs.
    unsafe { p.cast::<AsyncCall>().as_ref() }
}

/// An async call's task ended: `state` 0 returned `value`, 1 cancelled, 2 raised `value`.
/// Sends its result.
///
/// # Safety
/// Owning thread, GIL held; `value` a valid object.
pub(crate) unsafe fn finish_async(
    call: &AsyncCall,
    state: std::ffi::c_long,
    value: *mut ffi::PyObject,
) {
    let server = SERVER.with(|s| s.get());
    // SAFETY: see `stop_serving`.
    let Some(server) = (unsafe { server.as_ref() }) else {
        return;
    };
    server
        .async_live
        .set(server.async_live.get().saturating_sub(1));
    let Some(reply) = call.reply.lock().take() else {
        return;
    };
    let ctx = &call.ctx;
    let setup = &server.setup;
    let result = match state {
        0 => {
            // SAFETY: GIL held; `value` is valid.
            let r = unsafe { Obj::borrowed(value) }
                .map_err(|_| cancelled_error())
                // SAFETY: GIL held.
                .and_then(|v| unsafe { setup.result_value(&v) });
            match r {
                Ok(v) if call.kind == CallKind::Context && !ctx.started.load(Ordering::SeqCst) => {
                    // SAFETY: owning thread, GIL held; waits with it released.
                    blocked(unsafe { ctx.started(Value::Null) }).map(|()| v)
                }
                other => other,
            }
        }
        1 => Err(cancelled_error()),
        _ => {
            // `value` is a live exception: re-raise it (a new reference given away), convert it.
            // SAFETY: GIL held; `value` valid.
            unsafe { ffi::Py_INCREF(value) };
            // SAFETY: GIL held; steals the new reference.
            unsafe { ffi::PyErr_SetRaisedException(value) };
            // SAFETY: GIL held, an exception set.
            Err(unsafe { setup.error(ErrorKind::Raised) })
        }
    };
    // SAFETY: owning thread, GIL held.
    unsafe {
        setup.settle(
            &server.shared,
            &server.config,
            ctx,
            &call.func,
            result,
            reply,
        )
    };
}

/// From the event loop (`_on_wake`): runs the calls queued for the actor, starting async ones
/// as tasks. Honours `Shutdown` (stops taking calls).
///
/// # Safety
/// Owning thread, GIL held.
pub(crate) unsafe fn take_jobs() {
    let server = SERVER.with(|s| s.get());
    // SAFETY: see `stop_serving`.
    let Some(server) = (unsafe { server.as_ref() }) else {
        return;
    };
    while !server.stop.get() {
        match server.jobs.try_recv() {
            Ok(Job::Call(call)) => {
                // SAFETY: owning thread, GIL held.
                unsafe { server.setup.run(&server.shared, &server.config, call) }
            }
            Ok(Job::Panic(msg)) => panic!("{msg}"),
            Ok(Job::Shutdown) | Err(flume::TryRecvError::Disconnected) => server.stop.set(true),
            Err(flume::TryRecvError::Empty) => return,
        }
    }
}

/// Makes this thread's call server take no more calls (the actor is ending).
fn stop_serving() {
    let server = SERVER.with(|s| s.get());
    // SAFETY: a non-null `SERVER` points to the `Server` in `serve`'s frame on this very thread
    // (cleared before it moves).
    if let Some(s) = unsafe { server.as_ref() } {
        s.stop.set(true);
    }
}

/// What ended one round of waiting in [`wait_released`].
enum Woke<T> {
    Done(T),
    Cancelled,
    Job(Job),
    NoMoreJobs,
}

/// Waits for `fut` with this interpreter's GIL released, on the interpreter's owning thread.
/// Returns `None` when `job` is cancelled first (unless `shielded`: then only `fut` ends it).
///
/// While it waits, the thread serves the actor's other queued calls: each runs nested on this
/// thread's stack (GIL re-taken), and the wait resumes when it has returned. So calls of one
/// actor interleave at their waits (`ctx`/stream operations, `harrow.sleep`), last in first out:
/// a waiting call resumes only after the calls nested in it have returned. A `Job::Shutdown`
/// taken here stops the serving; shutting down also cancels this call (deferred while shielded).
///
/// # Safety
/// Owning thread of the interpreter with its GIL held (released and re-taken here); `fut` must
/// not touch Python objects.
pub(crate) unsafe fn wait_released<T>(
    job: &JobState,
    shielded: bool,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let server = SERVER.with(|s| s.get());
    // SAFETY: a non-null `SERVER` points to the `Server` in `thread_main`'s frame on this very
    // thread, which outlives every call it runs (the pointer is cleared before it moves).
    let server = unsafe { server.as_ref() };
    loop {
        let serving = server.filter(|s| !s.stop.get() && s.depth.get() < MAX_NESTED);
        // SAFETY: GIL held with our thread state current (caller); the guard re-attaches it on
        // every path, a panicking `fut` included. `fut` touches no Python object (caller).
        let released = unsafe { Released::save() };
        let woke = async_io::block_on(async {
            let work = async { Woke::Done(fut.as_mut().await) };
            let cancelled = async {
                if shielded {
                    std::future::pending::<()>().await;
                }
                job.wait_cancelled().await;
                Woke::Cancelled
            };
            let next = async {
                match serving {
                    Some(s) => match s.jobs.recv_async().await {
                        Ok(j) => Woke::Job(j),
                        Err(_) => Woke::NoMoreJobs,
                    },
                    None => std::future::pending().await,
                }
            };
            work.or(cancelled).or(next).await
        });
        drop(released);
        match woke {
            Woke::Done(v) => return Some(v),
            Woke::Cancelled => return None,
            Woke::Job(Job::Call(call)) => {
                if let Some(s) = server {
                    // SAFETY: owning thread, GIL held.
                    unsafe { s.serve_nested(call) };
                }
            }
            // Fails the waiting call (its operation panics), not the thread.
            Woke::Job(Job::Panic(msg)) => panic!("{msg}"),
            Woke::Job(Job::Shutdown) | Woke::NoMoreJobs => {
                if let Some(s) = server {
                    s.stop.set(true);
                }
            }
        }
        if server.is_some_and(|s| s.shared.closing.load(Ordering::SeqCst)) {
            // Shutting down cancels every running call, the ones below a nested call too.
            job.cancel();
        }
    }
}

impl Server {
    /// Runs the interpreter's event loop until no async call's task is left (or the loop
    /// stops). False when the loop failed (it is then not run again).
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn run_loop(&self) -> bool {
        let shared = &self.shared;
        *shared.stage.lock() = Some(format!(
            "no plain call: {} async call(s) running in the event loop",
            self.async_live.get()
        ));
        // Senders that see the flag wake the loop; the loop's first callback takes whatever was
        // queued before (see `Shared::wake`).
        shared.loop_running.store(true, Ordering::SeqCst);
        // SAFETY: GIL held; a harness function of this interpreter.
        let ran = unsafe { call0(&self.setup.harrow.run_loop) };
        shared.loop_running.store(false, Ordering::SeqCst);
        *shared.stage.lock() = None;
        if ran.is_err() {
            // SAFETY: GIL held, an exception is set.
            let text = unsafe { fetch_text() };
            tracing::error!(actor = %shared.name, "the event loop failed: {text}");
            return false;
        }
        true
    }

    /// Runs `call` nested inside a waiting call, saving and restoring the waiting call's
    /// per-interpreter state around it.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn serve_nested(&self, call: CallJob) {
        let shared = &self.shared;
        let current = shared.current.lock().clone();
        let shield = shared.shield_depth.load(Ordering::SeqCst);
        let in_user = shared.in_user.load(Ordering::SeqCst);
        self.depth.set(self.depth.get() + 1);
        // SAFETY: forwarded (caller).
        unsafe { self.setup.run(shared, &self.config, call) };
        self.depth.set(self.depth.get() - 1);
        *shared.current.lock() = current;
        shared.shield_depth.store(shield, Ordering::SeqCst);
        shared.in_user.store(in_user, Ordering::SeqCst);
    }
}

/// Creates the interpreter on this thread and returns its (current, GIL-holding) thread state.
///
/// # Safety
/// A fresh thread with no thread state; the main interpreter is initialised with its GIL
/// released.
unsafe fn create(config: &InterpConfig) -> Result<*mut ffi::PyThreadState, String> {
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
    unsafe { module::release_types(shared) };
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

/// The per-interpreter harness.
struct Setup {
    harrow: HarrowModule,
    _wake: WakePipe,
}

/// The pipe that wakes the interpreter's event loop when a call is queued or cancelled: the
/// loop watches its read end; any thread writes a byte to its write end
/// ([`Shared::wake`](crate::state::Shared)). Closed when the interpreter's harness goes away.
struct WakePipe {
    read: std::ffi::c_int,
    shared: Arc<Shared>,
}

impl WakePipe {
    fn new(shared: &Arc<Shared>) -> Result<WakePipe, String> {
        let mut fds = [0 as std::ffi::c_int; 2];
        // SAFETY: a plain syscall filling a local array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        *shared.wake_w.lock() = fds[1];
        Ok(WakePipe {
            read: fds[0],
            shared: Arc::clone(shared),
        })
    }
}

impl Drop for WakePipe {
    fn drop(&mut self) {
        // No writer may use the write end once it is closed: cleared under the lock writers take.
        let mut w = self.shared.wake_w.lock();
        // SAFETY: closing an fd this pipe owns, once.
        unsafe { libc::close(*w) };
        // SAFETY: as above.
        unsafe { libc::close(self.read) };
        *w = -1;
    }
}

impl Setup {
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn new(shared: &Arc<Shared>, config: &InterpConfig) -> Result<Setup, String> {
        // SAFETY: GIL held (caller), an exception is set whenever this is called.
        let err = || unsafe { fetch_text() };
        // Every call below: GIL held (caller).
        // SAFETY: see above.
        let harrow = unsafe { HarrowModule::build(shared) }.map_err(|_| err())?;
        // SAFETY: see above; a borrowed reference to `sys.path`.
        let path = unsafe { ffi::PySys_GetObject(c"path".as_ptr()) };
        // SAFETY: see above; `path` checked non-null first.
        if path.is_null() || unsafe { ffi::PyList_Check(path) } == 0 {
            return Err("sys.path is not a list".into());
        }
        for (i, p) in config.sys_path.iter().enumerate() {
            // SAFETY: see above.
            let s = unsafe { convert::str_obj(&p.to_string_lossy()) }.map_err(|_| err())?;
            // SAFETY: see above; `path` is a list, `s` valid (the list takes its own reference).
            if unsafe { ffi::PyList_Insert(path, i as ffi::Py_ssize_t, s.as_ptr()) } != 0 {
                return Err(err());
            }
        }
        let wake = WakePipe::new(shared)?;
        // SAFETY: see above.
        let fd = unsafe { ffi::PyLong_FromLong(std::ffi::c_long::from(wake.read)) };
        // SAFETY: a new reference (or null with an error set).
        let fd = unsafe { Obj::owned(fd) }.map_err(|_| err())?;
        let module = harrow.module.as_ptr();
        // SAFETY: see above; both objects valid.
        if unsafe { ffi::PyObject_SetAttrString(module, c"_wake_fd".as_ptr(), fd.as_ptr()) } != 0 {
            return Err(err());
        }
        Ok(Setup {
            harrow,
            _wake: wake,
        })
    }

    /// Runs one call and sends its result; an async function's call is started as a task of
    /// the interpreter's event loop instead (its result is sent when the task ends).
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn run(&self, shared: &Arc<Shared>, config: &InterpConfig, call: CallJob) {
        let CallJob {
            job,
            func,
            kind,
            args,
            host,
            reply,
        } = call;
        *shared.current.lock() = Some(Arc::clone(&job));
        shared.shield_depth.store(0, Ordering::SeqCst);
        let ctx = Arc::new(CallCtx {
            shared: Arc::clone(shared),
            job: Arc::clone(&job),
            host,
            stream: Mutex::new(None),
            started: AtomicBool::new(false),
            active: AtomicBool::new(true),
        });
        let outcome = if job.is_cancelled() || shared.closing.load(Ordering::SeqCst) {
            Err(cancelled_error())
        } else {
            // A panic in the call's Rust side (a host future, a conversion) fails this call only.
            // Unwinding dropped its Python objects with the GIL held (`Released` re-attaches).
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: forwarded.
                unsafe { self.call(shared, config, &ctx, &func, kind, args) }
            }))
            .unwrap_or_else(|payload| {
                Err(CallError::new(
                    ErrorKind::Raised,
                    "panic",
                    format!("the call's Rust side {}", panic_text(&*payload)),
                ))
            })
        };
        shared.in_user.store(false, Ordering::SeqCst);
        *shared.current.lock() = None;
        let result = match outcome {
            Ok(Outcome::Value(v)) => Ok(v),
            Err(e) => Err(e),
            Ok(Outcome::Async(aw)) => {
                let call = AsyncCall {
                    ctx,
                    kind,
                    func: func.to_string(),
                    reply: Mutex::new(Some(reply)),
                };
                // SAFETY: owning thread, GIL held.
                unsafe { self.start_async(call, aw) };
                return;
            }
        };
        // SAFETY: owning thread, GIL held.
        unsafe { self.settle(shared, config, &ctx, &func.to_string(), result, reply) };
    }

    /// The end of every call, plain or async: the ctx is retired, `os._exit` is honoured, the
    /// result is sent.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn settle(
        &self,
        shared: &Shared,
        config: &InterpConfig,
        ctx: &CallCtx,
        func: &str,
        result: Result<Value, CallError>,
        reply: flume::Sender<Result<Value, CallError>>,
    ) {
        ctx.active.store(false, Ordering::SeqCst);
        // Drop the stream host while no Python runs (it may hold channel ends).
        ctx.stream.lock().take();
        ctx.job.set_done();
        // A stray exception must not leak into the next call.
        // SAFETY: GIL held.
        unsafe { err_clear() };
        // The first call to end after `os._exit` was called is the one that called it (or ran
        // the code that did); the others keep their own outcome.
        let noticed = shared.exit_reason.lock().is_some();
        let exit = if noticed {
            None
        } else {
            // SAFETY: owning thread, GIL held.
            unsafe { self.exit_called() }
        };
        let result = match exit {
            None => result,
            Some(what) => {
                // The call fails even if its code swallowed `ActorExit`; the actor ends.
                let reason = format!("{what} was called in {func}: the actor ended");
                tracing::warn!(actor = %config.name, "{reason}");
                *shared.exit_reason.lock() = Some(reason);
                shared.closing.store(true, Ordering::SeqCst);
                stop_serving();
                // Running async calls are cancelled by the event loop once it wakes.
                shared.wake();
                match result {
                    Err(e) if e.kind() == ErrorKind::Raised => Err(e),
                    _ => Err(CallError::raised(
                        "harrow.ActorExit",
                        format!("{what} was called: it ends this actor only (the process goes on)"),
                    )),
                }
            }
        };
        let _ = reply.send(result);
    }

    /// Starts `aw` (an awaitable) as a task of the interpreter's event loop for `call`.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn start_async(&self, call: AsyncCall, aw: Obj) {
        let shared = Arc::clone(&call.ctx.shared);
        let boxed = Box::into_raw(Box::new(call));
        // SAFETY: GIL held; the capsule owns `boxed` (freed by its destructor).
        let capsule = unsafe {
            ffi::PyCapsule_New(
                boxed.cast(),
                ASYNC_CAPSULE.as_ptr(),
                Some(drop_async_capsule),
            )
        };
        // SAFETY: a new reference (or null with an error set).
        let capsule = match unsafe { Obj::owned(capsule) } {
            Ok(c) => c,
            Err(_) => {
                // SAFETY: the capsule was not made: `boxed` is still ours.
                let call = unsafe { Box::from_raw(boxed) };
                // SAFETY: GIL held, an exception is set.
                let err = unsafe { self.error(ErrorKind::Raised) };
                self.fail_async(&call, err);
                return;
            }
        };
        // SAFETY: GIL held; a harness function of this interpreter, valid arguments.
        let started = unsafe { call2(&self.harrow.start_task, capsule.as_ptr(), aw.as_ptr()) };
        match started {
            Ok(_) => {
                let server = SERVER.with(|s| s.get());
                // SAFETY: see `stop_serving`.
                if let Some(s) = unsafe { server.as_ref() } {
                    s.async_live.set(s.async_live.get() + 1);
                }
            }
            Err(_) => {
                // SAFETY: GIL held, an exception is set.
                let err = unsafe { self.error(ErrorKind::Raised) };
                // SAFETY: the capsule is alive (we hold it) and holds an `AsyncCall`.
                if let Some(call) = unsafe { async_call_from(capsule.as_ptr()) } {
                    self.fail_async(call, err);
                }
            }
        }
        drop(shared);
    }

    /// Sends `err` as the result of an async call that could not be started.
    fn fail_async(&self, call: &AsyncCall, err: CallError) {
        call.ctx.active.store(false, Ordering::SeqCst);
        call.ctx.job.set_done();
        if let Some(reply) = call.reply.lock().take() {
            let _ = reply.send(Err(err));
        }
    }

    /// What ended the actor from Python (`"os._exit(3)"`), if `os._exit` was called.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn exit_called(&self) -> Option<String> {
        // SAFETY: GIL held (caller); the module is this interpreter's.
        let v = unsafe { getattr(self.harrow.module.as_ptr(), c"_exit_called") };
        let Ok(v) = v else {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
            return None;
        };
        // SAFETY: GIL held; `v` is valid.
        if unsafe { ffi::PyUnicode_Check(v.as_ptr()) } == 0 {
            return None;
        }
        // SAFETY: GIL held; `v` is a `str`.
        unsafe { convert::utf8(v.as_ptr()) }.ok()
    }

    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn call(
        &self,
        shared: &Shared,
        config: &InterpConfig,
        ctx: &Arc<CallCtx>,
        func: &FnPath,
        kind: CallKind,
        args: Value,
    ) -> Result<Outcome, CallError> {
        let module_name = func.module();
        if !config.exposes(module_name) {
            return Err(crate::interp::not_exposed(config, module_name));
        }
        // Every call below: GIL held on the owning thread (caller); every object lives in an
        // `Obj` dropped before this function returns.
        let cmod = CString::new(module_name).map_err(|_| bad_args("module name has NUL"))?;
        let m = user(shared, || {
            // SAFETY: see above; `cmod` is NUL-terminated.
            let m = unsafe { ffi::PyImport_ImportModule(cmod.as_ptr()) };
            // SAFETY: a new reference (or null with an error set).
            unsafe { Obj::owned(m) }
        });
        // SAFETY: see above; an exception is set.
        let m = m.map_err(|_| unsafe { self.error_in(ErrorKind::NotFound, Some(module_name)) })?;
        let cfn = CString::new(func.function()).map_err(|_| bad_args("function name has NUL"))?;
        // SAFETY: see above; `m` valid.
        let f = unsafe { getattr(m.as_ptr(), &cfn) }.map_err(|_| {
            // SAFETY: see above.
            unsafe { err_clear() };
            CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!(
                    "module {module_name:?} has no function {:?}",
                    func.function()
                ),
            )
        })?;
        // SAFETY: see above; `f` valid.
        if unsafe { ffi::PyCallable_Check(f.as_ptr()) } == 0 {
            return Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{func} is not callable"),
            ));
        }
        // SAFETY: see above.
        let described = unsafe { self.describe(&f) };
        // SAFETY: see above; an exception is set.
        let (is_gen, wants_ctx) =
            described.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
        // SAFETY: see above.
        let (pos, kwargs) = unsafe { build_args(&args) }?;
        drop(args);
        let ctx_obj = if wants_ctx || kind == CallKind::Context {
            // SAFETY: see above.
            let c = unsafe { module::make_ctx(&self.harrow, ctx) };
            // SAFETY: see above; an exception is set.
            Some(c.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?)
        } else {
            None
        };
        let pos = match &ctx_obj {
            Some(c) if wants_ctx => {
                // SAFETY: see above; `pos` is a tuple.
                let p = unsafe { prepend(c, &pos) };
                // SAFETY: see above; an exception is set.
                p.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?
            }
            _ => pos,
        };

        // A plain or generator function in a context call gets an implicit started(None).
        if kind == CallKind::Context && !wants_ctx {
            // SAFETY: see above (waits with the GIL released).
            blocked(unsafe { ctx.started(Value::Null) })?;
        }
        let ret = user(shared, || {
            let kw = kwargs.as_ref().map_or(std::ptr::null_mut(), Obj::as_ptr);
            // SAFETY: see above; `f`, `pos` (a tuple) and `kw` (a dict or null) valid.
            let r = unsafe { ffi::PyObject_Call(f.as_ptr(), pos.as_ptr(), kw) };
            // SAFETY: a new reference (or null with an error set).
            unsafe { Obj::owned(r) }
        });
        if ret.is_err() {
            // It raised: what is left is converting the exception (see `user_code_ended`).
            ctx.user_code_ended();
        }
        // SAFETY: see above; an exception is set.
        let ret = ret.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
        drop(f);
        // What the function returned decides how it runs (a decorated async function is an
        // async function too).
        // SAFETY: see above; `ret` valid.
        if is_gen || unsafe { ffi::PyGen_Check(ret.as_ptr()) } != 0 {
            // SAFETY: see above.
            return unsafe { self.drive_generator(shared, ctx, kind, ret) }.map(Outcome::Value);
        }
        // SAFETY: see above; `ret` valid.
        if unsafe { ffi::PyCoro_CheckExact(ret.as_ptr()) } != 0 {
            return Ok(Outcome::Async(ret));
        }
        // SAFETY: see above; `ret` valid.
        if unsafe { ffi::PyAsyncGen_CheckExact(ret.as_ptr()) } != 0 {
            let aw = match (kind, &ctx_obj) {
                // SAFETY: see above; a harness function and valid arguments.
                (CallKind::Context, Some(c)) => unsafe {
                    call2(&self.harrow.agen_stream, c.as_ptr(), ret.as_ptr())
                },
                // SAFETY: see above; a harness function and a valid argument.
                _ => unsafe { call1(&self.harrow.agen_collect, ret.as_ptr()) },
            };
            return aw
                .map(Outcome::Async)
                // SAFETY: see above; an exception is set.
                .map_err(|_| unsafe { self.error(ErrorKind::Raised) });
        }
        // It returned a plain value: what is left is converting it.
        ctx.user_code_ended();
        // SAFETY: see above.
        let value = unsafe { self.result_value(&ret) }?;
        if kind == CallKind::Context && !ctx.started.load(Ordering::SeqCst) {
            // SAFETY: see above (waits with the GIL released).
            blocked(unsafe { ctx.started(Value::Null) })?;
        }
        Ok(Outcome::Value(value))
    }

    /// Iterates a generator: a unary call collects the items into a list; a context call
    /// streams each item (`Yield`), closes the stream (`Stop`) and returns None.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn drive_generator(
        &self,
        shared: &Shared,
        ctx: &CallCtx,
        kind: CallKind,
        gen_obj: Obj,
    ) -> Result<Value, CallError> {
        let mut items = Vec::new();
        // Every call below: owning thread, GIL held (caller); ctx operations wait with it
        // released.
        loop {
            let next = user(shared, || {
                // SAFETY: see above; `gen_obj` is a generator.
                let p = unsafe { ffi::PyIter_Next(gen_obj.as_ptr()) };
                if !p.is_null() {
                    // SAFETY: a new reference.
                    unsafe { Obj::owned(p) }.map(Some)
                // SAFETY: see above.
                } else if unsafe { convert::err_set() } {
                    Err(PyErrSet)
                } else {
                    Ok(None)
                }
            });
            if !matches!(next, Ok(Some(_))) {
                ctx.user_code_ended(); // the generator ended or raised
            }
            // SAFETY: see above; an exception is set.
            let next = next.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
            let Some(item) = next else { break };
            // SAFETY: see above.
            let value = unsafe { self.result_value(&item) }?;
            drop(item);
            match kind {
                CallKind::Unary => items.push(value),
                // SAFETY: see above.
                CallKind::Context => blocked(unsafe { ctx.stream_item(Some(value)) })?,
            }
        }
        drop(gen_obj);
        match kind {
            CallKind::Unary => Ok(Value::List(items)),
            CallKind::Context => {
                // SAFETY: see above.
                blocked(unsafe { ctx.stream_item(None) })?;
                Ok(Value::Null)
            }
        }
    }

    /// Converts a returned or yielded object.
    ///
    /// # Safety
    /// GIL held.
    unsafe fn result_value(&self, o: &Obj) -> Result<Value, CallError> {
        // SAFETY: GIL held (caller).
        match unsafe { convert::to_value(o.as_ptr()) } {
            Ok(v) => Ok(v),
            Err(ConvError::Unsupported(m)) => Err(CallError::raised(
                "TypeError",
                format!("cannot send the returned value: {m}"),
            )),
            // SAFETY: GIL held, an exception is set.
            Err(ConvError::Py(_)) => Err(unsafe { self.error(ErrorKind::Raised) }),
        }
    }

    /// `(is_generator_function, wants_ctx)`.
    ///
    /// # Safety
    /// GIL held.
    unsafe fn describe(&self, f: &Obj) -> PyResult<(bool, bool)> {
        // SAFETY: GIL held (caller); a harness function, `f` valid.
        let t = unsafe { call1(&self.harrow.describe, f.as_ptr()) }?;
        // SAFETY: GIL held; `t` is the 2-tuple `_describe` returns; borrowed items.
        let a = unsafe { ffi::PyTuple_GetItem(t.as_ptr(), 0) };
        // SAFETY: as above.
        let b = unsafe { ffi::PyTuple_GetItem(t.as_ptr(), 1) };
        if a.is_null() || b.is_null() {
            return Err(PyErrSet);
        }
        // SAFETY: GIL held; `a` valid while `t` lives.
        let a = unsafe { ffi::PyObject_IsTrue(a) } == 1;
        // SAFETY: GIL held; `b` valid while `t` lives.
        let b = unsafe { ffi::PyObject_IsTrue(b) } == 1;
        Ok((a, b))
    }

    /// Turns the set Python exception into a `CallError` (kind `Cancelled` for
    /// `harrow.Cancelled`, else `default_kind`), with type, message and traceback.
    ///
    /// # Safety
    /// GIL held, an exception set (if none is, a generic error is returned).
    unsafe fn error(&self, default_kind: ErrorKind) -> CallError {
        // SAFETY: forwarded.
        unsafe { self.error_in(default_kind, None) }
    }

    /// [`error`](Self::error) for an exception raised while importing module `importing` (if
    /// set): `NotFound` only when that module itself (or its package) is missing; an error
    /// raised by the module's own code or imports is `Raised` and says so.
    ///
    /// # Safety
    /// As [`error`](Self::error).
    unsafe fn error_in(&self, default_kind: ErrorKind, importing: Option<&str>) -> CallError {
        // Every call below: GIL held (caller).
        // SAFETY: see above; takes the set exception (a new reference, or null).
        let exc = unsafe { ffi::PyErr_GetRaisedException() };
        // SAFETY: a new reference, or null.
        let Ok(exc) = (unsafe { Obj::owned(exc) }) else {
            return CallError::new(default_kind, "SystemError", "error without an exception");
        };
        // SAFETY: see above; `exc` valid.
        let cancelled = unsafe { module_type_is(exc.as_ptr(), &self.harrow, c"Cancelled") };
        let mut kind = default_kind;
        // SAFETY: reading the address of a builtin type object: always valid after init.
        let not_found_ty = unsafe { ffi::PyExc_ModuleNotFoundError };
        if cancelled {
            kind = ErrorKind::Cancelled;
        } else if default_kind == ErrorKind::NotFound
            // SAFETY: see above; both objects valid.
            && unsafe { ffi::PyErr_GivenExceptionMatches(exc.as_ptr(), not_found_ty) } == 0
        {
            // An import that failed for another reason than a missing module.
            kind = ErrorKind::Raised;
        }
        // SAFETY: see above; a harness function, `exc` valid.
        let described = unsafe { call1(&self.harrow.format_exc, exc.as_ptr()) };
        let (name, msg, tb) = match described {
            // SAFETY (the three): see above; `t` is the 3-tuple `_format_exc` returns.
            Ok(t) => (
                // SAFETY: see above.
                unsafe { tuple_str(&t, 0) }.unwrap_or_else(|| "Exception".into()),
                // SAFETY: see above.
                unsafe { tuple_str(&t, 1) }.unwrap_or_default(),
                // SAFETY: see above.
                unsafe { tuple_str(&t, 2) }.unwrap_or_default(),
            ),
            Err(_) => {
                // SAFETY: see above.
                unsafe { err_clear() };
                (
                    // SAFETY: see above; `exc` valid.
                    unsafe { convert::type_name(exc.as_ptr()) },
                    String::new(),
                    String::new(),
                )
            }
        };
        let mut msg = msg;
        if let (Some(module), false) = (importing, cancelled) {
            let missing = msg
                .strip_prefix("No module named '")
                .and_then(|m| m.strip_suffix('\''));
            let itself = kind == ErrorKind::NotFound
                && missing.is_some_and(|m| m == module || module.starts_with(&format!("{m}.")));
            if !itself {
                kind = ErrorKind::Raised;
                msg = format!("{msg} (raised while importing module {module:?}, which was found)");
            }
        }
        CallError::new(kind, name, msg).with_traceback(tb)
    }

    /// Cancels and joins Python threads started by user code, within the bound. Returns the
    /// threads still alive then, by name (non-empty: the interpreter must leak).
    ///
    /// # Safety
    /// Owning thread, GIL held, no user code running.
    unsafe fn stop_threads(&self, shared: &Shared, config: &InterpConfig) -> Vec<String> {
        let deadline = Instant::now() + config.thread_join_bound;
        // Every call below: owning thread, GIL held (caller), no user code running.
        loop {
            // SAFETY: see above.
            let others = unsafe { count_other_tstates() };
            if others == 0 {
                *shared.stage.lock() = None;
                return Vec::new();
            }
            // SAFETY: see above.
            let mut names = unsafe { self.thread_names() };
            if names.len() < others {
                names.push(format!(
                    "{} thread(s) not started by threading",
                    others - names.len()
                ));
            }
            if Instant::now() >= deadline {
                return names;
            }
            *shared.stage.lock() = Some(format!(
                "no call: waiting for {others} Python thread(s) to end ({})",
                names.join(", ")
            ));
            // Ask every threading.Thread to stop (async exception), then join a slice.
            // SAFETY: see above.
            unsafe { self.cancel_threads(shared) };
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50))
                .as_secs_f64();
            // SAFETY: see above.
            let t = unsafe { ffi::PyFloat_FromDouble(slice) };
            // SAFETY: a new reference (or null with an error set).
            if let Ok(t) = unsafe { Obj::owned(t) } {
                // SAFETY: see above; a harness function, `t` valid.
                let _ = unsafe { call1(&self.harrow.join_threads, t.as_ptr()) };
            }
            // SAFETY: see above.
            unsafe { err_clear() };
            // Threads that ended may still be deleting their thread state: yield briefly.
            // SAFETY: see above; nothing touches Python until the guard drops.
            let _released = unsafe { Released::save() };
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Raises `harrow.Cancelled` asynchronously in every live `threading` thread.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn cancel_threads(&self, shared: &Shared) {
        // SAFETY: GIL held (caller); a harness function.
        let Ok(list) = (unsafe { call0(&self.harrow.live_threads) }) else {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
            return;
        };
        // SAFETY: GIL held; `list` is the list `_live_threads` returns.
        let n = unsafe { ffi::PyList_Size(list.as_ptr()) };
        let cancelled: *mut ffi::PyObject = shared.types.cancelled.load(Ordering::SeqCst).cast();
        for i in 0..n {
            // SAFETY: GIL held; `i` in range; a borrowed item kept alive by `list`.
            let t = unsafe { ffi::PyList_GetItem(list.as_ptr(), i) };
            // SAFETY: GIL held; `t` is a live `Thread`.
            if let Ok(ident) = unsafe { getattr(t, c"ident") } {
                // SAFETY: GIL held; `ident` valid.
                let id = unsafe { ffi::PyLong_AsUnsignedLong(ident.as_ptr()) };
                // SAFETY: GIL held.
                let ok = id != std::ffi::c_ulong::MAX || !unsafe { convert::err_set() };
                if !cancelled.is_null() && ok {
                    // SAFETY: GIL held; `cancelled` is a live type of this interpreter; the
                    // call only looks up thread states of this interpreter by id.
                    unsafe { ffi::PyThreadState_SetAsyncExc(id as _, cancelled) };
                }
            }
            // SAFETY: GIL held.
            unsafe { err_clear() };
        }
    }
}

impl Setup {
    /// The names of the live `threading` threads other than this one.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn thread_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: GIL held (caller); `live_threads` is a function of this interpreter.
        let Ok(list) = (unsafe { call0(&self.harrow.live_threads) }) else {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
            return out;
        };
        // SAFETY: GIL held; `list` is the list `_live_threads` returns.
        let n = unsafe { ffi::PyList_Size(list.as_ptr()) };
        for i in 0..n {
            // SAFETY: GIL held; `i` is in range; borrowed item.
            let t = unsafe { ffi::PyList_GetItem(list.as_ptr(), i) };
            // SAFETY: GIL held; `t` is a live `Thread`.
            let name = unsafe { getattr(t, c"name") };
            match name {
                // SAFETY: GIL held; `name` is valid (its type is checked by `utf8`'s caller).
                Ok(name) if unsafe { ffi::PyUnicode_Check(name.as_ptr()) } != 0 => {
                    // SAFETY: GIL held; `name` is a `str`.
                    if let Ok(text) = unsafe { convert::utf8(name.as_ptr()) } {
                        out.push(text);
                    }
                }
                _ => {}
            }
            // SAFETY: GIL held.
            unsafe { err_clear() };
        }
        out
    }
}

/// How many thread states of the current interpreter exist besides the current one.
///
/// # Safety
/// GIL held.
unsafe fn count_other_tstates() -> usize {
    // The thread-state list is read under the GIL (caller).
    // SAFETY: GIL held: a thread state is current.
    let me = unsafe { ffi::PyThreadState_Get() };
    // SAFETY: `me` is valid.
    let interp = unsafe { ffi::PyThreadState_GetInterpreter(me) };
    let mut n = 0;
    // SAFETY: GIL held; `interp` is alive.
    let mut t = unsafe { ffi::PyInterpreterState_ThreadHead(interp) };
    while !t.is_null() {
        if t != me {
            n += 1;
        }
        // SAFETY: GIL held; `t` is a live thread state of the list.
        t = unsafe { ffi::PyThreadState_Next(t) };
    }
    n
}

/// Runs `f` marked as user code (cancel injections may land).
fn user<T>(shared: &Shared, f: impl FnOnce() -> T) -> T {
    shared.in_user.store(true, Ordering::SeqCst);
    let r = f();
    shared.in_user.store(false, Ordering::SeqCst);
    r
}

fn blocked<T>(b: Blocked<T>) -> Result<T, CallError> {
    match b {
        Blocked::Done(v) => Ok(v),
        Blocked::Failed(m) => Err(CallError::new(ErrorKind::Protocol, "HarrowError", m)),
        Blocked::Cancelled => Err(cancelled_error()),
    }
}

fn bad_args(msg: impl Into<String>) -> CallError {
    CallError::new(ErrorKind::BadArguments, "BadArguments", msg)
}

/// Maps the call's `Value` to Python arguments: `Null` -> no argument, any other value ->
/// exactly one positional argument (a list stays one `list`, a map one `dict`), so a Python
/// function sees the same value a Rust function would; an encoded [`PyArgs`](crate::PyArgs) ->
/// its positional value (by the same rule) and its keyword arguments (the dict returned).
///
/// # Safety
/// GIL held.
unsafe fn build_args(args: &Value) -> Result<(Obj, Option<Obj>), CallError> {
    let fetch_bad = || {
        // SAFETY: GIL held (caller), an exception is set.
        let text = unsafe { fetch_text() };
        bad_args(format!("arguments do not convert to Python: {text}"))
    };
    let (pos, kw) = match crate::args::split(args) {
        Some((pos, kw)) => (pos, Some(kw)),
        None => (args, None),
    };
    let n = if matches!(pos, Value::Null) { 0 } else { 1 };
    // SAFETY: GIL held (caller); a new tuple of `n` empty slots.
    let tuple = unsafe { ffi::PyTuple_New(n) };
    // SAFETY: a new reference (or null with an error set).
    let tuple = unsafe { Obj::owned(tuple) }.map_err(|_| fetch_bad())?;
    if n == 1 {
        // SAFETY: GIL held.
        let o = unsafe { convert::from_value(pos) }.map_err(|_| fetch_bad())?;
        // SAFETY: GIL held; slot 0 of the new tuple; steals `o`'s reference.
        unsafe { ffi::PyTuple_SetItem(tuple.as_ptr(), 0, o.into_ptr()) };
    }
    let Some(kw) = kw else {
        return Ok((tuple, None));
    };
    // SAFETY: GIL held (caller); a new dict.
    let dict = unsafe { ffi::PyDict_New() };
    // SAFETY: a new reference (or null with an error set).
    let dict = unsafe { Obj::owned(dict) }.map_err(|_| fetch_bad())?;
    for (k, v) in kw {
        let Some(name) = k.as_str() else {
            return Err(bad_args(format!(
                "keyword argument names must be str, got {}",
                k.kind_name()
            )));
        };
        // SAFETY: GIL held (caller).
        let key = unsafe { convert::str_obj(name) }.map_err(|_| fetch_bad())?;
        // SAFETY: GIL held (caller).
        let val = unsafe { convert::from_value(v) }.map_err(|_| fetch_bad())?;
        // SAFETY: GIL held; all three objects are valid (the dict copies the references).
        if unsafe { ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), val.as_ptr()) } != 0 {
            return Err(fetch_bad());
        }
    }
    Ok((tuple, Some(dict)))
}

/// `(first,) + rest`.
///
/// # Safety
/// GIL held.
unsafe fn prepend(first: &Obj, rest: &Obj) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `rest` is a tuple.
    let n = unsafe { ffi::PyTuple_Size(rest.as_ptr()) };
    // SAFETY: GIL held; a new tuple of `n + 1` empty slots.
    let t = unsafe { ffi::PyTuple_New(n + 1) };
    // SAFETY: a new reference (or null with an error set).
    let t = unsafe { Obj::owned(t) }?;
    // SAFETY: GIL held; `first` valid.
    let first = unsafe { Obj::borrowed(first.as_ptr()) }?;
    // SAFETY: GIL held; slot 0 of the new tuple; steals the reference.
    unsafe { ffi::PyTuple_SetItem(t.as_ptr(), 0, first.into_ptr()) };
    for i in 0..n {
        // SAFETY: GIL held; `i` in range; borrowed, kept alive by `rest`.
        let item = unsafe { ffi::PyTuple_GetItem(rest.as_ptr(), i) };
        // SAFETY: GIL held; `item` valid (or null: an error).
        let item = unsafe { Obj::borrowed(item) }?;
        // SAFETY: GIL held; slot `i + 1` of the new tuple; steals the reference.
        unsafe { ffi::PyTuple_SetItem(t.as_ptr(), i + 1, item.into_ptr()) };
    }
    Ok(t)
}

/// Whether `exc` is an instance of `harrow.<name>`.
///
/// # Safety
/// GIL held.
unsafe fn module_type_is(exc: *mut ffi::PyObject, h: &HarrowModule, name: &CStr) -> bool {
    // SAFETY: GIL held (caller); the module is valid.
    let Ok(tp) = (unsafe { getattr(h.module.as_ptr(), name) }) else {
        // SAFETY: GIL held.
        unsafe { err_clear() };
        return false;
    };
    // SAFETY: GIL held; both objects valid.
    unsafe { ffi::PyErr_GivenExceptionMatches(exc, tp.as_ptr()) != 0 }
}

/// The text of `tuple[i]` if it is a `str`.
///
/// # Safety
/// GIL held.
unsafe fn tuple_str(t: &Obj, i: ffi::Py_ssize_t) -> Option<String> {
    // SAFETY: GIL held (caller); `t` is a tuple; borrowed, kept alive by `t`.
    let item = unsafe { ffi::PyTuple_GetItem(t.as_ptr(), i) };
    // SAFETY: GIL held; `item` checked non-null first.
    if item.is_null() || unsafe { ffi::PyUnicode_Check(item) } == 0 {
        // SAFETY: GIL held.
        unsafe { err_clear() };
        return None;
    }
    // SAFETY: GIL held; `item` is a `str`.
    unsafe { convert::utf8(item) }.ok()
}

/// Fetches and clears the set exception as `"Type: message"` text.
///
/// # Safety
/// GIL held.
unsafe fn fetch_text() -> String {
    // SAFETY: GIL held (caller); takes the set exception (a new reference, or null).
    let exc = unsafe { ffi::PyErr_GetRaisedException() };
    // SAFETY: a new reference, or null.
    let Ok(exc) = (unsafe { Obj::owned(exc) }) else {
        return "unknown error".into();
    };
    // SAFETY: GIL held; `exc` valid.
    let ty = unsafe { convert::type_name(exc.as_ptr()) };
    // SAFETY: GIL held; `exc` valid.
    let text = unsafe { ffi::PyObject_Str(exc.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    let msg = unsafe { Obj::owned(text) }
        .ok()
        // SAFETY: GIL held; `s` is a `str`.
        .and_then(|s| unsafe { convert::utf8(s.as_ptr()) }.ok())
        .unwrap_or_default();
    // SAFETY: GIL held.
    unsafe { err_clear() };
    format!("{ty}: {msg}")
}

/// Creates and ends one interpreter on a fresh thread with nothing else (no harrow module, no
/// call): the baseline for the spawn benchmarks. Returns the time from thread start to end.
#[cfg(feature = "bench-internals")]
pub(crate) fn bare_create_end(config: &InterpConfig) -> Result<Duration> {
    let config = config.clone();
    let t = std::thread::Builder::new()
        .name("subint-bare".into())
        .spawn(move || -> Result<Duration> {
            let began = Instant::now();
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
