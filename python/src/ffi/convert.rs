//! `Value` <-> Python objects, on the interpreter thread with its GIL held.

use std::ffi::CStr;

use harrow_ipc::Value;
use pyo3_ffi as ffi;

use super::obj::{Obj, PyErrSet, PyResult};

/// Nesting deeper than this is refused (protects the thread's stack).
const MAX_DEPTH: usize = 200;

/// Why a Python object did not convert to a [`Value`].
pub(crate) enum ConvError {
    /// A Python error is set (e.g. a `str` with lone surrogates).
    Py(PyErrSet),
    /// The object is of a kind `Value` cannot carry.
    Unsupported(String),
}

impl From<PyErrSet> for ConvError {
    fn from(e: PyErrSet) -> Self {
        ConvError::Py(e)
    }
}

/// The `tp_name` of `o`'s type (`"set"`, `"datetime.datetime"`).
///
/// # Safety
/// GIL of `o`'s interpreter held; `o` valid.
pub(crate) unsafe fn type_name(o: *mut ffi::PyObject) -> String {
    // SAFETY: `o` is a valid object (caller): its type pointer is valid.
    let tp = unsafe { ffi::Py_TYPE(o) };
    // SAFETY: `tp` is a live type object.
    let name = unsafe { (*tp).tp_name };
    // SAFETY: every type has a NUL-terminated, static or type-owned `tp_name`.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// Converts a Python object to a [`Value`].
///
/// # Safety
/// GIL of `o`'s interpreter held; `o` valid.
pub(crate) unsafe fn to_value(o: *mut ffi::PyObject) -> Result<Value, ConvError> {
    // SAFETY: forwarded from the caller.
    unsafe { to_value_at(o, 0) }
}

/// Whether a Python error is set on this thread.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn err_set() -> bool {
    // SAFETY: GIL held (caller).
    !unsafe { ffi::PyErr_Occurred() }.is_null()
}

/// The bytes of a `bytes` (`bytearray` when `array`) object, copied.
///
/// # Safety
/// GIL held; `o` is a valid `bytes` (or `bytearray` when `array`).
unsafe fn bytes_of(o: *mut ffi::PyObject, array: bool) -> Result<Vec<u8>, ConvError> {
    let (p, n) = if array {
        // SAFETY: GIL held; `o` is a `bytearray` (caller).
        let p = unsafe { ffi::PyByteArray_AsString(o) };
        // SAFETY: as above.
        (p, unsafe { ffi::PyByteArray_Size(o) })
    } else {
        // SAFETY: GIL held; `o` is a `bytes` (caller).
        let p = unsafe { ffi::PyBytes_AsString(o) };
        // SAFETY: as above.
        (p, unsafe { ffi::PyBytes_Size(o) })
    };
    if p.is_null() || n < 0 {
        return Err(ConvError::Py(PyErrSet));
    }
    // SAFETY: CPython's buffer of `n` bytes, alive while `o` is (the caller holds it).
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n as usize) }.to_vec())
}

unsafe fn to_value_at(o: *mut ffi::PyObject, depth: usize) -> Result<Value, ConvError> {
    if depth > MAX_DEPTH {
        return Err(ConvError::Unsupported(format!(
            "value nested deeper than {MAX_DEPTH} levels"
        )));
    }
    // Every call below has the caller's guarantees: GIL held, `o` a valid object of this
    // interpreter. Each only reads `o` or builds new objects owned by an `Obj`.
    // SAFETY: reading the address of the `None` singleton.
    if o == unsafe { ffi::Py_None() } {
        return Ok(Value::Null);
    }
    // bool before int: bool is a subclass of int.
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyBool_Check(o) } != 0 {
        // SAFETY: reading the address of the `True` singleton.
        return Ok(Value::Bool(o == unsafe { ffi::Py_True() }));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyLong_Check(o) } != 0 {
        let mut overflow = 0;
        // SAFETY: GIL held, `o` is an int; `overflow` outlives the call.
        let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow) };
        if overflow != 0 {
            // SAFETY: GIL held, `o` valid; a new reference.
            let text = unsafe { ffi::PyObject_Str(o) };
            // SAFETY: a new reference (or null with an error set).
            let repr = unsafe { Obj::owned(text) }
                .ok()
                // SAFETY: GIL held; `s` is a `str`.
                .and_then(|s| unsafe { utf8(s.as_ptr()) }.ok());
            let shown = match repr {
                Some(repr) => shortened(&repr, ""),
                None => {
                    // Beyond Python's limit on int-to-decimal conversions (4300 digits by
                    // default): in hex, which has none.
                    // SAFETY: GIL held; the conversion's error is dropped.
                    unsafe { crate::ffi::obj::err_clear() };
                    // SAFETY: GIL held, `o` is an int; a new reference (or null).
                    let hex = unsafe { ffi::PyNumber_ToBase(o, 16) };
                    // SAFETY: a new reference (or null with an error set).
                    let hex = unsafe { Obj::owned(hex) }
                        .ok()
                        // SAFETY: GIL held; `s` is a `str`.
                        .and_then(|s| unsafe { utf8(s.as_ptr()) }.ok());
                    // SAFETY: GIL held.
                    unsafe { crate::ffi::obj::err_clear() };
                    match hex {
                        Some(h) => {
                            let digits = h.trim_start_matches('-').len().saturating_sub(2);
                            shortened(&h, &format!(" ({digits} hex digits)"))
                        }
                        None => "(too large to show)".to_owned(),
                    }
                }
            };
            return Err(ConvError::Unsupported(format!(
                "int {shown} does not fit in a signed 64-bit integer"
            )));
        }
        // SAFETY: GIL held.
        if v == -1 && unsafe { err_set() } {
            return Err(ConvError::Py(PyErrSet));
        }
        return Ok(Value::Int(v));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyFloat_Check(o) } != 0 {
        // SAFETY: GIL held, `o` is a float.
        let v = unsafe { ffi::PyFloat_AsDouble(o) };
        // SAFETY: GIL held.
        if v == -1.0 && unsafe { err_set() } {
            return Err(ConvError::Py(PyErrSet));
        }
        return Ok(Value::Float(v));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyUnicode_Check(o) } != 0 {
        // SAFETY: GIL held, `o` is a `str`.
        return Ok(Value::Str(unsafe { utf8(o) }?));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyBytes_Check(o) } != 0 {
        // SAFETY: GIL held, `o` is a `bytes`.
        return Ok(Value::Bytes(unsafe { bytes_of(o, false) }?));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyByteArray_Check(o) } != 0 {
        // SAFETY: GIL held, `o` is a `bytearray`.
        return Ok(Value::Bytes(unsafe { bytes_of(o, true) }?));
    }
    // SAFETY: GIL held, `o` valid.
    let is_seq = unsafe { ffi::PyList_Check(o) } != 0 || unsafe { ffi::PyTuple_Check(o) } != 0;
    if is_seq {
        // A tuple snapshot, so that the length is stable.
        // SAFETY: GIL held, `o` is a list or tuple; a new reference.
        let seq = unsafe { ffi::PySequence_Tuple(o) };
        // SAFETY: a new reference (or null with an error set).
        let seq = unsafe { Obj::owned(seq) }?;
        // SAFETY: GIL held; `seq` is a tuple.
        let n = unsafe { ffi::PyTuple_Size(seq.as_ptr()) };
        let mut items = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            // SAFETY: GIL held; `i` is in range; a borrowed item kept alive by `seq`.
            let item = unsafe { ffi::PyTuple_GetItem(seq.as_ptr(), i) };
            if item.is_null() {
                return Err(ConvError::Py(PyErrSet));
            }
            // SAFETY: GIL held; `item` valid while `seq` lives.
            items.push(unsafe { to_value_at(item, depth + 1) }?);
        }
        return Ok(Value::List(items));
    }
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyDict_Check(o) } != 0 {
        let mut pos: ffi::Py_ssize_t = 0;
        let mut k: *mut ffi::PyObject = std::ptr::null_mut();
        let mut v: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: GIL held, `o` is a dict.
        let len = unsafe { ffi::PyDict_Size(o) };
        let mut entries = Vec::with_capacity(len.max(0) as usize);
        // SAFETY: GIL held, `o` is a dict; the out-pointers outlive each call.
        while unsafe { ffi::PyDict_Next(o, &mut pos, &mut k, &mut v) } != 0 {
            // Borrowed references: keep them alive while converting.
            // SAFETY: GIL held; `k` is a live key of `o`.
            let kk = unsafe { Obj::borrowed(k) }?;
            // SAFETY: GIL held; `v` is a live value of `o`.
            let vv = unsafe { Obj::borrowed(v) }?;
            // SAFETY: GIL held; `kk` valid.
            let key = unsafe { to_value_at(kk.as_ptr(), depth + 1) }?;
            // SAFETY: GIL held; `vv` valid.
            let val = unsafe { to_value_at(vv.as_ptr(), depth + 1) }?;
            entries.push((key, val));
        }
        return Ok(Value::Map(entries));
    }
    // An integer of another type (numpy's `int64`, say: what `arr.sum()` returns): what its
    // `__index__` says, which is lossless by that method's contract. One whose `__index__`
    // raises is unsupported like any other type.
    // SAFETY: GIL held, `o` valid.
    if unsafe { ffi::PyIndex_Check(o) } != 0 {
        // SAFETY: GIL held, `o` valid.
        let index = unsafe { ffi::PyNumber_Index(o) };
        // SAFETY: a new reference (or null with an error set).
        match unsafe { Obj::owned(index) } {
            // SAFETY: GIL held; `int` is an int, so this does not come back here.
            Ok(int) => return unsafe { to_value_at(int.as_ptr(), depth) },
            // SAFETY: GIL held; the error `__index__` raised is replaced by ours below.
            Err(PyErrSet) => unsafe { ffi::PyErr_Clear() },
        }
    }
    Err(ConvError::Unsupported(format!(
        "unsupported Python type '{}' (harrow values are None, bool, int and integers with \
         __index__, float, str, bytes, list, tuple and dict)",
        // SAFETY: GIL held, `o` valid.
        unsafe { type_name(o) }
    )))
}

/// The UTF-8 text of a `str`.
///
/// # Safety
/// GIL held; `o` is a valid `str`.
pub(crate) unsafe fn utf8(o: *mut ffi::PyObject) -> PyResult<String> {
    let mut n: ffi::Py_ssize_t = 0;
    // SAFETY: `o` is a `str` (caller); the returned buffer lives as long as `o`.
    let p = unsafe { ffi::PyUnicode_AsUTF8AndSize(o, &mut n) };
    if p.is_null() {
        return Err(PyErrSet);
    }
    // SAFETY: `n` bytes of UTF-8 that CPython keeps alive with `o` (held by the caller).
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n as usize) };
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Converts a [`Value`] to a new Python object. A value nested deeper than `MAX_DEPTH` levels
/// is refused with a Python `ValueError` (the recursion would otherwise be bounded only by the
/// thread's stack).
///
/// # Safety
/// The GIL of the interpreter that will own the result is held.
pub(crate) unsafe fn from_value(v: &Value) -> PyResult<Obj> {
    // SAFETY: forwarded.
    unsafe { from_value_at(v, 0) }
}

unsafe fn from_value_at(v: &Value, depth: usize) -> PyResult<Obj> {
    if depth > MAX_DEPTH {
        let msg = format!("value nested deeper than {MAX_DEPTH} levels\0");
        // SAFETY: reading the address of a builtin type object: always valid after init.
        let ty = unsafe { ffi::PyExc_ValueError };
        // SAFETY: GIL held (caller); `msg` is NUL-terminated and outlives the call.
        unsafe { ffi::PyErr_SetString(ty, msg.as_ptr().cast()) };
        return Err(PyErrSet);
    }
    // Every call below: GIL held (caller); each returns a new reference, owned by an `Obj`.
    match v {
        Value::Null => {
            // SAFETY: reading the address of the `None` singleton.
            let none = unsafe { ffi::Py_None() };
            // SAFETY: GIL held; `None` is valid.
            unsafe { Obj::borrowed(none) }
        }
        Value::Bool(b) => {
            // SAFETY: GIL held; a new reference.
            let p = unsafe { ffi::PyBool_FromLong(*b as std::ffi::c_long) };
            // SAFETY: GIL held; `p` is a new reference (or null with an error set).
            unsafe { Obj::owned(p) }
        }
        Value::Int(i) => {
            // SAFETY: GIL held; a new reference.
            let p = unsafe { ffi::PyLong_FromLongLong(*i) };
            // SAFETY: as above.
            unsafe { Obj::owned(p) }
        }
        Value::Float(f) => {
            // SAFETY: GIL held; a new reference.
            let p = unsafe { ffi::PyFloat_FromDouble(*f) };
            // SAFETY: as above.
            unsafe { Obj::owned(p) }
        }
        // SAFETY: GIL held.
        Value::Str(s) => unsafe { str_obj(s) },
        Value::Bytes(b) => {
            // SAFETY: GIL held; the buffer is valid for `len` bytes and copied.
            let p = unsafe {
                ffi::PyBytes_FromStringAndSize(b.as_ptr().cast(), b.len() as ffi::Py_ssize_t)
            };
            // SAFETY: as above.
            unsafe { Obj::owned(p) }
        }
        Value::List(items) => {
            // SAFETY: GIL held; a new list of `len` empty slots.
            let p = unsafe { ffi::PyList_New(items.len() as ffi::Py_ssize_t) };
            // SAFETY: as above.
            let list = unsafe { Obj::owned(p) }?;
            for (i, item) in items.iter().enumerate() {
                // SAFETY: GIL held.
                let o = unsafe { from_value_at(item, depth + 1) }?;
                // SAFETY: GIL held; `i` is in range of the new list; steals `o`'s reference.
                unsafe { ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, o.into_ptr()) };
            }
            Ok(list)
        }
        Value::Map(entries) => {
            // SAFETY: GIL held; a new dict.
            let p = unsafe { ffi::PyDict_New() };
            // SAFETY: as above.
            let dict = unsafe { Obj::owned(p) }?;
            for (k, val) in entries {
                // SAFETY: GIL held.
                let ko = unsafe { key_from_value_at(k, depth + 1) }?;
                // SAFETY: GIL held.
                let vo = unsafe { from_value_at(val, depth + 1) }?;
                // SAFETY: GIL held; all three valid; the dict takes its own references.
                if unsafe { ffi::PyDict_SetItem(dict.as_ptr(), ko.as_ptr(), vo.as_ptr()) } != 0 {
                    return Err(PyErrSet);
                }
            }
            Ok(dict)
        }
    }
}

/// [`from_value_at`] for a dict key: a list (a tuple on its way here: the wire has no tuples)
/// becomes a tuple, its lists too, since a list cannot be a key. So a dict keyed by tuples
/// arrives as it was sent.
///
/// # Safety
/// GIL held.
unsafe fn key_from_value_at(v: &Value, depth: usize) -> PyResult<Obj> {
    let Value::List(items) = v else {
        // SAFETY: forwarded.
        return unsafe { from_value_at(v, depth) };
    };
    if depth > MAX_DEPTH {
        // SAFETY: forwarded (it raises the depth error).
        return unsafe { from_value_at(v, depth) };
    }
    // SAFETY: GIL held; a new tuple of `len` empty slots.
    let p = unsafe { ffi::PyTuple_New(items.len() as ffi::Py_ssize_t) };
    // SAFETY: a new reference (or null with an error set).
    let tuple = unsafe { Obj::owned(p) }?;
    for (i, item) in items.iter().enumerate() {
        // SAFETY: GIL held.
        let o = unsafe { key_from_value_at(item, depth + 1) }?;
        // SAFETY: GIL held; `i` is in range of the new tuple; steals `o`'s reference.
        unsafe { ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, o.into_ptr()) };
    }
    Ok(tuple)
}

/// `text`'s first 60 characters (and "..." when there are more), then `then`.
fn shortened(text: &str, then: &str) -> String {
    let shown: String = text.chars().take(60).collect();
    let more = if text.len() > shown.len() { "..." } else { "" };
    format!("{shown}{more}{then}")
}

/// A new `str`.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn str_obj(s: &str) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); the buffer is valid for `len` bytes of UTF-8 and copied.
    let p =
        unsafe { ffi::PyUnicode_FromStringAndSize(s.as_ptr().cast(), s.len() as ffi::Py_ssize_t) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(p) }
}

/// A new reference to the interned `str` of `s`: the object that dictionaries keyed by an
/// identifier hold (a module's globals, `sys.modules` for an import by this name), so a lookup
/// with it finds its entry by identity, without comparing the text.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn interned_str(s: &str) -> PyResult<Obj> {
    // SAFETY: GIL held (caller).
    let mut p = unsafe { str_obj(s) }?.into_ptr();
    // SAFETY: GIL held; `p` is a new reference to a `str`, replaced by a new reference to the
    // interned one (the old one released).
    unsafe { ffi::PyUnicode_InternInPlace(&mut p) };
    // SAFETY: a new reference (never null: interning replaces a valid pointer).
    unsafe { Obj::owned(p) }
}

/// Fetches and clears the set exception as `"Type: message"` text.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn fetch_text() -> String {
    // SAFETY: GIL held (caller); takes the set exception (a new reference, or null).
    let exc = unsafe { ffi::PyErr_GetRaisedException() };
    // SAFETY: a new reference, or null.
    let Ok(exc) = (unsafe { Obj::owned(exc) }) else {
        return "unknown error".into();
    };
    // SAFETY: GIL held; `exc` valid.
    let ty = unsafe { type_name(exc.as_ptr()) };
    // SAFETY: GIL held; `exc` valid.
    let text = unsafe { ffi::PyObject_Str(exc.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    let msg = unsafe { Obj::owned(text) }
        .ok()
        // SAFETY: GIL held; `s` is a `str`.
        .and_then(|s| unsafe { utf8(s.as_ptr()) }.ok())
        .unwrap_or_default();
    // SAFETY: GIL held.
    unsafe { super::obj::err_clear() };
    format!("{ty}: {msg}")
}
