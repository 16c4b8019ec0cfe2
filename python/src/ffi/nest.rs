//! `_native_nest(op, target, arg)`: the one native entry point of a Python actor's nurseries,
//! portals, contexts, streams, cancel scopes and identity (`crate::nest` does the work on the
//! actor's runtime; this is the Python side of it).
//!
//! Handles (a nursery, a portal, a context, a stream) reach Python as capsules named
//! `harrow._handle`, each owning a `Box<nest::Handle>`; dropping one touches no Python object.

use std::ffi::{CStr, c_void};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use harrow_ipc::Value;
use pyo3_ffi as ffi;

use super::convert::{self, ConvError};
use super::module::{
    ModState, ServerHooks, async_call_from, none, on_owner, raise, raise_cancelled,
    raise_type_error, state_from, wait_for,
};
use super::obj::{Obj, PyErrSet, PyResult, guarded, guarded_quiet};
use crate::nest::{Fail, Handle, Op, OpFuture, Out, Scope, or_cancelled, remote_to_value};
use crate::state::{JobState, Shared};

/// Discovery operations from Python (`harrow.find_actor` and friends).
mod discover;

const HANDLE_CAPSULE: &CStr = c"harrow._handle";
const PENDING_CAPSULE: &CStr = c"harrow._pending";

/// How long a call whose nursery failed is left alone by the cancel injector while that failure
/// propagates out of it (a call that goes on running pure Python code after catching it is
/// interrupted again after this).
const OUTCOME_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// Pushes the cancel scope of a nursery's block (target: the nursery).
const PUSH_NURSERY: i64 = 100;
/// Pushes a deadline scope (arg: seconds).
const PUSH_DEADLINE: i64 = 101;
/// Pops the innermost scope -> whether it fired.
const POP_SCOPE: i64 = 102;
/// `[name, uid, backend, offered backends]` of this actor.
const IDENTITY: i64 = 103;
/// `[name, uid, backend, is_parent]` of a portal's peer (target: the portal).
const PEER: i64 = 104;
/// Whether a cancel from outside a scope just popped applies: the running call itself was
/// cancelled, or one of its scopes still open (an outer one) fired.
const OUTER_CANCELLED: i64 = 105;
/// The portal to this actor's parent, or None.
const PARENT: i64 = 106;
/// Polls a pending operation of an async call (target: its capsule) -> None while it runs,
/// `(outcome,)` once done; raises its failure.
const POLL: i64 = 107;
/// Abandons a pending operation of an async call (target: its capsule): its future, and so the
/// operation's task on the actor's executor, is dropped.
const ABANDON: i64 = 108;

pub(crate) unsafe extern "C" fn native_nest(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded(
        "a harrow actor operation",
        std::ptr::null_mut(),
        || unsafe { native_nest_body(slf, args) },
    )
}

/// Raises `harrow.HarrowError(msg)` and returns null.
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn harrow_error(shared: &Shared, msg: &str) -> *mut ffi::PyObject {
    // SAFETY: forwarded.
    unsafe { raise(&shared.types.harrow_error, Some(msg)) };
    std::ptr::null_mut()
}

unsafe fn native_nest_body(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held: every call below
    // relies on that.
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(ModState { shared, hooks }) = (unsafe { state_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `args` is a tuple (METH_VARARGS).
    let nargs = unsafe { ffi::PyTuple_Size(args) };
    if nargs != 3 && nargs != 4 {
        // SAFETY: GIL held.
        unsafe { raise_type_error("internal: _native_nest takes (op, target, arg[, call])") };
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
    let op = unsafe { ffi::PyTuple_GetItem(args, 0) };
    // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
    let target = unsafe { ffi::PyTuple_GetItem(args, 1) };
    // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
    let arg = unsafe { ffi::PyTuple_GetItem(args, 2) };
    // SAFETY: GIL held; `op` valid.
    let op = unsafe { ffi::PyLong_AsLongLong(op) };
    // SAFETY: GIL held.
    if op == -1 && unsafe { convert::err_set() } {
        return std::ptr::null_mut();
    }
    // SAFETY: any thread.
    if !unsafe { on_owner(shared) } {
        let msg = "harrow nurseries and portals can only be used on the thread running the call";
        // SAFETY: GIL held, on a thread of this interpreter.
        return unsafe { harrow_error(shared, msg) };
    }
    if op == POLL || op == ABANDON {
        // SAFETY: owning thread, GIL held; `target` valid.
        return unsafe { pending_op(shared, op, target) };
    }
    // An async call passes its own call (its task has no current call on this thread): the
    // operation is then started and handed back pending (see `pending_op`).
    let is_async = nargs == 4;
    let job = if is_async {
        // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
        let call = unsafe { ffi::PyTuple_GetItem(args, 3) };
        // SAFETY: GIL held; the capsule is checked by name (a Python error set if not one).
        let Some(call) = (unsafe { async_call_from(call) }) else {
            return std::ptr::null_mut();
        };
        if call.ctx.job.is_done() {
            let msg = "this async call has ended: its nurseries and portals are gone";
            // SAFETY: owning thread, GIL held.
            return unsafe { harrow_error(shared, msg) };
        }
        Some(Arc::clone(&call.ctx.job))
    } else {
        shared.current.lock().clone()
    };
    let Some(job) = job else {
        // No plain call runs: this is an `async def` call's task (the event loop runs), or
        // code outside any call.
        let msg = if shared
            .loop_running
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if crate::nest::discover::DiscOp::from_i64(op).is_some() {
                "discovery (find_actor, wait_for_actor, lookup_actor, query_actors, \
                 register_names) is usable in calls of plain def functions only, not in an \
                 async def call (nor in plain functions it calls)"
            } else {
                "in an async def function, harrow's nurseries and portals are used with \
                 `async with harrow.open_nursery()` and awaited operations (a plain `with` and \
                 blocking calls are for plain def functions)"
            }
        } else {
            "harrow nurseries, portals and current_actor() are usable only inside a call \
             served by a harrow actor (an async def function uses `async with \
             harrow.open_nursery()` and awaits the operations)"
        };
        // SAFETY: owning thread, GIL held.
        return unsafe { harrow_error(shared, msg) };
    };
    // SAFETY: GIL held; `target` valid (None or a handle capsule).
    let target = match unsafe { handle_from(target) } {
        Ok(t) => t,
        Err(PyErrSet) => return std::ptr::null_mut(),
    };
    match op {
        PUSH_NURSERY => {
            let Some(Handle::Nursery(n)) = &target else {
                // SAFETY: owning thread, GIL held.
                return unsafe {
                    harrow_error(shared, "internal: a nursery scope needs a nursery")
                };
            };
            job.push_scope(n.scope());
            // SAFETY: GIL held.
            return unsafe { none() };
        }
        PUSH_DEADLINE => {
            // SAFETY: GIL held; `arg` valid.
            let secs = unsafe { ffi::PyFloat_AsDouble(arg) };
            // SAFETY: GIL held.
            if secs == -1.0 && unsafe { convert::err_set() } {
                return std::ptr::null_mut();
            }
            if secs.is_nan() {
                // SAFETY: GIL held.
                unsafe { raise_type_error("a deadline must be a number of seconds, not NaN") };
                return std::ptr::null_mut();
            }
            job.push_scope(Scope::deadline(secs));
            // SAFETY: GIL held.
            return unsafe { none() };
        }
        POP_SCOPE => {
            let fired = job.pop_scope().unwrap_or(false);
            // SAFETY: GIL held; a new reference to a bool.
            return unsafe { ffi::PyBool_FromLong(std::ffi::c_long::from(fired)) };
        }
        OUTER_CANCELLED => {
            let c = job.is_cancelled() || job.scope_fired();
            // SAFETY: GIL held; a new reference to a bool.
            return unsafe { ffi::PyBool_FromLong(std::ffi::c_long::from(c)) };
        }
        PEER => {
            let Some(Handle::Portal(p)) = &target else {
                // SAFETY: owning thread, GIL held.
                return unsafe { harrow_error(shared, "internal: a peer needs a portal") };
            };
            let (name, uid, backend) = p.peer();
            let v = Value::List(vec![
                Value::Str(name),
                Value::Str(uid),
                Value::Str(backend),
                Value::Bool(p.is_parent()),
            ]);
            // SAFETY: GIL held.
            return unsafe { value_out(&v) };
        }
        _ => {}
    }
    let Some(env) = job.env() else {
        let msg = "harrow nurseries, portals and current_actor() are usable only inside a call \
                   served by a harrow actor (not in a bare interpreter)";
        // SAFETY: owning thread, GIL held.
        return unsafe { harrow_error(shared, msg) };
    };
    if op == IDENTITY {
        let me = env.identity();
        let offered = env.backend_names().into_iter().map(Value::Str).collect();
        let v = Value::List(vec![
            Value::Str(me.name),
            Value::Str(me.uid),
            Value::Str(me.backend),
            Value::List(offered),
        ]);
        // SAFETY: GIL held.
        return unsafe { value_out(&v) };
    }
    if op == PARENT {
        return match env.parent() {
            // SAFETY: GIL held.
            Some(h) => match unsafe { make_handle(h) } {
                Ok(o) => o.into_ptr(),
                Err(PyErrSet) => std::ptr::null_mut(),
            },
            // SAFETY: GIL held.
            None => unsafe { none() },
        };
    }
    if let Some(d) = crate::nest::discover::DiscOp::from_i64(op) {
        // SAFETY: owning thread, GIL held.
        return unsafe { discover::native_discover(shared, hooks, &job, &env, d, target, arg) };
    }
    let Some(op) = Op::from_i64(op) else {
        // SAFETY: owning thread, GIL held.
        return unsafe { harrow_error(shared, &format!("internal: unknown operation {op}")) };
    };
    // SAFETY: GIL held; `arg` valid.
    let value = match unsafe { convert::to_value(arg) } {
        Ok(v) => v,
        Err(ConvError::Py(_)) => return std::ptr::null_mut(),
        Err(ConvError::Unsupported(m)) => {
            // SAFETY: GIL held.
            unsafe { raise_type_error(&m) };
            return std::ptr::null_mut();
        }
    };
    let fut = match env.op(op, target.as_ref(), value) {
        Ok(f) => f,
        // SAFETY: owning thread, GIL held.
        Err(fail) => return unsafe { raise_fail(shared, fail) },
    };
    // Closing a nursery and cancelling an actor are bounded by the teardown ladder and must not
    // be abandoned halfway: they wait through a cancel.
    let shielded = shared.shield_depth.load(Ordering::SeqCst) > 0
        || matches!(op, Op::CloseNursery | Op::CancelActor | Op::CtxCancel);
    if is_async {
        // SAFETY: owning thread, GIL held.
        return unsafe { start_pending(shared, &job, shielded, fut) };
    }
    // SAFETY: owning thread, GIL held (released while waiting).
    let out = unsafe { wait(hooks, &job, shielded, fut) };
    if op == Op::CloseNursery && matches!(out, Err(Fail::Nursery(_))) {
        // The nursery's failures are the call's outcome now (as in Rust, a cancelled call whose
        // nursery failed answers the failures): no asynchronous cancel may replace the
        // exception while it propagates out of the call.
        job.hold_injection(OUTCOME_HOLD);
    }
    match out {
        // SAFETY: owning thread, GIL held.
        Ok(out) => unsafe { out_to_py(shared, out) },
        // SAFETY: owning thread, GIL held.
        Err(fail) => unsafe { raise_fail(shared, fail) },
    }
}

/// Waits for `fut` with the GIL released (serving the actor's other calls meanwhile); ends
/// early with `Fail::Cancelled` when the call is cancelled or one of its scopes fires (unless
/// `shielded`).
///
/// # Safety
/// Owning thread, GIL held.
pub(crate) unsafe fn wait<T>(
    hooks: &ServerHooks,
    job: &Arc<JobState>,
    shielded: bool,
    fut: impl std::future::Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    if !shielded && (job.is_cancelled() || job.scope_fired()) {
        job.mark_delivered();
        return Err(Fail::Cancelled);
    }
    let scopes = if shielded { Vec::new() } else { job.scopes() };
    let raced = or_cancelled(scopes, fut);
    // SAFETY: forwarded; the future touches no Python object.
    let out = match unsafe { wait_for(hooks, job, shielded, raced) } {
        Some(r) => r,
        None => Err(Fail::Cancelled),
    };
    if matches!(out, Err(Fail::Cancelled)) {
        job.mark_delivered();
    }
    out
}

/// The handle in capsule `o`, None for `None`.
///
/// # Safety
/// GIL held; `o` valid.
unsafe fn handle_from(o: *mut ffi::PyObject) -> PyResult<Option<Handle>> {
    // SAFETY: reading the address of the `None` singleton.
    if o == unsafe { ffi::Py_None() } {
        return Ok(None);
    }
    // SAFETY: GIL held; a wrong object is a Python error (ValueError), not UB.
    let p = unsafe { ffi::PyCapsule_GetPointer(o, HANDLE_CAPSULE.as_ptr()) };
    // SAFETY: the capsule owns a live `Box<Handle>` while it is alive (borrowed in `args`).
    match unsafe { p.cast::<Handle>().as_ref() } {
        Some(h) => Ok(Some(h.clone())),
        None => Err(PyErrSet),
    }
}

/// A capsule owning `h`.
///
/// # Safety
/// GIL held.
unsafe fn make_handle(h: Handle) -> PyResult<Obj> {
    let boxed = Box::into_raw(Box::new(h));
    // SAFETY: GIL held; the capsule owns `boxed`, freed by its destructor.
    let capsule = unsafe {
        ffi::PyCapsule_New(
            boxed.cast::<c_void>(),
            HANDLE_CAPSULE.as_ptr(),
            Some(drop_handle_capsule),
        )
    };
    // SAFETY: a new reference (or null with an error set).
    match unsafe { Obj::owned(capsule) } {
        Ok(c) => Ok(c),
        Err(e) => {
            // SAFETY: the capsule was not made: `boxed` is still ours.
            drop(unsafe { Box::from_raw(boxed) });
            Err(e)
        }
    }
}

unsafe extern "C" fn drop_handle_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    guarded_quiet("harrow._handle capsule destructor", || unsafe {
        drop_handle_capsule_body(capsule)
    })
}

unsafe fn drop_handle_capsule_body(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the GIL held.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, HANDLE_CAPSULE.as_ptr()) };
    if !p.is_null() {
        // SAFETY: the `Box<Handle>` made for this capsule name, freed once, here. Dropping a
        // handle touches no Python object.
        drop(unsafe { Box::from_raw(p.cast::<Handle>()) });
    }
}

/// `v` as a new Python object (null with an error set on failure).
///
/// # Safety
/// GIL held.
unsafe fn value_out(v: &Value) -> *mut ffi::PyObject {
    // SAFETY: forwarded.
    match unsafe { convert::from_value(v) } {
        Ok(o) => o.into_ptr(),
        Err(PyErrSet) => std::ptr::null_mut(),
    }
}

/// An operation's outcome as a new Python object.
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn out_to_py(shared: &Shared, out: Out) -> *mut ffi::PyObject {
    match out {
        // SAFETY: GIL held.
        Out::None => unsafe { none() },
        // SAFETY: GIL held.
        Out::Value(v) => unsafe { value_out(&v) },
        // SAFETY: GIL held.
        Out::Str(s) => unsafe { value_out(&Value::Str(s)) },
        // SAFETY: GIL held; a new reference to a bool.
        Out::Bool(b) => unsafe { ffi::PyBool_FromLong(std::ffi::c_long::from(b)) },
        // SAFETY: GIL held.
        Out::Handle(h) => match unsafe { make_handle(h) } {
            Ok(o) => o.into_ptr(),
            Err(PyErrSet) => std::ptr::null_mut(),
        },
        // SAFETY: GIL held.
        Out::Opened(h, v) => match unsafe { pair(h, &v) } {
            Ok(o) => o.into_ptr(),
            Err(PyErrSet) => std::ptr::null_mut(),
        },
        Out::End => {
            // SAFETY: owning thread, GIL held.
            unsafe { raise(&shared.types.end_of_stream, Some("end of stream")) };
            std::ptr::null_mut()
        }
    }
}

/// `(handle, value)` as a tuple.
///
/// # Safety
/// GIL held.
unsafe fn pair(h: Handle, v: &Value) -> PyResult<Obj> {
    // SAFETY: GIL held.
    let h = unsafe { make_handle(h) }?;
    // SAFETY: GIL held.
    let v = unsafe { convert::from_value(v) }?;
    // SAFETY: GIL held.
    let t = unsafe { ffi::PyTuple_New(2) };
    // SAFETY: a new tuple (or null with an error set).
    let t = unsafe { Obj::owned(t) }?;
    // SAFETY: GIL held; a fresh tuple of size 2; `SetItem` steals the references.
    unsafe { ffi::PyTuple_SetItem(t.as_ptr(), 0, h.into_ptr()) };
    // SAFETY: as above.
    unsafe { ffi::PyTuple_SetItem(t.as_ptr(), 1, v.into_ptr()) };
    Ok(t)
}

/// Raises `fail` as Python sees it and returns null.
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn raise_fail(shared: &Shared, fail: Fail) -> *mut ffi::PyObject {
    match fail {
        Fail::Cancelled => {
            // SAFETY: forwarded.
            unsafe { raise_cancelled(shared) };
        }
        Fail::Remote(r) => {
            // SAFETY: forwarded.
            unsafe { raise_made(shared, &shared.types.remote_error, &remote_to_value(&r)) };
        }
        Fail::Nursery(r) => {
            // SAFETY: forwarded.
            unsafe { raise_made(shared, &shared.types.nursery_error, &remote_to_value(&r)) };
        }
        Fail::Usage(m) | Fail::Runtime(m) => {
            // SAFETY: forwarded.
            unsafe { raise(&shared.types.harrow_error, Some(&m)) };
        }
    }
    std::ptr::null_mut()
}

/// Raises the exception that the harness function in `maker` makes of `v`.
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn raise_made(shared: &Shared, maker: &std::sync::atomic::AtomicPtr<c_void>, v: &Value) {
    let f = maker.load(Ordering::SeqCst).cast::<ffi::PyObject>();
    if f.is_null() {
        // SAFETY: forwarded.
        unsafe { raise(&shared.types.harrow_error, Some(&format!("{v:?}"))) };
        return;
    }
    // SAFETY: GIL held.
    let arg = match unsafe { convert::from_value(v) } {
        Ok(a) => a,
        Err(PyErrSet) => return,
    };
    // SAFETY: GIL held; `f` is a live function of this interpreter (held until release_types).
    let exc = unsafe { ffi::PyObject_CallOneArg(f, arg.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    if let Ok(exc) = unsafe { Obj::owned(exc) } {
        // SAFETY: GIL held; steals the reference to an exception instance.
        unsafe { ffi::PyErr_SetRaisedException(exc.into_ptr()) };
    }
}

// ---- async calls: operations awaited in the interpreter's event loop -------------------------
//
// An `async def` call cannot wait on the interpreter thread (that would stop the event loop and
// every other async call of the actor). Its operation is started the same way (a task on the
// actor's executor, see `ActorEnv::op`) and handed to Python as a `harrow._pending` capsule
// owning the operation's future. The event loop polls it on this thread whenever the loop's
// wake pipe is written, which is what the future's waker does: no second loop, no thread.

/// An operation of an async call, polled by the event loop until it ends.
struct Pending {
    job: Arc<JobState>,
    /// None once its outcome was taken, or it was abandoned.
    fut: Option<OpFuture>,
}

/// Wakes the interpreter's event loop (through its wake pipe) when a pending operation can
/// make progress: the loop then polls its pending operations.
struct LoopWaker(Arc<Shared>);

impl std::task::Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.0.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake();
    }
}

/// Starts waiting for `fut` in an async call: a `harrow._pending` capsule, or `Cancelled`
/// raised at once when the call or one of its scopes is already cancelled (unless `shielded`).
/// A scope of the call firing ends the operation with `Cancelled`, as in a plain call; the
/// call's own cancel is the event loop's (it cancels the call's task, which abandons this).
///
/// # Safety
/// Owning thread, GIL held.
unsafe fn start_pending(
    shared: &Shared,
    job: &Arc<JobState>,
    shielded: bool,
    fut: OpFuture,
) -> *mut ffi::PyObject {
    if !shielded && (job.is_cancelled() || job.scope_fired()) {
        job.mark_delivered();
        // SAFETY: forwarded.
        return unsafe { raise_fail(shared, Fail::Cancelled) };
    }
    let scopes = if shielded { Vec::new() } else { job.scopes() };
    let raced: OpFuture = Box::pin(or_cancelled(scopes, fut));
    let boxed = Box::into_raw(Box::new(Pending {
        job: Arc::clone(job),
        fut: Some(raced),
    }));
    // SAFETY: GIL held; the capsule owns `boxed`, freed by its destructor.
    let capsule = unsafe {
        ffi::PyCapsule_New(
            boxed.cast::<c_void>(),
            PENDING_CAPSULE.as_ptr(),
            Some(drop_pending_capsule),
        )
    };
    if capsule.is_null() {
        // SAFETY: the capsule was not made: `boxed` is still ours.
        drop(unsafe { Box::from_raw(boxed) });
    }
    capsule
}

unsafe extern "C" fn drop_pending_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    guarded_quiet("harrow._pending capsule destructor", || {
        // SAFETY: GIL held.
        let p = unsafe { ffi::PyCapsule_GetPointer(capsule, PENDING_CAPSULE.as_ptr()) };
        if !p.is_null() {
            // SAFETY: the `Box<Pending>` made for this capsule name, freed once, here. Dropping
            // its future touches no Python object.
            drop(unsafe { Box::from_raw(p.cast::<Pending>()) });
        }
    })
}

/// `POLL`/`ABANDON` of the pending operation in capsule `o`.
///
/// # Safety
/// Owning thread, GIL held; `o` valid.
unsafe fn pending_op(shared: &Arc<Shared>, op: i64, o: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; a wrong object is a Python error (ValueError), not UB.
    let p = unsafe { ffi::PyCapsule_GetPointer(o, PENDING_CAPSULE.as_ptr()) };
    // SAFETY: the capsule owns a live `Box<Pending>` while it is alive (borrowed in `args`);
    // only this thread, holding the GIL, reaches it, and nothing below re-enters Python while
    // the reference is used.
    let Some(pending) = (unsafe { p.cast::<Pending>().as_mut() }) else {
        return std::ptr::null_mut();
    };
    if op == ABANDON {
        pending.fut = None;
        // SAFETY: GIL held.
        return unsafe { none() };
    }
    let Some(fut) = pending.fut.as_mut() else {
        // SAFETY: owning thread, GIL held.
        return unsafe { harrow_error(shared, "internal: an ended operation was polled") };
    };
    let waker = std::task::Waker::from(Arc::new(LoopWaker(Arc::clone(shared))));
    let mut cx = std::task::Context::from_waker(&waker);
    let out = match fut.as_mut().poll(&mut cx) {
        // SAFETY: GIL held.
        std::task::Poll::Pending => return unsafe { none() },
        std::task::Poll::Ready(out) => out,
    };
    pending.fut = None;
    let out = match out {
        Ok(out) => out,
        Err(fail) => {
            if matches!(fail, Fail::Cancelled) {
                pending.job.mark_delivered();
            }
            // SAFETY: owning thread, GIL held.
            return unsafe { raise_fail(shared, fail) };
        }
    };
    // SAFETY: owning thread, GIL held.
    let o = unsafe { out_to_py(shared, out) };
    // SAFETY: a new reference (or null with an error set).
    let Ok(o) = (unsafe { Obj::owned(o) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held.
    let t = unsafe { ffi::PyTuple_New(1) };
    // SAFETY: a new tuple (or null with an error set).
    let Ok(t) = (unsafe { Obj::owned(t) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; a fresh tuple of size 1; `SetItem` steals the reference.
    unsafe { ffi::PyTuple_SetItem(t.as_ptr(), 0, o.into_ptr()) };
    t.into_ptr()
}
