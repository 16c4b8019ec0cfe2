//! The long soak: 2,000 spawn/call/cancel cycles per backend (four rounds of the conformance
//! suite's `spawn_cancel_soak`, each under the watchdog and the resource tracker), a few minutes
//! in all.
//!
//! Opt-in under every runner: the tests are `#[ignore]`d, and nextest's default profile also
//! leaves out names containing `soak_long`. Run them with
//! `cargo nextest run --workspace --profile soak --run-ignored only` or
//! `cargo test -p harrow-integration --test soak_long -- --ignored`. CI runs them after the main
//! suite (see `.ci/run`).

use harrow_testkit::conformance::{self, BackendFactory};

const ROUNDS: usize = 4;

fn soak(factory: &dyn BackendFactory) {
    // One process of its own for all the rounds (re-run in a child under `cargo test`).
    let bound = (conformance::SOAK_BOUND + harrow_testkit::DEFAULT_SETTLE) * ROUNDS as u32
        + harrow_testkit::ISOLATION_MARGIN;
    harrow_testkit::isolated(bound, || {
        for _ in 0..ROUNDS {
            conformance::run_here("soak_long", factory, conformance::spawn_cancel_soak);
        }
    });
}

#[test]
#[ignore = "long soak (minutes): run explicitly, as CI does"]
fn soak_long_thread() {
    soak(&harrow_integration::ThreadFactory);
}

#[test]
#[ignore = "long soak (minutes): run explicitly, as CI does"]
fn soak_long_process() {
    // Children re-execute the scenario binary, whose main serves the standard functions.
    let factory =
        harrow_process_testchild::ProcessFactory::new(env!("CARGO_BIN_EXE_sigint_scenario"));
    soak(&factory);
}

#[test]
#[ignore = "long soak (minutes): run explicitly, as CI does"]
fn soak_long_subint() {
    match harrow_integration::backend_factory("subint") {
        Some(factory) => soak(&*factory),
        None => eprintln!("SKIPPED soak_long_subint: no Python >= 3.12 in this build"),
    }
}

#[test]
#[ignore = "long soak (minutes): run explicitly, as CI does"]
fn soak_long_pyprocess() {
    // Python process actors: each cycle starts a process and a Python, so one round (500
    // cycles) keeps CI's soak step to about a minute more; children re-execute the scenario
    // binary, whose main serves Python children too.
    if harrow_integration::backend_factory("pyprocess").is_none() {
        eprintln!("SKIPPED soak_long_pyprocess: no Python >= 3.12 in this build");
        return;
    }
    let factory =
        harrow_integration::PyProcessFactory::with_program(env!("CARGO_BIN_EXE_sigint_scenario"));
    let bound =
        conformance::SOAK_BOUND + harrow_testkit::DEFAULT_SETTLE + harrow_testkit::ISOLATION_MARGIN;
    harrow_testkit::isolated(bound, || {
        conformance::run_here("soak_long", &factory, conformance::spawn_cancel_soak);
    });
}
