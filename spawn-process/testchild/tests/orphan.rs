//! Orphan safety: SIGKILL an intermediate actor's process; its children die with it (parent-death
//! signal plus EOF on their channel) within 2 s, and the root reports the intermediate crashed.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::FutureExt;
use harrow_process_testchild::ProcessFactory;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{RootConfig, Timeouts, run_root};
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns::{SPAWN_TREE, Tree};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

/// The pids of the processes whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_ascii_whitespace();
        let (_state, parent) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

fn pidfd(pid: u32) -> OwnedFd {
    let pid = Pid::from_raw(pid as i32).expect("a pid");
    pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open")
}

#[test]
fn grandchildren_die_with_a_killed_intermediate() {
    harrow_testkit::harness(
        "grandchildren_die_with_a_killed_intermediate",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let f = ProcessFactory::new(BIN);
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            let err = run_root(config, |n| async move {
                let mid = n.start_actor("mid", f.backend(), f.spec()).await?;
                let tree = Tree {
                    depth: 2,
                    breadth: 2,
                };
                let (_ctx, total) = mid.open(SPAWN_TREE, &tree).await?;
                assert_eq!(total, 3, "mid and its two children are up");
                let mid_pid = mid.run("proc:pid", Value::Null).await?.as_i64().unwrap_or(0) as u32;
                let leaves = children_of(mid_pid);
                assert_eq!(leaves.len(), 2, "mid {mid_pid} has two child processes: {leaves:?}");
                // Watch the leaves through pidfds: readable once each has exited.
                let watched: Vec<_> = leaves
                    .iter()
                    .map(|&p| Async::new(pidfd(p)).expect("async pidfd"))
                    .collect();
                pidfd_send_signal(pidfd(mid_pid), Signal::KILL)?;
                let killed_at = Instant::now();
                for (leaf, fd) in leaves.iter().zip(&watched) {
                    let died = async { fd.readable().await.is_ok() }
                        .or(async {
                            Timer::after(Duration::from_secs(2)).await;
                            false
                        })
                        .await;
                    assert!(
                        died,
                        "leaf process {leaf} still alive {:?} after its parent {mid_pid} was SIGKILLed",
                        killed_at.elapsed()
                    );
                }
                eprintln!("leaves gone {:?} after the kill", killed_at.elapsed());
                std::future::pending::<()>().await;
                Ok(())
            })
            .expect_err("the killed intermediate is a failure");
            let crashed: Vec<_> = err
                .failures()
                .iter()
                .map(|c| c.actor().name.clone())
                .collect();
            assert_eq!(crashed, ["mid"], "{err}");
            assert!(err.leaks().next().is_none(), "{err}");
        },
    );
}
