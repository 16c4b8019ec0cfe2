//! An owned reference to a Python object of the current interpreter, and the "a Python error is
//! set" marker.

use std::ptr::NonNull;

use pyo3_ffi as ffi;

/// A Python exception is set on this thread (fetch it with `PyErr_GetRaisedException`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PyErrSet;

/// Result of a Python C-API call.
pub(crate) type PyResult<T> = Result<T, PyErrSet>;

/// A strong reference to an object of the interpreter whose GIL this thread holds.
///
/// Deliberately `!Send` (it wraps a `NonNull`): an `Obj` never leaves the interpreter thread
/// that made it, and is always dropped there with that interpreter's GIL held, before the
/// interpreter ends.
pub(crate) struct Obj(NonNull<ffi::PyObject>);

impl Obj {
    /// Takes ownership of a new reference; null means a Python error is set.
    ///
    /// # Safety
    /// The caller holds the GIL of the interpreter owning `ptr`, and `ptr` is a new reference.
    pub(crate) unsafe fn owned(ptr: *mut ffi::PyObject) -> PyResult<Obj> {
        NonNull::new(ptr).map(Obj).ok_or(PyErrSet)
    }

    /// Takes a new reference to a borrowed object; null means a Python error is set.
    ///
    /// # Safety
    /// The caller holds the GIL of the interpreter owning `ptr`, and `ptr` is valid or null.
    pub(crate) unsafe fn borrowed(ptr: *mut ffi::PyObject) -> PyResult<Obj> {
        let nn = NonNull::new(ptr).ok_or(PyErrSet)?;
        // SAFETY: `ptr` is a live object of this thread's current interpreter, GIL held (caller).
        unsafe { ffi::Py_INCREF(nn.as_ptr()) };
        Ok(Obj(nn))
    }

    /// The raw pointer (still owned by `self`).
    pub(crate) fn as_ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// Gives the reference away.
    pub(crate) fn into_ptr(self) -> *mut ffi::PyObject {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: an `Obj` only exists on its interpreter's thread while that thread holds the
        // interpreter's GIL (see the type's doc); the reference is owned.
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}

/// This thread's thread state, detached for a scope (`PyEval_SaveThread`): the GIL is released
/// until the guard drops, which re-attaches it (`PyEval_RestoreThread`) on every path, a panic
/// unwinding through the scope included, so no Python object is ever touched or dropped
/// without the thread state that owns it.
pub(crate) struct Released(*mut ffi::PyThreadState);

impl Released {
    /// Detaches the current thread state.
    ///
    /// # Safety
    /// A thread state is current on this thread (GIL held). Until the guard drops, nothing on
    /// this thread touches a Python object.
    pub(crate) unsafe fn save() -> Released {
        // SAFETY: a thread state is current (caller); it is kept for the guard's drop.
        Released(unsafe { ffi::PyEval_SaveThread() })
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        // SAFETY: `self.0` is the thread state `save` detached on this thread (the guard is
        // `!Send`), still alive: only its owning thread deletes it, and not while it is detached.
        unsafe { ffi::PyEval_RestoreThread(self.0) }
    }
}

/// The text of a panic payload (`"panicked: <message>"`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    harrow_runtime_core::panic_message(payload)
}

/// Runs the body of a C function that CPython calls (a method of the `harrow` module, a pending
/// call): a panic must never unwind into CPython (that aborts the process). A panic becomes a
/// Python `SystemError` naming `what` and the panic message, and the function returns
/// `on_panic` (its "an exception is set" value).
///
/// Every caller is such a C function, entered with its interpreter's GIL held.
pub(crate) fn guarded<T>(what: &str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = format!("harrow: {what} {}", panic_text(&*payload));
            tracing::error!("{msg}");
            let c = std::ffi::CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: reading the address of a builtin type object: always valid after init.
            let ty = unsafe { ffi::PyExc_SystemError };
            // SAFETY: GIL held (see above); `c` outlives the call, which copies it.
            unsafe { ffi::PyErr_SetString(ty, c.as_ptr()) };
            on_panic
        }
    }
}

/// [`guarded`] for a destructor CPython calls (a capsule's): a panic is logged and swallowed,
/// since a destructor cannot report an exception.
pub(crate) fn guarded_quiet(what: &str, body: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        tracing::error!("harrow: {what} {}", panic_text(&*payload));
    }
}

/// `f()`.
///
/// # Safety
/// GIL of `f`'s interpreter held.
pub(crate) unsafe fn call0(f: &Obj) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `f` is a valid object.
    let r = unsafe { ffi::PyObject_CallNoArgs(f.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(r) }
}

/// `f(a)`.
///
/// # Safety
/// GIL of `f`'s interpreter held; `a` valid.
pub(crate) unsafe fn call1(f: &Obj, a: *mut ffi::PyObject) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `f` and `a` are valid objects.
    let r = unsafe { ffi::PyObject_CallOneArg(f.as_ptr(), a) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(r) }
}

/// `f(a, b)`.
///
/// # Safety
/// GIL of `f`'s interpreter held; `a` and `b` valid.
pub(crate) unsafe fn call2(f: &Obj, a: *mut ffi::PyObject, b: *mut ffi::PyObject) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); valid objects; the variadic list ends with null.
    let r = unsafe {
        ffi::PyObject_CallFunctionObjArgs(f.as_ptr(), a, b, std::ptr::null_mut::<ffi::PyObject>())
    };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(r) }
}

/// `o.name`.
///
/// # Safety
/// GIL of `o`'s interpreter held; `o` valid.
pub(crate) unsafe fn getattr(o: *mut ffi::PyObject, name: &std::ffi::CStr) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); `o` valid; `name` NUL-terminated.
    let r = unsafe { ffi::PyObject_GetAttrString(o, name.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(r) }
}

/// Clears the set Python exception, if any.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn err_clear() {
    // SAFETY: GIL held (caller).
    unsafe { ffi::PyErr_Clear() }
}
