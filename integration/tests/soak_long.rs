//! The long soak: 2,000 spawn/call/cancel cycles per backend (four rounds of the conformance
//! suite's `spawn_cancel_soak`, each under the watchdog and the resource tracker).
//!
//! Left out of the default nextest run (names containing `soak_long`); run it with
//! `cargo nextest run --workspace --profile soak`. CI runs it after the main suite when time
//! allows (see `.ci/run`).

use harrow_testkit::conformance::{self, BackendFactory};

const ROUNDS: usize = 4;

fn soak(factory: &dyn BackendFactory) {
    for _ in 0..ROUNDS {
        conformance::run("soak_long", factory, conformance::spawn_cancel_soak);
    }
}

#[test]
fn soak_long_thread() {
    soak(&harrow_integration::ThreadFactory);
}

#[test]
fn soak_long_process() {
    // Children re-execute the scenario binary, whose main serves the standard functions.
    let factory =
        harrow_process_testchild::ProcessFactory::new(env!("CARGO_BIN_EXE_sigint_scenario"));
    soak(&factory);
}

#[test]
fn soak_long_subint() {
    match harrow_integration::backend_factory("subint") {
        Some(factory) => soak(&*factory),
        None => eprintln!("SKIPPED soak_long_subint: no Python >= 3.12 in this build"),
    }
}
