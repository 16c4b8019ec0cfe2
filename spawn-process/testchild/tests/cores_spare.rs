//! A child process starts with its parent's reading of whether other programs leave a core to
//! spare, so that a child started beside CPU hogs does not spin beside them until it has
//! measured for itself (`harrow_ipc::park::spin::others_leave_a_core`).

use harrow_process_testchild::ProcessFactory;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::ipc::park::spin::others_leave_a_core;
use harrow_runtime_core::{RootConfig, Timeouts, run_root};
use harrow_testkit::conformance::BackendFactory;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

#[test]
fn a_child_starts_with_its_parents_reading_of_the_machine() {
    harrow_testkit::harness(
        "a_child_starts_with_its_parents_reading_of_the_machine",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let f = ProcessFactory::new(BIN);
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let before = others_leave_a_core();
                let child = n.start_actor("child", f.backend(), f.spec()).await?;
                let after = others_leave_a_core();
                let got = child.run("proc:cores_spare_inherited", Value::Null).await?;
                let Value::Bool(inherited) = got else {
                    panic!("the child was passed no reading: {got:?}");
                };
                // The parent reads the machine at most once per 50 ms; where its answer did
                // not change across the spawn, it is the one the child got.
                if before == after {
                    assert_eq!(inherited, before, "the parent's answer");
                }
                child.cancel().await;
                Ok(())
            })
            .expect("the root");
        },
    );
}
