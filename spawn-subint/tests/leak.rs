//! Interpreters that cannot be ended in time are leaked and reported, and the process does not
//! abort. (Own test binary, and each test in a process of its own under `cargo test` too: they
//! leave leaked interpreters behind and count the live ones.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use harrow_ipc::Value;
use harrow_spawn_subint::{Exit, InterpThread, interp_threads, live_interpreters};

/// The bound of one test's own process (its steps are bounded by `BOUND` each).
const ISOLATION_BOUND: Duration = Duration::from_secs(120);

#[test]
fn blocked_c_call_is_bounded_and_leaked_without_abort() -> Result<()> {
    harrow_testkit::isolated(
        ISOLATION_BOUND,
        blocked_c_call_is_bounded_and_leaked_without_abort_here,
    )
}

fn blocked_c_call_is_bounded_and_leaked_without_abort_here() -> Result<()> {
    let t = spawn("leak-sleep")?;
    let h = t.handle();
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", Value::Null)?,
        Value::Null
    );
    let fut = start(&h, "harrow_testfns:sleep_forever", Value::Null);
    assert!(wait_until(BOUND, || interp_threads().iter().any(|i| i
        .name
        == "leak-sleep"
        && i.current_call.as_deref()
            == Some("harrow_testfns:sleep_forever"))));
    let before = live_interpreters();
    let began = Instant::now();
    let exit = t.shutdown(Duration::from_millis(300));
    let took = began.elapsed();
    match &exit {
        Exit::Leaked(reason) => assert!(reason.contains("sleep_forever"), "{reason}"),
        other => panic!("expected a leak, got {other:?}"),
    }
    assert!(took < BOUND, "shutdown ignored its bound: {took:?}");
    // Still counted and still listed, marked leaked.
    assert_eq!(live_interpreters(), before);
    assert!(
        interp_threads()
            .iter()
            .any(|i| i.name == "leak-sleep" && i.leaked)
    );
    // The call's future can be dropped; other interpreters still work.
    drop(fut);
    let other = spawn("leak-other")?;
    assert_eq!(
        call_ok(
            &other.handle(),
            "harrow_testfns:add",
            common::list([Value::Int(1), Value::Int(2)])
        )?,
        Value::Int(3)
    );
    assert_eq!(other.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn live_python_thread_leaks_instead_of_aborting() -> Result<()> {
    harrow_testkit::isolated(
        ISOLATION_BOUND,
        live_python_thread_leaks_instead_of_aborting_here,
    )
}

fn live_python_thread_leaks_instead_of_aborting_here() -> Result<()> {
    let mut cfg = config("leak-thread").allow_threads(true);
    cfg.thread_join_bound = Duration::from_millis(200);
    let t = InterpThread::spawn(cfg)?;
    assert_eq!(
        call_ok(
            &t.handle(),
            "harrow_testfns:start_sleeping_thread",
            Value::Null
        )?,
        Value::Bool(true)
    );
    match t.shutdown(BOUND) {
        // Says which thread is alive, by name.
        Exit::Leaked(reason) => {
            assert!(
                reason.contains("1 Python thread(s) still alive"),
                "{reason}"
            );
            assert!(reason.contains("(sleeper)"), "{reason}");
        }
        other => panic!("expected a leak, got {other:?}"),
    }
    assert!(
        interp_threads()
            .iter()
            .any(|i| i.name == "leak-thread" && i.leaked)
    );
    Ok(())
}

#[test]
fn shielded_harrow_sleep_outlives_shutdown_and_is_leaked() -> Result<()> {
    harrow_testkit::isolated(
        ISOLATION_BOUND,
        shielded_harrow_sleep_outlives_shutdown_and_is_leaked_here,
    )
}

fn shielded_harrow_sleep_outlives_shutdown_and_is_leaked_here() -> Result<()> {
    let t = InterpThread::spawn(config("leak-shield").expose("harrow_testfns.conformance"))?;
    let h = t.handle();
    let (host, ends) = chan_host();
    let marker = std::env::temp_dir().join(format!("harrow-leak-shield-{}", std::process::id()));
    let fut = h.call(
        harrow_ipc::FnPath::parse("harrow_testfns.conformance:ctx_shielded")?,
        harrow_ipc::CallKind::Context,
        Value::Map(vec![
            ("ms".into(), Value::Int(600_000)),
            (
                "marker".into(),
                Value::Str(marker.to_string_lossy().into_owned()),
            ),
        ]),
        Some(host),
    );
    assert_eq!(ends.started.recv_timeout(BOUND)?, Value::Null);
    // Wait until the shielded sleep runs (its frame shows), then cancel the call: the cancel is
    // deferred by the shield, and so is shutting down: the bound runs out.
    assert!(wait_until(BOUND, || harrow_spawn_subint::python_stacks()
        .contains("in sleep")));
    drop(fut);
    match t.shutdown(Duration::from_millis(300)) {
        Exit::Leaked(reason) => assert!(reason.contains("ctx_shielded"), "{reason}"),
        other => panic!("expected a leak, got {other:?}"),
    }
    assert!(!marker.exists());
    Ok(())
}

#[test]
fn teardown_waiting_for_a_python_thread_says_so() -> Result<()> {
    harrow_testkit::isolated(
        ISOLATION_BOUND,
        teardown_waiting_for_a_python_thread_says_so_here,
    )
}

fn teardown_waiting_for_a_python_thread_says_so_here() -> Result<()> {
    let mut cfg = config("leak-thread-wait").allow_threads(true);
    cfg.thread_join_bound = Duration::from_secs(600);
    let t = InterpThread::spawn(cfg)?;
    assert_eq!(
        call_ok(
            &t.handle(),
            "harrow_testfns:start_sleeping_thread",
            Value::Null
        )?,
        Value::Bool(true)
    );
    // The join bound runs out while teardown still waits for the thread: not "stuck".
    match t.shutdown(Duration::from_millis(300)) {
        Exit::Leaked(reason) => {
            assert!(
                reason.contains("waiting for 1 Python thread(s) to end"),
                "{reason}"
            );
            assert!(reason.contains("sleeper"), "{reason}");
        }
        other => panic!("expected a leak, got {other:?}"),
    }
    Ok(())
}
