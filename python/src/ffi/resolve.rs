//! Resolving a call's `"module:function"` to the function object, once per function and
//! interpreter: the first call imports the module (the import machinery, `builtins.__import__`),
//! looks the function up and asks `_describe` how it runs; later calls of the same function find
//! it in the interpreter's [`FnCache`] after two dictionary lookups.

use std::cell::RefCell;
use std::ffi::CString;

use harrow_ipc::{ErrorKind, FnPath};
use harrow_portal::CallError;
use pyo3_ffi as ffi;

use super::convert;
use super::harness::Setup;
use super::obj::{Obj, err_clear, getattr};
use crate::state::Shared;

/// How many functions one interpreter's cache holds at most; past that it starts afresh (an
/// actor calling that many distinct functions pays the full resolution again, nothing else).
const MAX_CACHED: usize = 512;

/// A function ready to be called, and how it runs.
pub(crate) struct Resolved {
    pub(crate) func: Obj,
    /// A generator function (its items are streamed or collected).
    pub(crate) is_gen: bool,
    /// It takes a `ctx` first (`@harrow.context`, or a first parameter named `ctx`).
    pub(crate) wants_ctx: bool,
}

/// The functions an interpreter's calls have resolved. Holds objects of that interpreter only:
/// it lives in its [`Setup`], on its owning thread, and is dropped with it (GIL held, before
/// the interpreter ends).
///
/// A hit is checked on every call against what a fresh resolution would find: the module must
/// still be `sys.modules[module]` and the function still its attribute (the same objects). A
/// module removed from `sys.modules`, replaced or reloaded with a new function, or a function
/// rebound on its module, is resolved afresh. (What `_describe` read of a function object is
/// taken to stay as it was: its code flags and first parameter, its `@harrow.context` mark.)
///
/// Its maps use foldhash: they are looked up on every call, and they hold at most
/// [`MAX_CACHED`] functions, of names this interpreter's calls resolved.
#[derive(Default)]
pub(crate) struct FnCache {
    modules: RefCell<foldhash::HashMap<String, CachedModule>>,
    len: std::cell::Cell<usize>,
}

struct CachedModule {
    /// The module's name as a `str` (the `sys.modules` key).
    name: Obj,
    module: Obj,
    fns: foldhash::HashMap<String, CachedFn>,
}

struct CachedFn {
    /// The function's name as a `str` (the attribute looked up).
    name: Obj,
    func: Obj,
    is_gen: bool,
    wants_ctx: bool,
}

impl FnCache {
    /// The cached resolution of `path`, if it is still what a fresh one would find.
    ///
    /// # Safety
    /// The owning thread of the cache's interpreter, GIL held.
    unsafe fn lookup(&self, path: &FnPath) -> Option<Resolved> {
        // Copy what is needed out of the cache first: looking an attribute up may run Python
        // code (a module `__getattr__`), which must find the cache unborrowed.
        let (mod_name, module, fn_name, func, is_gen, wants_ctx) = {
            let map = self.modules.borrow();
            let m = map.get(path.module())?;
            let f = m.fns.get(path.function())?;
            // GIL held (caller); live objects of this interpreter.
            (
                // SAFETY: see above.
                unsafe { Obj::borrowed(m.name.as_ptr()) }.ok()?,
                // SAFETY: see above.
                unsafe { Obj::borrowed(m.module.as_ptr()) }.ok()?,
                // SAFETY: see above.
                unsafe { Obj::borrowed(f.name.as_ptr()) }.ok()?,
                // SAFETY: see above.
                unsafe { Obj::borrowed(f.func.as_ptr()) }.ok()?,
                f.is_gen,
                f.wants_ctx,
            )
        };
        // SAFETY: GIL held (caller); this interpreter's `sys.modules` (borrowed).
        let modules = unsafe { ffi::PyImport_GetModuleDict() };
        // SAFETY: GIL held; `modules` is a dict, `mod_name` a str; a borrowed result, only
        // compared.
        let now = unsafe { ffi::PyDict_GetItemWithError(modules, mod_name.as_ptr()) };
        if now != module.as_ptr() {
            // SAFETY: GIL held; a lookup error (if any) is not this call's.
            unsafe { err_clear() };
            return None;
        }
        // A plain module's function is an entry of its dictionary, read there without the
        // attribute machinery: a hit is that entry being the cached function object, which an
        // attribute lookup returns as well (the module type's own attributes that come first,
        // `__class__`, `__dict__` and `__annotations__`, give the type, which was cached only if
        // it is the entry too, the dictionary, never cached, and that same entry). Anything
        // else (a module subclass, an entry gone or rebound) is looked up as an attribute, as a
        // fresh resolution would.
        // SAFETY: GIL held; `module` is valid.
        if unsafe { ffi::PyModule_CheckExact(module.as_ptr()) } != 0 {
            // SAFETY: GIL held; a module's dictionary, borrowed, alive with the module.
            let globals = unsafe { ffi::PyModule_GetDict(module.as_ptr()) };
            if !globals.is_null() {
                // SAFETY: GIL held; a dict and a `str`; a borrowed result, only compared.
                let entry = unsafe { ffi::PyDict_GetItemWithError(globals, fn_name.as_ptr()) };
                if entry == func.as_ptr() {
                    return Some(Resolved {
                        func,
                        is_gen,
                        wants_ctx,
                    });
                }
                // SAFETY: GIL held; a lookup error (if any) is not this call's.
                unsafe { err_clear() };
            }
        }
        // SAFETY: GIL held; both objects valid; a new reference or null with an error set.
        let attr = unsafe { ffi::PyObject_GetAttr(module.as_ptr(), fn_name.as_ptr()) };
        // SAFETY: as above.
        let Ok(attr) = (unsafe { Obj::owned(attr) }) else {
            // SAFETY: GIL held; the fresh resolution reports it.
            unsafe { err_clear() };
            return None;
        };
        if attr.as_ptr() != func.as_ptr() {
            return None;
        }
        Some(Resolved {
            func: attr,
            is_gen,
            wants_ctx,
        })
    }

    /// Remembers `resolved` as `path`'s resolution, `module` being `sys.modules[mod_name]`.
    ///
    /// Both names are kept interned: `mod_name` is the key the import stored (when it imported
    /// the module), and a function's name in its module's globals is an interned identifier, so
    /// a hit's two dictionary lookups find their entries by identity.
    ///
    /// # Safety
    /// The owning thread of the cache's interpreter, GIL held.
    unsafe fn store(&self, path: &FnPath, mod_name: Obj, module: &Obj, resolved: &Resolved) {
        // GIL held (caller) for each call below.
        // SAFETY: see above; a new reference, or null with an error set.
        let Ok(fn_name) = (unsafe { convert::interned_str(path.function()) }) else {
            // SAFETY: see above; not caching is no failure of the call.
            unsafe { err_clear() };
            return;
        };
        // SAFETY: see above; a live object of this interpreter.
        let Ok(module) = (unsafe { Obj::borrowed(module.as_ptr()) }) else {
            return;
        };
        // SAFETY: as above.
        let Ok(func) = (unsafe { Obj::borrowed(resolved.func.as_ptr()) }) else {
            return;
        };
        let mut map = self.modules.borrow_mut();
        if self.len.get() >= MAX_CACHED {
            map.clear();
            self.len.set(0);
        }
        match map.get_mut(path.module()) {
            Some(entry) if entry.module.as_ptr() == module.as_ptr() => {}
            Some(entry) => {
                // Another module object under that name now: its functions are not this one's.
                self.len.set(self.len.get() - entry.fns.len());
                entry.fns.clear();
                entry.module = module;
            }
            None => {
                map.insert(
                    path.module().to_owned(),
                    CachedModule {
                        name: mod_name,
                        module,
                        fns: foldhash::HashMap::default(),
                    },
                );
            }
        }
        let Some(entry) = map.get_mut(path.module()) else {
            return;
        };
        let fresh = CachedFn {
            name: fn_name,
            func,
            is_gen: resolved.is_gen,
            wants_ctx: resolved.wants_ctx,
        };
        if entry
            .fns
            .insert(path.function().to_owned(), fresh)
            .is_none()
        {
            self.len.set(self.len.get() + 1);
        }
    }
}

impl Setup {
    /// Resolves `path` to the function to call: from the interpreter's cache when it is still
    /// valid, else by importing the module (as user code: a cancel may interrupt it), looking
    /// the function up and describing it.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    pub(crate) unsafe fn resolve(
        &self,
        shared: &Shared,
        path: &FnPath,
    ) -> Result<Resolved, CallError> {
        // SAFETY: forwarded (caller).
        if let Some(hit) = unsafe { self.fns.lookup(path) } {
            return Ok(hit);
        }
        let module_name = path.module();
        // Every call below: GIL held on the owning thread (caller); every object lives in an
        // `Obj`.
        if module_name.contains('\0') {
            return Err(bad_name("module name has NUL"));
        }
        // Imported by its interned name: an import of a module not yet loaded stores that
        // object as its `sys.modules` key, which the cache then looks up by identity.
        // SAFETY: see above.
        let name = unsafe { convert::interned_str(module_name) }
            // SAFETY: see above; an exception is set.
            .map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
        let m = super::calls::user(shared, || {
            // SAFETY: see above; `name` is a `str`.
            let m = unsafe { ffi::PyImport_Import(name.as_ptr()) };
            // SAFETY: a new reference (or null with an error set).
            unsafe { Obj::owned(m) }
        });
        // SAFETY: see above; an exception is set.
        let m = m.map_err(|_| unsafe { self.error_in(ErrorKind::NotFound, Some(module_name)) })?;
        let cfn = CString::new(path.function()).map_err(|_| bad_name("function name has NUL"))?;
        // SAFETY: see above; `m` valid.
        let f = unsafe { getattr(m.as_ptr(), &cfn) }.map_err(|_| {
            // SAFETY: see above.
            unsafe { err_clear() };
            CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!(
                    "module {module_name:?} has no function {:?}",
                    path.function()
                ),
            )
        })?;
        // SAFETY: see above; `f` valid.
        if unsafe { ffi::PyCallable_Check(f.as_ptr()) } == 0 {
            return Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{path} is not callable"),
            ));
        }
        // SAFETY: see above.
        let described = unsafe { self.describe(&f) };
        // SAFETY: see above; an exception is set.
        let (is_gen, wants_ctx) =
            described.map_err(|_| unsafe { self.error(ErrorKind::Raised) })?;
        let resolved = Resolved {
            func: f,
            is_gen,
            wants_ctx,
        };
        // Cache it against the module `sys.modules` holds (what a later lookup compares with),
        // which is the module the import returned unless the import itself replaced it.
        // SAFETY: see above; this interpreter's `sys.modules` (borrowed).
        let modules = unsafe { ffi::PyImport_GetModuleDict() };
        // SAFETY: see above; `name` is a `str`; a borrowed result (or null, maybe with an
        // error set, which is not this call's).
        let held = unsafe { ffi::PyDict_GetItemWithError(modules, name.as_ptr()) };
        if held == m.as_ptr() {
            // SAFETY: see above.
            unsafe { self.fns.store(path, name, &m, &resolved) };
        } else {
            // SAFETY: see above.
            unsafe { err_clear() };
        }
        Ok(resolved)
    }
}

fn bad_name(msg: &str) -> CallError {
    CallError::new(ErrorKind::BadArguments, "BadArguments", msg)
}
