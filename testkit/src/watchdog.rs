//! Hang watchdog: a per-test time bound that, when it passes, dumps every thread's stack to a file
//! and kills the process, so a hang never wedges the test runner.
//!
//! [`Watchdog::arm`] starts one thread, named [`WATCHDOG_THREAD_NAME`], that waits (on a channel,
//! with a timeout: no polling) for its [`WatchdogGuard`] to be dropped. If the bound passes first
//! it:
//!
//! 1. writes a dump to `<target>/hang-dumps/<test>-<pid>-<UTC timestamp>.txt` (see
//!    [`hang_dump_dir`]) holding: every thread of this process with its name, state, `wchan` and
//!    kernel stack (from `/proc`); every thread's native backtrace from
//!    `gdb -p <pid> -batch -ex "thread apply all bt"` (gdb bounded by [`GDB_BOUND`]; if gdb is
//!    missing the dump says so); and every section registered with [`register_dump_section`]
//!    (the subint backend adds Python stacks there), each bounded by [`SECTION_BOUND`];
//! 2. prints `harrow-watchdog: hang dump: <path>` (and what hung) to stderr;
//! 3. aborts the process: a hung test cannot be unwound from another thread, and `abort` runs no
//!    exit handler that a hung thread could block.
//!
//! Aborting kills every test of the process: a test armed through [`crate::harness`] has its
//! process to itself (under `cargo nextest`, and under `cargo test` through [`crate::isolated`]),
//! so only the hung test dies; a watchdog armed directly in a test that shares its process under
//! `cargo test` takes the other tests of the binary down with it.
//!
//! The environment variable `HARROW_WATCHDOG_GDB` names the gdb program to run (default `gdb`);
//! set it empty to skip gdb.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The name of every thread the watchdog starts; the resource tracker ignores threads so named.
pub const WATCHDOG_THREAD_NAME: &str = "harrow-watchdog";

/// How long gdb may take to attach and print every backtrace before it is killed.
pub const GDB_BOUND: Duration = Duration::from_secs(30);

/// How long one registered dump section may take before the dump moves on without it.
pub const SECTION_BOUND: Duration = Duration::from_secs(10);

/// The environment variable naming the gdb program; empty disables gdb.
pub const GDB_ENV: &str = "HARROW_WATCHDOG_GDB";

/// The prefix of the stderr line that gives the dump's path.
pub const DUMP_LINE_PREFIX: &str = "harrow-watchdog: hang dump: ";

/// A dump section function: returns the text to write under its name.
pub type DumpSectionFn = fn() -> String;

static SECTIONS: Mutex<Vec<(&'static str, DumpSectionFn)>> = Mutex::new(Vec::new());

/// Registers an extra section that every hang dump includes from now on.
///
/// `f` runs on a thread of its own when a dump is written, while the rest of the process is hung;
/// it should not need locks the hung code may hold. If it does not return within
/// [`SECTION_BOUND`], or panics, the dump says so and goes on. Registering a name again replaces
/// the function.
pub fn register_dump_section(name: &'static str, f: DumpSectionFn) {
    let mut sections = SECTIONS.lock().unwrap_or_else(PoisonError::into_inner);
    match sections.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = f,
        None => sections.push((name, f)),
    }
}

/// Entry point of the hang watchdog.
///
/// ```
/// use std::time::Duration;
/// use harrow_testkit::watchdog::Watchdog;
///
/// let guard = Watchdog::arm("doc_example", Duration::from_secs(60))?;
/// // ... the test body: if it is still running after 60 s, the stacks are dumped and the
/// // process aborts.
/// drop(guard); // disarms
/// # Ok::<(), harrow_testkit::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Watchdog;

impl Watchdog {
    /// Arms a watchdog for `test_name`: unless the returned guard is dropped within `bound`, the
    /// stacks are dumped and the process aborts (see the [module docs](self)).
    ///
    /// Arm it before starting a [`ResourceTracker`](crate::tracker::ResourceTracker), so that its
    /// thread is part of the tracker's starting snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::Watchdog`] if the watchdog thread cannot be started.
    pub fn arm(test_name: &str, bound: Duration) -> Result<WatchdogGuard> {
        let (disarm, disarmed) = mpsc::channel::<()>();
        let test_name = test_name.to_owned();
        let thread = thread::Builder::new()
            .name(WATCHDOG_THREAD_NAME.to_owned())
            .spawn(move || {
                // A message never comes: the guard only ever drops its sender.
                if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(bound) {
                    fire(&test_name, bound);
                }
            })
            .map_err(Error::Watchdog)?;
        Ok(WatchdogGuard {
            disarm: Some(disarm),
            thread: Some(thread),
        })
    }
}

/// Disarms its watchdog when dropped, and waits for the watchdog thread to end.
#[derive(Debug)]
#[must_use = "the watchdog is disarmed as soon as the guard is dropped"]
pub struct WatchdogGuard {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        // Dropping the sender wakes the watchdog thread at once; it then ends, so joining is
        // immediate, unless the bound passed just now, in which case the process aborts anyway.
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `f` under a watchdog armed with `bound`.
///
/// # Panics
///
/// If the watchdog thread cannot be started; and as `f` does.
pub fn run_bounded<T>(test_name: &str, bound: Duration, f: impl FnOnce() -> T) -> T {
    let _guard = arm_or_panic(test_name, bound);
    f()
}

/// Runs `fut` to completion on this thread (with `async_io::block_on`) under a watchdog armed
/// with `bound`.
///
/// # Panics
///
/// If the watchdog thread cannot be started; and as `fut` does.
pub fn block_on_bounded<F: Future>(test_name: &str, bound: Duration, fut: F) -> F::Output {
    let _guard = arm_or_panic(test_name, bound);
    async_io::block_on(fut)
}

pub(crate) fn arm_or_panic(test_name: &str, bound: Duration) -> WatchdogGuard {
    Watchdog::arm(test_name, bound).unwrap_or_else(|e| panic!("{test_name}: {e}"))
}

/// Where hang dumps go: `hang-dumps` in the workspace's cargo target directory.
///
/// The target directory is `CARGO_TARGET_DIR` if set; else the nearest ancestor of the running
/// executable holding cargo's `CACHEDIR.TAG`; else `target` in the nearest ancestor of
/// `CARGO_MANIFEST_DIR` (or the current directory) that has one; else the system temp directory.
pub fn hang_dump_dir() -> PathBuf {
    target_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("hang-dumps")
}

fn target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return Some(dir.to_path_buf());
    }
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())?;
    start
        .ancestors()
        .map(|d| d.join("target"))
        .find(|t| t.is_dir())
}

/// Writes a hang dump for `test_name` now, without aborting, and returns its path.
///
/// This is what the watchdog does when its bound passes; `bound` is only written in the header.
///
/// # Errors
///
/// [`Error::Dump`] if the dump file cannot be created or written.
pub fn write_hang_dump(test_name: &str, bound: Duration) -> Result<PathBuf> {
    let gdb = std::env::var_os(GDB_ENV).unwrap_or_else(|| "gdb".into());
    write_hang_dump_with(test_name, bound, Some(gdb).filter(|g| !g.is_empty()))
}

/// [`write_hang_dump`] with the gdb program given (`None`: skip gdb).
fn write_hang_dump_with(
    test_name: &str,
    bound: Duration,
    gdb: Option<OsString>,
) -> Result<PathBuf> {
    let dir = hang_dump_dir();
    let path = dir.join(format!(
        "{}-{}-{}.txt",
        sanitize(test_name),
        std::process::id(),
        utc_timestamp(SystemTime::now())
    ));
    let dump_err = |source| Error::Dump {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(&dir).map_err(dump_err)?;
    let mut file = File::create(&path).map_err(dump_err)?;
    write_dump(&mut file, test_name, bound, gdb.as_deref()).map_err(dump_err)?;
    Ok(path)
}

/// The watchdog fired: dump, say where, abort.
fn fire(test_name: &str, bound: Duration) -> ! {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(
        stderr,
        "harrow-watchdog: test {test_name:?} still running after its bound of {bound:?}; \
         dumping every thread's stack"
    );
    let _ = stderr.flush();
    drop(stderr);
    let dumped = write_hang_dump(test_name, bound);
    let mut stderr = io::stderr().lock();
    let _ = match &dumped {
        Ok(path) => writeln!(stderr, "{DUMP_LINE_PREFIX}{}", path.display()),
        Err(e) => writeln!(
            stderr,
            "harrow-watchdog: could not write the hang dump: {e}"
        ),
    };
    let _ = writeln!(
        stderr,
        "harrow-watchdog: test {test_name:?} HUNG (bound {bound:?}); aborting the process"
    );
    let _ = stderr.flush();
    std::process::abort()
}

fn write_dump(
    file: &mut File,
    test_name: &str,
    bound: Duration,
    gdb: Option<&OsStr>,
) -> io::Result<()> {
    let pid = std::process::id();
    writeln!(file, "harrow hang dump")?;
    writeln!(file, "test: {test_name}")?;
    writeln!(file, "bound: {bound:?}")?;
    writeln!(file, "pid: {pid}")?;
    writeln!(file, "time: {}", utc_timestamp(SystemTime::now()))?;
    writeln!(
        file,
        "\n== threads (kernel view, from /proc) ==\n{}",
        proc_threads(pid)
    )?;
    writeln!(file, "== native stacks (gdb) ==")?;
    file.flush()?;
    let gdb_note = match gdb {
        Some(program) => run_gdb(program, pid, file),
        None => format!("gdb skipped: {GDB_ENV} is set empty"),
    };
    writeln!(file, "{gdb_note}")?;
    let sections: Vec<(&'static str, DumpSectionFn)> = SECTIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (name, f) in sections {
        let text = run_section(f);
        writeln!(file, "\n== {name} ==\n{}", text.trim_end())?;
    }
    file.flush()
}

/// Every thread with its name, state, wchan and kernel stack.
fn proc_threads(pid: u32) -> String {
    let task = PathBuf::from(format!("/proc/{pid}/task"));
    let mut tids: Vec<u32> = match fs::read_dir(&task) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => return format!("cannot list {}: {e}\n", task.display()),
    };
    tids.sort_unstable();
    let mut out = String::new();
    for tid in tids {
        let dir = task.join(tid.to_string());
        let read = |file: &str| fs::read_to_string(dir.join(file)).map(|s| s.trim_end().to_owned());
        let name = read("comm").unwrap_or_else(|e| format!("<{e}>"));
        let state = read("stat")
            .ok()
            .and_then(|s| {
                Some(
                    s.get(s.rfind(')')? + 1..)?
                        .split_whitespace()
                        .next()?
                        .to_owned(),
                )
            })
            .unwrap_or_else(|| "?".to_owned());
        let wchan = read("wchan").unwrap_or_else(|e| format!("<{e}>"));
        let _ = writeln!(out, "thread {tid} {name:?} state {state} wchan {wchan}");
        match read("stack") {
            Ok(stack) if !stack.is_empty() => {
                for line in stack.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(out, "    (kernel stack unavailable: {e})");
            }
        }
    }
    out
}

/// Runs gdb with its output appended to `file`; returns a closing note for the dump.
fn run_gdb(program: &OsStr, pid: u32, file: &File) -> String {
    let (stdout, stderr) = match (file.try_clone(), file.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return format!("gdb not run: cannot share the dump file: {e}");
        }
    };
    let spawned = Command::new(program)
        .args(["-p", &pid.to_string(), "-batch", "-nx", "-q"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return format!(
                "gdb is missing ({} not found): only the kernel's view above is available; \
                 install gdb (scripts/setup)",
                program.to_string_lossy()
            );
        }
        Err(e) => return format!("gdb could not be started: {e}"),
    };
    let gdb_pid = child.id();
    let (done, exited) = mpsc::channel();
    let waiter = thread::Builder::new()
        .name(WATCHDOG_THREAD_NAME.to_owned())
        .spawn(move || {
            let _ = done.send(child.wait());
        });
    if let Err(e) = waiter {
        return format!("gdb started but cannot be waited for: {e}");
    }
    match exited.recv_timeout(GDB_BOUND) {
        Ok(Ok(status)) => format!("(gdb exited: {status})"),
        Ok(Err(e)) => format!("(waiting for gdb failed: {e})"),
        Err(_) => {
            let pid = i32::try_from(gdb_pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = exited.recv_timeout(Duration::from_secs(5));
            format!("(gdb did not finish within {GDB_BOUND:?} and was killed)")
        }
    }
}

/// Runs one registered section on a thread of its own, bounded by [`SECTION_BOUND`].
fn run_section(f: DumpSectionFn) -> String {
    let (done, result) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name(WATCHDOG_THREAD_NAME.to_owned())
        .spawn(move || {
            let _ = done.send(f());
        });
    if let Err(e) = spawned {
        return format!("(section not run: cannot start its thread: {e})");
    }
    match result.recv_timeout(SECTION_BOUND) {
        Ok(text) => text,
        Err(RecvTimeoutError::Timeout) => {
            format!("(section did not finish within {SECTION_BOUND:?})")
        }
        Err(RecvTimeoutError::Disconnected) => "(section panicked)".to_owned(),
    }
}

/// A test name made safe for a file name: `a::b c` becomes `a__b_c`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if s.is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

/// `YYYYMMDDTHHMMSS.mmmZ` in UTC.
fn utc_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101T000000.000Z");
        // 2024-02-29 12:34:56.789 UTC (a leap day)
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(utc_timestamp(t), "20240229T123456.789Z");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("mod::test name/x"), "mod__test_name_x");
        assert_eq!(sanitize(""), "unnamed");
    }

    #[test]
    fn guard_drop_disarms_and_ends_the_thread() {
        let guard = Watchdog::arm("guard_drop_disarms", Duration::from_secs(3600)).unwrap();
        drop(guard); // joins the watchdog thread; returning at all is the assertion
        assert_eq!(
            run_bounded("run_bounded", Duration::from_secs(3600), || 7),
            7
        );
        let v = block_on_bounded("block_on_bounded", Duration::from_secs(3600), async { 8 });
        assert_eq!(v, 8);
    }

    #[test]
    fn dump_on_demand_has_threads_and_sections() {
        register_dump_section("unit-test section", || "hello from the section".to_owned());
        register_dump_section("unit-test panicking section", || panic!("boom"));
        // No gdb here: unit tests share a process with others; the fixture tests cover gdb.
        let path =
            write_hang_dump_with("unit::dump_on_demand", Duration::from_secs(1), None).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("harrow hang dump"), "{text}");
        assert!(
            text.contains("== threads (kernel view, from /proc) =="),
            "{text}"
        );
        assert!(text.contains("gdb skipped"), "{text}");
        assert!(text.contains("hello from the section"), "{text}");
        assert!(text.contains("(section panicked)"), "{text}");
        fs::remove_file(path).unwrap();
    }
}
