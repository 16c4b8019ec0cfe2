//! A remote hard kill says what it knows: `Killed` once the remote kill (a second launcher run)
//! has run, and the child leaked, with the reason, when the remote kill failed or did not
//! finish in time: its launcher is dead then, but the remote program may not be, and it ends
//! only later, by itself, once it finds its input closed.

mod common;

use std::time::Duration;

use common::start_busy;
use harrow_runtime_core::{Exit, RootConfig, Timeouts, run_root};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::run_bounded;
use harrow_testkit::sigint::wait_gone;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-remote-testchild");

/// Starts a remote child through a launcher that runs it as a child of its own (as sshd's
/// session does: killing the launcher leaves the child), with the remote kill on; `on_kill` is
/// the shell the launcher runs instead of the remote kill (empty: the kill itself). Makes the
/// child busy in a loop that never yields, cancels it and returns how it ended (or the tree's
/// error: a leaked child fails its nursery) and its pid.
fn kill_a_busy_child(tag: &str, on_kill: &str) -> (Result<Exit, String>, u32) {
    let script = format!(
        "case \"$3\" in kill*) {on_kill} ;; esac; \"$@\"; exit 0",
        on_kill = if on_kill.is_empty() { ":" } else { on_kill }
    );
    let backend = RemoteBackend::command(["sh", "-c", &script, "launcher"])
        .program(BIN)
        .remote_path(BIN)
        .remote_kill(true)
        .into_shared();
    let marker =
        std::env::temp_dir().join(format!("harrow-hard-kill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let child_pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ended = run_bounded("hard kill", Duration::from_secs(60), || {
        let marker = marker.clone();
        let child_pid = child_pid.clone();
        run_root(config, |n| async move {
            let (child, pid) = start_busy(&n, backend, &marker).await?;
            child_pid.store(pid, std::sync::atomic::Ordering::Relaxed);
            Ok(child.cancel().await)
        })
        .map_err(|e| e.to_string())
    });
    let _ = std::fs::remove_file(&marker);
    (ended, child_pid.load(std::sync::atomic::Ordering::Relaxed))
}

/// Waits for `pid` to end; kills it if it does not, so that no busy child outlives a failed
/// test.
fn gone_within(pid: u32, bound: Duration) -> bool {
    if wait_gone(pid, bound) {
        return true;
    }
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    false
}

/// The tree failed because the child was leaked, for the reason `why`.
fn assert_leaked(ended: &Result<Exit, String>, pid: u32, why: &str) {
    let Err(e) = ended else {
        panic!("the tree succeeded, the child {ended:?}")
    };
    assert!(e.contains("was leaked"), "{e}");
    assert!(e.contains(why), "{e}");
    assert!(
        e.contains(&format!("remote pid {pid} ")),
        "names the remote process: {e}"
    );
    assert!(e.contains("ends by itself"), "{e}");
}

#[test]
fn a_remote_kill_that_ran_is_killed() {
    let (ended, pid) = kill_a_busy_child("ran", "");
    assert_eq!(ended, Ok(Exit::Killed));
    assert!(
        gone_within(pid, Duration::from_secs(10)),
        "the remote kill ended {pid}"
    );
}

#[test]
fn a_remote_kill_that_failed_leaves_the_child_reported_leaked() {
    let (ended, pid) = kill_a_busy_child("failed", "exit 3");
    assert_leaked(&ended, pid, "the remote kill ended with exit status: 3");
    // Its input watch still ends it (a minute is ten times its grace).
    assert!(
        gone_within(pid, Duration::from_secs(60)),
        "{pid} ended by itself"
    );
}

#[test]
fn a_remote_kill_that_hangs_is_cut_short_and_the_child_reported_leaked() {
    let (ended, pid) = kill_a_busy_child("hangs", "exec sleep 60");
    assert_leaked(&ended, pid, "the remote kill did not finish within 1.4s");
    assert!(
        gone_within(pid, Duration::from_secs(60)),
        "{pid} ended by itself"
    );
}
