//! What a Python exception that leaves a call is reported as: its type's name, its message and
//! the text of its traceback, as the standard library's `traceback.format_exception` prints it
//! but without the position carets (placing those parses each frame's source line).
//!
//! One exception on its own (no cause, no context shown, no notes; not a group, a syntax error
//! or an import error) is described here, through the C API: its frames are read from the
//! traceback objects, and each frame's two lines (`File ..., line N, in f` and its source
//! line) are kept per code object and line, so a failure through frames seen before calls no
//! Python at all. A frame seen for the first time is formatted by the harness's
//! `_frame_text`; every other shape of exception by its `_format_exc`. Both paths print the
//! same text for the shapes this one takes (`spawn-subint/tests/basic.rs` checks it against the
//! standard library).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, c_long};
use std::fmt::Write as _;

use pyo3_ffi as ffi;

use super::convert;
use super::module::HarrowModule;
use super::obj::{Obj, PyErrSet, PyResult, call1, err_clear};

/// How many frame texts are kept before they are all dropped and formatting starts afresh.
const FRAMES_KEPT: usize = 1024;

/// An exception's type name (`module.Qualname`, or the bare name of a builtin), message and
/// traceback text (empty when not asked for or none could be made).
pub(crate) struct Described {
    pub(crate) name: String,
    pub(crate) message: String,
    pub(crate) traceback: String,
}

/// The interned attribute names the fast path reads, and the frame texts it keeps.
pub(crate) struct ExcText {
    module: Obj,
    qualname: Obj,
    notes: Obj,
    suppress_context: Obj,
    tb_frame: Obj,
    tb_lineno: Obj,
    tb_next: Obj,
    harrow_remote: Obj,
    /// `(code object address, line)` -> (that code object, kept alive so the address stays
    /// its own while the entry lives; the frame's two lines).
    frames: RefCell<HashMap<(usize, c_long), (Obj, String)>>,
}

/// `o.name`, or `None` when `o` has no such attribute.
///
/// # Safety
/// GIL of `o`'s interpreter held; `o` valid; `name` a `str`.
unsafe fn optional_attr(o: *mut ffi::PyObject, name: &Obj) -> PyResult<Option<Obj>> {
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: GIL held (caller); `o` and `name` valid; `out` a local.
    match unsafe { ffi::compat::PyObject_GetOptionalAttr(o, name.as_ptr(), &mut out) } {
        // SAFETY: found: `out` is a new reference.
        1 => Ok(Some(unsafe { Obj::owned(out) }?)),
        0 => Ok(None),
        _ => Err(PyErrSet),
    }
}

/// `o.name` (an error when missing).
///
/// # Safety
/// As [`optional_attr`].
unsafe fn attr(o: *mut ffi::PyObject, name: &Obj) -> PyResult<Obj> {
    // SAFETY: GIL held (caller); both valid.
    let r = unsafe { ffi::PyObject_GetAttr(o, name.as_ptr()) };
    // SAFETY: a new reference (or null with an error set).
    unsafe { Obj::owned(r) }
}

/// The text of `o` if it is a `str` (`None` for anything else, or text that is not valid
/// UTF-8: a lone surrogate).
///
/// # Safety
/// GIL held; `o` valid.
unsafe fn text_of(o: &Obj) -> Option<String> {
    // SAFETY: GIL held (caller); `o` valid.
    if unsafe { ffi::PyUnicode_Check(o.as_ptr()) } == 0 {
        return None;
    }
    // SAFETY: GIL held; `o` is a `str`.
    match unsafe { convert::utf8(o.as_ptr()) } {
        Ok(s) => Some(s),
        Err(PyErrSet) => {
            // SAFETY: GIL held.
            unsafe { err_clear() };
            None
        }
    }
}

/// A new reference, or `None` for null (the caller clears an error the null may have set).
///
/// # Safety
/// GIL held; `p` a new reference or null.
unsafe fn maybe(p: *mut ffi::PyObject) -> Option<Obj> {
    // SAFETY: forwarded from the caller.
    unsafe { Obj::owned(p) }.ok()
}

impl ExcText {
    /// Interns the names.
    ///
    /// # Safety
    /// The interpreter's owning thread, GIL held.
    pub(crate) unsafe fn new() -> PyResult<ExcText> {
        let intern = |name: &CStr| {
            // SAFETY: GIL held (the function's contract); a NUL-terminated name.
            let s = unsafe { ffi::PyUnicode_InternFromString(name.as_ptr()) };
            // SAFETY: a new reference (or null with an error set).
            unsafe { Obj::owned(s) }
        };
        Ok(ExcText {
            module: intern(c"__module__")?,
            qualname: intern(c"__qualname__")?,
            notes: intern(c"__notes__")?,
            suppress_context: intern(c"__suppress_context__")?,
            tb_frame: intern(c"tb_frame")?,
            tb_lineno: intern(c"tb_lineno")?,
            tb_next: intern(c"tb_next")?,
            harrow_remote: intern(c"_harrow_remote")?,
            frames: RefCell::new(HashMap::new()),
        })
    }

    /// The wire error `exc` carries (`_harrow_remote`, a dict: a `harrow.RemoteError` or
    /// `harrow.NurseryError` relayed by this actor), if any. Leaves no Python error set.
    ///
    /// # Safety
    /// GIL held; `exc` valid.
    pub(crate) unsafe fn carried(&self, exc: &Obj) -> Option<Obj> {
        // SAFETY: GIL held (caller); `exc` valid, the name a `str`.
        match unsafe { optional_attr(exc.as_ptr(), &self.harrow_remote) } {
            // SAFETY: GIL held; `r` valid.
            Ok(Some(r)) if unsafe { ffi::PyDict_Check(r.as_ptr()) } != 0 => Some(r),
            Ok(_) => None,
            Err(PyErrSet) => {
                // SAFETY: GIL held.
                unsafe { err_clear() };
                None
            }
        }
    }

    /// Describes `exc` (its traceback only if `with_traceback`). Leaves no Python error set.
    ///
    /// # Safety
    /// The interpreter's owning thread, GIL held; `exc` an exception of this interpreter.
    pub(crate) unsafe fn describe(
        &self,
        harrow: &HarrowModule,
        exc: &Obj,
        with_traceback: bool,
    ) -> Described {
        // Every call below: GIL held (caller), `exc` valid.
        // SAFETY: see above.
        match unsafe { self.describe_here(harrow, exc, with_traceback) } {
            Ok(Some(d)) => return d,
            Ok(None) => {}
            // SAFETY: see above.
            Err(PyErrSet) => unsafe { err_clear() },
        }
        // SAFETY: see above; a harness function.
        match unsafe { call1(&harrow.format_exc, exc.as_ptr()) } {
            // SAFETY (the three): see above; `t` is the 3-tuple `_format_exc` returns.
            Ok(t) => Described {
                // SAFETY: see above.
                name: unsafe { tuple_str(&t, 0) }.unwrap_or_else(|| "Exception".into()),
                // SAFETY: see above.
                message: unsafe { tuple_str(&t, 1) }.unwrap_or_default(),
                traceback: if with_traceback {
                    // SAFETY: see above.
                    unsafe { tuple_str(&t, 2) }.unwrap_or_default()
                } else {
                    String::new()
                },
            },
            Err(PyErrSet) => {
                // SAFETY: see above.
                unsafe { err_clear() };
                Described {
                    // SAFETY: see above.
                    name: unsafe { convert::type_name(exc.as_ptr()) },
                    message: String::new(),
                    traceback: String::new(),
                }
            }
        }
    }

    /// The fast path: `None` for a shape it leaves to the harness's Python (see the module
    /// docs).
    ///
    /// # Safety
    /// As [`describe`](Self::describe).
    unsafe fn describe_here(
        &self,
        harrow: &HarrowModule,
        exc: &Obj,
        with_traceback: bool,
    ) -> PyResult<Option<Described>> {
        let p = exc.as_ptr();
        // Every call below: GIL held (caller), `p` a valid exception.
        let others = [
            // SAFETY: reading the address of a builtin type object, valid after init.
            unsafe { ffi::PyExc_ImportError },
            // SAFETY: see above.
            unsafe { ffi::PyExc_SyntaxError },
            // SAFETY: see above.
            unsafe { ffi::PyExc_BaseExceptionGroup },
        ];
        for ty in others {
            // SAFETY: see above; `ty` a type object.
            if unsafe { ffi::PyErr_GivenExceptionMatches(p, ty) } != 0 {
                return Ok(None);
            }
        }
        // SAFETY: see above.
        let cause = unsafe { ffi::PyException_GetCause(p) };
        // SAFETY: a new reference or null (no error set).
        if unsafe { maybe(cause) }.is_some() {
            return Ok(None);
        }
        // SAFETY: see above.
        let context = unsafe { ffi::PyException_GetContext(p) };
        // SAFETY: a new reference or null (no error set).
        if unsafe { maybe(context) }.is_some() {
            // SAFETY: see above; the name a `str`.
            let suppressed = unsafe { attr(p, &self.suppress_context) }?;
            // SAFETY: see above; `suppressed` valid.
            if unsafe { ffi::PyObject_IsTrue(suppressed.as_ptr()) } != 1 {
                return Ok(None);
            }
        }
        // SAFETY: see above.
        if unsafe { optional_attr(p, &self.notes) }?.is_some() {
            return Ok(None);
        }
        // SAFETY: see above; every object has a live type.
        let ty = unsafe { ffi::Py_TYPE(p) }.cast::<ffi::PyObject>();
        // SAFETY: see above; `ty` a type object.
        let module = match unsafe { optional_attr(ty, &self.module) }? {
            // SAFETY: see above.
            Some(m) => match unsafe { text_of(&m) } {
                Some(m) => m,
                None => return Ok(None),
            },
            None => String::new(),
        };
        // SAFETY: see above.
        let qualname = match unsafe { optional_attr(ty, &self.qualname) }? {
            // SAFETY: see above.
            Some(q) => unsafe { text_of(&q) },
            None => None,
        };
        let Some(qualname) = qualname.filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        let name = if module.is_empty() || module == "builtins" {
            qualname
        } else {
            format!("{module}.{qualname}")
        };
        // SAFETY: see above.
        let message = unsafe { ffi::PyObject_Str(p) };
        // SAFETY: a new reference, or null with an error set (cleared below).
        let message = match unsafe { maybe(message) } {
            // SAFETY: see above.
            Some(s) => match unsafe { text_of(&s) } {
                Some(s) => s,
                None => return Ok(None),
            },
            None => {
                // SAFETY: see above.
                unsafe { err_clear() };
                "<str() of the exception failed>".into()
            }
        };
        let mut traceback = String::new();
        if with_traceback {
            // SAFETY: see above.
            let tb = unsafe { ffi::PyException_GetTraceback(p) };
            // SAFETY: a new reference or null (no error set).
            if let Some(tb) = unsafe { maybe(tb) } {
                traceback.push_str("Traceback (most recent call last):\n");
                // SAFETY: see above; `tb` a traceback of this interpreter.
                unsafe { self.frames_into(harrow, tb, &mut traceback) }?;
            }
            traceback.push_str(&name);
            if !message.is_empty() {
                traceback.push_str(": ");
                traceback.push_str(&message);
            }
            traceback.push('\n');
        }
        Ok(Some(Described {
            name,
            message,
            traceback,
        }))
    }

    /// Appends the two lines of every frame of the traceback `tb` to `out`; as the standard
    /// library does, a frame repeated more than [`REPEATS_SHOWN`] times in a row (recursion)
    /// is printed that many times and then counted.
    ///
    /// # Safety
    /// As [`describe`](Self::describe); `tb` a traceback object of this interpreter.
    unsafe fn frames_into(&self, harrow: &HarrowModule, tb: Obj, out: &mut String) -> PyResult<()> {
        // Every call below: GIL held (caller), the objects valid.
        // SAFETY: reading the address of the `None` singleton.
        let none = unsafe { ffi::Py_None() };
        // Where in `out` the text of the run of frames before is printed, and how long the
        // run is.
        let (mut prev, mut count) = (0..0, 0usize);
        let mut tb = tb;
        loop {
            let start = out.len();
            // SAFETY: see above; `tb` a traceback.
            unsafe { self.frame_text_into(harrow, &tb, out) }?;
            if count > 0 && out[start..] == out[prev.clone()] {
                count += 1;
                if count > REPEATS_SHOWN {
                    out.truncate(start);
                }
            } else {
                let mut start = start;
                if count > REPEATS_SHOWN {
                    // The line counting the run's frames left out goes before this frame.
                    let text = out.split_off(start);
                    repeated(out, count - REPEATS_SHOWN);
                    start = out.len();
                    out.push_str(&text);
                }
                prev = start..out.len();
                count = 1;
            }
            // SAFETY: see above.
            let next = unsafe { attr(tb.as_ptr(), &self.tb_next) }?;
            if next.as_ptr() == none {
                break;
            }
            tb = next;
        }
        if count > REPEATS_SHOWN {
            repeated(out, count - REPEATS_SHOWN);
        }
        Ok(())
    }

    /// Appends the two lines of the traceback entry `tb` (`File ..., line N, in f` and its
    /// source line) to `out`: kept ones, or those the harness's `_frame_text` makes.
    ///
    /// # Safety
    /// As [`describe`](Self::describe); `tb` a traceback object of this interpreter.
    unsafe fn frame_text_into(
        &self,
        harrow: &HarrowModule,
        tb: &Obj,
        out: &mut String,
    ) -> PyResult<()> {
        // Every call below: GIL held (caller), the objects valid.
        // SAFETY: see above.
        let frame = unsafe { attr(tb.as_ptr(), &self.tb_frame) }?;
        // SAFETY: see above; `tb_frame` of a traceback is a frame object.
        let code = unsafe { ffi::PyFrame_GetCode(frame.as_ptr().cast()) };
        // SAFETY: a new reference (never null for a frame; null would have an error set).
        let code = unsafe { Obj::owned(code.cast()) }?;
        // SAFETY: see above.
        let line = unsafe { attr(tb.as_ptr(), &self.tb_lineno) }?;
        // SAFETY: see above; `line` valid.
        let line = unsafe { ffi::PyLong_AsLong(line.as_ptr()) };
        // SAFETY: see above.
        if line == -1 && unsafe { convert::err_set() } {
            return Err(PyErrSet);
        }
        let key = (code.as_ptr() as usize, line);
        if let Ok(frames) = self.frames.try_borrow()
            && let Some((_, text)) = frames.get(&key)
        {
            out.push_str(text);
            return Ok(());
        }
        // SAFETY: see above; a harness function, `tb` a traceback.
        let text = unsafe { call1(&harrow.frame_text, tb.as_ptr()) }?;
        // SAFETY: see above.
        let Some(text) = (unsafe { text_of(&text) }) else {
            return Err(PyErrSet);
        };
        out.push_str(&text);
        if let Ok(mut frames) = self.frames.try_borrow_mut() {
            if frames.len() >= FRAMES_KEPT {
                frames.clear();
            }
            frames.insert(key, (code, text));
        }
        Ok(())
    }
}

/// How many times in a row one frame is printed before the rest are counted (the standard
/// library's cutoff).
const REPEATS_SHOWN: usize = 3;

/// The standard library's line for `n` repeats left out.
fn repeated(out: &mut String, n: usize) {
    let s = if n > 1 { "s" } else { "" };
    // Writing to a `String` cannot fail.
    let _ = writeln!(out, "  [Previous line repeated {n} more time{s}]");
}

/// Item `i` of the tuple `t` as text, if it is a `str` of valid UTF-8 (clears the error
/// otherwise).
///
/// # Safety
/// GIL held; `t` a tuple.
unsafe fn tuple_str(t: &Obj, i: ffi::Py_ssize_t) -> Option<String> {
    // SAFETY: GIL held (caller); `t` is a tuple; a borrowed item, or null with an error set.
    let item = unsafe { ffi::PyTuple_GetItem(t.as_ptr(), i) };
    // SAFETY: GIL held; `item` is borrowed, so take a reference of our own.
    match unsafe { Obj::borrowed(item) } {
        // SAFETY: GIL held; `item` valid.
        Ok(item) => unsafe { text_of(&item) },
        Err(PyErrSet) => {
            // SAFETY: GIL held.
            unsafe { err_clear() };
            None
        }
    }
}
