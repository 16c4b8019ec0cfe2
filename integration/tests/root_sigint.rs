//! SIGINT at the root (docs/SCENARIOS.md, "SIGINT at the root"): exit code 130, exit within 3 s, nothing left.

use std::process::Command;
use std::time::Duration;

use harrow_testkit::sigint::{SigintPlan, run_with_sigint};

fn scenario(backend: &str, which: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigint_scenario"));
    cmd.args([backend, which]);
    cmd
}

/// Runs the scenario and checks it ended as a SIGINT'd root must; returns its output.
fn check(backend: &str, which: &str, plan: SigintPlan) -> Vec<String> {
    let run = run_with_sigint(scenario(backend, which), &plan)
        .unwrap_or_else(|e| panic!("{backend}/{which}: {e}"));
    let out = run.output.join("\n");
    eprintln!(
        "{backend}/{which}: exit {:?} after {:?}:\n{out}",
        run.exit_code, run.exit_after_last
    );
    assert_eq!(
        run.exit_code,
        Some(130),
        "{backend}/{which}: output:\n{out}"
    );
    assert!(
        run.exit_after_last <= Duration::from_secs(3),
        "{backend}/{which}: exit took {:?} after the last SIGINT; output:\n{out}",
        run.exit_after_last
    );
    assert!(
        run.left_behind.is_empty(),
        "{backend}/{which}: processes left behind: {:?}",
        run.left_behind
    );
    run.output
}

fn each_backend(which: &str, plan: impl Fn() -> SigintPlan) {
    for backend in harrow_integration::backend_names() {
        harrow_testkit::run_bounded(which, Duration::from_secs(90), || {
            check(backend, which, plan());
        });
    }
}

#[test]
fn sigint_at_spawn() {
    each_backend("spawn", || SigintPlan::at("spawning"));
}

#[test]
fn sigint_mid_call() {
    each_backend("call", || SigintPlan::at("calling"));
}

#[test]
fn sigint_twice_hard_kills() {
    each_backend("twice", || {
        SigintPlan::at("shielded").then_at("SIGINT: cancelling the actor tree")
    });
}

#[test]
fn sigint_after_the_root_returned_takes_its_default_action() {
    harrow_testkit::run_bounded("after", Duration::from_secs(90), || {
        let run = run_with_sigint(scenario("thread", "after"), &SigintPlan::at("after-root"))
            .unwrap_or_else(|e| panic!("after: {e}"));
        assert_eq!(run.signal, Some(2), "ended by SIGINT: {:?}", run.output);
        assert_eq!(run.exit_code, None);
    });
}

/// A SIGINT that arrives while the root is ending (its body has returned) is never lost: the
/// root reports the interruption (130), or, once it has returned, the signal ends the process
/// (which waits 10 s for it after a root that returned Ok).
#[test]
fn a_sigint_as_the_root_ends_is_not_lost() {
    harrow_testkit::run_bounded("at-end", Duration::from_secs(90), || {
        for round in 0..20 {
            let out = scenario("thread", "at-end")
                .output()
                .unwrap_or_else(|e| panic!("cannot run the scenario: {e}"));
            let code = out.status.code();
            let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
            assert!(
                code == Some(130) || signal == Some(2),
                "round {round}: exit {code:?}, signal {signal:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

#[test]
fn sigint_to_the_process_group_leaves_the_teardown_to_the_root() {
    // A terminal's Ctrl-C reaches every process of the foreground group: children in processes
    // of their own must leave it to the root, which cancels them gracefully.
    for backend in harrow_integration::backend_names() {
        harrow_testkit::run_bounded("group", Duration::from_secs(90), || {
            let plan = SigintPlan::at("calling").to_group();
            let run = check(backend, "call", plan);
            let out = run.join("\n");
            assert!(
                !out.contains("crashed") && !out.contains("killed by signal"),
                "{backend}: a child did not leave the SIGINT to its root:\n{out}"
            );
        });
    }
}
