//! The per-interpreter harness around the calls: the `harrow` module, `sys.path`, the event
//! loop's wake pipe, and stopping the Python threads user code started before the interpreter
//! ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pyo3_ffi as ffi;

use super::convert::{self, fetch_text};
use super::exc::ExcText;
use super::module::{HarrowModule, ServerHooks};
use super::obj::{Obj, Released, call0, call1, err_clear, getattr};
use super::resolve::FnCache;
use crate::config::InterpConfig;
use crate::state::Shared;

/// The per-interpreter harness.
pub(crate) struct Setup {
    pub(crate) harrow: HarrowModule,
    /// The functions this interpreter's calls resolved (see [`FnCache`]).
    pub(crate) fns: FnCache,
    /// Describes the exceptions that leave calls (see [`ExcText`]).
    pub(crate) exc: ExcText,
    _wake: WakePipe,
}

/// The pipe that wakes the interpreter's event loop when a call is queued or cancelled: the
/// loop watches its read end; any thread writes a byte to its write end
/// ([`Shared::wake`](crate::state::Shared)). Closed when the interpreter's harness goes away.
struct WakePipe {
    read: std::ffi::c_int,
    shared: Arc<Shared>,
}

impl WakePipe {
    fn new(shared: &Arc<Shared>) -> Result<WakePipe, String> {
        let mut fds = [0 as std::ffi::c_int; 2];
        // SAFETY: a plain syscall filling a local array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        *shared.wake_w.lock() = fds[1];
        Ok(WakePipe {
            read: fds[0],
            shared: Arc::clone(shared),
        })
    }
}

impl Drop for WakePipe {
    fn drop(&mut self) {
        // No writer may use the write end once it is closed: cleared under the lock writers take.
        let mut w = self.shared.wake_w.lock();
        // SAFETY: closing an fd this pipe owns, once.
        unsafe { libc::close(*w) };
        // SAFETY: as above.
        unsafe { libc::close(self.read) };
        *w = -1;
    }
}

impl Setup {
    /// # Safety
    /// Owning thread, GIL held.
    pub(crate) unsafe fn new(
        shared: &Arc<Shared>,
        config: &InterpConfig,
        hooks: &'static ServerHooks,
    ) -> Result<Setup, String> {
        // SAFETY: GIL held (caller), an exception is set whenever this is called.
        let err = || unsafe { fetch_text() };
        // Every call below: GIL held (caller).
        // SAFETY: see above.
        let harrow = unsafe { HarrowModule::build(shared, hooks) }.map_err(|_| err())?;
        // SAFETY: see above; a borrowed reference to `sys.path`.
        let path = unsafe { ffi::PySys_GetObject(c"path".as_ptr()) };
        // SAFETY: see above; `path` checked non-null first.
        if path.is_null() || unsafe { ffi::PyList_Check(path) } == 0 {
            return Err("sys.path is not a list".into());
        }
        for (i, p) in config.sys_path.iter().enumerate() {
            // SAFETY: see above.
            let s = unsafe { convert::str_obj(&p.to_string_lossy()) }.map_err(|_| err())?;
            // SAFETY: see above; `path` is a list, `s` valid (the list takes its own reference).
            if unsafe { ffi::PyList_Insert(path, i as ffi::Py_ssize_t, s.as_ptr()) } != 0 {
                return Err(err());
            }
        }
        let sites = config
            .site_dirs(crate::python_version())
            .map_err(|e| e.to_string())?;
        if !sites.is_empty() {
            // SAFETY: see above.
            let site = unsafe { ffi::PyImport_ImportModule(c"site".as_ptr()) };
            // SAFETY: a new reference (or null with an error set).
            let site = unsafe { Obj::owned(site) }.map_err(|_| err())?;
            // SAFETY: see above; `site` is a module.
            let add = unsafe { getattr(site.as_ptr(), c"addsitedir") }.map_err(|_| err())?;
            for dir in sites {
                // SAFETY: see above.
                let d = unsafe { convert::str_obj(&dir.to_string_lossy()) }.map_err(|_| err())?;
                // SAFETY: see above; `add` is `site.addsitedir`, `d` a str.
                unsafe { call1(&add, d.as_ptr()) }.map_err(|_| err())?;
            }
        }
        let wake = WakePipe::new(shared)?;
        // SAFETY: see above.
        let fd = unsafe { ffi::PyLong_FromLong(std::ffi::c_long::from(wake.read)) };
        // SAFETY: a new reference (or null with an error set).
        let fd = unsafe { Obj::owned(fd) }.map_err(|_| err())?;
        let module = harrow.module.as_ptr();
        // SAFETY: see above; both objects valid.
        if unsafe { ffi::PyObject_SetAttrString(module, c"_wake_fd".as_ptr(), fd.as_ptr()) } != 0 {
            return Err(err());
        }
        // SAFETY: see above.
        let exc = unsafe { ExcText::new() }.map_err(|_| err())?;
        Ok(Setup {
            harrow,
            fns: FnCache::default(),
            exc,
            _wake: wake,
        })
    }
}

impl Setup {
    /// Cancels and joins Python threads started by user code, within the bound. Returns the
    /// threads still alive then, by name (non-empty: the interpreter must leak).
    ///
    /// # Safety
    /// Owning thread, GIL held, no user code running.
    pub(crate) unsafe fn stop_threads(
        &self,
        shared: &Shared,
        config: &InterpConfig,
    ) -> Vec<String> {
        let deadline = harrow_ipc::wait::instant_after(config.thread_join_bound);
        // Every call below: owning thread, GIL held (caller), no user code running.
        loop {
            // SAFETY: see above.
            let others = unsafe { count_other_tstates() };
            if others == 0 {
                *shared.stage.lock() = None;
                return Vec::new();
            }
            // SAFETY: see above.
            let mut names = unsafe { self.thread_names() };
            if names.len() < others {
                names.push(format!(
                    "{} thread(s) not started by threading",
                    others - names.len()
                ));
            }
            if Instant::now() >= deadline {
                return names;
            }
            *shared.stage.lock() = Some(format!(
                "no call: waiting for {others} Python thread(s) to end ({})",
                names.join(", ")
            ));
            // Ask every threading.Thread to stop (async exception), then join a slice.
            // SAFETY: see above.
            unsafe { self.cancel_threads(shared) };
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50))
                .as_secs_f64();
            // SAFETY: see above.
            let t = unsafe { ffi::PyFloat_FromDouble(slice) };
            // SAFETY: a new reference (or null with an error set).
            if let Ok(t) = unsafe { Obj::owned(t) } {
                // SAFETY: see above; a harness function, `t` valid.
                let _ = unsafe { call1(&self.harrow.join_threads, t.as_ptr()) };
            }
            // SAFETY: see above.
            unsafe { err_clear() };
            // Threads that ended may still be deleting their thread state: yield briefly.
            // SAFETY: see above; nothing touches Python until the guard drops.
            let _released = unsafe { Released::save() };
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Raises `harrow.Cancelled` asynchronously in every live `threading` thread.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn cancel_threads(&self, shared: &Shared) {
        // SAFETY: GIL held (caller); a harness function.
        let Ok(list) = (unsafe { call0(&self.harrow.live_threads) }) else {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
            return;
        };
        // SAFETY: GIL held; `list` is the list `_live_threads` returns.
        let n = unsafe { ffi::PyList_Size(list.as_ptr()) };
        let cancelled: *mut ffi::PyObject = shared.types.cancelled.load(Ordering::SeqCst).cast();
        for i in 0..n {
            // SAFETY: GIL held; `i` in range; a borrowed item kept alive by `list`.
            let t = unsafe { ffi::PyList_GetItem(list.as_ptr(), i) };
            // SAFETY: GIL held; `t` is a live `Thread`.
            if let Ok(ident) = unsafe { getattr(t, c"ident") } {
                // SAFETY: GIL held; `ident` valid.
                let id = unsafe { ffi::PyLong_AsUnsignedLong(ident.as_ptr()) };
                // SAFETY: GIL held.
                let ok = id != std::ffi::c_ulong::MAX || !unsafe { convert::err_set() };
                if !cancelled.is_null() && ok {
                    // SAFETY: GIL held; `cancelled` is a live type of this interpreter; the
                    // call only looks up thread states of this interpreter by id.
                    unsafe { ffi::PyThreadState_SetAsyncExc(id as _, cancelled) };
                }
            }
            // SAFETY: GIL held.
            unsafe { err_clear() };
        }
    }
}

impl Setup {
    /// The names of the live `threading` threads other than this one.
    ///
    /// # Safety
    /// Owning thread, GIL held.
    unsafe fn thread_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: GIL held (caller); `live_threads` is a function of this interpreter.
        let Ok(list) = (unsafe { call0(&self.harrow.live_threads) }) else {
            // SAFETY: GIL held, an exception is set.
            unsafe { err_clear() };
            return out;
        };
        // SAFETY: GIL held; `list` is the list `_live_threads` returns.
        let n = unsafe { ffi::PyList_Size(list.as_ptr()) };
        for i in 0..n {
            // SAFETY: GIL held; `i` is in range; borrowed item.
            let t = unsafe { ffi::PyList_GetItem(list.as_ptr(), i) };
            // SAFETY: GIL held; `t` is a live `Thread`.
            let name = unsafe { getattr(t, c"name") };
            match name {
                // SAFETY: GIL held; `name` is valid (its type is checked by `utf8`'s caller).
                Ok(name) if unsafe { ffi::PyUnicode_Check(name.as_ptr()) } != 0 => {
                    // SAFETY: GIL held; `name` is a `str`.
                    if let Ok(text) = unsafe { convert::utf8(name.as_ptr()) } {
                        out.push(text);
                    }
                }
                _ => {}
            }
            // SAFETY: GIL held.
            unsafe { err_clear() };
        }
        out
    }
}

/// How many thread states of the current interpreter exist besides the current one (and the
/// main interpreter's kept initial one).
///
/// # Safety
/// GIL held.
pub unsafe fn count_other_tstates() -> usize {
    // The thread-state list is read under the GIL (caller).
    // SAFETY: GIL held: a thread state is current.
    let me = unsafe { ffi::PyThreadState_Get() };
    // SAFETY: `me` is valid.
    let interp = unsafe { ffi::PyThreadState_GetInterpreter(me) };
    // The main interpreter keeps the detached thread state of the thread that initialised it
    // (never used again): it is no Python thread of the actor's.
    let kept = super::kept_main_tstate();
    let mut n = 0;
    // SAFETY: GIL held; `interp` is alive.
    let mut t = unsafe { ffi::PyInterpreterState_ThreadHead(interp) };
    while !t.is_null() {
        if t != me && t as usize != kept {
            n += 1;
        }
        // SAFETY: GIL held; `t` is a live thread state of the list.
        t = unsafe { ffi::PyThreadState_Next(t) };
    }
    n
}
