//! What a remote start that cannot work looks like: a launcher that exits at once, one that
//! prints something else than the child's start line, a host that refuses the key, a binary
//! that is not there. Each is a `SpawnError` naming the actor and quoting the launcher's stderr,
//! within the backend's start bound (the watchdog fails a test that hangs). Also: the local
//! launcher end to end, and the upload by hash over ssh.

use std::time::Duration;

use harrow_remote_testchild::{FORGETS_ENV, RESOLVER_PANICS_ENV, local_backend, ssh_backend};
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorSpec, ChildOutcome, RootConfig, Timeouts, run_root};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::run_bounded;
use harrow_testkit::sshd::Sshd;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-remote-testchild");
const BOUND: Duration = Duration::from_secs(30);

fn config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

/// Starts an actor named `victim` and returns the start error's text (panics if it started).
fn start_error(test: &str, backend: RemoteBackend) -> String {
    let backend = backend.start_timeout(Duration::from_secs(2)).into_shared();
    let text = run_bounded(test, BOUND, || {
        run_root(config(), |n| async move {
            match n.start_actor("victim", backend, ActorSpec::new()).await {
                Ok(_) => Ok(None),
                Err(e) => Ok(Some(e.to_string())),
            }
        })
    })
    .expect("the nursery itself does not fail");
    let text = text.expect("the start should have failed");
    assert!(text.contains("victim"), "the error names the actor: {text}");
    text
}

/// A local launcher that starts the helper binary with `var` (`NAME=value`) in its environment.
fn with_env(var: &str) -> RemoteBackend {
    RemoteBackend::command(["env", var, "sh", "-c", "exec \"$@\"", "x"])
        .program(BIN)
        .remote_path(BIN)
}

fn sshd_or_skip(test: &str) -> Option<&'static Sshd> {
    match Sshd::shared() {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("SKIPPED {test}: no sshd: {why}");
            None
        }
    }
}

#[test]
fn launcher_exits_at_once() {
    let b = RemoteBackend::command(["sh", "-c", "echo launcher-refuses >&2; exit 7", "x"]);
    let text = start_error("launcher_exits_at_once", b);
    assert!(text.contains("launcher-refuses"), "quotes stderr: {text}");
    assert!(text.contains("exit status: 7"), "says how it ended: {text}");
}

#[test]
fn launcher_prints_garbage_and_hangs() {
    let b = RemoteBackend::command([
        "sh",
        "-c",
        "echo this is no harrow child; echo garbage-on-stderr >&2; exec sleep 30",
        "x",
    ]);
    let text = start_error("launcher_prints_garbage_and_hangs", b);
    assert!(
        text.contains("this is no harrow child"),
        "quotes the output: {text}"
    );
    assert!(text.contains("garbage-on-stderr"), "quotes stderr: {text}");
}

#[test]
fn launcher_prints_garbage_and_exits() {
    let b = RemoteBackend::command(["sh", "-c", "printf 'not-a-start-line'", "x"]);
    let text = start_error("launcher_prints_garbage_and_exits", b);
    assert!(
        text.contains("not-a-start-line"),
        "quotes the output: {text}"
    );
}

#[test]
fn missing_binary_locally() {
    let text = start_error(
        "missing_binary_locally",
        local_backend("/nonexistent/harrow-remote-missing"),
    );
    assert!(
        text.contains("/nonexistent/harrow-remote-missing"),
        "names the path: {text}"
    );
    assert!(
        text.contains("not found"),
        "quotes the shell's complaint: {text}"
    );
}

#[test]
fn host_refuses_the_key() {
    let Some(sshd) = sshd_or_skip("host_refuses_the_key") else {
        return;
    };
    let mut b = RemoteBackend::ssh(sshd.host())
        .port(sshd.port())
        .user(sshd.user())
        .identity(sshd.foreign_identity().expect("a foreign key"))
        .program(BIN)
        .remote_path(BIN);
    // Its own connection: the multiplexing master would skip authentication.
    for o in sshd.direct_options() {
        b = b.ssh_option(o);
    }
    let text = start_error("host_refuses_the_key", b);
    assert!(text.contains("Permission denied"), "quotes ssh: {text}");
}

#[test]
fn missing_binary_over_ssh() {
    if sshd_or_skip("missing_binary_over_ssh").is_none() {
        return;
    }
    let b = ssh_backend(BIN)
        .expect("sshd")
        .remote_path("/nonexistent/harrow-remote-missing");
    let text = start_error("missing_binary_over_ssh", b);
    assert!(
        text.contains("/nonexistent/harrow-remote-missing"),
        "names the path: {text}"
    );
}

/// A plain-command launcher, no sshd: the actor runs, answers, is another process, and ends
/// cleanly when cancelled.
#[test]
fn local_launcher_end_to_end() {
    let backend = local_backend(BIN).into_shared();
    let (sum, pid, outcome) = run_bounded("local_launcher_end_to_end", BOUND, || {
        run_root(config(), |n| async move {
            let child = n.start_actor("local", backend, ActorSpec::new()).await?;
            let sum = child
                .run("testfns:add", Value::List(vec![2.into(), 40.into()]))
                .await?;
            let pid = child.run("proc:pid", Value::Null).await?;
            Ok((sum, pid, child.cancel().await))
        })
    })
    .expect("the tree runs");
    assert_eq!(sum, Value::Int(42));
    assert_ne!(pid, Value::Int(i64::from(std::process::id())));
    assert_eq!(outcome, ChildOutcome::Exited);
}

/// A program that forgot `remote::maybe_run_child` does not start copies of itself without end:
/// its own remote start is refused, saying why, and that reaches the parent in the launcher's
/// stderr.
#[test]
fn a_program_that_forgot_maybe_run_child_is_refused_its_remote_starts() {
    let b = with_env(&format!("{FORGETS_ENV}=1")).start_timeout(Duration::from_secs(10));
    let text = start_error("forgot_maybe_run_child", b);
    assert!(
        text.contains("never ran the actor") && text.contains("remote::maybe_run_child"),
        "says what the program forgot: {text}"
    );
    assert!(
        !text.contains("the end of the chain"),
        "no second generation: {text}"
    );
}

/// A child that dies before its `Hello` (its resolver panics) is reported as what it was, with
/// its stderr, never as killed.
#[test]
fn a_child_dying_before_its_hello_is_not_reported_killed() {
    let b = with_env(&format!("{RESOLVER_PANICS_ENV}=1"));
    let text = start_error("dying_before_its_hello", b);
    assert!(!text.contains("killed"), "{text}");
    assert!(
        text.contains("no registry today"),
        "quotes its stderr: {text}"
    );
}

/// A terminal's Ctrl-C is the root's: a remote child's launcher runs in a process group of its
/// own, and the remote child ignores SIGINT (for a launcher that passes it on).
#[test]
fn a_remote_child_is_out_of_the_terminals_reach() {
    let backend = local_backend(BIN).into_shared();
    let answered = run_bounded("out_of_the_terminals_reach", BOUND, || {
        run_root(config(), |n| async move {
            let child = n.start_actor("local", backend, ActorSpec::new()).await?;
            let pid = child.run("proc:pid", Value::Null).await?;
            let pid = pid.as_i64().expect("a pid") as i32;
            let own_group = std::process::Command::new("ps")
                .args(["-o", "pgid=", "-p"])
                .arg(pid.to_string())
                .output()?;
            let theirs = String::from_utf8_lossy(&own_group.stdout).trim().to_owned();
            let ours = std::process::Command::new("ps")
                .args(["-o", "pgid=", "-p"])
                .arg(std::process::id().to_string())
                .output()?;
            let ours = String::from_utf8_lossy(&ours.stdout).trim().to_owned();
            assert!(!theirs.is_empty() && theirs != ours, "{theirs} vs {ours}");
            let signalled = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()?;
            assert!(signalled.success());
            Ok(child.run("testfns:echo", Value::from("still here")).await?)
        })
    })
    .expect("the child survives a SIGINT");
    assert_eq!(answered, Value::from("still here"));
}

/// An upload cut short installs nothing: the remote side checks the size before it renames the
/// file into place, and removes what it got.
#[test]
fn a_broken_upload_leaves_no_binary() {
    let dir = std::env::temp_dir().join(format!("harrow-upload-cut-{}", std::process::id()));
    let target = dir.join("bin");
    // The launcher passes on the first 3,000 bytes of the transfer, then its input ends.
    let b = RemoteBackend::command(["sh", "-c", "head -c 3000 | \"$@\"", "x"])
        .program(BIN)
        .remote_path(target.display().to_string())
        .upload(true);
    let got = run_bounded("a_broken_upload_leaves_no_binary", BOUND, || {
        futures_lite::future::block_on(b.upload_now())
    });
    let err = got.expect_err("the upload fails");
    // The launcher's input ends while the transfer goes on (a broken pipe), or after it.
    assert!(
        err.contains("Broken pipe") || err.contains("did not store"),
        "{err}"
    );
    // (The partial file is removed by the remote side, which may still run: not waited for.)
    assert!(!target.exists(), "no binary installed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upload is bounded: a launcher that never answers the check fails within the start bound,
/// one that stops reading the transfer within the upload bound, each saying which.
#[test]
fn an_upload_that_stalls_is_bounded() {
    let target = std::env::temp_dir().join(format!("harrow-upload-stall-{}", std::process::id()));
    let silent = RemoteBackend::command(["sh", "-c", "exec sleep 60", "x"])
        .program(BIN)
        .remote_path(target.display().to_string())
        .start_timeout(Duration::from_millis(500))
        .upload(true);
    let stalled =
        RemoteBackend::command(["sh", "-c", "echo HARROW-UPLOAD-SEND; exec sleep 60", "x"])
            .program(BIN)
            .remote_path(target.display().to_string())
            .upload_timeout(Duration::from_millis(500))
            .upload(true);
    let (silent, stalled) = run_bounded("an_upload_that_stalls_is_bounded", BOUND, || {
        futures_lite::future::block_on(async {
            (silent.upload_now().await, stalled.upload_now().await)
        })
    });
    let silent = silent.expect_err("no answer");
    assert!(
        silent.contains("did not answer the upload check"),
        "{silent}"
    );
    let stalled = stalled.expect_err("no room");
    assert!(stalled.contains("did not finish within"), "{stalled}");
    assert!(stalled.contains("bytes sent"), "{stalled}");
    assert!(!target.exists());
}

/// The upload sends the binary when the remote copy is missing, not when it has the same hash,
/// and the uploaded copy runs.
#[test]
fn upload_by_hash_over_ssh() {
    let Some(sshd) = sshd_or_skip("upload_by_hash_over_ssh") else {
        return;
    };
    let target = sshd.dir().join(format!("bin-{}/copy", std::process::id()));
    let b = ssh_backend(BIN)
        .expect("sshd")
        .remote_path(target.display().to_string())
        .upload(true);
    let (first, second) = run_bounded("upload_by_hash_over_ssh", BOUND, || {
        futures_lite::future::block_on(async { (b.upload_now().await, b.upload_now().await) })
    });
    assert_eq!(first, Ok(true), "missing: sent");
    assert_eq!(second, Ok(false), "same hash: not sent");
    assert_eq!(
        std::fs::read(&target).expect("uploaded"),
        std::fs::read(BIN).expect("local")
    );
    let backend = b.into_shared();
    let echoed = run_bounded("upload_by_hash_over_ssh", BOUND, || {
        run_root(config(), |n| async move {
            let child = n.start_actor("uploaded", backend, ActorSpec::new()).await?;
            Ok(child.run("testfns:echo", Value::from("hi")).await?)
        })
    })
    .expect("the uploaded copy runs");
    assert_eq!(echoed, Value::from("hi"));
}
