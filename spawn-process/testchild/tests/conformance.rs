//! The backend conformance suite (docs/SCENARIOS.md) against `ProcessBackend`; children are the helper
//! binary of this package.

use std::sync::Arc;

use harrow_process_testchild::ProcessFactory;

fn factory() -> Arc<ProcessFactory> {
    Arc::new(ProcessFactory::new(env!(
        "CARGO_BIN_EXE_harrow-process-testchild"
    )))
}

harrow_testkit::conformance_suite!(factory());

// Discovery and peer portals (harrow-testkit's discovery scenarios).
harrow_testkit::discovery_suite!(factory());

// Failures reported once each (not in the shared suite: their functions have no Python twins).
mod once {
    use super::factory;
    use harrow_testkit::conformance::{
        clean_exit_beside_a_failure, failure_passed_on_once, run, run_in_actor_crash_once,
    };

    #[test]
    fn failure_passed_on_is_reported_once() {
        run(
            "failure_passed_on_once",
            &*factory(),
            failure_passed_on_once,
        );
    }

    #[test]
    fn run_in_actor_crash_is_reported_once() {
        run(
            "run_in_actor_crash_once",
            &*factory(),
            run_in_actor_crash_once,
        );
    }

    #[test]
    fn clean_exit_beside_a_failure_is_reported() {
        run(
            "clean_exit_beside_a_failure",
            &*factory(),
            clean_exit_beside_a_failure,
        );
    }
}
