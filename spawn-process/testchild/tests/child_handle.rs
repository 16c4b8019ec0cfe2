//! The `Child` contract straight on the backend: a bounded join of a live child says `Running`;
//! the hard kill is SIGKILL and the join reaps it as `Killed`; a child that exits by itself is
//! reaped with its status; a handle dropped while its process runs kills and reaps it (the
//! tracker checks that no zombie is left).

use std::time::Duration;

use harrow_runtime_core::ipc::ActorId;
use harrow_runtime_core::{Exit, SpawnBackend, SpawnSpec};
use harrow_spawn_process::ProcessBackend;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

fn spec(name: &str) -> SpawnSpec {
    SpawnSpec::new(ActorId::new(name), ActorId::new("test-root"))
}

#[test]
fn join_kill_and_drop_reap_every_child() {
    harrow_testkit::harness_async(
        "join_kill_and_drop_reap_every_child",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        async {
            let backend = ProcessBackend::new().with_program(BIN);
            assert_eq!(backend.name(), "process");
            let caps = backend.capabilities();
            assert!(caps.parallel && caps.nested && !caps.in_process);

            // Alive (it waits for our Hello, up to its 5 s handshake bound): Running, then killed.
            let mut child = backend.spawn(spec("alive")).await.expect("spawn");
            let channel = child.take_channel().expect("a channel");
            assert!(
                child.take_channel().is_none(),
                "the channel is handed out once"
            );
            assert_eq!(child.join(Duration::from_millis(100)).await, Exit::Running);
            child.hard_kill().await.expect("SIGKILL");
            assert_eq!(child.join(Duration::from_secs(10)).await, Exit::Killed);
            assert_eq!(
                child.join(Duration::from_secs(1)).await,
                Exit::Killed,
                "join again"
            );
            assert!(
                child.hard_kill().await.is_ok(),
                "killing a reaped child is harmless"
            );
            assert!(
                child.describe().contains("SIGKILLed"),
                "{}",
                child.describe()
            );
            drop(channel);

            // Its channel dropped before the handshake: it exits by itself with status 3.
            let mut child = backend.spawn(spec("hung-up")).await.expect("spawn");
            drop(child.take_channel());
            match child.join(Duration::from_secs(10)).await {
                Exit::Failed(why) => assert!(why.contains("status 3"), "{why}"),
                other => panic!("expected a failed exit, got {other:?}"),
            }

            // Dropped while running: killed and reaped by the drop.
            let mut child = backend.spawn(spec("dropped")).await.expect("spawn");
            let channel = child.take_channel();
            drop(child);
            drop(channel);

            // A program that does not exist: a spawn error naming the actor.
            let missing = ProcessBackend::new().with_program("/nonexistent/harrow-child");
            let err = missing
                .spawn(spec("ghost"))
                .await
                .expect_err("no such program");
            assert!(err.to_string().contains("ghost"), "{err}");
        },
    );
}
