//! Panics on the Rust side of a subint actor end in a reported failure, never an abort: a host
//! future panicking while the GIL is released, a panic inside a native `harrow` function called
//! from Python, and a panicking interpreter thread (own GIL and legacy). Also: a call cannot
//! use the ctx of a call waiting below it (that deadlocked the thread).
//! (Own test binary: it makes interpreter threads panic.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::sync::Arc;

use anyhow::{Result, anyhow};
use common::*;
use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_spawn_subint::{
    CallHost, Exit, HostFuture, InterpThread, StreamHost, live_interpreters,
};

/// A host whose `started` future panics when polled (with the GIL released).
struct PanickingHost;

impl CallHost for PanickingHost {
    fn started(&self, _value: Value) -> HostFuture<'_, ()> {
        Box::pin(async { panic!("host boom") })
    }

    fn open_stream(&self) -> HostFuture<'_, Box<dyn StreamHost>> {
        Box::pin(async { Err("no stream".to_owned()) })
    }
}

fn ctx_call(
    h: &harrow_spawn_subint::InterpHandle,
    f: &str,
    args: Value,
    host: Arc<dyn CallHost>,
) -> Result<std::result::Result<Value, harrow_portal::CallError>> {
    bounded(
        BOUND,
        h.call(FnPath::parse(f)?, CallKind::Context, args, Some(host)),
    )
}

fn still_works(h: &harrow_spawn_subint::InterpHandle) -> Result<()> {
    assert_eq!(
        call_ok(
            h,
            "harrow_testfns:add",
            list([Value::Int(2), Value::Int(3)])
        )?,
        Value::Int(5)
    );
    Ok(())
}

#[test]
fn host_future_panicking_with_the_gil_released_fails_the_call() -> Result<()> {
    let t = spawn("panic-host")?;
    let h = t.handle();
    // Python calls ctx.started(): the native function waits for the host future, which panics.
    let err = ctx_call(
        &h,
        "harrow_testfns:ctx_echo",
        s("hi"),
        Arc::new(PanickingHost),
    )?
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    assert!(err.to_string().starts_with("SystemError"), "{err}");
    assert!(err.to_string().contains("host boom"), "{err}");
    still_works(&h)?;
    // A plain function in a context call: the implicit started(None) runs from Rust.
    let err = ctx_call(
        &h,
        "harrow_testfns:echo",
        Value::Int(1),
        Arc::new(PanickingHost),
    )?
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    assert!(err.to_string().contains("host boom"), "{err}");
    still_works(&h)?;
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn panic_inside_a_native_harrow_function_fails_the_call() -> Result<()> {
    let t = spawn("panic-native")?;
    let h = t.handle();
    let sleeper = start(&h, "harrow_testfns:harrow_sleep", Value::Float(3600.0));
    assert!(wait_until(BOUND, || harrow_spawn_subint::interp_threads()
        .iter()
        .any(|i| i.name == "panic-native" && i.current_call.is_some())));
    // Taken by harrow.sleep's wait: the panic unwinds out of the native function's body.
    h.inject_panic("native boom");
    let err = bounded(BOUND, sleeper)?.unwrap_err();
    assert!(err.to_string().starts_with("SystemError"), "{err}");
    assert!(err.to_string().contains("native boom"), "{err}");
    still_works(&h)?;
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

fn panics_and_is_reported(t: InterpThread) -> Result<()> {
    let h = t.handle();
    still_works(&h)?;
    h.inject_panic("thread boom");
    let mut t = t;
    match t.join(BOUND) {
        Exit::Failed(reason) => {
            assert!(reason.contains("panicked: thread boom"), "{reason}");
            assert!(!reason.contains("leaked"), "{reason}");
        }
        other => return Err(anyhow!("expected a failure, got {other:?}")),
    }
    // Its calls now fail cleanly.
    assert!(call(&h, "harrow_testfns:echo", Value::Null)?.is_err());
    Ok(())
}

#[test]
fn panicking_interpreter_thread_is_reported_failed() -> Result<()> {
    let before = live_interpreters();
    panics_and_is_reported(spawn("panic-thread")?)?;
    // Its interpreter was ended, and the process goes on.
    assert!(wait_until(BOUND, || live_interpreters() <= before));
    let t = spawn("panic-after")?;
    still_works(&t.handle())?;
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn panicking_legacy_thread_releases_the_shared_gil() -> Result<()> {
    let other = InterpThread::spawn(config("panic-legacy-b").legacy(true))?;
    panics_and_is_reported(InterpThread::spawn(config("panic-legacy-a").legacy(true))?)?;
    // The shared GIL was released: the other legacy interpreter runs, a new one can be made.
    still_works(&other.handle())?;
    let again = InterpThread::spawn(config("panic-legacy-c").legacy(true))?;
    still_works(&again.handle())?;
    assert_eq!(again.shutdown(BOUND), Exit::Exited);
    assert_eq!(other.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_call_cannot_use_the_ctx_of_a_call_waiting_below_it() -> Result<()> {
    let t = spawn("panic-nested-ctx")?;
    let h = t.handle();
    let (host, ends) = chan_host();
    let outer = h.call(
        FnPath::parse("harrow_testfns:ctx_share")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let waiter = std::thread::spawn(move || bounded(BOUND, outer));
    assert_eq!(ends.started.recv_timeout(BOUND)?, Value::Null);
    // The outer call published its ctx and open stream, and now waits in stream.recv().
    assert_eq!(ends.from_py.recv_timeout(BOUND)?, s("open"));
    // Runs nested inside the outer call's wait; it must get errors, not deadlock the thread.
    let got = call_ok(&h, "harrow_testfns:use_shared_ctx", Value::Null)?;
    let items = got
        .into_list()
        .map_err(|got| anyhow!("expected a list, got {got:?}"))?;
    assert_eq!(items.len(), 2);
    for item in items {
        let text = item.as_str().unwrap_or_default().to_owned();
        assert!(text.contains("its own ctx"), "{text}");
    }
    ends.to_py.send(Value::Int(7))?;
    drop(ends.to_py);
    let r = waiter.join().map_err(|_| anyhow!("panicked"))??;
    assert_eq!(r.map_err(|e| anyhow!("{e:?}"))?, list([Value::Int(7)]));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}
