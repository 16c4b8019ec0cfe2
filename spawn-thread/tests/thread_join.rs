//! `ThreadChild::join` semantics the teardown ladder relies on.

use std::time::Duration;

use harrow_runtime_core::ipc::ActorId;
use harrow_runtime_core::{Exit, SpawnBackend, SpawnSpec, move_on_after};
use harrow_spawn_thread::ThreadBackend;

#[test]
fn a_join_dropped_mid_wait_does_not_lose_the_thread() {
    harrow_testkit::harness_async(
        "a_join_dropped_mid_wait_does_not_lose_the_thread",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        async {
            let spec = SpawnSpec::new(ActorId::new("waiter"), ActorId::new("test"));
            let mut child = ThreadBackend::new().spawn(spec).await.expect("spawn");
            // The child waits for our Hello on this channel for as long as we hold it.
            let channel = child.take_channel().expect("a channel");
            // A join abandoned mid-wait (as an escalation does)...
            let abandoned = move_on_after(
                Duration::from_millis(20),
                child.join(Duration::from_secs(30)),
            )
            .await;
            assert!(abandoned.is_none());
            // ...leaves the child joinable: it is still running, not "exited".
            assert_eq!(child.join(Duration::from_millis(50)).await, Exit::Running);
            drop(channel);
            assert_eq!(child.join(Duration::from_secs(30)).await, Exit::Exited);
        },
    );
}

#[test]
fn names_longer_than_linux_allows_are_shortened() {
    harrow_testkit::harness_async(
        "names_longer_than_linux_allows_are_shortened",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        async {
            let spec = SpawnSpec::new(
                ActorId::new("a-very-long-actor-name-indeed"),
                ActorId::new("test"),
            );
            let mut child = ThreadBackend::new().spawn(spec).await.expect("spawn");
            let channel = child.take_channel().expect("a channel");
            assert!(
                child.describe().contains("a-very-long-act"),
                "{}",
                child.describe()
            );
            drop(channel);
            assert_eq!(child.join(Duration::from_secs(30)).await, Exit::Exited);
        },
    );
}
