//! Interpreters that cannot be ended in time are leaked and reported, and the process does not
//! abort. (Own test binary: it leaves leaked interpreters behind.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use harrow_ipc::Value;
use harrow_spawn_subint::{Exit, InterpThread, interp_threads, live_interpreters};

#[test]
fn blocked_c_call_is_bounded_and_leaked_without_abort() -> Result<()> {
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
        Exit::Leaked { reason } => assert!(reason.contains("sleep_forever"), "{reason}"),
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
    assert_eq!(other.shutdown(BOUND), Exit::Ended);
    Ok(())
}

#[test]
fn live_python_thread_leaks_instead_of_aborting() -> Result<()> {
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
        Exit::Leaked { reason } => assert!(reason.contains("Python thread"), "{reason}"),
        other => panic!("expected a leak, got {other:?}"),
    }
    assert!(
        interp_threads()
            .iter()
            .any(|i| i.name == "leak-thread" && i.leaked)
    );
    Ok(())
}
