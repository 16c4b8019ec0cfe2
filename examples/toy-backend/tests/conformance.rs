//! The backend conformance suite (docs/SCENARIOS.md) against `ToyBackend`: what an out-of-tree
//! backend writes to prove itself (docs/BACKENDS.md).

use std::sync::Arc;

use harrow::{ActorSpec, SpawnBackend};
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns;
use harrow_toy_backend::ToyBackend;

struct ToyFactory;

impl BackendFactory for ToyFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        ToyBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        // An in-process backend: the child serves the standard test functions directly.
        ActorSpec::with_resolver(testfns::registry(Arc::new(ToyFactory)))
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
    fn release_stuck(&self) {
        // Lets the leaked thread of a stuck-child scenario end once the scenario is over.
        testfns::release_stuck();
    }
}

fn factory() -> Arc<ToyFactory> {
    Arc::new(ToyFactory)
}

harrow_testkit::conformance_suite!(factory());

// Discovery and peer portals (harrow-testkit's discovery scenarios).
harrow_testkit::discovery_suite!(factory());
