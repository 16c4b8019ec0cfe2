//! Hostile Python and hostile values get errors, never an abort: `os._exit` ends only its actor,
//! values too deep are refused, a module whose own import fails says so, deep C recursion hits
//! a `RecursionError` instead of the end of the thread's stack.
//! (Own test binary: actors end themselves.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::{Result, anyhow};
use common::*;
use harrow_ipc::{ErrorKind, Value};
use harrow_spawn_subint::{DEFAULT_STACK_SIZE, Exit, InterpConfig, InterpThread};

fn ends_with_exit(t: InterpThread, f: &str, needle: &str) -> Result<()> {
    let h = t.handle();
    let err = call(&h, f, Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("harrow.ActorExit"), "{text}");
    assert!(text.contains(needle), "{text}");
    let mut t = t;
    match t.join(BOUND) {
        Exit::Failed(reason) => assert!(reason.contains(needle), "{reason}"),
        other => return Err(anyhow!("expected the actor to fail, got {other:?}")),
    }
    // Its next calls fail at once; the process goes on.
    assert!(call(&h, "harrow_testfns:echo", Value::Null)?.is_err());
    Ok(())
}

#[test]
fn os_exit_ends_only_its_actor() -> Result<()> {
    let bystander = spawn("exit-bystander")?;
    ends_with_exit(
        spawn("exit-0")?,
        "harrow_testfns:call_os_exit",
        "os._exit(0)",
    )?;
    ends_with_exit(
        spawn("exit-posix")?,
        "harrow_testfns:call_posix_exit",
        "os._exit(1)",
    )?;
    // Swallowing what os._exit raises does not keep the actor alive.
    ends_with_exit(
        spawn("exit-swallow")?,
        "harrow_testfns:swallow_os_exit",
        "os._exit(0)",
    )?;
    // sys.exit() is an ordinary error of the call: the actor goes on.
    let err = call(
        &bystander.handle(),
        "harrow_testfns:call_sys_exit",
        Value::Null,
    )?
    .unwrap_err();
    assert_eq!(err.to_string(), "SystemExit: 4");
    assert_eq!(
        call_ok(&bystander.handle(), "harrow_testfns:echo", Value::Int(1))?,
        Value::Int(1)
    );
    assert_eq!(bystander.shutdown(BOUND), Exit::Exited);
    Ok(())
}

fn nested(depth: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..depth {
        v = Value::List(vec![v]);
    }
    v
}

#[test]
fn values_too_deep_are_refused() -> Result<()> {
    let t = spawn("deep-values")?;
    let h = t.handle();
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", nested(100))?,
        nested(100)
    );
    let err = call(&h, "harrow_testfns:echo", nested(1000))?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
    assert!(err.to_string().contains("nested deeper than"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_returned_value_that_cannot_be_sent_says_so() -> Result<()> {
    let t = spawn("lone-surrogate")?;
    let err = call(&t.handle(), "harrow_testfns:lone_surrogate", Value::Null)?.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("UnicodeEncodeError: cannot send the returned value: "),
        "{text}"
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_found_module_whose_import_fails_says_so() -> Result<()> {
    let t = InterpThread::spawn(config("broken-import").expose("harrow_testfns.broken_import"))?;
    let err = call(&t.handle(), "harrow_testfns.broken_import:f", Value::Null)?.unwrap_err();
    // Not "not found": the module was found, its own import failed.
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    let text = err.to_string();
    assert!(text.contains("no_such_module_for_harrow_tests"), "{text}");
    assert!(
        text.contains("while importing module \"harrow_testfns.broken_import\""),
        "{text}"
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn deep_c_recursion_is_a_recursion_error() -> Result<()> {
    let t = spawn("deep-c")?;
    assert_eq!(t.handle().config().stack_size, DEFAULT_STACK_SIZE);
    let h = t.handle();
    for f in ["deep_repr", "deep_json", "deep_through_c"] {
        let got = call_ok(&h, &format!("harrow_testfns:{f}"), Value::Int(200_000))?;
        assert_eq!(got, s("RecursionError"), "{f}");
    }
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    // The size is configurable, within reason, and travels in spawn params.
    assert!(InterpThread::spawn(config("tiny-stack").stack_size(1024)).is_err());
    let cfg = config("big-stack").stack_size(32 << 20);
    let back = InterpConfig::from_params("big-stack", &cfg.to_params())?;
    assert_eq!(back.stack_size, 32 << 20);
    let t = InterpThread::spawn(back)?;
    assert_eq!(
        call_ok(&t.handle(), "harrow_testfns:deep_repr", Value::Int(100))?,
        Value::Int(202)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}
