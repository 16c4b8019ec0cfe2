//! The backend conformance suite (docs/SCENARIOS.md) against `ThreadBackend`.

use std::sync::Arc;

use harrow_runtime_core::{ActorSpec, SpawnBackend};
use harrow_spawn_thread::ThreadBackend;
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns;

struct ThreadFactory;

impl BackendFactory for ThreadFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        ThreadBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        ActorSpec::with_resolver(testfns::registry(Arc::new(ThreadFactory)))
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
    fn release_stuck(&self) {
        testfns::release_stuck();
    }
}

fn factory() -> Arc<ThreadFactory> {
    Arc::new(ThreadFactory)
}

harrow_testkit::conformance_suite!(factory());

// Discovery and peer portals (harrow-testkit's discovery scenarios).
harrow_testkit::discovery_suite!(factory());

// A failure passed on by a body is reported once (not in the shared suite: its function has no
// Python twin).
#[test]
fn failure_passed_on_is_reported_once() {
    harrow_testkit::conformance::run(
        "failure_passed_on_once",
        &*factory(),
        harrow_testkit::conformance::failure_passed_on_once,
    );
}
