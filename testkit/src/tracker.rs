//! Resource tracker: snapshot what this process holds before a test and require the same after it.
//!
//! A [`ResourceSnapshot`] records, from `/proc`:
//!
//! - the OS threads of this process (`/proc/self/task`), each with its name (`comm`, which the
//!   kernel truncates to 15 bytes);
//! - the open file descriptors (`/proc/self/fd`), each with its `readlink` target;
//! - the child processes (every `/proc/<pid>/stat` whose parent is this process), each with its
//!   `comm` and state, so a zombie shows up as a zombie (`Z`);
//! - every named counter registered with [`register_counter`] (a backend's own resources, e.g. the
//!   subint backend's "live subinterpreters").
//!
//! [`ResourceTracker::start`] takes the first snapshot; [`ResourceTracker::check`] re-snapshots
//! until nothing is held that was not held at the start, or until the settle bound passes, and
//! then names what leaked in a [`LeakReport`]. Resources that *disappeared* are fine.
//!
//! # One test per process
//!
//! The tracker sees the whole process. `cargo test` runs the tests of one binary in parallel on
//! threads of its own, so another test's threads, fds and children would look like leaks (or
//! hide them). A test that uses the tracker must run alone in its process: `cargo nextest` does
//! that by default, and [`crate::harness`] (through [`crate::isolated`]) re-runs the test alone in
//! a child process under `cargo test`. A test that uses the tracker directly wraps itself in
//! [`crate::isolated`]. See [`crate::isolate`] for why the tracker does not try to tell tests
//! apart instead.
//!
//! # Process-global singletons
//!
//! Lazily created process-wide state (the `async-io` reactor thread and its epoll fd, say) would
//! look like a leak if it is first created inside the tracked section. [`ResourceTracker::start`]
//! therefore runs every warm-up registered with [`register_warm_up`] before its snapshot; the
//! `async-io` reactor is warmed up by default. Threads whose name is registered with
//! [`ignore_thread_named`] are never reported; the watchdog's thread (`harrow-watchdog`) is
//! ignored by default, though arming the watchdog *before* starting the tracker (as
//! [`crate::harness`] does) makes that unnecessary.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How often [`ResourceTracker::check`] re-reads `/proc` while it waits for resources to settle.
///
/// `/proc` offers no change notification, so this wait polls.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// A counter function: returns the current value of some resource count.
pub type CounterFn = fn() -> i64;

static COUNTERS: Mutex<Vec<(&'static str, CounterFn)>> = Mutex::new(Vec::new());
static IGNORED_THREADS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
static WARM_UPS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Locks a registry; a registry holds plain data, so a panic elsewhere cannot leave it torn.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a named counter that every [`ResourceSnapshot`] records from now on.
///
/// A snapshot calls `f` and stores its value under `name`; [`ResourceTracker::check`] reports the
/// counter as leaked when its value is higher than at the start. Registering a name again
/// replaces the function. `f` must be cheap and must not block: it runs on every settle poll.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// static LIVE_WIDGETS: AtomicI64 = AtomicI64::new(0);
/// harrow_testkit::tracker::register_counter("live widgets", || LIVE_WIDGETS.load(Ordering::SeqCst));
/// ```
pub fn register_counter(name: &'static str, f: CounterFn) {
    let mut counters = lock(&COUNTERS);
    match counters.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = f,
        None => counters.push((name, f)),
    }
}

/// Makes the tracker ignore every thread whose name (`comm`, at most 15 bytes) equals `name`.
///
/// For process-global helper threads that come and go outside a test's control. `harrow-watchdog`
/// is always ignored.
pub fn ignore_thread_named(name: &'static str) {
    let mut ignored = lock(&IGNORED_THREADS);
    if !ignored.contains(&name) {
        ignored.push(name);
    }
}

/// Registers a function that [`ResourceTracker::start`] runs before its first snapshot.
///
/// Use it to create lazily initialised process-global state (a reactor, a runtime) up front, so
/// that it does not look leaked. It runs at every `start`, so it must be idempotent and cheap
/// once done. The `async-io` reactor is always warmed up.
pub fn register_warm_up(f: fn()) {
    let mut warm_ups = lock(&WARM_UPS);
    if !warm_ups.iter().any(|g| std::ptr::fn_addr_eq(*g, f)) {
        warm_ups.push(f);
    }
}

/// Starts the `async-io` reactor and its `async-io` thread if they are not running yet.
fn warm_up_async_io() {
    async_io::block_on(async {
        // A timer creates the reactor when it registers, on its first poll, unless its deadline
        // has already passed by then: on a loaded machine this thread can be descheduled past a
        // 1 ms deadline, and the reactor (its epoll, eventfd and timerfd) was then created later,
        // inside the tracked section, and reported leaked. A far deadline always registers.
        let mut far = async_io::Timer::after(Duration::from_secs(3600));
        let _ = futures_lite::future::poll_once(&mut far).await;
        async_io::Timer::after(Duration::from_millis(1)).await;
    });
}

fn is_ignored_thread(name: &str) -> bool {
    name == crate::watchdog::WATCHDOG_THREAD_NAME || lock(&IGNORED_THREADS).contains(&name)
}

/// One OS thread of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadInfo {
    /// The kernel thread id.
    pub tid: u32,
    /// The thread's name as the kernel has it (`comm`, truncated to 15 bytes).
    pub name: String,
}

/// One open file descriptor of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FdInfo {
    /// The descriptor number.
    pub fd: i32,
    /// What it refers to: the `readlink` of `/proc/self/fd/<fd>` (a path, `pipe:[…]`,
    /// `socket:[…]`, `anon_inode:[eventpoll]`…).
    pub target: String,
}

/// One child process of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildInfo {
    /// The child's pid.
    pub pid: u32,
    /// The child's command name (`comm`).
    pub comm: String,
    /// The child's state letter from `/proc/<pid>/stat`: `R`, `S`, `D`, `T`, `Z` (zombie)…
    pub state: char,
}

impl ChildInfo {
    /// Whether the child has exited but has not been waited for.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// A counter whose value rose between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterLeak {
    /// The name given to [`register_counter`].
    pub name: &'static str,
    /// The value at the start (0 if the counter was registered after the first snapshot).
    pub before: i64,
    /// The value at the end.
    pub after: i64,
}

/// What this process holds at one moment: threads, fds, children and registered counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSnapshot {
    threads: BTreeMap<u32, String>,
    fds: BTreeMap<i32, String>,
    children: BTreeMap<u32, ChildInfo>,
    counters: BTreeMap<&'static str, i64>,
}

impl ResourceSnapshot {
    /// Reads `/proc` and every registered counter.
    ///
    /// # Errors
    ///
    /// [`Error::Proc`] if `/proc/self/task`, `/proc/self/fd` or `/proc` cannot be listed (not
    /// Linux, or `/proc` not mounted). Entries that vanish while being read (a thread or child
    /// that exits meanwhile) are skipped, not errors.
    pub fn take() -> Result<Self> {
        // fds first, so that no file this function opens itself is open while they are listed.
        let fds = read_fds()?;
        let threads = read_threads()?;
        let children = read_children()?;
        let counters = lock(&COUNTERS)
            .iter()
            .map(|(name, f)| (*name, f()))
            .collect();
        Ok(Self {
            threads,
            fds,
            children,
            counters,
        })
    }

    /// The threads, by tid.
    pub fn threads(&self) -> impl Iterator<Item = ThreadInfo> + '_ {
        self.threads.iter().map(|(tid, name)| ThreadInfo {
            tid: *tid,
            name: name.clone(),
        })
    }

    /// The open file descriptors, by number.
    pub fn fds(&self) -> impl Iterator<Item = FdInfo> + '_ {
        self.fds.iter().map(|(fd, target)| FdInfo {
            fd: *fd,
            target: target.clone(),
        })
    }

    /// The child processes, by pid.
    pub fn children(&self) -> impl Iterator<Item = &ChildInfo> + '_ {
        self.children.values()
    }

    /// The value of a registered counter, if it was registered when this snapshot was taken.
    pub fn counter(&self, name: &str) -> Option<i64> {
        self.counters.get(name).copied()
    }

    /// What this snapshot holds that `before` did not: new threads (by tid, except ignored
    /// names), new fds (or an fd number now pointing elsewhere), new children, and counters that
    /// rose.
    pub fn leaks_since(&self, before: &ResourceSnapshot) -> LeakReport {
        let threads = self
            .threads
            .iter()
            // By tid only: a thread just spawned may still carry its parent's name in one
            // snapshot and its own in the next.
            .filter(|(tid, name)| !before.threads.contains_key(tid) && !is_ignored_thread(name))
            .map(|(tid, name)| ThreadInfo {
                tid: *tid,
                name: name.clone(),
            })
            .collect();
        let fds = self
            .fds
            .iter()
            .filter(|(fd, target)| before.fds.get(fd) != Some(target))
            .map(|(fd, target)| FdInfo {
                fd: *fd,
                target: target.clone(),
            })
            .collect();
        let children = self
            .children
            .values()
            .filter(|c| !before.children.contains_key(&c.pid))
            .cloned()
            .collect();
        let counters = self
            .counters
            .iter()
            .filter_map(|(name, after)| {
                let before = before.counters.get(name).copied().unwrap_or(0);
                (*after > before).then_some(CounterLeak {
                    name,
                    before,
                    after: *after,
                })
            })
            .collect();
        LeakReport {
            threads,
            fds,
            children,
            counters,
            settle: Duration::ZERO,
        }
    }
}

/// What leaked between [`ResourceTracker::start`] and [`ResourceTracker::check`].
///
/// Its `Display` names every leaked resource, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakReport {
    /// Threads that were not there at the start.
    pub threads: Vec<ThreadInfo>,
    /// File descriptors that were not open (or pointed elsewhere) at the start.
    pub fds: Vec<FdInfo>,
    /// Child processes that were not there at the start (zombies included).
    pub children: Vec<ChildInfo>,
    /// Registered counters whose value rose.
    pub counters: Vec<CounterLeak>,
    /// How long the check waited for the resources to settle before reporting.
    pub settle: Duration,
}

impl LeakReport {
    /// Whether nothing leaked.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
            && self.fds.is_empty()
            && self.children.is_empty()
            && self.counters.is_empty()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no resources leaked");
        }
        write!(
            f,
            "resources leaked (still held after settling for {:?}):",
            self.settle
        )?;
        for t in &self.threads {
            write!(f, "\n  thread {:?} (tid {})", t.name, t.tid)?;
        }
        for d in &self.fds {
            write!(f, "\n  fd {} -> {}", d.fd, d.target)?;
        }
        for c in &self.children {
            let zombie = if c.is_zombie() {
                ", a zombie: exited but never waited for"
            } else {
                ""
            };
            write!(
                f,
                "\n  child process {} {:?} (state {}{zombie})",
                c.pid, c.comm, c.state
            )?;
        }
        for c in &self.counters {
            write!(
                f,
                "\n  counter {:?}: {} at start, {} now",
                c.name, c.before, c.after
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LeakReport {}

/// Checks that a section of code gives back every thread, fd, child process and counted resource
/// it took.
///
/// ```no_run
/// use std::time::Duration;
/// use harrow_testkit::tracker::ResourceTracker;
///
/// let tracker = ResourceTracker::start()?;
/// std::thread::spawn(|| {}).join().unwrap();
/// tracker.check(Duration::from_secs(2))?;
/// # Ok::<(), harrow_testkit::Error>(())
/// ```
///
/// See the [module docs](self) for why a test using it must run alone in its process.
#[derive(Debug)]
pub struct ResourceTracker {
    start: ResourceSnapshot,
}

impl ResourceTracker {
    /// Runs the registered warm-ups, then takes the starting snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::Proc`] if `/proc` cannot be read.
    pub fn start() -> Result<Self> {
        warm_up_async_io();
        let warm_ups: Vec<fn()> = lock(&WARM_UPS).clone();
        for f in warm_ups {
            f();
        }
        Ok(Self {
            start: ResourceSnapshot::take()?,
        })
    }

    /// The starting snapshot.
    pub fn start_snapshot(&self) -> &ResourceSnapshot {
        &self.start
    }

    /// Re-snapshots until nothing is held that was not held at the start, for at most `settle`.
    ///
    /// Returns as soon as a snapshot shows no leak; waits up to `settle` for threads to finish
    /// exiting, children to be reaped and fds to close. Resources that disappeared are fine.
    ///
    /// # Errors
    ///
    /// [`Error::Leaked`] with the last [`LeakReport`] if something is still held after `settle`;
    /// [`Error::Proc`] if `/proc` cannot be read.
    pub fn check(&self, settle: Duration) -> Result<()> {
        let begun = Instant::now();
        let deadline = begun + settle;
        loop {
            let mut report = ResourceSnapshot::take()?.leaks_since(&self.start);
            if report.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                report.settle = now - begun;
                return Err(Error::Leaked(Box::new(report)));
            }
            std::thread::sleep(SETTLE_POLL.min(deadline - now));
        }
    }

    /// [`check`](Self::check), panicking with the report if anything leaked.
    ///
    /// Most tests want [`crate::harness`], which does this and also arms the hang watchdog.
    ///
    /// # Panics
    ///
    /// If something is still held after `settle` (the message names it), or if `/proc` cannot
    /// be read.
    #[track_caller]
    pub fn assert_no_leaks(&self, settle: Duration) {
        if let Err(e) = self.check(settle) {
            panic!("{e}");
        }
    }
}

fn proc_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Proc {
        path: path.to_path_buf(),
        source,
    }
}

/// The numeric entries of a `/proc` directory.
fn numeric_entries(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(proc_err(dir))? {
        let entry = entry.map_err(proc_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    Ok(out)
}

fn read_fds() -> Result<BTreeMap<i32, String>> {
    let dir = Path::new("/proc/self/fd");
    // The listing itself holds an fd on this directory; it is left out by its target below.
    let own_dir = PathBuf::from(format!("/proc/{}/fd", std::process::id()));
    let mut fds = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(proc_err(dir))? {
        let entry = entry.map_err(proc_err(dir))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // An fd closed since the listing began: not held, skip it.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target == own_dir {
            continue;
        }
        fds.insert(fd, target.to_string_lossy().into_owned());
    }
    Ok(fds)
}

fn read_threads() -> Result<BTreeMap<u32, String>> {
    let dir = Path::new("/proc/self/task");
    let mut threads = BTreeMap::new();
    for tid in numeric_entries(dir)? {
        // A thread that exited since the listing began: not held, skip it.
        let Ok(comm) = fs::read_to_string(dir.join(tid.to_string()).join("comm")) else {
            continue;
        };
        threads.insert(tid, comm.trim_end_matches('\n').to_owned());
    }
    Ok(threads)
}

fn read_children() -> Result<BTreeMap<u32, ChildInfo>> {
    let me = std::process::id();
    let mut children = BTreeMap::new();
    for pid in numeric_entries(Path::new("/proc"))? {
        // A process that exited since the listing began, or one we may not read: skip it.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((child, ppid)) = parse_stat(pid, &stat)
            && ppid == me
        {
            children.insert(pid, child);
        }
    }
    Ok(children)
}

/// Parses `pid (comm) state ppid …`; `comm` may itself hold spaces and parentheses.
fn parse_stat(pid: u32, stat: &str) -> Option<(ChildInfo, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ChildInfo { pid, comm, state }, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_handles_odd_comm() {
        let (c, ppid) = parse_stat(42, "42 (a (b) c) Z 7 42 42 0 -1").unwrap();
        assert_eq!(
            c,
            ChildInfo {
                pid: 42,
                comm: "a (b) c".into(),
                state: 'Z'
            }
        );
        assert!(c.is_zombie());
        assert_eq!(ppid, 7);
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn snapshot_sees_this_thread_and_stdio() {
        let snap = ResourceSnapshot::take().unwrap();
        assert!(snap.threads().count() >= 1);
        assert!(
            snap.fds().any(|d| d.fd == 2),
            "stderr should be open: {snap:?}"
        );
        let own_fd_dir = format!("/proc/{}/fd", std::process::id());
        assert!(snap.fds().all(|d| d.target != own_fd_dir));
    }

    #[test]
    fn report_names_everything() {
        let report = LeakReport {
            threads: vec![ThreadInfo {
                tid: 9,
                name: "worker".into(),
            }],
            fds: vec![FdInfo {
                fd: 7,
                target: "pipe:[1]".into(),
            }],
            children: vec![ChildInfo {
                pid: 5,
                comm: "sleep".into(),
                state: 'Z',
            }],
            counters: vec![CounterLeak {
                name: "things",
                before: 1,
                after: 3,
            }],
            settle: Duration::from_millis(5),
        };
        let text = report.to_string();
        for needle in [
            "\"worker\" (tid 9)",
            "fd 7 -> pipe:[1]",
            "5 \"sleep\"",
            "zombie",
            "\"things\": 1",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
        let empty = LeakReport {
            threads: vec![],
            fds: vec![],
            children: vec![],
            counters: vec![],
            settle: Duration::ZERO,
        };
        assert!(empty.is_empty());
    }
}
