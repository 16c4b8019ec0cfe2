//! The call server of an interpreter thread: takes the actor's jobs and runs them, runs the
//! event loop while async calls are alive, and, while a call waits with the GIL released, serves
//! the actor's other queued calls nested on its stack.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_lite::FutureExt;
use harrow_ipc::park::spin::{SharedCpu, SpinGate, crowded, spin_until};
use harrow_ipc::{CallKind, ErrorKind, Value};
use pyo3_ffi as ffi;
use std::time::Instant;

use super::calls::blocked;
use super::convert::fetch_text;
use super::harness::Setup;
use super::module::{AsyncCall, ServerHooks};
use super::obj::{Obj, Released, call0, err_clear};
use crate::config::InterpConfig;
use crate::job::{CallJob, Job, cancelled_error};
use crate::state::{JobState, Shared};

/// How deep calls may nest on the interpreter thread (see [`wait_released`]); beyond that, new
/// calls wait in the queue until a nested one returns.
const MAX_NESTED: u32 = 32;

/// Whether an idle interpreter thread may keep its GIL (`HARROW_SUBINT_KEEP_GIL=0`: no; read
/// once per process).
fn keep_gil_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| harrow_ipc::env_switch("HARROW_SUBINT_KEEP_GIL"))
}

/// The interpreter thread's call server: what a call waiting with the GIL released needs in
/// order to run the actor's other queued calls meanwhile. Lives in [`serve`]'s frame.
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
    /// The spin before the thread sleeps waiting for a call.
    spin: RefCell<SpinGate>,
    /// Whether the thread's callers keep waking it from another CPU.
    follow: RefCell<SharedCpu>,
}

thread_local! {
    /// The `Server` of this interpreter thread (null on every other thread, and outside the
    /// serving loop).
    static SERVER: Cell<*const Server> = const { Cell::new(std::ptr::null()) };
}

/// What the `harrow` module of an interpreter served here asks of this call server.
static HOOKS: ServerHooks = ServerHooks {
    wait: wait_dyn,
    take_jobs,
    finish_async,
};

/// How serving an interpreter's calls ended (see [`serve`]).
#[derive(Debug)]
pub enum Served {
    /// The per-interpreter harness (the `harrow` module, `sys.path`, the wake pipe) could not be
    /// set up; nothing ran. The text says why.
    NotSetUp(String),
    /// Every call ended and no Python thread of the interpreter is left: it may be ended.
    Done,
    /// Python threads that user code started are still alive after
    /// [`InterpConfig::thread_join_bound`] (by name): ending the interpreter now would hang or
    /// abort, so it must be leaked.
    ThreadsAlive(Vec<String>),
}

/// Clears this thread's `SERVER` when serving ends, on every path (a panic included).
struct ServingGuard;

impl Drop for ServingGuard {
    fn drop(&mut self) {
        SERVER.with(|s| s.set(std::ptr::null()));
        crate::handle::set_serving_here(None);
    }
}

/// Serves one interpreter's calls on the calling thread, its owning thread: sets up the
/// per-interpreter harness (the `harrow` module, `config.sys_path`, the event loop's wake pipe),
/// calls `ready`, runs `jobs` until [`Job::Shutdown`] (or every sender is gone) and every async
/// call has ended, rejects what is still queued, then stops the Python threads user code started
/// (within [`InterpConfig::thread_join_bound`]). Returns with the GIL held; what happens to the
/// interpreter then (ended, leaked) is the caller's.
///
/// A panic outside a call (a call's own panic fails only that call) unwinds out of here with
/// every `Python` object dropped and the thread state re-attached.
///
/// # Safety
/// The interpreter's owning thread, with its GIL held and its thread state current;
/// `shared.owner_ident` and `shared.interp` name this thread and interpreter; every other
/// thread touches the interpreter only through `shared` (cancel injection).
pub unsafe fn serve(
    shared: &Arc<Shared>,
    config: &InterpConfig,
    jobs: flume::Receiver<Job>,
    ready: impl FnOnce(),
) -> Served {
    // SAFETY: GIL of the interpreter held on its owning thread (caller).
    let setup = match unsafe { Setup::new(shared, config, &HOOKS) } {
        Ok(setup) => setup,
        Err(msg) => return Served::NotSetUp(msg),
    };
    ready();
    let server = Server {
        setup,
        shared: Arc::clone(shared),
        config: config.clone(),
        jobs,
        depth: Cell::new(0),
        stop: Cell::new(false),
        async_live: Cell::new(0),
        spin: RefCell::new(SpinGate::new()),
        follow: RefCell::new(SharedCpu::new()),
    };
    let guard = ServingGuard;
    SERVER.with(|s| s.set(&server as *const Server));
    crate::handle::set_serving_here(Some(Arc::clone(shared)));
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
        // A job already queued runs at once, the thread state staying attached (calls queued
        // back to back pay no GIL release and re-take between them). Otherwise, idle: release
        // the GIL while waiting (essential in legacy mode, where it is shared), unless nobody
        // else can want it (`keeps_gil_idle`).
        let job = match server.jobs.try_recv() {
            Ok(job) => Ok(job),
            Err(flume::TryRecvError::Disconnected) => Err(flume::RecvError::Disconnected),
            Err(flume::TryRecvError::Empty) => {
                // SAFETY: GIL held with the thread state current (both).
                let _released = if unsafe { server.keeps_gil_idle() } {
                    None
                } else {
                    // SAFETY: as above; no Python object is touched until the guard
                    // re-attaches the state.
                    Some(unsafe { Released::save() })
                };
                match server.drive_for_job() {
                    Some(job) => job,
                    None => {
                        // The next call often comes within microseconds (a caller in a loop):
                        // watch for it briefly before sleeping (see `harrow_ipc::park::spin`).
                        let spin = server.spin.borrow_mut().spin();
                        if !spin.is_zero() {
                            let jobs = &server.jobs;
                            if spin_until(spin, || !jobs.is_empty() || jobs.is_disconnected()) {
                                server.spin.borrow_mut().hit();
                            } else {
                                server.spin.borrow_mut().miss();
                            }
                        }
                        let slept_at = Instant::now();
                        let job = server.jobs.recv();
                        server.spin.borrow_mut().slept(slept_at.elapsed());
                        // On a crowded machine, follow a caller that keeps waking this thread
                        // from another CPU.
                        let from = server.shared.sent_from.load(Ordering::Relaxed);
                        server
                            .follow
                            .borrow_mut()
                            .after_slept((from != usize::MAX).then_some(from), crowded());
                        job
                    }
                }
            }
        };
        match job {
            Ok(Job::Call(call)) => {
                // SAFETY: GIL held on the owning thread.
                unsafe { server.run(call) }
            }
            Ok(Job::Panic(msg)) => panic!("{msg}"),
            Ok(Job::Shutdown) | Err(_) => break,
        }
    }
    drop(guard);
    let Server { setup, jobs, .. } = server;
    // Reject whatever is still queued: the replies' senders drop, their callers see "gone".
    drop(jobs);

    // SAFETY: GIL held on the owning thread, no user code running.
    let alive = unsafe { setup.stop_threads(shared, config) };
    if alive.is_empty() {
        // SAFETY: GIL held; a harness function of this interpreter.
        if unsafe { call0(&setup.harrow.before_end) }.is_err() {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
        }
    }
    drop(setup);
    if alive.is_empty() {
        Served::Done
    } else {
        Served::ThreadsAlive(alive)
    }
}

/// [`wait_released`] as the module's [`ServerHooks::wait`].
///
/// # Safety
/// As [`wait_released`].
unsafe fn wait_dyn(job: &JobState, shielded: bool, fut: Pin<&mut dyn Future<Output = ()>>) -> bool {
    // SAFETY: forwarded (caller).
    unsafe { wait_released(job, shielded, fut) }.is_some()
}

/// An async call's task ended: `state` 0 returned `value`, 1 cancelled, 2 raised `value`.
/// Sends its result.
///
/// # Safety
/// Owning thread, GIL held; `value` a valid object.
unsafe fn finish_async(call: &AsyncCall, state: std::ffi::c_long, value: *mut ffi::PyObject) {
    let server = SERVER.with(|s| s.get());
    // SAFETY: a non-null `SERVER` points to the `Server` in `serve`'s frame on this very
    // thread (cleared before it moves).
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
            let err = unsafe { setup.error(ErrorKind::Raised) };
            Err(crate::job::unless_cancelled(err, call.cancel_requested()))
        }
    };
    // SAFETY: owning thread, GIL held.
    let ends = unsafe {
        setup.settle(
            &server.shared,
            &server.config,
            ctx,
            &call.func,
            result,
            reply,
        )
    };
    if ends {
        server.stop.set(true);
    }
}

/// From the event loop (`_on_wake`): runs the calls queued for the actor, starting async ones
/// as tasks. Honours `Shutdown` (stops taking calls).
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn take_jobs() {
    let server = SERVER.with(|s| s.get());
    // SAFETY: a non-null `SERVER` points to the `Server` in `serve`'s frame on this very
    // thread (cleared before it moves).
    let Some(server) = (unsafe { server.as_ref() }) else {
        return;
    };
    while !server.stop.get() {
        match server.jobs.try_recv() {
            Ok(Job::Call(call)) => {
                // SAFETY: owning thread, GIL held.
                unsafe { server.run(call) }
            }
            Ok(Job::Panic(msg)) => panic!("{msg}"),
            Ok(Job::Shutdown) | Err(flume::TryRecvError::Disconnected) => server.stop.set(true),
            Err(flume::TryRecvError::Empty) => return,
        }
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
unsafe fn wait_released<T>(
    job: &JobState,
    shielded: bool,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let server = SERVER.with(|s| s.get());
    // SAFETY: a non-null `SERVER` points to the `Server` in `serve`'s frame on this very
    // thread, which outlives every call it runs (the pointer is cleared before it moves).
    let server = unsafe { server.as_ref() };
    if let Some(s) = server {
        // `fut` (a `ctx` or stream operation) needs the actor's tasks: they run on the actor's
        // thread while this one waits.
        s.shared.codriver_away();
    }
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
    /// Whether this thread keeps its interpreter's GIL while it waits for the next job,
    /// sparing every call that finds it idle a release and a re-take (about 500 instructions
    /// and a mutex and a condition variable in CPython): only when nobody else can want that
    /// GIL. That is, the interpreter has a GIL of its own (not legacy mode, not the main
    /// interpreter, whose GIL other threads of the process may take) and this thread's state is
    /// its only one. A Python thread that a call started has its state in the interpreter's
    /// list before the call ends (CPython makes it in the starting thread), so the next wait
    /// releases the GIL for it; no other thread makes a state in a subinterpreter of harrow's.
    /// `HARROW_SUBINT_KEEP_GIL=0` turns this off.
    ///
    /// # Safety
    /// Owning thread, GIL held with its thread state current.
    unsafe fn keeps_gil_idle(&self) -> bool {
        if self.config.legacy || !keep_gil_allowed() {
            return false;
        }
        // The GIL is held with this thread's state current (caller), so the interpreter and
        // its list of thread states are alive; the list's writers here are the interpreter's
        // own threads, which hold its GIL to add or remove a state.
        // SAFETY: GIL held, a thread state current (above).
        let me = unsafe { ffi::PyThreadState_Get() };
        // SAFETY: `me` is this thread's live state.
        let interp = unsafe { ffi::PyThreadState_GetInterpreter(me) };
        // SAFETY: reading the main interpreter's pointer is always valid once initialised.
        if interp == unsafe { ffi::PyInterpreterState_Main() } {
            return false;
        }
        // SAFETY: GIL held: the list is not changing under us (above).
        let head = unsafe { ffi::PyInterpreterState_ThreadHead(interp) };
        // SAFETY: as above; `me` is in that list.
        head == me && unsafe { ffi::PyThreadState_Next(me) }.is_null()
    }

    /// Runs one call (see `Setup::run`) and does what it asks of this server.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn run(&self, call: CallJob) {
        // SAFETY: forwarded (caller).
        let ran = unsafe { self.setup.run(&self.shared, &self.config, call) };
        if ran.started_async {
            self.async_live.set(self.async_live.get() + 1);
        }
        if ran.stop_serving {
            self.stop.set(true);
        }
    }

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

    /// Idle, with the GIL released: runs the actor's tasks on this thread until a job is
    /// queued, when the actor has a co-driver (see `harrow_runtime_core::CoDriver`), so that a
    /// call comes straight from the task that received it. `None` when there is no co-driver
    /// or it stops driving (the actor's runtime ends): then wait as usual.
    fn drive_for_job(&self) -> Option<Result<Job, flume::RecvError>> {
        let co = self.shared.codriver()?;
        let jobs = &self.jobs;
        let (queued, maybe) = (&self.shared.job_queued, &self.shared.job_maybe);
        let mut got = None;
        {
            let take = || match jobs.try_recv() {
                Ok(job) => Some(Ok(job)),
                Err(flume::TryRecvError::Disconnected) => Some(Err(flume::RecvError::Disconnected)),
                Err(flume::TryRecvError::Empty) => None,
            };
            let next = std::pin::pin!(std::future::poll_fn(|cx| {
                // A flagged job is taken before anything is registered: the look that finds
                // one ends the wait. (Every look registers otherwise: a wake whose flag an
                // earlier look took may still be under way and take the registration, so an
                // unset flag does not say that the registration stands.)
                if maybe.load(Ordering::Acquire)
                    && maybe.swap(false, Ordering::AcqRel)
                    && let Some(job) = take()
                {
                    got = Some(job);
                    return std::task::Poll::Ready(());
                }
                // Registered before the look: a handle queues a job (or goes), sets `maybe`,
                // then wakes. Unset, no job came since the last look, or its wake is still to
                // come, or it came before a look that took a job: `serve` looks at the queue
                // after every job before it waits here again.
                queued.register(cx.waker());
                if !maybe.swap(false, Ordering::AcqRel) {
                    return std::task::Poll::Pending;
                }
                match take() {
                    Some(job) => {
                        got = Some(job);
                        std::task::Poll::Ready(())
                    }
                    None => std::task::Poll::Pending,
                }
            }));
            co.drive_until(next);
        }
        got
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
        unsafe { self.run(call) };
        self.depth.set(self.depth.get() - 1);
        *shared.current.lock() = current;
        shared.shield_depth.store(shield, Ordering::SeqCst);
        shared.in_user.store(in_user, Ordering::SeqCst);
    }
}
