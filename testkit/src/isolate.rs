//! A process of its own for every tracked test, under `cargo test` as under `cargo nextest`.
//!
//! The [resource tracker](crate::tracker) sees the whole process, and some state is global to a
//! process by nature: signal handlers, the embedded Python main interpreter, the count of live
//! subinterpreters, a "release every stuck call" flag. `cargo nextest` runs every test in a
//! process of its own, but plain `cargo test` runs all the tests of one test binary on threads
//! of one process, where another test's threads, fds, children and interpreters look like leaks
//! (or hide real ones) and one test's global switch changes another's outcome.
//!
//! [`isolated`] therefore gives the calling test a process of its own whatever the runner:
//!
//! - under nextest (`NEXTEST_EXECUTION_MODE=process-per-test`), or in a process started by
//!   [`isolated`] itself (it sets [`ISOLATED_ENV`]), the test already has the process to itself
//!   and the body runs right here;
//! - otherwise, on a libtest test thread (whose name is the test's full path, e.g.
//!   `tests::spawn_and_join`), the test binary is run again as
//!   `<test binary> --exact <test path> --include-ignored --test-threads=1 --nocapture`, with
//!   [`ISOLATED_ENV`] set; the child's output is forwarded to this test's own (captured) output,
//!   and this test fails if the child failed, ran no test, or outlived the bound (it is then
//!   killed). The body is not run in this process at all.
//! - On a thread that is not a test thread (no name, or `main`), there is no test to re-run: the
//!   body runs right here.
//!
//! Re-running was chosen over teaching the tracker to count only what its own test created:
//! threads, fds and child processes carry no owner, process-global state (a reactor, a Python
//! main interpreter, signal handlers) is shared by construction, and a tracker that guessed
//! would miss real leaks or report other tests' resources. A fresh process answers both exactly,
//! at the cost of one process start per tracked test.
//!
//! Because the body runs in another process, [`isolated`] must wrap the *whole* test: nothing
//! the body computes comes back (the parent returns [`TestOutcome::passed`]), and code after the
//! call would run in the parent without the body's effects. A second call on the same test
//! thread in the parent is reported as a failure, so a loop around [`crate::harness`] shows up
//! under `cargo test` instead of silently re-running the whole test each time: put the loop
//! inside one [`isolated`] call instead.

use std::cell::RefCell;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The environment variable that marks a process started by [`isolated`] (its value is the test
/// path it runs). Tests in such a process run in it directly, never re-run again.
pub const ISOLATED_ENV: &str = "HARROW_TESTKIT_ISOLATED";

/// The line an isolated child prints when a test body starts in it (on stderr, where libtest
/// writes no partial lines); the parent requires it, so that a test path that matched no test is
/// an error, not a silent pass.
const STARTED_MARKER: &str = "harrow-testkit: isolated test started: ";

/// How long the parent waits for the child's output to end after the child exited (a leaked
/// grandchild may hold the pipes open) and for the child to be reaped after a kill.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// What a test body returns that a test can pass on: `()` or `Result<(), E>`.
///
/// When the body ran in another process, the caller gets [`TestOutcome::passed`]: the child's
/// own result decided the test there.
pub trait TestOutcome {
    /// The value that stands for "the test passed (in its own process)".
    fn passed() -> Self;
}

impl TestOutcome for () {
    fn passed() -> Self {}
}

impl<E> TestOutcome for std::result::Result<(), E> {
    fn passed() -> Self {
        Ok(())
    }
}

/// Where a test body runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This process runs only this test (nextest, or a child started by [`isolated`]).
    Alone,
    /// A libtest test thread among others: the test (this full path) is re-run in a child.
    Shared(String),
    /// Not on a libtest test thread: the body runs here, as it is.
    NotATest,
}

/// Where a test body started on this thread would run. See the [module docs](self).
pub fn placement() -> Placement {
    placement_from(
        std::env::var_os(ISOLATED_ENV).is_some_and(|v| !v.is_empty()),
        std::env::var("NEXTEST_EXECUTION_MODE").ok().as_deref(),
        std::thread::current().name(),
    )
}

fn placement_from(
    isolated_child: bool,
    nextest_mode: Option<&str>,
    thread_name: Option<&str>,
) -> Placement {
    if isolated_child || nextest_mode == Some("process-per-test") {
        return Placement::Alone;
    }
    match thread_name {
        None | Some("main") => Placement::NotATest,
        Some(test) => Placement::Shared(test.to_owned()),
    }
}

/// Records that this thread's test `path` is being re-run in a child; an error if it already was.
fn claim(path: &str) -> std::result::Result<(), String> {
    let again = DELEGATED.with(|d| d.borrow_mut().replace(path.to_owned()));
    if again.as_deref() == Some(path) {
        return Err(format!(
            "test `{path}` started a second isolated section: `isolated` (and `harness`, which \
             uses it) must wrap the whole test, which has already run in a process of its own; \
             put loops and sequences inside one call"
        ));
    }
    Ok(())
}

thread_local! {
    /// The test this thread already re-ran in a child (see [`isolated`]).
    static DELEGATED: RefCell<Option<String>> = const { RefCell::new(None) };
}

static MARKED: AtomicBool = AtomicBool::new(false);

/// Runs a whole test in a process of its own (see the [module docs](self)).
///
/// `bound` limits the child process when the test is re-run (it is killed after it); it should
/// cover the body's own bounds plus a process start. Under nextest or in the child, `test` runs
/// here and `bound` is not used (the body's own watchdog bounds it).
///
/// # Panics
///
/// When re-run in a child: if the child failed (the message quotes its panic), ran no test of
/// this name, or outlived `bound`; if called a second time by the same test. And as `test` does.
#[track_caller]
pub fn isolated<T: TestOutcome>(bound: Duration, test: impl FnOnce() -> T) -> T {
    match placement() {
        Placement::Alone => {
            if let Ok(path) = std::env::var(ISOLATED_ENV)
                && !MARKED.swap(true, Ordering::SeqCst)
            {
                eprintln!("{STARTED_MARKER}{path}");
            }
            test()
        }
        Placement::NotATest => test(),
        Placement::Shared(path) => {
            if let Err(misuse) = claim(&path) {
                panic!("{misuse}");
            }
            let run = run_in_own_process(&path, bound);
            let (stdout, stderr) = match &run {
                Ok(out) => (&out.stdout, &out.stderr),
                Err(Error::Isolated { stdout, stderr, .. }) => (stdout, stderr),
                Err(_) => (&String::new(), &String::new()),
            };
            // Into this test's own output (captured by libtest unless --nocapture).
            print!("{stdout}");
            eprint!("{stderr}");
            match run {
                Ok(_) => T::passed(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// What an isolated child printed, when it passed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IsolatedRun {
    /// Its stdout (the test's own, and libtest's `test … ok` line).
    pub stdout: String,
    /// Its stderr (without the start marker).
    pub stderr: String,
}

/// Why an isolated child did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolatedFailure {
    /// The test binary ran no test of this path (the child exited without starting it).
    NotRun(ExitStatus),
    /// The test failed in the child: its exit status and its panic message(s), if any.
    Failed {
        /// The child's exit status.
        status: ExitStatus,
        /// The child's `panicked at` lines and what follows them, up to the backtrace note.
        panic: String,
    },
    /// The child outlived the bound and was killed.
    TimedOut(Duration),
}

impl std::fmt::Display for IsolatedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IsolatedFailure::NotRun(status) => write!(
                f,
                "the test binary ran no test of that name ({status}); call `isolated`/`harness` \
                 on the test's own thread"
            ),
            IsolatedFailure::Failed { status, panic } if panic.is_empty() => {
                write!(f, "it failed ({status}); its output is above")
            }
            IsolatedFailure::Failed { status, panic } => {
                write!(f, "it failed ({status}):\n{panic}")
            }
            IsolatedFailure::TimedOut(bound) => {
                write!(f, "it outlived its bound of {bound:?} and was killed")
            }
        }
    }
}

/// Runs test `path` of this test binary alone in a child process, for at most `bound`.
///
/// The child is `<this binary> --exact <path> --include-ignored --test-threads=1 --nocapture`
/// with [`ISOLATED_ENV`] set to `path`; `path` must be a test of this binary that calls
/// [`isolated`] (or [`crate::harness`]), which marks its start. This is what [`isolated`] does
/// under `cargo test`; call it directly to check how a child run ends.
///
/// # Errors
///
/// [`Error::Spawn`] if the child cannot be started; [`Error::Isolated`] if it failed, ran no
/// test, or was killed at `bound`, with everything it printed.
pub fn run_in_own_process(path: &str, bound: Duration) -> Result<IsolatedRun> {
    let exe = std::env::current_exe().map_err(Error::Spawn)?;
    let mut child = Command::new(&exe)
        .args(["--exact", path, "--include-ignored", "--test-threads=1"])
        .args(["--nocapture", "--color", "never"])
        .env(ISOLATED_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    // Opened before anything can reap the child, so a kill cannot reach a recycled pid.
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().map(|p| forward(p, Stream::Out, &tx));
    let stderr = child.stderr.take().map(|p| forward(p, Stream::Err, &tx));
    let mut open_streams = usize::from(stdout.is_some()) + usize::from(stderr.is_some());
    wait_in_thread(child, &tx).map_err(Error::Spawn)?;
    drop(tx);

    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut status = None;
    let mut timed_out = false;
    let mut deadline = Instant::now() + bound;
    while status.is_none() || open_streams > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Data(Stream::Out, bytes)) => out.extend_from_slice(&bytes),
            Ok(Msg::Data(Stream::Err, bytes)) => err.extend_from_slice(&bytes),
            Ok(Msg::Eof) => open_streams -= 1,
            Ok(Msg::Exited(s)) => {
                status = Some(s.map_err(Error::Spawn)?);
                // Only the rest of the output now, which a leaked grandchild may hold open.
                deadline = Instant::now() + DRAIN_BOUND;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_some() {
                    break;
                }
                if timed_out {
                    // Killed and still not reaped: give up waiting (the waiter thread stays).
                    break;
                }
                timed_out = true;
                kill(pidfd.as_ref(), pid);
                deadline = Instant::now() + DRAIN_BOUND;
            }
        }
    }

    // libtest's own framing of the one test is left out: the parent's libtest reports the test.
    let stdout = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| *l != "running 1 test" && !l.starts_with("test result: "))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let marker = format!("{STARTED_MARKER}{path}");
    let mut started = false;
    let stderr = String::from_utf8_lossy(&err)
        .lines()
        .filter_map(|l| match l.strip_suffix(marker.as_str()) {
            Some(before) => {
                started = true;
                (!before.is_empty()).then(|| format!("{before}\n"))
            }
            None => Some(format!("{l}\n")),
        })
        .collect::<String>();
    let failure = match status {
        _ if timed_out => Some(IsolatedFailure::TimedOut(bound)),
        None => Some(IsolatedFailure::TimedOut(bound)),
        Some(s) if !s.success() => Some(IsolatedFailure::Failed {
            status: s,
            panic: panic_excerpt(&stderr),
        }),
        Some(s) if !started => Some(IsolatedFailure::NotRun(s)),
        Some(_) => None,
    };
    match failure {
        None => Ok(IsolatedRun { stdout, stderr }),
        Some(failure) => Err(Error::Isolated {
            test: path.to_owned(),
            failure,
            stdout,
            stderr,
        }),
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

enum Msg {
    Data(Stream, Vec<u8>),
    Eof,
    Exited(std::io::Result<ExitStatus>),
}

/// Reads `pipe` to its end on a thread of its own, sending what it reads.
fn forward(mut pipe: impl Read + Send + 'static, stream: Stream, tx: &mpsc::Sender<Msg>) {
    let reader_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("harrow-isolate-io".into())
        .spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if reader_tx
                            .send(Msg::Data(stream, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = reader_tx.send(Msg::Eof);
        });
    if spawned.is_err() {
        // No reader: the stream counts as ended (its output is lost, the run is still judged).
        let _ = tx.send(Msg::Eof);
    }
}

/// Reaps `child` on a thread of its own and sends its status.
fn wait_in_thread(mut child: Child, tx: &mpsc::Sender<Msg>) -> std::io::Result<()> {
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("harrow-isolate-wait".into())
        .spawn(move || {
            let _ = tx.send(Msg::Exited(child.wait()));
        })
        .map(drop)
}

/// SIGKILLs the child: through its pidfd when there is one (immune to pid reuse), else by pid
/// (the child cannot have been reaped yet: its status has not arrived).
fn kill(pidfd: Option<&OwnedFd>, pid: u32) {
    let signal = rustix::process::Signal::KILL;
    match pidfd {
        Some(fd) => {
            let _ = rustix::process::pidfd_send_signal(fd, signal);
        }
        None => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }
}

/// The child's panic messages: from each `panicked at` line to the next backtrace line.
fn panic_excerpt(stderr: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for line in stderr.lines() {
        if line.starts_with("thread '") && line.contains(" panicked at ") {
            inside = true;
        } else if line.starts_with("stack backtrace:") || line.starts_with("note: ") {
            inside = false;
        }
        if inside {
            out.push(line);
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_excerpt_keeps_the_messages_only() {
        let stderr = "noise\nthread 'x' (12) panicked at a.rs:1:2:\nboom\nline two\nstack \
                      backtrace:\n  0: frames\nnote: run with\n";
        assert_eq!(
            panic_excerpt(stderr),
            "thread 'x' (12) panicked at a.rs:1:2:\nboom\nline two"
        );
    }

    #[test]
    fn where_a_body_runs() {
        let alone = Placement::Alone;
        assert_eq!(placement_from(true, None, Some("t")), alone);
        assert_eq!(
            placement_from(false, Some("process-per-test"), Some("t")),
            alone
        );
        assert_eq!(
            placement_from(false, Some("some-future-mode"), Some("m::t")),
            Placement::Shared("m::t".into())
        );
        assert_eq!(
            placement_from(false, None, Some("m::t")),
            Placement::Shared("m::t".into())
        );
        assert_eq!(
            placement_from(false, None, Some("main")),
            Placement::NotATest
        );
        assert_eq!(placement_from(false, None, None), Placement::NotATest);
    }

    #[test]
    fn a_second_section_of_one_test_is_refused() {
        // On a fresh thread: the record is per test thread.
        std::thread::spawn(|| {
            assert_eq!(claim("a"), Ok(()));
            let again = claim("a").expect_err("the same test again");
            assert!(again.contains("must wrap the whole test"), "{again}");
            // Another test on a reused thread (RUST_TEST_THREADS=1) is fine.
            assert_eq!(claim("b"), Ok(()));
        })
        .join()
        .expect("no panic");
    }

    #[test]
    fn outcomes_that_stand_for_a_pass() {
        let () = <() as TestOutcome>::passed();
        assert!(<std::result::Result<(), String> as TestOutcome>::passed().is_ok());
    }
}
