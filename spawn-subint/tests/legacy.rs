//! Legacy (shared-GIL) interpreters. (Own test binary: process-global Python runtime.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::Result;
use common::*;
use harrow_ipc::{ErrorKind, Value};
use harrow_spawn_subint::{Exit, InterpThread};

// Own GIL refusing the same module is tested in basic.rs, in another process: on 3.12.1,
// importing a single-phase module in a legacy interpreter after an own-GIL interpreter refused it
// aborts the process ("double free or corruption"), a CPython fault recorded in
// docs/subint-notes.md.
#[test]
fn legacy_mode_loads_single_phase_extensions() -> Result<()> {
    let legacy = InterpThread::spawn(config("legacy").legacy(true))?;
    let h = legacy.handle();
    assert_eq!(
        call_ok(&h, "harrow_testfns:legacy_only", Value::Null)?,
        s("imported")
    );
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(2), Value::Int(3)])
        )?,
        Value::Int(5)
    );
    assert_eq!(legacy.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn legacy_interpreters_side_by_side_and_cancellable() -> Result<()> {
    let a = InterpThread::spawn(config("legacy-a").legacy(true))?;
    let b = InterpThread::spawn(config("legacy-b").legacy(true))?;
    let (ha, hb) = (a.handle(), b.handle());
    let ta = std::thread::spawn(move || call_ok(&ha, "harrow_testfns:cpu", Value::Int(100_000)));
    let tb = std::thread::spawn(move || call_ok(&hb, "harrow_testfns:cpu", Value::Int(100_000)));
    let expect: i64 = (0..100_000i64).map(|i| i * i).sum();
    assert_eq!(
        ta.join().map_err(|_| anyhow::anyhow!("panic"))??,
        Value::Int(expect)
    );
    assert_eq!(
        tb.join().map_err(|_| anyhow::anyhow!("panic"))??,
        Value::Int(expect)
    );
    // A busy loop in a shared-GIL interpreter is cancelled too (and does not starve `b`).
    let h = a.handle();
    let (host, ends) = chan_host();
    let fut = h.call(
        harrow_ipc::FnPath::parse("harrow_testfns:busy_finally")?,
        harrow_ipc::CallKind::Context,
        Value::Null,
        Some(host),
    );
    ends.started.recv_timeout(BOUND)?;
    // On 3.12 a busy shared-GIL interpreter starves the others (the GIL drop request is set on
    // the waiter's interpreter, which the holder never checks): a CPython fault, fixed in 3.13.
    if harrow_spawn_subint::python_version() != "3.12" {
        assert_eq!(
            call_ok(&b.handle(), "harrow_testfns:echo", Value::Int(1))?,
            Value::Int(1)
        );
    }
    fut.cancel();
    assert_eq!(
        bounded(BOUND, fut)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(a.shutdown(BOUND), Exit::Exited);
    assert_eq!(b.shutdown(BOUND), Exit::Exited);
    Ok(())
}
