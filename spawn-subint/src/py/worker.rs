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
use super::obj::{Obj, PyErrSet, PyResult};
use crate::config::InterpConfig;
use crate::error::{Error, Result};
use crate::interp::{CallJob, Exit, Job, cancelled_error};
use crate::state::{self, JobState, Shared};

/// Runs one interpreter's whole life on the calling (fresh, dedicated) thread. Reports creation
/// success or failure on `ready`, serves `jobs` until `Job::Shutdown` (or every sender is gone),
/// then ends the interpreter here, or leaks it when ending it is unsafe (a Python thread is
/// still alive).
pub(crate) fn thread_main(
    shared: &Arc<Shared>,
    config: &InterpConfig,
    jobs: flume::Receiver<Job>,
    ready: flume::Sender<Result<()>>,
) -> Exit {
    let create_err = |message: String| Error::Create {
        actor: config.name.clone(),
        message,
    };
    // SAFETY: `gettid` has no preconditions.
    *shared.tid.lock() = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    // SAFETY: this thread is fresh (no thread state); `create` follows the lifecycle in the
    // module doc.
    let ts = match unsafe { create(config) } {
        Ok(ts) => ts,
        Err(msg) => {
            let _ = ready.send(Err(create_err(msg)));
            return Exit::Ended;
        }
    };
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
            let _ = ready.send(Err(create_err(msg)));
            return Exit::Ended;
        }
    };
    let _ = ready.send(Ok(()));

    let server = Server {
        setup: py,
        shared: Arc::clone(shared),
        config: config.clone(),
        jobs,
        depth: Cell::new(0),
        stop: Cell::new(false),
    };
    SERVER.with(|s| s.set(&server as *const Server));
    while !server.stop.get() {
        // Idle: release the GIL while waiting (essential in legacy mode, where it is shared).
        // SAFETY: GIL held with `ts` current; re-taken right after the wait.
        let job = unsafe {
            let saved = ffi::PyEval_SaveThread();
            let job = server.jobs.recv();
            ffi::PyEval_RestoreThread(saved);
            job
        };
        match job {
            Ok(Job::Call(call)) => {
                // SAFETY: GIL held on the owning thread.
                unsafe { server.setup.run(shared, config, call) }
            }
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
    let live = unsafe { py.stop_threads(shared, config) };
    drop(py);
    if live > 0 {
        // Ending now would join the thread forever or abort the process: leak instead.
        // SAFETY: GIL held; release it so Python threads (and, in legacy mode, everyone sharing
        // the GIL) can go on. The thread state stays alive: the interpreter is leaked.
        unsafe {
            module::release_types(shared);
            ffi::PyEval_SaveThread();
        }
        let reason = format!(
            "{live} Python thread(s) still alive after {:?}; the interpreter is leaked",
            config.thread_join_bound
        );
        tracing::warn!(actor = %config.name, "{reason}");
        return Exit::Leaked { reason };
    }
    // SAFETY: owning thread, GIL held, no Python frame, no other thread state.
    unsafe { end(shared, ts) };
    Exit::Ended
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
}

thread_local! {
    /// The `Server` of this interpreter thread (null on every other thread, and outside the
    /// serving loop).
    static SERVER: Cell<*const Server> = const { Cell::new(std::ptr::null()) };
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
        // SAFETY: GIL held with our thread state current (caller); re-taken right below. No
        // Python object is touched while it is released.
        let ts = unsafe { ffi::PyEval_SaveThread() };
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
        // SAFETY: see above.
        unsafe { ffi::PyEval_RestoreThread(ts) };
        match woke {
            Woke::Done(v) => return Some(v),
            Woke::Cancelled => return None,
            Woke::Job(Job::Call(call)) => {
                if let Some(s) = server {
                    // SAFETY: owning thread, GIL held.
                    unsafe { s.serve_nested(call) };
                }
            }
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
    let mut ts: *mut ffi::PyThreadState = std::ptr::null_mut();
    // SAFETY: see the function contract. Legacy mode: creating a shared-GIL interpreter needs
    // the main GIL held, so a temporary main-interpreter thread state takes it first; it is
    // deleted right after (swap back to it, clear, DeleteCurrent releases the GIL) and the new
    // interpreter's thread state re-takes the (shared) GIL.
    unsafe {
        if legacy {
            let tmp = ffi::PyThreadState_New(ffi::PyInterpreterState_Main());
            if tmp.is_null() {
                return Err("could not create a main-interpreter thread state".into());
            }
            ffi::PyEval_RestoreThread(tmp);
            let status = ffi::Py_NewInterpreterFromConfig(&mut ts, &cfg);
            let failed = ffi::PyStatus_Exception(status) != 0 || ts.is_null();
            if !failed {
                ffi::PyThreadState_Swap(tmp);
            }
            // `tmp` is current again in both cases (CPython restores it on failure).
            ffi::PyThreadState_Clear(tmp);
            ffi::PyThreadState_DeleteCurrent();
            if failed {
                return Err(status_message(&status));
            }
            ffi::PyEval_RestoreThread(ts);
        } else {
            let status = ffi::Py_NewInterpreterFromConfig(&mut ts, &cfg);
            if ffi::PyStatus_Exception(status) != 0 || ts.is_null() {
                return Err(status_message(&status));
            }
        }
    }
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
}

impl Setup {
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn new(shared: &Arc<Shared>, config: &InterpConfig) -> Result<Setup, String> {
        // SAFETY: GIL held (caller).
        unsafe {
            let harrow = HarrowModule::build(shared).map_err(|_| fetch_text())?;
            let path = ffi::PySys_GetObject(c"path".as_ptr()); // borrowed
            if path.is_null() || ffi::PyList_Check(path) == 0 {
                return Err("sys.path is not a list".into());
            }
            for (i, p) in config.sys_path.iter().enumerate() {
                let s = convert::str_obj(&p.to_string_lossy()).map_err(|_| fetch_text())?;
                if ffi::PyList_Insert(path, i as ffi::Py_ssize_t, s.as_ptr()) != 0 {
                    return Err(fetch_text());
                }
            }
            Ok(Setup { harrow })
        }
    }

    /// Runs one call and sends its result.
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
        let result = if job.is_cancelled() || shared.closing.load(Ordering::SeqCst) {
            Err(cancelled_error())
        } else {
            let ctx = Arc::new(CallCtx {
                shared: Arc::clone(shared),
                job: Arc::clone(&job),
                host,
                stream: Mutex::new(None),
                started: AtomicBool::new(false),
                active: AtomicBool::new(true),
            });
            // SAFETY: forwarded.
            let r = unsafe { self.call(shared, config, &ctx, &func, kind, args) };
            ctx.active.store(false, Ordering::SeqCst);
            // Drop the stream host while no Python runs (it may hold channel ends).
            ctx.stream.lock().take();
            r
        };
        shared.in_user.store(false, Ordering::SeqCst);
        job.set_done();
        *shared.current.lock() = None;
        // SAFETY: GIL held; a stray exception must not leak into the next call.
        unsafe {
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
            }
        }
        let _ = reply.send(result);
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
    ) -> Result<Value, CallError> {
        let module_name = func.module();
        if !config.exposes(module_name) {
            return Err(crate::interp::not_exposed(config, module_name));
        }
        // SAFETY: GIL held on the owning thread (caller); every object lives in an `Obj`
        // dropped before this function returns.
        unsafe {
            let cmod = CString::new(module_name).map_err(|_| bad_args("module name has NUL"))?;
            let m = user(shared, || {
                Obj::owned(ffi::PyImport_ImportModule(cmod.as_ptr()))
            });
            let m = m.map_err(|_| self.error(ErrorKind::NotFound))?;
            let cfn =
                CString::new(func.function()).map_err(|_| bad_args("function name has NUL"))?;
            let f = Obj::owned(ffi::PyObject_GetAttrString(m.as_ptr(), cfn.as_ptr())).map_err(
                |_| {
                    ffi::PyErr_Clear();
                    CallError::new(
                        ErrorKind::NotFound,
                        "NotFound",
                        format!(
                            "module {module_name:?} has no function {:?}",
                            func.function()
                        ),
                    )
                },
            )?;
            if ffi::PyCallable_Check(f.as_ptr()) == 0 {
                return Err(CallError::new(
                    ErrorKind::NotFound,
                    "NotFound",
                    format!("{func} is not callable"),
                ));
            }
            let (is_gen, wants_ctx) = self
                .describe(&f)
                .map_err(|_| self.error(ErrorKind::Raised))?;
            let pos = build_args(&args)?;
            let pos = if wants_ctx {
                let c = module::make_ctx(&self.harrow, ctx)
                    .map_err(|_| self.error(ErrorKind::Raised))?;
                prepend(&c, &pos).map_err(|_| self.error(ErrorKind::Raised))?
            } else {
                pos
            };

            // A plain or generator function in a context call gets an implicit started(None).
            if kind == CallKind::Context && !wants_ctx {
                blocked(ctx.started(Value::Null))?;
            }
            let ret = user(shared, || {
                Obj::owned(ffi::PyObject_Call(
                    f.as_ptr(),
                    pos.as_ptr(),
                    std::ptr::null_mut(),
                ))
            })
            .map_err(|_| self.error(ErrorKind::Raised))?;
            if is_gen {
                return self.drive_generator(shared, ctx, kind, ret);
            }
            drop(f);
            let value = self.result_value(&ret)?;
            if kind == CallKind::Context && !ctx.started.load(Ordering::SeqCst) {
                blocked(ctx.started(Value::Null))?;
            }
            Ok(value)
        }
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
        // SAFETY: GIL held (caller).
        unsafe {
            loop {
                let next = user(shared, || {
                    let p = ffi::PyIter_Next(gen_obj.as_ptr());
                    if p.is_null() {
                        if ffi::PyErr_Occurred().is_null() {
                            Ok(None)
                        } else {
                            Err(PyErrSet)
                        }
                    } else {
                        Obj::owned(p).map(Some)
                    }
                })
                .map_err(|_| self.error(ErrorKind::Raised))?;
                let Some(item) = next else { break };
                let value = self.result_value(&item)?;
                drop(item);
                match kind {
                    CallKind::Unary => items.push(value),
                    CallKind::Context => {
                        if !ctx.started.load(Ordering::SeqCst) {
                            blocked(ctx.started(Value::Null))?;
                        }
                        if ctx.stream.lock().is_none() {
                            blocked(ctx.open_stream())?;
                        }
                        blocked(ctx.with_stream(|s| s.send(value)))?;
                    }
                }
            }
            drop(gen_obj);
            match kind {
                CallKind::Unary => Ok(Value::List(items)),
                CallKind::Context => {
                    if !ctx.started.load(Ordering::SeqCst) {
                        blocked(ctx.started(Value::Null))?;
                    }
                    if ctx.stream.lock().is_none() {
                        blocked(ctx.open_stream())?;
                    }
                    blocked(ctx.with_stream(|s| s.close()))?;
                    Ok(Value::Null)
                }
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
        // SAFETY: GIL held (caller).
        unsafe {
            let t = Obj::owned(ffi::PyObject_CallOneArg(
                self.harrow.describe.as_ptr(),
                f.as_ptr(),
            ))?;
            let a = ffi::PyTuple_GetItem(t.as_ptr(), 0);
            let b = ffi::PyTuple_GetItem(t.as_ptr(), 1);
            if a.is_null() || b.is_null() {
                return Err(PyErrSet);
            }
            Ok((ffi::PyObject_IsTrue(a) == 1, ffi::PyObject_IsTrue(b) == 1))
        }
    }

    /// Turns the set Python exception into a `CallError` (kind `Cancelled` for
    /// `harrow.Cancelled`, else `default_kind`), with type, message and traceback.
    ///
    /// # Safety
    /// GIL held, an exception set (if none is, a generic error is returned).
    unsafe fn error(&self, default_kind: ErrorKind) -> CallError {
        // SAFETY: GIL held (caller).
        unsafe {
            let Ok(exc) = Obj::owned(ffi::PyErr_GetRaisedException()) else {
                return CallError::new(default_kind, "SystemError", "error without an exception");
            };
            let cancelled = module_type_is(exc.as_ptr(), &self.harrow, c"Cancelled");
            let mut kind = default_kind;
            if cancelled {
                kind = ErrorKind::Cancelled;
            } else if default_kind == ErrorKind::NotFound
                && ffi::PyErr_GivenExceptionMatches(exc.as_ptr(), ffi::PyExc_ModuleNotFoundError)
                    == 0
            {
                // An import that failed for another reason than a missing module.
                kind = ErrorKind::Raised;
            }
            let described = Obj::owned(ffi::PyObject_CallOneArg(
                self.harrow.format_exc.as_ptr(),
                exc.as_ptr(),
            ));
            let (name, msg, tb) = match described {
                Ok(t) => (
                    tuple_str(&t, 0).unwrap_or_else(|| "Exception".into()),
                    tuple_str(&t, 1).unwrap_or_default(),
                    tuple_str(&t, 2).unwrap_or_default(),
                ),
                Err(_) => {
                    ffi::PyErr_Clear();
                    (
                        convert::type_name(exc.as_ptr()),
                        String::new(),
                        String::new(),
                    )
                }
            };
            CallError::new(kind, name, msg).with_traceback(tb)
        }
    }

    /// Cancels and joins Python threads started by user code, within the bound. Returns how
    /// many thread states other than ours are still alive (non-zero: the interpreter must leak).
    ///
    /// # Safety
    /// Owning thread, GIL held, no user code running.
    unsafe fn stop_threads(&self, shared: &Shared, config: &InterpConfig) -> usize {
        let deadline = Instant::now() + config.thread_join_bound;
        // SAFETY: GIL held (caller).
        unsafe {
            loop {
                let others = count_other_tstates();
                if others == 0 {
                    return 0;
                }
                if Instant::now() >= deadline {
                    return others;
                }
                // Ask every threading.Thread to stop (async exception), then join a slice.
                if let Ok(list) =
                    Obj::owned(ffi::PyObject_CallNoArgs(self.harrow.live_threads.as_ptr()))
                {
                    let n = ffi::PyList_Size(list.as_ptr());
                    let cancelled: *mut ffi::PyObject =
                        shared.types.cancelled.load(Ordering::SeqCst).cast();
                    for i in 0..n {
                        let t = ffi::PyList_GetItem(list.as_ptr(), i);
                        let ident = Obj::owned(ffi::PyObject_GetAttrString(t, c"ident".as_ptr()));
                        if let Ok(ident) = ident {
                            let id = ffi::PyLong_AsUnsignedLong(ident.as_ptr());
                            if !cancelled.is_null()
                                && (id != std::ffi::c_ulong::MAX || ffi::PyErr_Occurred().is_null())
                            {
                                ffi::PyThreadState_SetAsyncExc(id as _, cancelled);
                            }
                        }
                        ffi::PyErr_Clear();
                    }
                } else {
                    ffi::PyErr_Clear();
                }
                let slice = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50))
                    .as_secs_f64();
                let t = Obj::owned(ffi::PyFloat_FromDouble(slice));
                if let Ok(t) = t {
                    let _ = Obj::owned(ffi::PyObject_CallOneArg(
                        self.harrow.join_threads.as_ptr(),
                        t.as_ptr(),
                    ));
                }
                ffi::PyErr_Clear();
                // Threads that ended may still be deleting their thread state: yield briefly.
                let saved = ffi::PyEval_SaveThread();
                std::thread::sleep(Duration::from_millis(1));
                ffi::PyEval_RestoreThread(saved);
            }
        }
    }
}

/// How many thread states of the current interpreter exist besides the current one.
///
/// # Safety
/// GIL held.
unsafe fn count_other_tstates() -> usize {
    // SAFETY: GIL held (caller); the thread-state list is read under the GIL.
    unsafe {
        let me = ffi::PyThreadState_Get();
        let interp = ffi::PyThreadState_GetInterpreter(me);
        let mut n = 0;
        let mut t = ffi::PyInterpreterState_ThreadHead(interp);
        while !t.is_null() {
            if t != me {
                n += 1;
            }
            t = ffi::PyThreadState_Next(t);
        }
        n
    }
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

/// Maps the call's `Value` to Python positional arguments: `Null` -> no argument, any other
/// value -> exactly one positional argument (a list stays one `list`, a map one `dict`), so a
/// Python function sees the same value a Rust function would. A function wanting several inputs
/// takes a list or a dict.
///
/// # Safety
/// GIL held.
unsafe fn build_args(args: &Value) -> Result<Obj, CallError> {
    let fetch_bad = || {
        // SAFETY: GIL held (caller), an exception is set.
        let text = unsafe { fetch_text() };
        bad_args(format!("arguments do not convert to Python: {text}"))
    };
    // SAFETY: GIL held (caller).
    unsafe {
        match args {
            Value::Null => Obj::owned(ffi::PyTuple_New(0)).map_err(|_| fetch_bad()),
            other => {
                let o = convert::from_value(other).map_err(|_| fetch_bad())?;
                let t = Obj::owned(ffi::PyTuple_New(1)).map_err(|_| fetch_bad())?;
                // Steals `o`'s reference.
                ffi::PyTuple_SetItem(t.as_ptr(), 0, o.into_ptr());
                Ok(t)
            }
        }
    }
}

/// `(first,) + rest`.
///
/// # Safety
/// GIL held.
unsafe fn prepend(first: &Obj, rest: &Obj) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `rest` is a tuple.
    unsafe {
        let n = ffi::PyTuple_Size(rest.as_ptr());
        let t = Obj::owned(ffi::PyTuple_New(n + 1))?;
        ffi::PyTuple_SetItem(t.as_ptr(), 0, Obj::borrowed(first.as_ptr())?.into_ptr());
        for i in 0..n {
            let item = Obj::borrowed(ffi::PyTuple_GetItem(rest.as_ptr(), i))?;
            ffi::PyTuple_SetItem(t.as_ptr(), i + 1, item.into_ptr());
        }
        Ok(t)
    }
}

/// Whether `exc` is an instance of `harrow.<name>`.
///
/// # Safety
/// GIL held.
unsafe fn module_type_is(exc: *mut ffi::PyObject, h: &HarrowModule, name: &CStr) -> bool {
    // SAFETY: GIL held (caller).
    unsafe {
        let tp = ffi::PyObject_GetAttrString(h.module.as_ptr(), name.as_ptr());
        let Ok(tp) = Obj::owned(tp) else {
            ffi::PyErr_Clear();
            return false;
        };
        ffi::PyErr_GivenExceptionMatches(exc, tp.as_ptr()) != 0
    }
}

/// The text of `tuple[i]` if it is a `str`.
///
/// # Safety
/// GIL held.
unsafe fn tuple_str(t: &Obj, i: ffi::Py_ssize_t) -> Option<String> {
    // SAFETY: GIL held (caller).
    unsafe {
        let item = ffi::PyTuple_GetItem(t.as_ptr(), i);
        if item.is_null() || ffi::PyUnicode_Check(item) == 0 {
            ffi::PyErr_Clear();
            return None;
        }
        convert::utf8(item).ok()
    }
}

/// Fetches and clears the set exception as `"Type: message"` text.
///
/// # Safety
/// GIL held.
unsafe fn fetch_text() -> String {
    // SAFETY: GIL held (caller).
    unsafe {
        let Ok(exc) = Obj::owned(ffi::PyErr_GetRaisedException()) else {
            return "unknown error".into();
        };
        let ty = convert::type_name(exc.as_ptr());
        let msg = Obj::owned(ffi::PyObject_Str(exc.as_ptr()))
            .ok()
            .and_then(|s| convert::utf8(s.as_ptr()).ok())
            .unwrap_or_default();
        ffi::PyErr_Clear();
        format!("{ty}: {msg}")
    }
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
