//! Restarting supervision and actor pools (harrow-testkit's supervision scenarios) against
//! `ThreadBackend`.

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

harrow_testkit::supervision_suite!(Arc::new(ThreadFactory));
