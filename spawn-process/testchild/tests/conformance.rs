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
