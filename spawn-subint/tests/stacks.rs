//! `python_stacks()`: the Python stack of every live subinterpreter thread, without its GIL.
//! (Own test binary: it signals interpreter threads.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::Result;
use common::*;
use harrow_ipc::{ErrorKind, Value};
use harrow_spawn_subint::{Exit, interp_threads, python_stacks};

fn running(name: &str, func: &str) -> bool {
    interp_threads()
        .iter()
        .any(|i| i.name == name && i.current_call.as_deref() == Some(func))
}

#[test]
fn stacks_of_busy_and_waiting_interpreters() -> Result<()> {
    assert!(python_stacks().contains("no live subinterpreter"));
    // One holds its GIL forever in a pure-Python loop, one waits with its GIL released.
    let busy = spawn("stacks-busy")?;
    let sleeper = spawn("stacks-sleep")?;
    let busy_call = start(&busy.handle(), "harrow_testfns:busy", Value::Null);
    let sleep_call = start(
        &sleeper.handle(),
        "harrow_testfns:harrow_sleep",
        Value::Float(3600.0),
    );
    assert!(wait_until(BOUND, || running(
        "stacks-busy",
        "harrow_testfns:busy"
    )));
    assert!(wait_until(BOUND, || running(
        "stacks-sleep",
        "harrow_testfns:harrow_sleep"
    )));
    // The call is registered just before Python enters it: wait until the frame shows.
    let mut dump = String::new();
    assert!(
        wait_until(BOUND, || {
            dump = python_stacks();
            dump.contains("in busy") && dump.contains("in harrow_sleep")
        }),
        "{dump}"
    );
    eprintln!("{dump}");
    let init_py = pyfns_dir().join("harrow_testfns/__init__.py");
    assert!(
        dump.contains(&format!("File \"{}\"", init_py.display())),
        "{dump}"
    );
    assert!(dump.contains("== subint actor \"stacks-busy\""), "{dump}");
    assert!(dump.contains("running harrow_testfns:busy"), "{dump}");
    // harrow.sleep's frame is there too (the harrow module's source is `<string>`).
    assert!(dump.contains("in sleep"), "{dump}");
    // Dumping did not disturb them: both still cancel and end cleanly.
    busy_call.cancel();
    sleep_call.cancel();
    assert_eq!(
        bounded(BOUND, busy_call)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(
        bounded(BOUND, sleep_call)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(busy.shutdown(BOUND), Exit::Exited);
    assert_eq!(sleeper.shutdown(BOUND), Exit::Exited);
    assert!(python_stacks().contains("no live subinterpreter"));
    Ok(())
}
