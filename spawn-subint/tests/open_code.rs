//! How a harrow-started Python reads code files: `io.open_code` (importlib's way in) reads the
//! whole file and holds no descriptor, so an import abandoned half-way (an interpreter whose
//! creation failed part-way is deleted without being finalized) cannot leak one.
//! (Initialises the process-global Python runtime, through harrow.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::path::Path;

use anyhow::Result;
use common::*;
use harrow_ipc::Value;
use harrow_spawn_subint::{Exit, InterpThread};
use harrow_testkit::ResourceSnapshot;

/// The descriptors of this process open on `path` (the resource tracker's snapshot).
fn fds_on(path: &Path) -> Result<Vec<i32>> {
    let target = path.to_string_lossy();
    Ok(ResourceSnapshot::take()?
        .fds()
        .filter(|d| d.target == target)
        .map(|d| d.fd)
        .collect())
}

#[test]
fn a_code_file_held_open_by_python_holds_no_descriptor() -> Result<()> {
    let t = InterpThread::spawn(config("open-code").expose("harrow_testfns.rebind"))?;
    let h = t.handle();
    let path = pyfns_dir().join("harrow_testfns/other.py");
    let len = std::fs::metadata(&path)?.len() as i64;
    let text = path.to_string_lossy().into_owned();

    // Python keeps the object open (never closed, like one an abandoned import leaves behind):
    // it holds the file's bytes, read whole, and no descriptor on it.
    let got = call_ok(
        &h,
        "harrow_testfns:hold_code_file",
        Value::Str(text.clone()),
    )?;
    assert_eq!(
        got,
        list([s("BytesIO"), Value::Str(text.clone()), Value::Int(len)])
    );
    assert_eq!(fds_on(&path)?, Vec::<i32>::new(), "held by Python");

    // A file that cannot be read is the OSError the default reader raises.
    let missing = pyfns_dir().join("harrow_testfns/no_such_module.py");
    let err = call(
        &h,
        "harrow_testfns:hold_code_file",
        Value::Str(missing.to_string_lossy().into_owned()),
    )?
    .expect_err("a missing file fails");
    let err = err.to_string();
    assert!(
        err.starts_with("FileNotFoundError:") && err.contains("no_such_module.py"),
        "{err}"
    );

    // Modules still import, from source and from their cached bytecode (`rebind` is not
    // imported yet in this interpreter).
    assert_eq!(
        call_ok(&h, "harrow_testfns.rebind:which", Value::Null)?,
        s("first")
    );
    call_ok(&h, "harrow_testfns:release_code_files", Value::Null)?;
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_file_over_the_limit_is_opened_as_without_the_hook() -> Result<()> {
    // Over the hook's 4 MiB (`WHOLE_LIMIT`, harrow-python): CPython's own reader, which holds a
    // descriptor until it is closed.
    let big = std::env::temp_dir().join(format!("harrow-open-code-{}.zip", std::process::id()));
    std::fs::write(&big, vec![0u8; (4 << 20) + 1])?;
    let text = big.to_string_lossy().into_owned();
    let t = spawn("open-code-big")?;
    let h = t.handle();
    let got = call_ok(
        &h,
        "harrow_testfns:hold_code_file",
        Value::Str(text.clone()),
    );
    let held = fds_on(&big)?;
    let released = call_ok(&h, "harrow_testfns:release_code_files", Value::Null);
    let closed = fds_on(&big)?;
    std::fs::remove_file(&big)?;
    assert_eq!(
        got?,
        list([
            s("BufferedReader"),
            Value::Str(text),
            Value::Int((4 << 20) + 1)
        ])
    );
    assert_eq!(held.len(), 1, "{held:?}");
    released?;
    assert_eq!(closed, Vec::<i32>::new());
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}
