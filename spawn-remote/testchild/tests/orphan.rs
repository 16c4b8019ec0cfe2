//! No remote orphans, even busy ones: a remote child whose launcher died (the ssh session or
//! connection gone) and whose actor is stuck in a loop that never yields exits on its own
//! within its input watch's grace. Its note on the way out goes to a stderr that is gone too;
//! that write failing used to kill the watch instead, and the child spun on for ever (three
//! such children of `harrow demo --remote` ran for 90 minutes).

mod common;

use std::time::Duration;

use common::start_busy;
use harrow_runtime_core::{RootConfig, Timeouts, run_root};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::run_bounded;
use harrow_testkit::sigint::wait_gone;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-remote-testchild");

#[test]
fn a_busy_child_whose_launcher_died_exits_on_its_own() {
    // A launcher that runs the child as a child of its own (as sshd's session does), rather
    // than becoming it: killing the launcher leaves the child. No remote kill: only the
    // child's own watch can end it. Its stderr fails every write, as a gone ssh session's
    // does (`/dev/full` rather than a closed pipe, whose reader we would hold here).
    let backend = RemoteBackend::command(["sh", "-c", "\"$@\" 2>/dev/full; exit 0", "launcher"])
        .program(BIN)
        .remote_path(BIN)
        .remote_kill(false)
        .into_shared();
    let marker = std::env::temp_dir().join(format!("harrow-orphan-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let pid = run_bounded("busy orphan", Duration::from_secs(60), || {
        let marker = marker.clone();
        run_root(config, |n| async move {
            let (child, pid) = start_busy(&n, backend, &marker).await?;
            child.cancel().await;
            Ok(pid)
        })
        .expect("the tree runs")
    });
    let _ = std::fs::remove_file(&marker);
    // The watch's grace is twice the quick ladder plus 2 s; give it ten times that.
    if !wait_gone(pid, Duration::from_secs(60)) {
        // Not left spinning behind the failed test.
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        panic!("the busy remote child {pid} outlived its launcher by a minute");
    }
}
