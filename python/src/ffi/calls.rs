//! Running one call in the interpreter: importing the function, converting its arguments,
//! calling it (plain, generator, context, async), converting its result or exception, and
//! settling it (`os._exit`, the reply).

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;
use parking_lot::Mutex;
use pyo3_ffi as ffi;

use super::convert::{self, ConvError, fetch_text};
use super::exc::Described;
use super::harness::Setup;
use super::module::{self, AsyncCall, Blocked, CallCtx, HarrowModule};
use super::obj::{Obj, PyErrSet, PyResult, call1, call2, err_clear, getattr, panic_text};
use crate::config::InterpConfig;
use crate::job::{CallJob, cancelled_error, not_exposed};
use crate::reply::ReplyTx;
use crate::state::Shared;

/// What running (or settling) a call asks of the thread serving the interpreter.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ran {
    /// The call was started as a task of the event loop (its result comes when it ends).
    pub(crate) started_async: bool,
    /// `os._exit` was called: serve no more calls (the actor ends).
    pub(crate) stop_serving: bool,
}

/// How a call's function ran.
enum Outcome {
    /// It returned (a plain function, or a generator driven to its end).
    Value(Value),
    /// It is async: this awaitable (a coroutine, or the driver of an async generator) is to run
    /// as a task of the interpreter's event loop.
    Async(Obj),
}

impl Setup {
    /// Runs one call and sends its result; an async function's call is started as a task of
    /// the interpreter's event loop instead (its result is sent when the task ends). Says what
    /// the serving thread must do next.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    pub(crate) unsafe fn run(
        &self,
        shared: &Arc<Shared>,
        config: &InterpConfig,
        call: CallJob,
    ) -> Ran {
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
            hooks: self.harrow.hooks,
            job: Arc::clone(&job),
            kind,
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
            Err(e) => Err(crate::job::unless_cancelled(
                e,
                job.is_cancelled() || shared.closing.load(Ordering::SeqCst),
            )),
            Ok(Outcome::Async(aw)) => {
                let call = AsyncCall {
                    ctx,
                    kind,
                    func: func.to_string(),
                    reply: Mutex::new(Some(reply)),
                };
                // SAFETY: owning thread, GIL held.
                let started_async = unsafe { self.start_async(call, aw) };
                return Ran {
                    started_async,
                    stop_serving: false,
                };
            }
        };
        // SAFETY: owning thread, GIL held.
        let stop_serving = unsafe { self.settle(shared, config, &ctx, &func, result, reply) };
        Ran {
            started_async: false,
            stop_serving,
        }
    }

    /// The end of every call, plain or async: the ctx is retired, `os._exit` is honoured, the
    /// result is sent. True when the actor ends (`os._exit`): the thread serves no more calls.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    pub(crate) unsafe fn settle(
        &self,
        shared: &Shared,
        config: &InterpConfig,
        ctx: &CallCtx,
        func: &dyn std::fmt::Display,
        result: Result<Value, CallError>,
        reply: ReplyTx,
    ) -> bool {
        ctx.active.store(false, Ordering::SeqCst);
        // Drop the stream host while no Python runs (it may hold channel ends).
        ctx.stream.lock().take();
        ctx.job.set_done();
        // A stray exception must not leak into the next call.
        // SAFETY: GIL held.
        unsafe { err_clear() };
        // The first call to end after `os._exit` was called is the one that called it (or ran
        // the code that did); the others keep their own outcome.
        let exit =
            if shared.exit_seen.load(Ordering::Acquire) && shared.exit_reason.lock().is_none() {
                shared.exit_called.lock().clone()
            } else {
                None
            };
        let ends = exit.is_some();
        let result = match exit {
            None => result,
            Some(what) => {
                // The call fails even if its code swallowed `ActorExit`; the actor ends.
                let reason = format!("{what} was called in {func}: the actor ended");
                tracing::warn!(actor = %config.name, "{reason}");
                *shared.exit_reason.lock() = Some(reason);
                shared.closing.store(true, Ordering::SeqCst);
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
        // A unary call's answer goes to its caller from here when the host can send it (one
        // hand-off less: not through the runtime thread); its future then only ends (woken by
        // the closed reply slot, after the caller was). Not the call that ended the actor: its
        // future must see its end, to end the actor after answering (`PyResolver`).
        let result = match &ctx.host {
            Some(host) if ctx.kind == CallKind::Unary && !ends => match host.answer_now(result) {
                Ok(()) => {
                    reply.answered_elsewhere();
                    return ends;
                }
                Err(result) => result,
            },
            _ => result,
        };
        reply.send(result);
        ends
    }

    /// Starts `aw` (an awaitable) as a task of the interpreter's event loop for `call`. True
    /// when the task was started (its call is then alive until the task ends).
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn start_async(&self, call: AsyncCall, aw: Obj) -> bool {
        let shared = Arc::clone(&call.ctx.shared);
        // SAFETY: GIL held (caller).
        let capsule = match unsafe { module::async_capsule(call) } {
            Ok(c) => c,
            Err(call) => {
                // SAFETY: GIL held, an exception is set.
                let err = unsafe { self.error(ErrorKind::Raised) };
                self.fail_async(&call, err);
                return false;
            }
        };
        // SAFETY: GIL held; a harness function of this interpreter, valid arguments.
        let started = unsafe { call2(&self.harrow.start_task, capsule.as_ptr(), aw.as_ptr()) };
        let ok = match started {
            Ok(_) => true,
            Err(_) => {
                // SAFETY: GIL held, an exception is set.
                let err = unsafe { self.error(ErrorKind::Raised) };
                // SAFETY: the capsule is alive (we hold it) and holds an `AsyncCall`.
                if let Some(call) = unsafe { module::async_call_from(capsule.as_ptr()) } {
                    self.fail_async(call, err);
                }
                false
            }
        };
        drop(shared);
        ok
    }

    /// Sends `err` as the result of an async call that could not be started.
    fn fail_async(&self, call: &AsyncCall, err: CallError) {
        call.ctx.active.store(false, Ordering::SeqCst);
        call.ctx.job.set_done();
        if let Some(reply) = call.reply.lock().take() {
            reply.send(Err(err));
        }
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
        if crate::job::is_batch_runner(func) {
            if kind != CallKind::Unary {
                return Err(bad_args(format!("{func} is a plain (unary) function")));
            }
            // SAFETY: forwarded (caller).
            let v = unsafe { self.run_batch(shared, config, ctx, args) }?;
            return Ok(Outcome::Value(v));
        }
        let module_name = func.module();
        if !config.exposes(module_name) {
            return Err(not_exposed(config, module_name));
        }
        // Every call below: GIL held on the owning thread (caller); every object lives in an
        // `Obj` dropped before this function returns.
        // SAFETY: see above.
        let resolved = unsafe { self.resolve(shared, func) }?;
        let (f, is_gen, wants_ctx) = (resolved.func, resolved.is_gen, resolved.wants_ctx);
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
                CallKind::Context => match unsafe { ctx.stream_item(Some(value)) } {
                    Blocked::Done(()) => {}
                    // The stream cannot go on: the generator is closed here, in the call (its
                    // `finally` runs now, not whenever it is collected), and a failure of that
                    // cleanup is the call's answer. Otherwise, when the caller stopped
                    // reading, the call returns as when it ends; else it ends with what
                    // stopped the stream (its cancel, a broken link).
                    other => {
                        let closed = user(shared, || {
                            // SAFETY: see above; `close` takes no arguments.
                            let r = unsafe {
                                ffi::PyObject_CallMethod(
                                    gen_obj.as_ptr(),
                                    c"close".as_ptr(),
                                    std::ptr::null(),
                                )
                            };
                            // SAFETY: a new reference, or NULL with an exception set.
                            unsafe { Obj::owned(r) }.map(drop)
                        });
                        ctx.user_code_ended();
                        // SAFETY: see above; an exception is set.
                        closed.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
                        return match other {
                            Blocked::Failed(m) if m.starts_with(crate::host::NOT_READ) => {
                                Ok(Value::Null)
                            }
                            other => blocked(other).map(|()| Value::Null),
                        };
                    }
                },
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
    pub(crate) unsafe fn result_value(&self, o: &Obj) -> Result<Value, CallError> {
        // SAFETY: GIL held (caller).
        match unsafe { convert::to_value(o.as_ptr()) } {
            Ok(v) => Ok(v),
            Err(ConvError::Unsupported(m)) => Err(CallError::raised(
                "TypeError",
                format!("cannot send the returned value: {m}"),
            )),
            // SAFETY: GIL held, an exception is set.
            Err(ConvError::Py(_)) => Err(unsafe { self.conversion_error() }),
        }
    }

    /// [`error`](Self::error) for an exception raised while converting what a call returned
    /// or yielded (a `str` holding a lone surrogate, say): said as such, so that it does not
    /// read as the function's own failure.
    ///
    /// # Safety
    /// GIL held, an exception set.
    unsafe fn conversion_error(&self) -> CallError {
        // SAFETY: forwarded (caller).
        let err = unsafe { self.error(ErrorKind::Raised) };
        if err.kind() != ErrorKind::Raised {
            // A cancel that landed meanwhile, say: that is the outcome.
            return err;
        }
        // Only its type, message and traceback are kept: the source is set when it is sent.
        let e = err.into_remote(&harrow_ipc::ActorId::new("converting"));
        CallError::raised(
            e.type_name,
            format!("cannot send the returned value: {}", e.message),
        )
        .with_traceback(e.traceback)
    }

    /// `(is_generator_function, wants_ctx)`.
    ///
    /// # Safety
    /// GIL held.
    pub(super) unsafe fn describe(&self, f: &Obj) -> PyResult<(bool, bool)> {
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
    pub(crate) unsafe fn error(&self, default_kind: ErrorKind) -> CallError {
        // SAFETY: forwarded.
        unsafe { self.error_in(default_kind, None) }
    }

    /// [`error`](Self::error) for an exception raised while importing module `importing` (if
    /// set): `NotFound` only when that module itself (or its package) is missing; an error
    /// raised by the module's own code or imports is `Raised` and says so.
    ///
    /// # Safety
    /// As [`error`](Self::error).
    pub(super) unsafe fn error_in(
        &self,
        default_kind: ErrorKind,
        importing: Option<&str>,
    ) -> CallError {
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
        if !cancelled {
            // A `harrow.RemoteError` / `harrow.NurseryError` (or anything carrying
            // `_harrow_remote`): the call's answer is that wire error, relayed by this actor.
            // SAFETY: see above; `exc` valid.
            if let Some(r) = unsafe { self.exc.carried(&exc) } {
                // SAFETY: see above; `r` valid.
                if let Ok(v) = unsafe { convert::to_value(r.as_ptr()) }
                    && let Some(remote) = crate::nest::remote_from_value(v)
                {
                    return CallError::relay(remote);
                }
                // SAFETY: see above.
                unsafe { err_clear() };
            }
        }
        // SAFETY: see above; `exc` an exception of this interpreter.
        let Described {
            name,
            message: msg,
            traceback: tb,
        } = unsafe { self.exc.describe(&self.harrow, &exc, true) };
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
}

/// Runs `f` marked as user code (cancel injections may land).
pub(super) fn user<T>(shared: &Shared, f: impl FnOnce() -> T) -> T {
    shared.in_user.store(true, Ordering::SeqCst);
    let r = f();
    shared.in_user.store(false, Ordering::SeqCst);
    r
}

pub(crate) fn blocked<T>(b: Blocked<T>) -> Result<T, CallError> {
    match b {
        Blocked::Done(v) => Ok(v),
        Blocked::Failed(m) => Err(CallError::new(ErrorKind::Protocol, "HarrowError", m)),
        Blocked::Cancelled => Err(cancelled_error()),
    }
}

pub(super) fn bad_args(msg: impl Into<String>) -> CallError {
    CallError::new(ErrorKind::BadArguments, "BadArguments", msg)
}

/// Maps the call's `Value` to Python arguments: `Null` -> no argument, any other value ->
/// exactly one positional argument (a list stays one `list`, a map one `dict`), so a Python
/// function sees the same value a Rust function would; an encoded [`PyArgs`](crate::PyArgs) ->
/// its positional value (by the same rule) and its keyword arguments (the dict returned).
///
/// # Safety
/// GIL held.
pub(super) unsafe fn build_args(args: &Value) -> Result<(Obj, Option<Obj>), CallError> {
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
