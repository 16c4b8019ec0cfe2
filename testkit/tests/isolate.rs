//! `isolated` gives each test a process of its own under `cargo test` as under nextest, and a
//! child run that fails, runs no test or hangs is reported as such.
//!
//! The `fixture_*` tests are ignored: they are the children that `run_in_own_process` starts
//! here (it passes `--include-ignored`), and do their part only when started that way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harrow_testkit::isolate::{
    ISOLATED_ENV, IsolatedFailure, Placement, placement, run_in_own_process,
};
use harrow_testkit::{Error, isolated};

const BOUND: Duration = Duration::from_secs(60);

/// How many isolated bodies ran in this process.
static BODIES: AtomicUsize = AtomicUsize::new(0);

fn alone_in_this_process() {
    assert_eq!(placement(), Placement::Alone);
    assert_eq!(
        BODIES.fetch_add(1, Ordering::SeqCst),
        0,
        "another isolated test ran in this process"
    );
}

// Two tests of one binary: under plain `cargo test` they would share a process (and the counter)
// were they not re-run alone.
#[test]
fn each_test_has_a_process_of_its_own_a() {
    isolated(BOUND, alone_in_this_process);
}

#[test]
fn each_test_has_a_process_of_its_own_b() {
    isolated(BOUND, alone_in_this_process);
}

/// Whether this process was started by `run_in_own_process` for `fixture`.
fn started_for(fixture: &str) -> bool {
    std::env::var(ISOLATED_ENV).as_deref() == Ok(fixture)
}

#[test]
#[ignore = "a fixture: run by `a_passing_child_passes_with_its_output`"]
fn fixture_passes() {
    isolated(BOUND, || {
        if started_for("fixture_passes") {
            println!("fixture says hello");
        }
    });
}

#[test]
#[ignore = "a fixture: run by `a_failing_child_fails_with_its_panic`"]
fn fixture_panics() {
    isolated(BOUND, || {
        assert!(!started_for("fixture_panics"), "fixture boom");
    });
}

#[test]
#[ignore = "a fixture: run by `a_child_past_its_bound_is_killed`"]
fn fixture_hangs() {
    isolated(BOUND, || {
        if started_for("fixture_hangs") {
            // Never returns: only the parent's kill at its bound ends this process.
            loop {
                std::thread::park();
            }
        }
    });
}

#[test]
fn a_passing_child_passes_with_its_output() -> anyhow::Result<()> {
    let run = run_in_own_process("fixture_passes", BOUND)?;
    assert!(run.stdout.contains("fixture says hello"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("isolated test started"),
        "{}",
        run.stdout
    );
    Ok(())
}

#[test]
fn a_failing_child_fails_with_its_panic() {
    let err = run_in_own_process("fixture_panics", BOUND).expect_err("the fixture panics");
    match &err {
        Error::Isolated {
            test,
            failure: IsolatedFailure::Failed { status, panic },
            ..
        } => {
            assert_eq!(test, "fixture_panics");
            assert!(!status.success());
            assert!(panic.contains("fixture boom"), "{panic}");
        }
        other => panic!("expected a failed child, got {other:?}"),
    }
    assert!(err.to_string().contains("fixture boom"), "{err}");
}

#[test]
fn a_test_that_does_not_exist_is_not_a_pass() {
    let err = run_in_own_process("no_such_test", BOUND).expect_err("no such test");
    assert!(
        matches!(
            &err,
            Error::Isolated {
                failure: IsolatedFailure::NotRun(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_child_past_its_bound_is_killed() {
    let bound = Duration::from_secs(2);
    let err = run_in_own_process("fixture_hangs", bound).expect_err("the fixture hangs");
    assert!(
        matches!(
            &err,
            Error::Isolated {
                failure: IsolatedFailure::TimedOut(b),
                ..
            } if *b == bound
        ),
        "{err:?}"
    );
}
