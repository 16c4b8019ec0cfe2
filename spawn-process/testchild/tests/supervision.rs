//! Restarting supervision and actor pools (harrow-testkit's supervision scenarios) against
//! `ProcessBackend`; children are the helper binary of this package.

use std::sync::Arc;

use harrow_process_testchild::ProcessFactory;

fn factory() -> Arc<ProcessFactory> {
    Arc::new(ProcessFactory::new(env!(
        "CARGO_BIN_EXE_harrow-process-testchild"
    )))
}

harrow_testkit::supervision_suite!(factory());
