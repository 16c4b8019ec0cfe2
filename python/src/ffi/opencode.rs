//! How CPython reads code files in a Python that harrow starts: an open-code hook
//! (`PyFile_SetOpenCodeHook`) that reads the whole file in Rust and hands importlib an
//! `io.BytesIO` of its bytes, so that no Python object ever holds a code file's descriptor.
//!
//! Why: importlib reads every module's `.py` or `.pyc` through `io.open_code`, which by default
//! returns a buffered reader over an open file, closed when the `with` block around its `read`
//! ends. An interpreter whose creation fails part-way (CPython 3.12 and 3.13 now and then fail a
//! creation with `Failed to import encodings module` while other interpreters of the process
//! start, run and end) is deleted without being finalized: its objects are abandoned, not freed.
//! When the failure came while `encodings/__init__.pyc` was open, that file's descriptor stayed
//! open for the rest of the process. With the hook the descriptor is closed before any Python
//! code runs, so an abandoned import leaks memory (as every ended interpreter does on these
//! versions) but never a descriptor.
//!
//! The hook is process-wide and can be set once, before Python starts; harrow sets it only when
//! it initialises Python itself, and leaves a host program's Python alone. What `io.open_code`
//! returns is then an `io.BytesIO` whose `name` is the path: it reads, seeks and works in a
//! `with` block like the default reader, but has no `fileno()`. A file larger than
//! [`WHOLE_LIMIT`] (4 MiB) is opened as without the hook. The files the hook reads raise no
//! `open` audit event.

use std::ffi::{OsStr, c_int, c_void};
use std::os::unix::ffi::OsStrExt;

use pyo3_ffi as ffi;

use super::obj::{Obj, PyErrSet, PyResult, Released, call1, call2, getattr, guarded};

// Public C API (`Include/cpython/fileobject.h`), exported by libpython 3.8+; pyo3-ffi does not
// declare it. `Py_OpenCodeHookFunction` is `PyObject *(*)(PyObject *path, void *userData)`.
unsafe extern "C" {
    fn PyFile_SetOpenCodeHook(
        hook: unsafe extern "C" fn(*mut ffi::PyObject, *mut c_void) -> *mut ffi::PyObject,
        user_data: *mut c_void,
    ) -> c_int;
}

/// Sets the hook. Returns false if one was already set (by the host program, which then owns
/// how code files are read).
///
/// # Safety
/// Python is not initialised yet (CPython keeps a hook set before initialisation; setting one
/// later runs an audit hook, which needs a thread state).
pub(crate) unsafe fn install() -> bool {
    // SAFETY: Python is not initialised (caller); `open_code` is a `'static` function that
    // honours the hook's contract, and it ignores `user_data`.
    unsafe { PyFile_SetOpenCodeHook(open_code, std::ptr::null_mut()) == 0 }
}

/// The hook: CPython calls it for every `io.open_code(path)` (importlib's reads of `.py` and
/// `.pyc` files among them), on the calling thread with its interpreter's GIL held, `path` a
/// `str`. Returns a new reference, or null with an exception set.
unsafe extern "C" fn open_code(
    path: *mut ffi::PyObject,
    _user_data: *mut c_void,
) -> *mut ffi::PyObject {
    guarded("open_code hook", std::ptr::null_mut(), || {
        // SAFETY: the hook's contract (above).
        match unsafe { read_whole(path) } {
            Ok(f) => f.into_ptr(),
            Err(_) => std::ptr::null_mut(),
        }
    })
}

/// Files larger than this are opened as CPython would without the hook (`_io.open(path, "rb")`,
/// which holds a descriptor until closed): code files are far smaller, but `zipimport` opens a
/// whole archive through `io.open_code` for every module it reads from it.
pub(crate) const WHOLE_LIMIT: u64 = 4 << 20;

/// Reads the file at `path` whole, or returns `None` if it is larger than [`WHOLE_LIMIT`].
fn read_small(path: &OsStr) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > WHOLE_LIMIT {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// `io.BytesIO(<the bytes of path>)` with `name` set to `path`, or for a file larger than
/// [`WHOLE_LIMIT`] what `io.open_code` returns without a hook; an `OSError` naming the path
/// (`FileNotFoundError`, `PermissionError`…) if the file cannot be read.
///
/// # Safety
/// GIL held; `path` a valid `str` of this interpreter.
unsafe fn read_whole(path: *mut ffi::PyObject) -> PyResult<Obj> {
    // The file-system encoding (the locale's before this interpreter's codecs are set up), as
    // CPython's own file I/O encodes paths.
    // SAFETY: GIL held; `path` valid (contract).
    let encoded = unsafe { ffi::PyUnicode_EncodeFSDefault(path) };
    // SAFETY: a new reference (or null with an error set).
    let encoded = unsafe { Obj::owned(encoded) }?;
    let mut data: *mut std::ffi::c_char = std::ptr::null_mut();
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: GIL held; `encoded` is a `bytes`; the out-pointers are valid.
    if unsafe { ffi::PyBytes_AsStringAndSize(encoded.as_ptr(), &mut data, &mut len) } < 0 {
        return Err(PyErrSet);
    }
    // SAFETY: `data` points to `len` bytes owned by `encoded`, alive and unchanged (bytes are
    // immutable) until `encoded` drops at the end of this function.
    let name = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) };
    let read = {
        // The GIL is released while the disk is read, as CPython's own file reads do.
        // SAFETY: GIL held (contract); nothing here touches a Python object until the guard
        // drops (`name` borrows the bytes' buffer, which stays alive and is only read).
        let _released = unsafe { Released::save() };
        read_small(OsStr::from_bytes(name))
    };
    let read = match read {
        Ok(r) => r,
        Err(e) => {
            // SAFETY: always callable; the address of this thread's errno.
            let errno = unsafe { libc::__errno_location() };
            // SAFETY: `errno` is valid for this thread; the call below reads it.
            unsafe { *errno = e.raw_os_error().unwrap_or(libc::EIO) };
            // SAFETY: reading the address of a builtin type object: always valid after init.
            let ty = unsafe { ffi::PyExc_OSError };
            // SAFETY: GIL held; `path` valid; sets `OSError(errno, strerror, path)`, narrowed to
            // its subclass by errno.
            unsafe { ffi::PyErr_SetFromErrnoWithFilenameObject(ty, path) };
            return Err(PyErrSet);
        }
    };
    // `_io` is a built-in module, loaded in every interpreter before importlib reads a file.
    // SAFETY: GIL held.
    let io = unsafe { ffi::PyImport_ImportModule(c"_io".as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    let io = unsafe { Obj::owned(io) }?;
    let Some(bytes) = read else {
        // SAFETY: GIL held; `io` valid.
        let open = unsafe { getattr(io.as_ptr(), c"open") }?;
        // SAFETY: GIL held.
        let mode = unsafe { ffi::PyUnicode_FromString(c"rb".as_ptr()) };
        // SAFETY: a new reference (or null with an error set).
        let mode = unsafe { Obj::owned(mode) }?;
        // SAFETY: GIL held; all valid.
        return unsafe { call2(&open, path, mode.as_ptr()) };
    };
    // SAFETY: GIL held; `bytes` outlives the call, which copies it.
    let content = unsafe {
        ffi::PyBytes_FromStringAndSize(bytes.as_ptr().cast(), bytes.len() as ffi::Py_ssize_t)
    };
    // SAFETY: a new reference (or null with an error set).
    let content = unsafe { Obj::owned(content) }?;
    // SAFETY: GIL held; `io` valid.
    let bytes_io = unsafe { getattr(io.as_ptr(), c"BytesIO") }?;
    // SAFETY: GIL held; both valid.
    let f = unsafe { call1(&bytes_io, content.as_ptr()) }?;
    // SAFETY: GIL held; `f` and `path` valid. (`BytesIO` instances take attributes.)
    if unsafe { ffi::PyObject_SetAttrString(f.as_ptr(), c"name".as_ptr(), path) } < 0 {
        return Err(PyErrSet);
    }
    Ok(f)
}
