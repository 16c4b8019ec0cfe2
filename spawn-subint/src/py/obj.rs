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
