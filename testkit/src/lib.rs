//! harrow's test kit: what every harrow test runs under.
//!
//! This first part is backend-independent:
//!
//! - [`tracker`]: a resource tracker that snapshots this process's threads, open fds, child
//!   processes and registered counters before a test and requires the same after it (after a
//!   short settle), naming what leaked;
//! - [`watchdog`]: a hang watchdog that, when a test outlives its bound, writes every thread's
//!   native stack (and any registered extra section, such as Python stacks) to a file under
//!   `target/hang-dumps/`, prints the path and aborts the process, so a hang never wedges the
//!   runner;
//! - [`isolated`]: a process of its own for a test, under `cargo test` too (where all the tests
//!   of a test binary share one process), by re-running the test binary for just that test;
//! - [`harness`] / [`harness_async`]: run a whole test alone in its process, under both.
//!
//! And for backends:
//!
//! - [`conformance`]: the backend conformance suite, the scenarios of `docs/SCENARIOS.md` (in the
//!   harrow repository) stamped out as one `#[test]` each by [`conformance_suite!`]; an
//!   out-of-tree backend depends on this crate as a dev-dependency and runs the same suite
//!   (`docs/BACKENDS.md` shows how);
//! - [`testfns`]: the standard Rust functions the scenarios call;
//! - [`faults`]: fault-injecting backend and channel wrappers;
//! - [`sigint`]: the SIGINT harness for scenario binaries.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[test]
//! fn spawned_thread_is_joined() {
//!     harrow_testkit::harness(
//!         "spawned_thread_is_joined",
//!         Duration::from_secs(60), // hang bound
//!         Duration::from_secs(2),  // leak settle
//!         || std::thread::spawn(|| 1 + 1).join().unwrap(),
//!     );
//! }
//! ```
//!
//! A test using the tracker must be alone in its process (see [`tracker`]): `cargo nextest`
//! runs one test per process, and under `cargo test` [`harness`] re-runs the test alone in a
//! child process (see [`isolate`] for how, and why this rather than a tracker that tries to tell
//! tests apart). So `harness` must wrap the whole test.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub mod conformance;
pub mod discovery;
pub mod faults;
pub mod isolate;
pub mod peerfns;
pub mod sigint;
pub mod sshd;
pub mod supervision;
pub mod testfns;
pub mod tracker;
pub mod watchdog;

pub use isolate::{TestOutcome, isolated};
pub use tracker::{LeakReport, ResourceSnapshot, ResourceTracker, register_counter};
pub use watchdog::{Watchdog, WatchdogGuard, block_on_bounded, register_dump_section, run_bounded};

/// A generous default hang bound for one test on a loaded machine; below nextest's 120 s backstop
/// (`.config/nextest.toml`) so that the watchdog dumps stacks before nextest kills the test.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(90);

/// A default settle for the leak check: long enough for exiting threads and reaped children, even
/// on a loaded 2-core machine (it costs nothing when nothing leaked: the check returns at once).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);

/// What can go wrong in the test kit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `/proc` directory could not be listed (not Linux, or `/proc` not mounted).
    #[error("cannot read {}: {source}", path.display())]
    Proc {
        /// The directory that could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Resources were still held after the settle bound; the report names them.
    #[error("{0}")]
    Leaked(Box<LeakReport>),
    /// The watchdog thread could not be started.
    #[error("cannot start the hang watchdog thread: {0}")]
    Watchdog(std::io::Error),
    /// A test binary could not be run again for [`isolated`] (or its child could not be reaped).
    #[error("cannot run the test in a process of its own: {0}")]
    Spawn(std::io::Error),
    /// A test run in a process of its own by [`isolated`] did not pass.
    #[error("test `{test}` (run in a process of its own): {failure}")]
    Isolated {
        /// The test's full path.
        test: String,
        /// How it ended.
        failure: isolate::IsolatedFailure,
        /// What the child printed on stdout.
        stdout: String,
        /// What the child printed on stderr.
        stderr: String,
    },
    /// A hang dump could not be written.
    #[error("cannot write the hang dump {}: {source}", path.display())]
    Dump {
        /// The dump file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// The leak report, if this error is a leak.
    pub fn leak_report(&self) -> Option<&LeakReport> {
        match self {
            Error::Leaked(report) => Some(report),
            _ => None,
        }
    }
}

/// The test kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much longer than a test's own bound (plus its leak settle) the process running it alone
/// may take under `cargo test` before it is killed: a process start, and the watchdog's stack
/// dump (gdb is given 30 s).
pub const ISOLATION_MARGIN: Duration = Duration::from_secs(60);

/// Runs a whole test under the hang watchdog and the resource tracker, in a process of its own.
///
/// Under `cargo test` the test is first re-run alone in a child process ([`isolated`]: the
/// tracker and process-global state need the process to themselves); under nextest, and in that
/// child, it runs here. Then it arms a [`Watchdog`] with `bound` (so its thread is in the
/// starting snapshot), starts a [`ResourceTracker`], runs `f`, and requires every resource taken
/// to be given back within `settle`.
///
/// `f` is the whole test: it returns `()` or `Result<(), E>` (see [`TestOutcome`]), and nothing
/// should follow the call. The test's display `name` labels the watchdog and leak messages; the
/// test path used to re-run it is the libtest thread's name.
///
/// # Panics
///
/// If something leaked (the message names it), if `/proc` cannot be read or the watchdog cannot
/// be armed, and as `f` does; under `cargo test`, if the child failed or outlived `bound +
/// settle +` [`ISOLATION_MARGIN`]. If `f` outlives `bound`, the process (the child under `cargo
/// test`) aborts after the hang dump.
#[track_caller]
pub fn harness<T: TestOutcome>(
    name: &str,
    bound: Duration,
    settle: Duration,
    f: impl FnOnce() -> T,
) -> T {
    isolated(bound + settle + ISOLATION_MARGIN, || {
        harness_here(name, bound, settle, f)
    })
}

/// [`harness`] for an async body, run to completion on this thread with `async_io::block_on`.
///
/// # Panics
///
/// As [`harness`].
#[track_caller]
pub fn harness_async<F: Future<Output: TestOutcome>>(
    name: &str,
    bound: Duration,
    settle: Duration,
    fut: F,
) -> F::Output {
    harness(name, bound, settle, || async_io::block_on(fut))
}

/// [`harness`] without the isolation: the watchdog and the tracker around `f`, in this process,
/// whatever else runs in it. For a test that is already alone (inside [`isolated`]), or for
/// bodies whose value is needed.
///
/// # Panics
///
/// As [`harness`], apart from the isolation.
#[track_caller]
pub fn harness_here<T>(name: &str, bound: Duration, settle: Duration, f: impl FnOnce() -> T) -> T {
    let _watchdog = watchdog::arm_or_panic(name, bound);
    let tracker = start_tracker(name);
    let out = f();
    tracker.assert_no_leaks(settle);
    out
}

#[track_caller]
fn start_tracker(name: &str) -> ResourceTracker {
    ResourceTracker::start().unwrap_or_else(|e| panic!("{name}: resource tracker: {e}"))
}
