//! Python stacks of live subinterpreter threads, without their GIL (for hang dumps).
//!
//! `_Py_DumpTracebackThreads` (async-signal-safe, reads frames without the GIL) is exported by
//! libpython 3.12 but hidden in 3.13, so we reach it through CPython's own `faulthandler`: at
//! main-interpreter init, [`install`] registers `faulthandler.register(SIG, fd, all_threads=True,
//! chain=True)` on a real-time signal, writing into a pipe, chained to our own handler that writes
//! an end marker. [`dump`] sends that signal to ONE interpreter thread (`tgkill`): the handler runs
//! on it and dumps every thread of the interpreter that thread belongs to (found through its
//! thread-specific storage, so it works while that thread is busy in Python or blocked), then the
//! chained handler ends the dump. The caller reads the pipe until the marker, bounded.
//!
//! Safety of signalling: the target thread is alive and its interpreter not ended for the whole
//! dump — we hold `Shared::interp` (which `Py_EndInterpreter` waits for) and `Shared::tid` (which
//! the thread clears under the lock before it exits).

use std::ffi::{CString, c_int};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3_ffi as ffi;

use crate::state::Shared;

/// How long one interpreter's dump may take.
const DUMP_BOUND: Duration = Duration::from_secs(2);

/// Written by the chained handler after faulthandler's output.
const END_MARKER: &[u8] = b"\n<harrow: end of python stack dump>\n";

/// Write end of the dump pipe, for the signal handler (-1 before install).
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

struct Installed {
    signal: c_int,
    read_fd: c_int,
}

static INSTALLED: OnceLock<Result<Installed, String>> = OnceLock::new();
/// One dump at a time (faulthandler's handler is not reentrant, and the pipe is shared).
static DUMPING: Mutex<()> = Mutex::new(());

/// The chained handler: marks the end of a dump. Async-signal-safe (an atomic load, `write`).
extern "C" fn end_of_dump(_signal: c_int) {
    let fd = PIPE_W.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `write` is async-signal-safe; the buffer is static. A full (non-blocking) pipe
        // drops the marker: the reader's bound covers it.
        unsafe {
            let _ = libc::write(fd, END_MARKER.as_ptr().cast(), END_MARKER.len());
        }
    }
}

/// Installs the dump machinery once. Called with the main interpreter's GIL held, right after
/// it was initialised. Failure only disables [`dump`] (it reports why).
///
/// # Safety
/// Main interpreter initialised, its GIL held by this thread.
pub(crate) unsafe fn install() {
    // SAFETY: forwarded.
    let r = INSTALLED.get_or_init(|| unsafe { try_install() });
    if let Err(e) = r {
        tracing::debug!("python stack dumps unavailable: {e}");
    }
}

unsafe fn try_install() -> Result<Installed, String> {
    let signal = libc::SIGRTMIN() + 4;
    if signal > libc::SIGRTMAX() {
        return Err("no free real-time signal".into());
    }
    let mut fds = [0 as c_int; 2];
    // SAFETY: a plain syscall filling a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    let [r, w] = fds;
    // The writer is a signal handler on a thread we interrupt: it must never block.
    // SAFETY: `w` is our pipe's write end.
    unsafe { libc::fcntl(w, libc::F_SETFL, libc::O_NONBLOCK) };
    // SAFETY: as above.
    unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, 1 << 20) };
    PIPE_W.store(w, Ordering::SeqCst);
    // Our handler first: faulthandler keeps it as `previous` and chains to it.
    // SAFETY: `sigaction` is plain C data; all-zero is a valid (empty) value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = end_of_dump as extern "C" fn(c_int) as usize;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: initialises a local signal set.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only calls async-signal-safe functions (`write`).
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
    }
    let code = CString::new(format!(
        "import faulthandler\nfaulthandler.register({signal}, file={w}, all_threads=True, \
         chain=True)\n"
    ))
    .map_err(|e| e.to_string())?;
    // SAFETY: the main interpreter is initialised and its GIL held by this thread (caller).
    if unsafe { ffi::PyRun_SimpleString(code.as_ptr()) } != 0 {
        return Err("faulthandler.register failed".into());
    }
    Ok(Installed { signal, read_fd: r })
}

/// The Python stacks of every thread of `shared`'s interpreter, read by its owning thread in a
/// signal handler (no GIL needed), or why they cannot be had.
pub(crate) fn dump(shared: &Shared) -> String {
    let installed = match INSTALLED.get() {
        Some(Ok(i)) => i,
        Some(Err(e)) => return format!("(python stacks unavailable: {e})\n"),
        None => return "(python stacks unavailable: Python is not initialised)\n".into(),
    };
    let _one = DUMPING.lock();
    let interp = shared.interp.lock();
    if *interp == 0 {
        return "(interpreter not alive)\n".into();
    }
    let tid = shared.tid.lock();
    if *tid == 0 {
        return "(its owning thread has exited; the interpreter is leaked)\n".into();
    }
    drain(installed.read_fd);
    // SAFETY: `tid` is a live thread of this process (it clears `shared.tid` under the lock we
    // hold before exiting); the signal's handlers are installed and async-signal-safe.
    let rc = unsafe { libc::tgkill(std::process::id() as i32, *tid, installed.signal) };
    if rc != 0 {
        return format!("(tgkill failed: {})\n", std::io::Error::last_os_error());
    }
    let (text, complete) = read_until_marker(installed.read_fd, DUMP_BOUND);
    let mut out = String::from_utf8_lossy(&text).into_owned();
    if !complete {
        out.push_str(&format!("\n(dump incomplete after {DUMP_BOUND:?})\n"));
    }
    out
}

/// Discards whatever an earlier, timed-out dump left in the pipe.
fn drain(fd: c_int) {
    let mut buf = [0u8; 4096];
    while poll_in(fd, 0) {
        // SAFETY: reading into a local buffer from our own pipe, which has data (poll said so).
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

fn poll_in(fd: c_int, timeout_ms: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

fn read_until_marker(fd: c_int, bound: Duration) -> (Vec<u8>, bool) {
    let deadline = harrow_ipc::wait::instant_after(bound);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(at) = find(&out, END_MARKER) {
            out.truncate(at);
            return (out, true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let ms = c_int::try_from(left.as_millis().max(1)).unwrap_or(c_int::MAX);
        if !poll_in(fd, ms) {
            continue;
        }
        // SAFETY: reading into a local buffer from our own pipe, which has data.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
