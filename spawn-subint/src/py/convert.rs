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
    // SAFETY: `o` is a valid object (caller); every type has a NUL-terminated `tp_name`.
    unsafe {
        let tp = ffi::Py_TYPE(o);
        CStr::from_ptr((*tp).tp_name).to_string_lossy().into_owned()
    }
}

/// Converts a Python object to a [`Value`].
///
/// # Safety
/// GIL of `o`'s interpreter held; `o` valid.
pub(crate) unsafe fn to_value(o: *mut ffi::PyObject) -> Result<Value, ConvError> {
    // SAFETY: forwarded from the caller.
    unsafe { to_value_at(o, 0) }
}

unsafe fn to_value_at(o: *mut ffi::PyObject, depth: usize) -> Result<Value, ConvError> {
    if depth > MAX_DEPTH {
        return Err(ConvError::Unsupported(format!(
            "value nested deeper than {MAX_DEPTH} levels"
        )));
    }
    // SAFETY: GIL held and `o` valid (caller); every call below only reads `o` or builds new
    // objects of the same interpreter, and every new reference is owned by an `Obj`.
    unsafe {
        if o == ffi::Py_None() {
            return Ok(Value::Null);
        }
        // bool before int: bool is a subclass of int.
        if ffi::PyBool_Check(o) != 0 {
            return Ok(Value::Bool(o == ffi::Py_True()));
        }
        if ffi::PyLong_Check(o) != 0 {
            let mut overflow = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow);
            if overflow != 0 {
                let repr = Obj::owned(ffi::PyObject_Str(o))
                    .ok()
                    .and_then(|s| utf8(s.as_ptr()).ok());
                let repr = repr.unwrap_or_default();
                let shown: String = repr.chars().take(60).collect();
                return Err(ConvError::Unsupported(format!(
                    "int {shown}{} does not fit in a signed 64-bit integer",
                    if repr.len() > shown.len() { "..." } else { "" }
                )));
            }
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(ConvError::Py(PyErrSet));
            }
            return Ok(Value::Int(v));
        }
        if ffi::PyFloat_Check(o) != 0 {
            let v = ffi::PyFloat_AsDouble(o);
            if v == -1.0 && !ffi::PyErr_Occurred().is_null() {
                return Err(ConvError::Py(PyErrSet));
            }
            return Ok(Value::Float(v));
        }
        if ffi::PyUnicode_Check(o) != 0 {
            return Ok(Value::Str(utf8(o)?));
        }
        if ffi::PyBytes_Check(o) != 0 {
            let p = ffi::PyBytes_AsString(o);
            let n = ffi::PyBytes_Size(o);
            if p.is_null() || n < 0 {
                return Err(ConvError::Py(PyErrSet));
            }
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), n as usize).to_vec();
            return Ok(Value::Bytes(bytes));
        }
        if ffi::PyByteArray_Check(o) != 0 {
            let p = ffi::PyByteArray_AsString(o);
            let n = ffi::PyByteArray_Size(o);
            if p.is_null() || n < 0 {
                return Err(ConvError::Py(PyErrSet));
            }
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), n as usize).to_vec();
            return Ok(Value::Bytes(bytes));
        }
        if ffi::PyList_Check(o) != 0 || ffi::PyTuple_Check(o) != 0 {
            // A list may be mutated by __eq__/... of nothing here (no Python runs below), but
            // take a tuple snapshot anyway so the length is stable.
            let seq = Obj::owned(ffi::PySequence_Tuple(o))?;
            let n = ffi::PyTuple_Size(seq.as_ptr());
            let mut items = Vec::with_capacity(n.max(0) as usize);
            for i in 0..n {
                let item = ffi::PyTuple_GetItem(seq.as_ptr(), i);
                if item.is_null() {
                    return Err(ConvError::Py(PyErrSet));
                }
                items.push(to_value_at(item, depth + 1)?);
            }
            return Ok(Value::List(items));
        }
        if ffi::PyDict_Check(o) != 0 {
            let mut pos: ffi::Py_ssize_t = 0;
            let mut k: *mut ffi::PyObject = std::ptr::null_mut();
            let mut v: *mut ffi::PyObject = std::ptr::null_mut();
            let mut entries = Vec::with_capacity(ffi::PyDict_Size(o).max(0) as usize);
            while ffi::PyDict_Next(o, &mut pos, &mut k, &mut v) != 0 {
                // Borrowed references; keep them alive while converting.
                let kk = Obj::borrowed(k)?;
                let vv = Obj::borrowed(v)?;
                let key = to_value_at(kk.as_ptr(), depth + 1)?;
                let val = to_value_at(vv.as_ptr(), depth + 1)?;
                entries.push((key, val));
            }
            return Ok(Value::Map(entries));
        }
        Err(ConvError::Unsupported(format!(
            "unsupported Python type '{}' (harrow values are None, bool, int, float, str, bytes, \
             list, tuple and dict)",
            type_name(o)
        )))
    }
}

/// The UTF-8 text of a `str`.
///
/// # Safety
/// GIL held; `o` is a valid `str`.
pub(crate) unsafe fn utf8(o: *mut ffi::PyObject) -> PyResult<String> {
    let mut n: ffi::Py_ssize_t = 0;
    // SAFETY: `o` is a `str` (caller); the returned buffer lives as long as `o`.
    unsafe {
        let p = ffi::PyUnicode_AsUTF8AndSize(o, &mut n);
        if p.is_null() {
            return Err(PyErrSet);
        }
        let bytes = std::slice::from_raw_parts(p.cast::<u8>(), n as usize);
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
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
    // SAFETY: GIL held (caller); each call returns a new reference owned by an `Obj`, and the
    // `*_SetItem`/`SET_ITEM` calls below steal or copy references as documented.
    unsafe {
        match v {
            Value::Null => Obj::borrowed(ffi::Py_None()),
            Value::Bool(b) => Obj::owned(ffi::PyBool_FromLong(*b as std::ffi::c_long)),
            Value::Int(i) => Obj::owned(ffi::PyLong_FromLongLong(*i)),
            Value::Float(f) => Obj::owned(ffi::PyFloat_FromDouble(*f)),
            Value::Str(s) => str_obj(s),
            Value::Bytes(b) => Obj::owned(ffi::PyBytes_FromStringAndSize(
                b.as_ptr().cast(),
                b.len() as ffi::Py_ssize_t,
            )),
            Value::List(items) => {
                let list = Obj::owned(ffi::PyList_New(items.len() as ffi::Py_ssize_t))?;
                for (i, item) in items.iter().enumerate() {
                    let o = from_value_at(item, depth + 1)?;
                    // Steals the reference.
                    ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, o.into_ptr());
                }
                Ok(list)
            }
            Value::Map(entries) => {
                let dict = Obj::owned(ffi::PyDict_New())?;
                for (k, val) in entries {
                    let ko = from_value_at(k, depth + 1)?;
                    let vo = from_value_at(val, depth + 1)?;
                    if ffi::PyDict_SetItem(dict.as_ptr(), ko.as_ptr(), vo.as_ptr()) != 0 {
                        return Err(PyErrSet);
                    }
                }
                Ok(dict)
            }
        }
    }
}

/// A new `str`.
///
/// # Safety
/// GIL held.
pub(crate) unsafe fn str_obj(s: &str) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); the buffer is valid for `len` bytes of UTF-8.
    unsafe {
        Obj::owned(ffi::PyUnicode_FromStringAndSize(
            s.as_ptr().cast(),
            s.len() as ffi::Py_ssize_t,
        ))
    }
}
