//! The per-interpreter `harrow` module: Python source run in the interpreter, plus C functions
//! created in that interpreter (`PyCFunction_NewEx` bound to a `PyCapsule` holding Rust state).
//! Nothing here is process-global except the immutable `PyMethodDef` tables (plain C data).

use std::ffi::{CStr, CString, c_int, c_long, c_void};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use harrow_ipc::{CallKind, Value};
use parking_lot::Mutex;
use pyo3_ffi as ffi;

use super::convert::{self, ConvError};
use super::obj::{Obj, PyErrSet, PyResult, err_clear, guarded, guarded_quiet};
use crate::host::{CallHost, StreamHost};
use crate::state::{JobState, Shared};

const HARROW_SRC: &CStr = {
    const SRC: &str = concat!(include_str!("harrow.py"), "\0");
    match CStr::from_bytes_with_nul(SRC.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("harrow.py contains a NUL byte"),
    }
};

/// `harrow.py` compiled by the Python this crate was built against, at build time (`build.rs`):
/// its bytecode's 4-byte magic number, then the code object in `marshal` format; empty when the
/// build could not run that Python. Compiling the module is most of building it (about 10 ms,
/// against well under 1 ms to load it), and a Python process child or a process's first subint
/// actor would otherwise pay that on every start.
static BUILT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/harrow_code.bin"));

/// `harrow.py` compiled and marshalled by the first interpreter of the process, when [`BUILT`]
/// cannot be used: plain bytes (no Python object), from which every later interpreter loads a
/// code object of its own instead of compiling the source again.
static HARROW_CODE: OnceLock<Box<[u8]>> = OnceLock::new();

/// The marshal format version written: 4 is what CPython 3.12 and 3.13 write themselves
/// (`marshal.version`); the bytes are read back only by this same libpython.
const MARSHAL_VERSION: c_int = 4;

/// The filename `harrow.py`'s code reports (its frames in tracebacks and stack dumps): the one
/// `PyRun_String` used to give it.
const HARROW_FILENAME: &CStr = c"<string>";

/// A new code object of `harrow.py` in the current interpreter: loaded from [`BUILT`] when it
/// was written for this libpython, else from [`HARROW_CODE`], else compiled (and then
/// marshalled into it, for the next interpreters).
///
/// # Safety
/// GIL held.
unsafe fn harrow_code() -> PyResult<Obj> {
    // SAFETY: GIL held (caller).
    if let Some(bytes) = unsafe { built_for_this_python(BUILT) } {
        // SAFETY: GIL held (caller); `bytes` were written by `marshal` of a Python with this
        // libpython's magic number.
        match unsafe { load_code(bytes) } {
            Ok(code) => return Ok(code),
            // Unreadable after all: compiled below instead.
            // SAFETY: GIL held.
            Err(_) => unsafe { err_clear() },
        }
    }
    if let Some(bytes) = HARROW_CODE.get() {
        // SAFETY: GIL held (caller); `bytes` is a marshalled code object written by this
        // libpython, alive for the process.
        return unsafe { load_code(bytes) };
    }
    // SAFETY: GIL held (caller); NUL-terminated source and filename.
    let code = unsafe {
        ffi::Py_CompileString(
            HARROW_SRC.as_ptr(),
            HARROW_FILENAME.as_ptr(),
            ffi::Py_file_input,
        )
    };
    // SAFETY: a new reference (or null with an error set).
    let code = unsafe { Obj::owned(code) }?;
    // SAFETY: GIL held; `code` is a code object.
    let data = unsafe { ffi::PyMarshal_WriteObjectToString(code.as_ptr(), MARSHAL_VERSION) };
    // SAFETY: a new reference (or null with an error set).
    match unsafe { Obj::owned(data) } {
        Ok(data) => {
            let mut ptr: *mut std::ffi::c_char = std::ptr::null_mut();
            let mut len: ffi::Py_ssize_t = 0;
            // SAFETY: GIL held; `data` is the `bytes` just made; `ptr`/`len` are locals.
            let ok = unsafe { ffi::PyBytes_AsStringAndSize(data.as_ptr(), &mut ptr, &mut len) };
            if ok == 0 && !ptr.is_null() && len > 0 {
                // SAFETY: `ptr` points to `len` bytes owned by `data`, alive here; copied out.
                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) };
                // Another interpreter may have filled it meanwhile: the same bytes either way.
                let _ = HARROW_CODE.set(bytes.into());
            } else {
                // SAFETY: GIL held.
                unsafe { err_clear() };
            }
        }
        // Not cached: the next interpreter compiles again. This one has its code.
        // SAFETY: GIL held.
        Err(_) => unsafe { err_clear() },
    }
    Ok(code)
}

/// A code object of the current interpreter read from `bytes` (`marshal` format).
///
/// # Safety
/// GIL held.
unsafe fn load_code(bytes: &[u8]) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `bytes` is alive for the call; the result belongs to the
    // current interpreter.
    let code = unsafe {
        ffi::PyMarshal_ReadObjectFromString(bytes.as_ptr().cast(), bytes.len() as ffi::Py_ssize_t)
    };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(code) }
}

/// The marshalled code in `built` (laid out as [`BUILT`] is) if it can stand for compiling
/// `harrow.py` here: its magic number is the running libpython's (bytecode and `marshal`
/// format agree within a magic number), and the interpreter runs at optimization level 0 (the
/// level it was compiled at; `Py_CompileString` would honour `-O`). `None` otherwise, with no
/// error left set.
///
/// # Safety
/// GIL held.
unsafe fn built_for_this_python(built: &[u8]) -> Option<&[u8]> {
    let (magic, code) = built.split_first_chunk::<4>()?;
    if code.is_empty() {
        return None;
    }
    // SAFETY: GIL held (caller); `importlib._bootstrap_external` is loaded by every
    // interpreter's initialization.
    let running = unsafe { ffi::PyImport_GetMagicNumber() };
    if running == -1 {
        // SAFETY: GIL held.
        unsafe { err_clear() };
        return None;
    }
    // SAFETY: GIL held (caller).
    let unoptimized = unsafe { optimization_level() } == Some(0);
    let same = u32::try_from(running).ok() == Some(u32::from_le_bytes(*magic));
    (same && unoptimized).then_some(code)
}

/// The interpreter's optimization level (`sys.flags.optimize`: 0, or 1 and 2 for `-O` and
/// `-OO`), or `None` (with no error left set) if it cannot be read.
///
/// # Safety
/// GIL held.
unsafe fn optimization_level() -> Option<c_long> {
    // SAFETY: GIL held (caller); a borrowed reference or null (no error set).
    let flags = unsafe { ffi::PySys_GetObject(c"flags".as_ptr()) };
    if flags.is_null() {
        return None;
    }
    // SAFETY: GIL held; `flags` is alive (borrowed from `sys`).
    let level = unsafe { ffi::PyObject_GetAttrString(flags, c"optimize".as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    let Ok(level) = (unsafe { Obj::owned(level) }) else {
        // SAFETY: GIL held.
        unsafe { err_clear() };
        return None;
    };
    // SAFETY: GIL held; `level` is alive.
    let n = unsafe { ffi::PyLong_AsLong(level.as_ptr()) };
    if n == -1 {
        // SAFETY: GIL held.
        unsafe { err_clear() };
        return None;
    }
    Some(n)
}

const SHARED_CAPSULE: &CStr = c"harrow._shared";
const ASYNC_CAPSULE: &CStr = c"harrow._async_call";
const CALL_CAPSULE: &CStr = c"harrow._call";

/// Immutable method tables: plain C data (names, flags, function pointers), no Python object,
/// so sharing them between interpreters is what CPython's own multi-phase modules do.
struct Defs([ffi::PyMethodDef; 11]);
// SAFETY: the table is never written after compile time; CPython only reads it.
unsafe impl Sync for Defs {}

static DEFS: Defs = Defs([
    ffi::PyMethodDef {
        ml_name: c"_native_shield_enter".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_shield_enter,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_shield_exit".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_shield_exit,
        },
        ml_flags: ffi::METH_O,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_checkpoint".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_checkpoint,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_sleep".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_sleep,
        },
        ml_flags: ffi::METH_O,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_op".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_op,
        },
        ml_flags: ffi::METH_VARARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_take_jobs".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_take_jobs,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_finish".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_finish,
        },
        ml_flags: ffi::METH_VARARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_call_cancelled".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_call_cancelled,
        },
        ml_flags: ffi::METH_O,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_nest".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: super::nest::native_nest,
        },
        ml_flags: ffi::METH_VARARGS,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_drain".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_drain,
        },
        ml_flags: ffi::METH_O,
        ml_doc: std::ptr::null(),
    },
    ffi::PyMethodDef {
        ml_name: c"_native_exit_called".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: native_exit_called,
        },
        ml_flags: ffi::METH_O,
        ml_doc: std::ptr::null(),
    },
]);

fn def(i: usize) -> *mut ffi::PyMethodDef {
    (&DEFS.0[i] as *const ffi::PyMethodDef).cast_mut()
}

/// What the `harrow` module needs from the thread serving the interpreter's calls. The module
/// owns this interface and the call server provides it (to [`HarrowModule::build`]), so that
/// the module depends on no server.
pub(crate) struct ServerHooks {
    /// Waits for the future with the interpreter's GIL released (the thread may serve the
    /// actor's other calls meanwhile); false when the call `job` was cancelled first (never while
    /// `shielded`: then only the future ends the wait).
    ///
    /// Safety: the interpreter's owning thread with its GIL held; the future touches no Python
    /// object.
    pub(crate) wait: unsafe fn(&JobState, bool, Pin<&mut dyn Future<Output = ()>>) -> bool,
    /// Runs (or starts, for async functions) the calls queued for the actor, from its event
    /// loop. Safety: the owning thread, GIL held.
    pub(crate) take_jobs: unsafe fn(),
    /// An async call's task ended: `state` 0 returned `value`, 1 cancelled, 2 raised `value`.
    /// Safety: the owning thread, GIL held, `value` a valid object.
    pub(crate) finish_async: unsafe fn(&AsyncCall, c_long, *mut ffi::PyObject),
}

/// [`ServerHooks::wait`] for a future with an output: `None` when the call was cancelled first.
///
/// # Safety
/// As [`ServerHooks::wait`].
pub(crate) unsafe fn wait_for<T>(
    hooks: &ServerHooks,
    job: &JobState,
    shielded: bool,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut out = None;
    let done = {
        let fut = std::pin::pin!(async { out = Some(fut.await) });
        // SAFETY: forwarded (caller).
        unsafe { (hooks.wait)(job, shielded, fut) }
    };
    if done { out } else { None }
}

/// The Rust state behind the module's native functions (their `self` capsule).
pub(crate) struct ModState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) hooks: &'static ServerHooks,
}

/// The `harrow` module of one interpreter and the harness functions taken from it.
pub(crate) struct HarrowModule {
    /// What the module's functions ask of the call server.
    pub(crate) hooks: &'static ServerHooks,
    pub(crate) module: Obj,
    pub(crate) context_cls: Obj,
    pub(crate) describe: Obj,
    pub(crate) format_exc: Obj,
    pub(crate) join_threads: Obj,
    pub(crate) live_threads: Obj,
    pub(crate) before_end: Obj,
    pub(crate) start_task: Obj,
    pub(crate) run_loop: Obj,
    pub(crate) agen_collect: Obj,
    pub(crate) agen_stream: Obj,
    /// `_frame_text(tb)`: the two lines of one traceback entry (see [`super::exc`]).
    pub(crate) frame_text: Obj,
}

impl HarrowModule {
    /// Builds the module in the current interpreter and registers it in `sys.modules`; stores
    /// the exception types the Rust side raises in `shared.types`.
    ///
    /// # Safety
    /// Runs on the interpreter's owning thread with its GIL held.
    pub(crate) unsafe fn build(
        shared: &Arc<Shared>,
        hooks: &'static ServerHooks,
    ) -> PyResult<HarrowModule> {
        // Every call below: GIL of this interpreter held (caller); all objects made here belong
        // to it, and every new reference is owned by an `Obj`.
        // SAFETY: GIL held; a new module object.
        let module = unsafe { ffi::PyModule_New(c"harrow".as_ptr()) };
        // SAFETY: a new reference (or null with an error set).
        let module = unsafe { Obj::owned(module) }?;
        // SAFETY: GIL held; `module` is a module. Borrowed: alive while `module` is.
        let dict = unsafe { ffi::PyModule_GetDict(module.as_ptr()) };
        if dict.is_null() {
            return Err(PyErrSet);
        }
        // SAFETY: GIL held with a frame-less thread state: the interpreter's builtins (borrowed).
        let builtins = unsafe { ffi::PyEval_GetBuiltins() };
        // SAFETY: GIL held; `dict` and `builtins` valid; the dict takes its own reference.
        if unsafe { ffi::PyDict_SetItemString(dict, c"__builtins__".as_ptr(), builtins) } != 0 {
            return Err(PyErrSet);
        }
        // One capsule holding the `ModState`, the `self` of the module's native functions.
        let boxed = Box::into_raw(Box::new(ModState {
            shared: Arc::clone(shared),
            hooks,
        }));
        // SAFETY: GIL held; the capsule owns `boxed`, freed by its destructor.
        let capsule = unsafe {
            ffi::PyCapsule_New(
                boxed.cast::<c_void>(),
                SHARED_CAPSULE.as_ptr(),
                Some(drop_shared_capsule),
            )
        };
        // SAFETY: a new reference (or null with an error set).
        let capsule = match unsafe { Obj::owned(capsule) } {
            Ok(c) => c,
            Err(e) => {
                // SAFETY: the capsule was not made: `boxed` is still ours.
                drop(unsafe { Box::from_raw(boxed) });
                return Err(e);
            }
        };
        for (i, name) in [
            (0, c"_native_shield_enter"),
            (1, c"_native_shield_exit"),
            (2, c"_native_checkpoint"),
            (3, c"_native_sleep"),
            (5, c"_native_take_jobs"),
            (6, c"_native_finish"),
            (7, c"_native_call_cancelled"),
            (8, c"_native_nest"),
            (9, c"_native_drain"),
            (10, c"_native_exit_called"),
        ] {
            // SAFETY: GIL held; a static method table entry and a live capsule as `self`.
            let f =
                unsafe { ffi::PyCFunction_NewEx(def(i), capsule.as_ptr(), std::ptr::null_mut()) };
            // SAFETY: a new reference (or null with an error set).
            let f = unsafe { Obj::owned(f) }?;
            // SAFETY: GIL held; `dict` and `f` valid; the dict takes its own reference.
            if unsafe { ffi::PyDict_SetItemString(dict, name.as_ptr(), f.as_ptr()) } != 0 {
                return Err(PyErrSet);
            }
        }
        // SAFETY: GIL held; NUL-terminated source; `dict` is the module's namespace.
        // SAFETY: GIL held.
        let code = unsafe { harrow_code() }?;
        // SAFETY: GIL held; `code` is a code object of this interpreter; `dict` is the module's
        // namespace.
        let ran = unsafe { ffi::PyEval_EvalCode(code.as_ptr(), dict, dict) };
        // SAFETY: a new reference (or null with an error set).
        let _ran = unsafe { Obj::owned(ran) }?;
        drop(code);
        // SAFETY: GIL held; this interpreter's `sys.modules` (borrowed).
        let modules = unsafe { ffi::PyImport_GetModuleDict() };
        // SAFETY: GIL held; both valid; the dict takes its own reference.
        if unsafe { ffi::PyDict_SetItemString(modules, c"harrow".as_ptr(), module.as_ptr()) } != 0 {
            return Err(PyErrSet);
        }
        let get = |name: &CStr| {
            // SAFETY: GIL held; `dict` valid; a borrowed item (or null).
            let item = unsafe { ffi::PyDict_GetItemString(dict, name.as_ptr()) };
            // SAFETY: GIL held; `item` is valid or null.
            unsafe { Obj::borrowed(item) }
        };
        let cancelled = get(c"Cancelled")?;
        let end_of_stream = get(c"EndOfStream")?;
        let harrow_error = get(c"HarrowError")?;
        let remote_error = get(c"_remote_error")?;
        let nursery_error = get(c"_nursery_error")?;
        shared
            .types
            .remote_error
            .store(remote_error.into_ptr().cast(), Ordering::SeqCst);
        shared
            .types
            .nursery_error
            .store(nursery_error.into_ptr().cast(), Ordering::SeqCst);
        shared
            .types
            .cancelled
            .store(cancelled.into_ptr().cast(), Ordering::SeqCst);
        shared
            .types
            .end_of_stream
            .store(end_of_stream.into_ptr().cast(), Ordering::SeqCst);
        shared
            .types
            .harrow_error
            .store(harrow_error.into_ptr().cast(), Ordering::SeqCst);
        Ok(HarrowModule {
            hooks,
            context_cls: get(c"Context")?,
            describe: get(c"_describe")?,
            format_exc: get(c"_format_exc")?,
            join_threads: get(c"_join_threads")?,
            live_threads: get(c"_live_threads")?,
            before_end: get(c"_before_end")?,
            start_task: get(c"_start_task")?,
            run_loop: get(c"_run_loop")?,
            agen_collect: get(c"_agen_collect")?,
            agen_stream: get(c"_agen_stream")?,
            frame_text: get(c"_frame_text")?,
            module,
        })
    }
}

/// Releases the type references stored in `shared.types`.
///
/// # Safety
/// Owning thread, GIL held, before the interpreter ends.
pub(crate) unsafe fn release_types(shared: &Shared) {
    for slot in [
        &shared.types.cancelled,
        &shared.types.end_of_stream,
        &shared.types.harrow_error,
        &shared.types.remote_error,
        &shared.types.nursery_error,
    ] {
        let p = slot.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: we stored an owned reference of this interpreter; GIL held (caller).
            unsafe { ffi::Py_DECREF(p.cast()) };
        }
    }
}

unsafe extern "C" fn drop_shared_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    guarded_quiet("harrow._shared capsule destructor", || unsafe {
        drop_shared_capsule_body(capsule)
    })
}

unsafe fn drop_shared_capsule_body(capsule: *mut ffi::PyObject) {
    // SAFETY: called by CPython with the capsule's interpreter's GIL held.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, SHARED_CAPSULE.as_ptr()) };
    if !p.is_null() {
        // SAFETY: the `Box<ModState>` made for this capsule name, freed once, here.
        drop(unsafe { Box::from_raw(p.cast::<ModState>()) });
    }
}

/// Raises the exception type stored in `slot` with `msg` (or with no args when `msg` is None).
///
/// # Safety
/// Owning thread of the interpreter whose types `shared` holds, GIL held.
pub(crate) unsafe fn raise(slot: &std::sync::atomic::AtomicPtr<c_void>, msg: Option<&str>) {
    let tp = slot.load(Ordering::SeqCst).cast::<ffi::PyObject>();
    // `tp` is a live type object of this interpreter (held by us until `release_types`), or
    // null, in which case we raise a builtin RuntimeError.
    let tp = if tp.is_null() {
        // SAFETY: reading the address of a builtin type object: always valid after init.
        unsafe { ffi::PyExc_RuntimeError }
    } else {
        tp
    };
    match msg {
        // SAFETY: GIL held (caller); `tp` is a live exception type.
        None => unsafe { ffi::PyErr_SetNone(tp) },
        Some(m) => {
            let c = CString::new(m.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: as above; `c` outlives the call, which copies it.
            unsafe { ffi::PyErr_SetString(tp, c.as_ptr()) };
        }
    }
}

/// Whether this thread is the interpreter's owning thread.
///
/// # Safety
/// Any thread.
pub(crate) unsafe fn on_owner(shared: &Shared) -> bool {
    // SAFETY: `PyThread_get_thread_ident` is callable from any thread.
    let me = unsafe { ffi::PyThread_get_thread_ident() } as u64;
    shared.owner_ident.load(Ordering::SeqCst) == me
}

/// Whether a cancel should be raised now on this thread.
fn cancel_due(shared: &Shared) -> bool {
    shared.in_user.load(Ordering::SeqCst)
        && shared.shield_depth.load(Ordering::SeqCst) == 0
        && shared.cancel_outstanding()
}

/// The `ModState` behind a native function's capsule.
///
/// # Safety
/// GIL held; `slf` is the capsule bound to these functions (it outlives the call).
pub(crate) unsafe fn state_from<'a>(slf: *mut ffi::PyObject) -> Option<&'a ModState> {
    // SAFETY: GIL held; a wrong object is a Python error, not UB.
    let p = unsafe { ffi::PyCapsule_GetPointer(slf, SHARED_CAPSULE.as_ptr()) };
    // SAFETY: the capsule holds a live `Box<ModState>`, freed only when the capsule dies,
    // which cannot happen while one of its functions runs.
    unsafe { p.cast::<ModState>().as_ref() }
}

/// The `Shared` behind a native function's capsule.
///
/// # Safety
/// As [`state_from`].
unsafe fn shared_from<'a>(slf: *mut ffi::PyObject) -> Option<&'a Shared> {
    // SAFETY: forwarded (caller).
    unsafe { state_from(slf) }.map(|s| &*s.shared)
}

unsafe extern "C" fn native_shield_enter(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded("harrow shield (enter)", std::ptr::null_mut(), || unsafe {
        native_shield_enter_body(slf, _args)
    })
}

unsafe fn native_shield_enter_body(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held.
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(shared) = (unsafe { shared_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: any thread.
    if unsafe { on_owner(shared) } {
        shared.shield_depth.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: GIL held.
    unsafe { none() }
}

unsafe extern "C" fn native_shield_exit(
    slf: *mut ffi::PyObject,
    clean: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded("harrow shield (exit)", std::ptr::null_mut(), || unsafe {
        native_shield_exit_body(slf, clean)
    })
}

unsafe fn native_shield_exit_body(
    slf: *mut ffi::PyObject,
    clean: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held.
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(shared) = (unsafe { shared_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: any thread.
    if unsafe { on_owner(shared) } {
        let _ = shared
            .shield_depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1));
        // Deliver the deferred cancel as the block exits (unless an exception already
        // propagates: the re-armed injection catches up with it).
        // SAFETY: reading the address of the `True` singleton.
        if clean == unsafe { ffi::Py_True() } && cancel_due(shared) {
            // SAFETY: owning thread, GIL held.
            unsafe { raise_cancelled(shared) };
            return std::ptr::null_mut();
        }
    }
    // SAFETY: GIL held.
    unsafe { none() }
}

unsafe extern "C" fn native_checkpoint(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded("harrow.checkpoint()", std::ptr::null_mut(), || unsafe {
        native_checkpoint_body(slf, _args)
    })
}

unsafe fn native_checkpoint_body(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held.
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(shared) = (unsafe { shared_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: any thread.
    if unsafe { on_owner(shared) } && (cancel_due(shared) || scope_due(shared)) {
        // SAFETY: owning thread, GIL held.
        unsafe { raise_cancelled(shared) };
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held.
    unsafe { none() }
}

/// Whether one of the running call's cancel scopes (a nursery block, a deadline) has fired,
/// outside a shield.
fn scope_due(shared: &Shared) -> bool {
    shared.in_user.load(Ordering::SeqCst)
        && shared.shield_depth.load(Ordering::SeqCst) == 0
        && shared
            .current
            .lock()
            .as_ref()
            .is_some_and(|j| j.scope_fired())
}

/// `_native_sleep(seconds)`: on the owning thread, inside a call, sleeps with the GIL released
/// (serving other calls of the actor meanwhile), raises `Cancelled` when the call is cancelled
/// first (unless shielded: a shielded sleep runs to its end) and returns True. Elsewhere (a
/// Python thread, no call running) returns False at once: `harrow.sleep` then sleeps in slices.
unsafe extern "C" fn native_sleep(
    slf: *mut ffi::PyObject,
    seconds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded("harrow.sleep()", std::ptr::null_mut(), || unsafe {
        native_sleep_body(slf, seconds)
    })
}

unsafe fn native_sleep_body(
    slf: *mut ffi::PyObject,
    seconds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held.
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(ModState { shared, hooks }) = (unsafe { state_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `seconds` is a valid object (METH_O).
    let secs = unsafe { ffi::PyFloat_AsDouble(seconds) };
    // SAFETY: GIL held.
    if secs == -1.0 && unsafe { convert::err_set() } {
        return std::ptr::null_mut();
    }
    let job = shared.current.lock().clone();
    // SAFETY: any thread.
    let Some(job) = job.filter(|_| unsafe { on_owner(shared) }) else {
        // SAFETY: GIL held; a new reference to False.
        return unsafe { ffi::PyBool_FromLong(0) };
    };
    let shielded = shared.shield_depth.load(Ordering::SeqCst) > 0;
    if !shielded && job.is_cancelled() {
        // SAFETY: owning thread, GIL held.
        unsafe { raise_cancelled(shared) };
        return std::ptr::null_mut();
    }
    // NaN and negative sleep 0; too long for a `Duration` sleeps until cancelled.
    let timer = match Duration::try_from_secs_f64(if secs > 0.0 { secs } else { 0.0 }) {
        Ok(d) => async_io::Timer::after(d),
        Err(_) => async_io::Timer::never(),
    };
    // A cancel scope of the call (a nursery block, a deadline) ends the sleep as a cancel does.
    let timer = async move {
        timer.await;
        Ok(())
    };
    // SAFETY: owning thread with the GIL held; the timer touches no Python object.
    match unsafe { super::nest::wait(hooks, &job, shielded, timer) } {
        // SAFETY: GIL held (re-taken); a new reference to True.
        Ok(()) => unsafe { ffi::PyBool_FromLong(1) },
        Err(_) => {
            // SAFETY: owning thread, GIL held.
            unsafe { raise_cancelled(shared) };
            std::ptr::null_mut()
        }
    }
}

/// Raises `harrow.Cancelled` in the running call, recording the delivery (so the injector gives
/// the cleanup it starts a grace before raising it again).
///
/// # Safety
/// GIL held, on a thread of the interpreter `shared` belongs to.
pub(crate) unsafe fn raise_cancelled(shared: &Shared) {
    if let Some(job) = shared.current.lock().as_ref() {
        job.mark_delivered();
    }
    // SAFETY: forwarded (caller).
    unsafe { raise(&shared.types.cancelled, None) };
}

pub(crate) unsafe fn none() -> *mut ffi::PyObject {
    // SAFETY: reading the address of the `None` singleton.
    let n = unsafe { ffi::Py_None() };
    // SAFETY: GIL held (caller); the new reference is returned.
    unsafe { ffi::Py_INCREF(n) };
    n
}

/// The Rust state behind one call's `ctx` (and its stream).
pub(crate) struct CallCtx {
    pub(crate) shared: Arc<Shared>,
    /// What waiting in a `ctx` operation asks of the call server.
    pub(crate) hooks: &'static ServerHooks,
    pub(crate) job: Arc<JobState>,
    /// Unary call or context.
    pub(crate) kind: harrow_ipc::CallKind,
    pub(crate) host: Option<Arc<dyn CallHost>>,
    pub(crate) stream: Mutex<Option<Box<dyn StreamHost>>>,
    pub(crate) started: AtomicBool,
    pub(crate) active: AtomicBool,
}

/// How a blocking host operation ended.
pub(crate) enum Blocked<T> {
    Done(T),
    Failed(String),
    Cancelled,
}

impl CallCtx {
    /// Runs `fut` to completion with this interpreter's GIL released, waking up early (outcome
    /// `Cancelled`) when the call is cancelled, unless a shield is active. Other calls of the
    /// actor may run nested meanwhile (see [`ServerHooks::wait`]).
    ///
    /// # Safety
    /// Owning thread with the GIL held (it is released and re-taken here). No `Obj` may be
    /// dropped by `fut`.
    pub(crate) unsafe fn block<T>(
        &self,
        fut: impl Future<Output = Result<T, String>>,
    ) -> Blocked<T> {
        let shielded = self.shared.shield_depth.load(Ordering::SeqCst) > 0;
        if !shielded && self.job.is_cancelled() {
            self.job.mark_delivered();
            return Blocked::Cancelled;
        }
        // SAFETY: forwarded (caller); `fut` touches no Python object.
        let outcome = match unsafe { wait_for(self.hooks, &self.job, shielded, fut) } {
            Some(Ok(v)) => Blocked::Done(v),
            // The operation failed because the call was cancelled (its stream ends with the
            // cancel): that is the cancel reaching Python, not a runtime failure.
            Some(Err(_)) if !shielded && self.host.as_ref().is_some_and(|h| h.is_cancelled()) => {
                self.job.cancel();
                Blocked::Cancelled
            }
            Some(Err(e)) => Blocked::Failed(e),
            None => Blocked::Cancelled,
        };
        if matches!(outcome, Blocked::Cancelled) {
            // The cancel reaches the code here: give its cleanup a moment before the injector
            // raises it again.
            self.job.mark_delivered();
        }
        outcome
    }

    /// The Python function has returned or raised (see [`CallHost::user_code_ended`]).
    pub(crate) fn user_code_ended(&self) {
        if let Some(host) = &self.host {
            host.user_code_ended();
        }
    }

    fn host(&self) -> Result<&Arc<dyn CallHost>, String> {
        self.host
            .as_ref()
            .ok_or_else(|| "ctx is only usable in a context call".to_owned())
    }

    /// `ctx.started(value)`.
    ///
    /// # Safety
    /// As [`block`](Self::block).
    pub(crate) unsafe fn started(&self, value: Value) -> Blocked<()> {
        let host = match self.host() {
            Ok(h) => Arc::clone(h),
            Err(e) => return Blocked::Failed(e),
        };
        if self.started.swap(true, Ordering::SeqCst) {
            return Blocked::Failed("started() was already called for this context".into());
        }
        // SAFETY: forwarded.
        unsafe { self.block(host.started(value)) }
    }

    /// `ctx.open_stream()`.
    ///
    /// # Safety
    /// As [`block`](Self::block).
    pub(crate) unsafe fn open_stream(&self) -> Blocked<()> {
        let host = match self.host() {
            Ok(h) => Arc::clone(h),
            Err(e) => return Blocked::Failed(e),
        };
        if self.stream.lock().is_some() {
            return Blocked::Failed("the stream of this context is already open".into());
        }
        // SAFETY: forwarded.
        match unsafe { self.block(host.open_stream()) } {
            Blocked::Done(s) => {
                *self.stream.lock() = Some(s);
                Blocked::Done(())
            }
            Blocked::Failed(e) => Blocked::Failed(e),
            Blocked::Cancelled => Blocked::Cancelled,
        }
    }

    /// A generator's item (`Some`) or its end (`None`) in a context call: starts the context
    /// (`started(None)`) and opens the stream if the code did not, then sends the item or
    /// closes the stream.
    ///
    /// # Safety
    /// As [`block`](Self::block).
    pub(crate) unsafe fn stream_item(&self, item: Option<Value>) -> Blocked<()> {
        if !self.started.load(Ordering::SeqCst) {
            // SAFETY: forwarded.
            match unsafe { self.started(Value::Null) } {
                Blocked::Done(()) => {}
                other => return other,
            }
        }
        if self.stream.lock().is_none() {
            // SAFETY: forwarded.
            match unsafe { self.open_stream() } {
                Blocked::Done(()) => {}
                other => return other,
            }
        }
        match item {
            // SAFETY: forwarded.
            Some(v) => unsafe { self.with_stream(|s| s.send(v)) },
            // SAFETY: forwarded.
            None => unsafe { self.with_stream(|s| s.close()) },
        }
    }

    /// Runs `f` on the open stream.
    ///
    /// # Safety
    /// As [`block`](Self::block).
    pub(crate) unsafe fn with_stream<T>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Box<dyn StreamHost>) -> crate::host::HostFuture<'a, T>,
    ) -> Blocked<T> {
        // Taken out for the operation: no lock is held while the thread waits and serves other
        // calls. An operation that ends by a panic loses the stream (the call then fails).
        let Some(mut stream) = self.stream.lock().take() else {
            return Blocked::Failed(
                "the stream is not open (call ctx.open_stream() first), or another operation \
                 on it is in progress"
                    .into(),
            );
        };
        // SAFETY: forwarded.
        let out = unsafe { self.block(f(&mut stream)) };
        *self.stream.lock() = Some(stream);
        out
    }
}

/// Makes the `ctx` object for one call: `harrow.Context(op)` with `op` a C function bound to a
/// capsule holding the call's `Arc<CallCtx>`.
///
/// # Safety
/// Owning thread, GIL held.
pub(crate) unsafe fn make_ctx(h: &HarrowModule, ctx: &Arc<CallCtx>) -> PyResult<Obj> {
    let boxed = Box::into_raw(Box::new(Arc::clone(ctx)));
    // SAFETY: GIL held (caller); the capsule owns `boxed`, freed by its destructor.
    let capsule = unsafe {
        ffi::PyCapsule_New(
            boxed.cast::<c_void>(),
            CALL_CAPSULE.as_ptr(),
            Some(drop_call_capsule),
        )
    };
    // SAFETY: a new reference (or null with an error set).
    let capsule = match unsafe { Obj::owned(capsule) } {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: the capsule was not made: `boxed` is still ours.
            drop(unsafe { Box::from_raw(boxed) });
            return Err(e);
        }
    };
    // SAFETY: GIL held; a static method table entry and a live capsule as `self`.
    let op = unsafe { ffi::PyCFunction_NewEx(def(4), capsule.as_ptr(), std::ptr::null_mut()) };
    // SAFETY: a new reference (or null with an error set).
    let op = unsafe { Obj::owned(op) }?;
    // SAFETY: GIL held; `harrow.Context` called with one valid argument.
    let c = unsafe { ffi::PyObject_CallOneArg(h.context_cls.as_ptr(), op.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(c) }
}

unsafe extern "C" fn drop_call_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    guarded_quiet("harrow._call capsule destructor", || unsafe {
        drop_call_capsule_body(capsule)
    })
}

unsafe fn drop_call_capsule_body(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls this with the GIL held.
    let p = unsafe { ffi::PyCapsule_GetPointer(capsule, CALL_CAPSULE.as_ptr()) };
    if !p.is_null() {
        // SAFETY: the `Box<Arc<CallCtx>>` made for this capsule name, freed once, here.
        drop(unsafe { Box::from_raw(p.cast::<Arc<CallCtx>>()) });
    }
}

const OP_STARTED: i64 = 0;
const OP_OPEN_STREAM: i64 = 1;
const OP_SEND: i64 = 2;
const OP_RECV: i64 = 3;
const OP_CLOSE: i64 = 4;
const OP_CANCELLED: i64 = 5;
/// Streams one item of an async generator served in a context call (starting the context and
/// opening the stream first when needed).
const OP_YIELD: i64 = 6;
/// Ends an async generator's stream (starting and opening first when needed).
const OP_END: i64 = 7;

unsafe extern "C" fn native_op(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and the arguments
    // its `PyMethodDef` flags promise; a panic in the body becomes a Python exception.
    guarded("a ctx/stream operation", std::ptr::null_mut(), || unsafe {
        native_op_body(slf, args)
    })
}

/// Raises `slot`'s exception type with `msg` and returns null (the C-API error return).
///
/// # Safety
/// As [`raise`].
unsafe fn fail(slot: &std::sync::atomic::AtomicPtr<c_void>, msg: &str) -> *mut ffi::PyObject {
    // SAFETY: forwarded.
    unsafe { raise(slot, Some(msg)) };
    std::ptr::null_mut()
}

unsafe fn native_op_body(slf: *mut ffi::PyObject, args: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // Called by CPython on a thread of this interpreter with its GIL held; `slf` is our call
    // capsule, `args` a tuple.
    // SAFETY: GIL held; a wrong object is a Python error, not UB.
    let p = unsafe { ffi::PyCapsule_GetPointer(slf, CALL_CAPSULE.as_ptr()) };
    // SAFETY: the capsule owns a live `Box<Arc<CallCtx>>` while one of its functions runs.
    let Some(ctx) = (unsafe { p.cast::<Arc<CallCtx>>().as_ref() }) else {
        return std::ptr::null_mut();
    };
    let ctx: &CallCtx = ctx;
    let shared = &*ctx.shared;
    let types = &shared.types;
    // SAFETY: GIL held; `args` is a tuple (METH_VARARGS).
    if unsafe { ffi::PyTuple_Size(args) } != 2 {
        // SAFETY: GIL held on a thread of this interpreter.
        return unsafe { fail(&types.harrow_error, "internal: _op takes (op, value)") };
    }
    // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
    let op = unsafe { ffi::PyTuple_GetItem(args, 0) };
    // SAFETY: GIL held; `op` valid.
    let op = unsafe { ffi::PyLong_AsLongLong(op) };
    // SAFETY: GIL held.
    if op == -1 && unsafe { convert::err_set() } {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; index in range; borrowed, kept alive by `args`.
    let arg = unsafe { ffi::PyTuple_GetItem(args, 1) };
    if op == OP_CANCELLED {
        let b = ctx.job.is_cancelled();
        // SAFETY: GIL held; a new reference to a bool.
        return unsafe { ffi::PyBool_FromLong(b as std::ffi::c_long) };
    }
    if !ctx.active.load(Ordering::SeqCst) {
        // SAFETY: GIL held on a thread of this interpreter.
        return unsafe {
            fail(
                &types.harrow_error,
                "this ctx belongs to a call that has ended",
            )
        };
    }
    // SAFETY: any thread.
    if !unsafe { on_owner(shared) } {
        let msg = "ctx and its stream can only be used on the thread running the call";
        // SAFETY: GIL held on a thread of this interpreter.
        return unsafe { fail(&types.harrow_error, msg) };
    }
    // While a call waits (GIL released), the thread serves the actor's other calls nested
    // on its stack; one of them must not use the waiting call's ctx (it would wait inside
    // the waiting call's own operation).
    // (No call current: an async call's task runs in the event loop.)
    let running = shared
        .current
        .lock()
        .as_ref()
        .is_none_or(|j| Arc::ptr_eq(j, &ctx.job));
    if !running {
        let msg = "this ctx belongs to a call that is waiting while another call of the actor \
                   runs; a call can only use its own ctx";
        // SAFETY: GIL held on the owning thread.
        return unsafe { fail(&types.harrow_error, msg) };
    }
    let value = if op == OP_STARTED || op == OP_SEND || op == OP_YIELD {
        // SAFETY: GIL held; `arg` valid.
        match unsafe { convert::to_value(arg) } {
            Ok(v) => v,
            Err(ConvError::Py(_)) => return std::ptr::null_mut(),
            Err(ConvError::Unsupported(m)) => {
                // SAFETY: GIL held.
                unsafe { raise_type_error(&m) };
                return std::ptr::null_mut();
            }
        }
    } else {
        Value::Null
    };
    // Every operation below: owning thread, GIL held (released and re-taken while it waits);
    // the host futures touch no Python object.
    let out: Blocked<Option<Value>> = match op {
        // SAFETY: see above.
        OP_STARTED => map_unit(unsafe { ctx.started(value) }),
        // SAFETY: see above.
        OP_OPEN_STREAM => map_unit(unsafe { ctx.open_stream() }),
        // SAFETY: see above.
        OP_SEND => map_unit(unsafe { ctx.with_stream(|s| s.send(value)) }),
        // SAFETY: see above.
        OP_CLOSE => map_unit(unsafe { ctx.with_stream(|s| s.close()) }),
        // SAFETY: see above.
        OP_YIELD => map_unit(unsafe { ctx.stream_item(Some(value)) }),
        // SAFETY: see above.
        OP_END => map_unit(unsafe { ctx.stream_item(None) }),
        // SAFETY: see above.
        OP_RECV => match unsafe { ctx.with_stream(|s| s.recv()) } {
            Blocked::Done(Some(v)) => Blocked::Done(Some(v)),
            // SAFETY: GIL held on the owning thread.
            Blocked::Done(None) => return unsafe { fail(&types.end_of_stream, "end of stream") },
            Blocked::Failed(e) => Blocked::Failed(e),
            Blocked::Cancelled => Blocked::Cancelled,
        },
        _ => Blocked::Failed(format!("internal: unknown op {op}")),
    };
    match out {
        // SAFETY: GIL held.
        Blocked::Done(None) => unsafe { none() },
        // SAFETY: GIL held.
        Blocked::Done(Some(v)) => match unsafe { convert::from_value(&v) } {
            Ok(o) => o.into_ptr(),
            Err(PyErrSet) => std::ptr::null_mut(),
        },
        // SAFETY: GIL held on the owning thread.
        Blocked::Failed(e) => unsafe { fail(&types.harrow_error, &e) },
        Blocked::Cancelled => {
            // SAFETY: GIL held on the owning thread.
            unsafe { raise(&types.cancelled, None) };
            std::ptr::null_mut()
        }
    }
}

fn map_unit(b: Blocked<()>) -> Blocked<Option<Value>> {
    match b {
        Blocked::Done(()) => Blocked::Done(None),
        Blocked::Failed(e) => Blocked::Failed(e),
        Blocked::Cancelled => Blocked::Cancelled,
    }
}

/// Raises `TypeError(msg)`.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn raise_type_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: reading the address of a builtin type object: always valid after init.
    let ty = unsafe { ffi::PyExc_TypeError };
    // SAFETY: GIL held (caller); `c` outlives the call, which copies it.
    unsafe { ffi::PyErr_SetString(ty, c.as_ptr()) };
}

unsafe extern "C" fn native_take_jobs(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held; a panic in the body
    // becomes a Python exception.
    guarded("taking queued calls", std::ptr::null_mut(), || unsafe {
        native_take_jobs_body(slf)
    })
}

/// `_native_take_jobs()`: from the event loop, runs (or starts, for async functions) the calls
/// queued for the actor. On the owning thread only.
unsafe fn native_take_jobs_body(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(state) = (unsafe { state_from(slf) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; reads the calling thread's identity.
    if unsafe { on_owner(&state.shared) } {
        // SAFETY: owning thread, GIL held.
        unsafe { (state.hooks.take_jobs)() };
    }
    // SAFETY: GIL held.
    unsafe { none() }
}

unsafe extern "C" fn native_finish(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held and a tuple of
    // arguments; a panic in the body becomes a Python exception.
    guarded("finishing an async call", std::ptr::null_mut(), || unsafe {
        native_finish_body(slf, args)
    })
}

/// `_native_finish(call, state, value)`: an async call's task ended (`state` 0: returned
/// `value`; 1: cancelled; 2: raised `value`); sends its result.
unsafe fn native_finish_body(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
    let Some(ModState {
        hooks: state_hooks, ..
    }) = (unsafe { state_from(slf) })
    else {
        return std::ptr::null_mut();
    };
    // SAFETY: GIL held; `args` is a tuple.
    if unsafe { ffi::PyTuple_Size(args) } != 3 {
        // SAFETY: GIL held.
        unsafe { raise_type_error("internal: _native_finish takes (call, state, value)") };
        return std::ptr::null_mut();
    }
    // SAFETY (the three): GIL held; indexes in range; borrowed, kept alive by `args`.
    // SAFETY: see above.
    let call = unsafe { ffi::PyTuple_GetItem(args, 0) };
    // SAFETY: see above.
    let state = unsafe { ffi::PyTuple_GetItem(args, 1) };
    // SAFETY: see above.
    let value = unsafe { ffi::PyTuple_GetItem(args, 2) };
    // SAFETY: GIL held; `state` is an object.
    let state = unsafe { ffi::PyLong_AsLong(state) };
    // SAFETY: GIL held.
    if state == -1 && unsafe { convert::err_set() } {
        return std::ptr::null_mut();
    }
    // SAFETY: GIL held; `call` is the capsule `start_async` made (checked by name).
    let Some(call) = (unsafe { async_call_from(call) }) else {
        return std::ptr::null_mut();
    };
    // SAFETY: owning thread (the loop runs there), GIL held; `value` is a valid object.
    unsafe { (state_hooks.finish_async)(call, state, value) };
    // SAFETY: GIL held.
    unsafe { none() }
}

/// `_native_exit_called(text)`: the harness's `os._exit` notes what was called
/// (`"os._exit(3)"`) before it raises `ActorExit`; the call that ran it fails and the actor
/// ends (see `Setup::settle`). The first note is kept.
unsafe extern "C" fn native_exit_called(
    slf: *mut ffi::PyObject,
    text: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held; a panic in the body
    // becomes a Python exception.
    guarded("noting os._exit", std::ptr::null_mut(), || {
        // SAFETY: GIL held; `slf` is the shared capsule bound to this function.
        let Some(shared) = (unsafe { shared_from(slf) }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: GIL held; `text` is an object (a `str`, else an error is set).
        let Ok(text) = (unsafe { convert::utf8(text) }) else {
            return std::ptr::null_mut();
        };
        let mut noted = shared.exit_called.lock();
        if noted.is_none() {
            *noted = Some(text);
        }
        drop(noted);
        shared.exit_seen.store(true, Ordering::Release);
        // SAFETY: GIL held.
        unsafe { none() }
    })
}

/// `_native_drain(fd)`: reads the non-blocking descriptor `fd` (the wake pipe's read end) until
/// it has nothing more, as a loop of `os.read` until `BlockingIOError` would, without raising
/// and catching that exception on every wake-up of the event loop (about 1 µs each); a short
/// read ends it. Other errors raise `OSError`.
unsafe extern "C" fn native_drain(
    _slf: *mut ffi::PyObject,
    fd: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held; a panic in the body
    // becomes a Python exception.
    guarded("draining the wake pipe", std::ptr::null_mut(), || {
        // SAFETY: GIL held; `fd` is an object (an int, else a `TypeError` is set).
        let n = unsafe { ffi::PyLong_AsLong(fd) };
        // SAFETY: GIL held.
        if n == -1 && unsafe { convert::err_set() } {
            return std::ptr::null_mut();
        }
        let Ok(fd) = c_int::try_from(n) else {
            // SAFETY: GIL held.
            unsafe { raise_type_error("_native_drain takes a file descriptor") };
            return std::ptr::null_mut();
        };
        let mut buf = [0_u8; 256];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, a local buffer.
            let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got > 0 {
                // A short read took all the pipe held: bytes written later make it readable
                // again for the loop (its selector is level-triggered), so no second `read`
                // to find it empty.
                if got.unsigned_abs() < buf.len() {
                    break;
                }
                continue;
            }
            if got == 0 {
                break;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => {
                    // SAFETY: a static CPython sets at init, only read.
                    let os_error = unsafe { ffi::PyExc_OSError };
                    // SAFETY: GIL held; `errno` is still the failed `read`'s.
                    unsafe { ffi::PyErr_SetFromErrno(os_error) };
                    return std::ptr::null_mut();
                }
            }
        }
        // SAFETY: GIL held.
        unsafe { none() }
    })
}

unsafe extern "C" fn native_call_cancelled(
    _slf: *mut ffi::PyObject,
    call: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this C function with its interpreter's GIL held; a panic in the body
    // becomes a Python exception.
    guarded("checking an async call", std::ptr::null_mut(), || {
        // SAFETY: GIL held; the capsule is checked by name.
        let Some(call) = (unsafe { async_call_from(call) }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: GIL held; a new reference to a bool.
        unsafe { ffi::PyBool_FromLong(std::ffi::c_long::from(call.cancel_requested())) }
    })
}

/// An async call running as a task of the interpreter's event loop (held by a capsule that the
/// task's done callback passes back to `_native_finish`).
pub(crate) struct AsyncCall {
    pub(crate) ctx: Arc<CallCtx>,
    pub(crate) kind: CallKind,
    pub(crate) func: String,
    /// Taken when the result is sent; still here if the task never ended (the capsule's
    /// destructor then drops it: the caller sees the interpreter gone).
    pub(crate) reply: Mutex<Option<crate::reply::ReplyTx>>,
}

impl AsyncCall {
    /// Whether the task should be cancelled: its call was, or the actor is shutting down.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.ctx.job.is_cancelled() || self.ctx.shared.closing.load(Ordering::SeqCst)
    }
}

unsafe extern "C" fn drop_async_capsule(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls a capsule destructor with the capsule's interpreter's GIL held.
    guarded_quiet("harrow._async_call capsule destructor", || {
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

/// Wraps `call` in a `harrow._async_call` capsule, which owns it from then on; gives it back
/// when the capsule could not be made (a Python error is then set).
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn async_capsule(call: AsyncCall) -> Result<Obj, Box<AsyncCall>> {
    let boxed = Box::into_raw(Box::new(call));
    // SAFETY: GIL held (caller); the capsule owns `boxed` (freed by its destructor).
    let capsule = unsafe {
        ffi::PyCapsule_New(
            boxed.cast(),
            ASYNC_CAPSULE.as_ptr(),
            Some(drop_async_capsule),
        )
    };
    // SAFETY: a new reference (or null with an error set).
    match unsafe { Obj::owned(capsule) } {
        Ok(c) => Ok(c),
        // SAFETY: the capsule was not made: `boxed` is still ours.
        Err(_) => Err(unsafe { Box::from_raw(boxed) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with the main interpreter's GIL held (Python initialised first if needed).
    fn with_main_gil<T>(f: impl FnOnce() -> T) -> T {
        crate::ensure_main().expect("the main interpreter starts");
        // SAFETY: the main interpreter is initialised and its GIL released (`ensure_main`).
        let state = unsafe { ffi::PyGILState_Ensure() };
        let out = f();
        // SAFETY: pairs the `PyGILState_Ensure` above, on this thread.
        unsafe { ffi::PyGILState_Release(state) };
        out
    }

    #[test]
    fn the_code_built_with_the_crate_is_the_sources_code() {
        with_main_gil(|| {
            // SAFETY: GIL held.
            let level = unsafe { optimization_level() };
            // SAFETY: GIL held.
            let built = unsafe { built_for_this_python(BUILT) };
            if level != Some(0) {
                assert!(built.is_none(), "used at optimization level {level:?}");
                return;
            }
            let built = built.expect(
                "build.rs compiled harrow.py with the Python this crate links (PYO3_PYTHON)",
            );
            // SAFETY: GIL held.
            let loaded = unsafe { load_code(built) }.expect("the built code loads");
            // SAFETY: GIL held; NUL-terminated source and filename.
            let compiled = unsafe {
                ffi::Py_CompileString(
                    HARROW_SRC.as_ptr(),
                    HARROW_FILENAME.as_ptr(),
                    ffi::Py_file_input,
                )
            };
            // SAFETY: a new reference (or null with an error set).
            let compiled = unsafe { Obj::owned(compiled) }.expect("harrow.py compiles");
            // SAFETY: GIL held; both objects alive.
            let same = unsafe {
                ffi::PyObject_RichCompareBool(loaded.as_ptr(), compiled.as_ptr(), ffi::Py_EQ)
            };
            assert_eq!(same, 1, "the built code object differs from the source's");
            // SAFETY: GIL held.
            let again = unsafe { harrow_code() }.expect("harrow_code");
            // SAFETY: GIL held; both objects alive.
            let same = unsafe {
                ffi::PyObject_RichCompareBool(again.as_ptr(), compiled.as_ptr(), ffi::Py_EQ)
            };
            assert_eq!(same, 1, "harrow_code differs from the source's code");
        });
    }

    #[test]
    fn code_built_for_another_python_is_not_used() {
        with_main_gil(|| {
            // SAFETY: GIL held.
            let running = unsafe { ffi::PyImport_GetMagicNumber() };
            assert_ne!(running, -1, "the running magic number");
            let magic = (running as u32).to_le_bytes();
            let other = (running as u32 ^ 0xffff).to_le_bytes();
            let code: &[u8] = &[0xe3, 0, 0];
            let with = |m: [u8; 4], code: &[u8]| [&m[..], code].concat();
            // SAFETY: GIL held.
            let used = |b: &[u8]| unsafe { built_for_this_python(b) }.is_some();
            assert!(!used(&[]), "an empty build");
            assert!(!used(&magic), "a magic number and no code");
            assert!(!used(&magic[..3]), "a cut magic number");
            assert!(!used(&with(other, code)), "another Python's magic number");
            // SAFETY: GIL held.
            if unsafe { optimization_level() } == Some(0) {
                assert!(used(&with(magic, code)), "this Python's magic number");
            }
            // SAFETY: GIL held.
            let error = unsafe { ffi::PyErr_Occurred() };
            assert!(error.is_null(), "no error left set");
        });
    }
}
