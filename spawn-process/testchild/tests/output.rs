//! A child's stdout and stderr reach the parent's, each line prefixed with the actor's name
//! (nested actors stack their prefixes), or unprefixed when the prefix is turned off. The root
//! here is the helper binary itself, re-executing itself with `ProcessBackend::new()`.

use std::process::{Command, Stdio};
use std::time::Duration;

use harrow_process_testchild::ROOT_ENV;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

fn run_root_program(mode: &str) -> (String, String) {
    let child = Command::new(BIN)
        .env(ROOT_ENV, mode)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the helper binary");
    // Bounded: kill it if it has not finished in time.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child
        .wait_with_output()
        .expect("wait for the helper binary");
    let _ = tx.send(());
    let _ = killer.join();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "root program failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn output_is_prefixed_with_the_actor_name() {
    harrow_testkit::harness(
        "output_is_prefixed_with_the_actor_name",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let (stdout, stderr) = run_root_program("output");
            let out = lines(&stdout);
            assert!(out.contains(&"[printer] to stdout 1"), "{stdout}");
            assert!(out.contains(&"[printer] to stdout 2"), "{stdout}");
            assert!(out.contains(&"[printer] [leaf] from the leaf"), "{stdout}");
            assert!(out.contains(&"root done"), "{stdout}");
            assert!(lines(&stderr).contains(&"[printer] to stderr"), "{stderr}");
            assert!(!stdout.contains("to stderr"), "streams are kept apart");

            let (stdout, stderr) = run_root_program("output-plain");
            let out = lines(&stdout);
            assert!(out.contains(&"to stdout 1"), "{stdout}");
            // The leaf was started by the child's own backend, whose prefix is on.
            assert!(out.contains(&"[leaf] from the leaf"), "{stdout}");
            assert!(!stdout.contains("[printer]"), "{stdout}");
            assert!(lines(&stderr).contains(&"to stderr"), "{stderr}");
        },
    );
}
