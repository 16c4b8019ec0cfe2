//! A child that crashes at start, exits before `Hello`, writes garbage or speaks another protocol
//! version fails `start_actor` with an error naming the actor, within a bound; it is killed and
//! reaped, and the nursery stays usable.

use std::time::{Duration, Instant};

use harrow_process_testchild::{FORGETS_ENV, MODE_ENV, Mode};
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, run_root};
use harrow_spawn_process::ProcessBackend;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

/// The runtime's handshake bound (LinkConfig's default hello timeout, 5 s) plus the teardown of
/// the failed child, plus a margin for a loaded machine.
const BOUND: Duration = Duration::from_secs(15);

#[test]
fn misbehaving_children_fail_spawn_clearly() {
    harrow_testkit::harness(
        "misbehaving_children_fail_spawn_clearly",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                for (mode, name) in Mode::ALL {
                    let backend = ProcessBackend::new()
                        .with_program(BIN)
                        .with_env(MODE_ENV, name)
                        .into_shared();
                    let actor = format!("bad-{name}");
                    let started = Instant::now();
                    let err = n
                        .start_actor(&actor, backend, ActorSpec::new())
                        .await
                        .expect_err("a misbehaving child must not come up");
                    let took = started.elapsed();
                    let text = err.to_string();
                    eprintln!("{mode:?}: {text} (after {took:?})");
                    assert!(
                        text.contains(&actor),
                        "{mode:?}: error names the actor: {text}"
                    );
                    let expected = match mode {
                        // Depending on how far the parent got before the child was gone.
                        Mode::Crash | Mode::ExitBeforeHello => "closed",
                        Mode::Garbage => "Hello",
                        Mode::WrongProtocol => "protocol version mismatch",
                    };
                    assert!(text.contains(expected), "{mode:?}: {text}");
                    assert!(took < BOUND, "{mode:?}: took {took:?}");
                }
                // Still usable.
                let backend = ProcessBackend::new().with_program(BIN).into_shared();
                let child = n.start_actor("good", backend, ActorSpec::new()).await?;
                assert_eq!(
                    child.run("testfns:echo", Value::Int(5)).await?,
                    Value::Int(5)
                );
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        },
    );
}

/// A program started as a child actor that never runs it (no `maybe_run_child` in its `main`)
/// and goes on as a root: its process spawns are refused, saying why, so that it cannot start
/// a copy of itself that does the same, generation after generation.
#[test]
fn a_child_that_never_runs_its_actor_starts_no_process_children() {
    harrow_testkit::harness(
        "a_child_that_never_runs_its_actor_starts_no_process_children",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let report = std::env::temp_dir().join(format!(
                "harrow-forgetful-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_file(&report);
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            let path = report.clone();
            run_root(config, |n| async move {
                let backend = ProcessBackend::new()
                    .with_program(BIN)
                    .with_env(FORGETS_ENV, &path)
                    .into_shared();
                let err = n
                    .start_actor("forgetful", backend, ActorSpec::new())
                    .await
                    .expect_err("it never says Hello");
                assert!(err.to_string().contains("forgetful"), "{err}");
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
            // Written before it exited, so before its start failed here.
            let text = std::fs::read_to_string(&report).expect("the child's report");
            let _ = std::fs::remove_file(&report);
            assert!(
                text.contains("was started as a harrow child actor")
                    && text.contains("maybe_run_child"),
                "{text}"
            );
        },
    );
}
