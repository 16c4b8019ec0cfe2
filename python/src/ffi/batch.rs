//! The built-in batch runner, `harrow:run_batch` ([`BATCH_RUNNER`](crate::BATCH_RUNNER)): one
//! call runs a function over many items in a loop of the call server, on the interpreter
//! thread. Each item is converted, called and its result converted back one at a time, with no
//! Python runner frame, no intermediate Python list of arguments or results, and one
//! `vectorcall` per item; every Python object stays in this interpreter.

use harrow_ipc::{ErrorKind, FnPath, Value};
use harrow_portal::CallError;
use pyo3_ffi as ffi;

use super::calls::{bad_args, build_args, user};
use super::convert::{self, ConvError, fetch_text};
use super::harness::Setup;
use super::module::CallCtx;
use super::obj::Obj;
use crate::config::InterpConfig;
use crate::job::{cancelled_error, not_exposed};
use crate::state::Shared;

/// Why one item has no result (before looking at the exception).
enum ItemFailed {
    /// The call raised: the exception is set.
    Raised,
    /// The item's arguments did not convert (no exception set any more).
    Args(String),
}

impl Setup {
    /// Runs `harrow:run_batch([func, items])`: `[results, errors]` (see
    /// [`BATCH_RUNNER`](crate::BATCH_RUNNER)).
    ///
    /// # Safety
    /// Owning thread, GIL held.
    pub(super) unsafe fn run_batch(
        &self,
        shared: &Shared,
        config: &InterpConfig,
        ctx: &CallCtx,
        args: Value,
    ) -> Result<Value, CallError> {
        let shape = || {
            bad_args(format!(
                "{} takes [func, [item, ...]] (func a \"module:function\" string)",
                crate::BATCH_RUNNER
            ))
        };
        let mut args = args;
        let (path, items) = match &mut args {
            Value::List(parts) => match parts.as_mut_slice() {
                [Value::Str(path), Value::List(items)] => {
                    (std::mem::take(path), std::mem::take(items))
                }
                _ => return Err(shape()),
            },
            _ => return Err(shape()),
        };
        drop(args);
        let func = FnPath::parse(&path)
            .map_err(|e| bad_args(format!("the batch's function {path:?}: {e}")))?;
        // Every call below: GIL held on the owning thread (caller); every object lives in an
        // `Obj` dropped before this function returns.
        // SAFETY: see above.
        if !config.exposes(func.module()) {
            return Err(not_exposed(config, func.module()));
        }
        // SAFETY: see above.
        let resolved = unsafe { self.resolve(shared, &func) }?;
        let (f, is_gen, wants_ctx) = (resolved.func, resolved.is_gen, resolved.wants_ctx);
        if is_gen || wants_ctx {
            return Err(CallError::raised(
                "TypeError",
                format!(
                    "{func} is a {} function: a batch runs plain functions only",
                    if is_gen { "generator" } else { "context" }
                ),
            ));
        }
        let mut results = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if ctx.job.is_cancelled() {
                return Err(cancelled_error());
            }
            // SAFETY: see above; `f` valid.
            let ret = unsafe { call_item(shared, &f, &item) };
            drop(item);
            let (type_name, message) = match ret {
                // SAFETY: see above; `r` valid.
                Ok(r) => match unsafe { convert::to_value(r.as_ptr()) } {
                    Ok(v) => {
                        results.push(v);
                        continue;
                    }
                    Err(ConvError::Unsupported(m)) => (
                        "TypeError".to_owned(),
                        format!("cannot send the returned value: {m}"),
                    ),
                    // SAFETY: see above; an exception is set.
                    Err(ConvError::Py(_)) => unsafe { self.item_error() }?,
                },
                Err(ItemFailed::Args(m)) => ("BadArguments".to_owned(), m),
                // SAFETY: see above; an exception is set.
                Err(ItemFailed::Raised) => unsafe { self.item_error() }?,
            };
            results.push(Value::Null);
            errors.push(Value::List(vec![
                Value::Int(i as i64),
                Value::Str(type_name),
                Value::Str(message),
            ]));
        }
        ctx.user_code_ended();
        Ok(Value::List(vec![Value::List(results), Value::List(errors)]))
    }

    /// The set exception of a failed item, taken: its `(type name, message)` when it is an
    /// `Exception` (the item fails alone); anything else (`harrow.Cancelled`, `SystemExit`,
    /// `os._exit`'s `ActorExit`) is the whole batch's error, as for a single call.
    ///
    /// # Safety
    /// GIL held, an exception set.
    unsafe fn item_error(&self) -> Result<(String, String), CallError> {
        // SAFETY: reading the address of a builtin type object: always valid after init.
        let exception = unsafe { ffi::PyExc_Exception };
        // SAFETY: GIL held (caller); an exception is set.
        if unsafe { ffi::PyErr_ExceptionMatches(exception) } == 0 {
            // SAFETY: GIL held, an exception set.
            return Err(unsafe { self.error(ErrorKind::Raised) });
        }
        // SAFETY: GIL held; takes the set exception (a new reference, or null).
        let exc = unsafe { ffi::PyErr_GetRaisedException() };
        // SAFETY: a new reference, or null.
        let Ok(exc) = (unsafe { Obj::owned(exc) }) else {
            return Ok(("SystemError".into(), "error without an exception".into()));
        };
        // SAFETY: GIL held; `exc` an exception of this interpreter. The traceback is not
        // asked for: a failed item reports its type and message only.
        let d = unsafe { self.exc.describe(&self.harrow, &exc, false) };
        Ok((d.name, d.message))
    }
}

/// Calls `f` on one item by the rule of a single call: `Null` -> `f()`, an encoded `PyArgs` ->
/// `f(args, **kwargs)`, anything else -> `f(item)` (through `vectorcall`, no argument tuple).
///
/// # Safety
/// Owning thread, GIL held; `f` valid.
unsafe fn call_item(shared: &Shared, f: &Obj, item: &Value) -> Result<Obj, ItemFailed> {
    let null: *mut ffi::PyObject = std::ptr::null_mut();
    // Every call below: GIL held (caller); each result is a new reference (or null with an
    // exception set), owned by an `Obj`.
    if matches!(item, Value::Null) {
        return user(shared, || {
            // SAFETY: see above; no argument.
            let r = unsafe { ffi::PyObject_Vectorcall(f.as_ptr(), std::ptr::null(), 0, null) };
            // SAFETY: see above.
            unsafe { Obj::owned(r) }
        })
        .map_err(|_| ItemFailed::Raised);
    }
    if crate::args::split(item).is_some() {
        // SAFETY: see above.
        let (pos, kwargs) =
            unsafe { build_args(item) }.map_err(|e| ItemFailed::Args(format!("{e}")))?;
        return user(shared, || {
            let kw = kwargs.as_ref().map_or(null, Obj::as_ptr);
            // SAFETY: see above; `pos` a tuple, `kw` a dict or null.
            let r = unsafe { ffi::PyObject_Call(f.as_ptr(), pos.as_ptr(), kw) };
            // SAFETY: see above.
            unsafe { Obj::owned(r) }
        })
        .map_err(|_| ItemFailed::Raised);
    }
    // SAFETY: see above.
    let arg = unsafe { convert::from_value(item) }.map_err(|_| {
        // SAFETY: GIL held, an exception is set.
        ItemFailed::Args(format!("the item does not convert to Python: {}", unsafe {
            fetch_text()
        }))
    })?;
    // Slot 0 is scratch space the callee may use (`PY_VECTORCALL_ARGUMENTS_OFFSET`).
    let mut argv = [null, arg.as_ptr()];
    // A pointer into the whole array: the callee may write the slot before its argument.
    let args = argv.as_mut_ptr().wrapping_add(1);
    user(shared, || {
        // SAFETY: see above; `args` points at one valid argument (kept alive by `arg`), with
        // the scratch slot before it.
        let r = unsafe {
            ffi::PyObject_Vectorcall(
                f.as_ptr(),
                args,
                1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                null,
            )
        };
        // SAFETY: see above.
        unsafe { Obj::owned(r) }
    })
    .map_err(|_| ItemFailed::Raised)
}
