//! The examples are built by `cargo test` and nextest (as `cargo test` builds a package's
//! examples); this runs each as a child process with a bound (killed on timeout) and checks its
//! exit code and output.

#![cfg(all(feature = "thread", feature = "process"))]
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

/// Runs `exe` to its end within `bound`; kills it and fails past that.
fn run(exe: &Path, bound: Duration) -> Result<Output> {
    let child = Command::new(exe)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => {
            let _ = waiter.join();
            Ok(out?)
        }
        Err(_) => {
            // The waiter reaps it once killed.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            bail!("{} still running after {bound:?}; killed", exe.display())
        }
    }
}

#[test]
fn every_example_runs() -> Result<()> {
    // This test binary is target/<profile>/deps/examples-<hash>; the examples are in
    // target/<profile>/examples.
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is in target/<profile>/deps")?
        .join("examples");
    let mut examples = vec![
        ("hello_nursery", "hello, harrow"),
        ("rpc_and_streams", "final result"),
        ("cancel_and_hard_kill", "spinner"),
        ("process_tree", "a1 is pid"),
        ("quick_start", "42 8"),
        ("discovery", "got 42 from store"),
    ];
    if harrow::subint_status().is_ok() {
        examples.push(("python_subint", "ZeroDivisionError"));
        examples.push(("python_nursery", "ValueError from doomed"));
    }
    for (name, needle) in examples {
        let exe = dir.join(name);
        ensure!(
            exe.is_file(),
            "example {name} is not built at {} (cargo test builds examples)",
            exe.display()
        );
        let out = run(&exe, Duration::from_secs(60))?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            out.status.success() && stdout.contains(needle),
            "example {name}: {}, no {needle:?} in\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        );
    }
    Ok(())
}
