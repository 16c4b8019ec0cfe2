//! harrow's cross-backend integration tests and the scenario binaries they drive. Unpublished.
//!
//! The backends a scenario binary can use are chosen by name with [`backend_factory`].
#![forbid(unsafe_code)]

use std::sync::Arc;

use harrow_runtime_core::{ActorSpec, SpawnBackend};
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns;

/// The thread backend serving the standard test functions.
#[derive(Debug, Default)]
pub struct ThreadFactory;

impl BackendFactory for ThreadFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        harrow_spawn_thread::ThreadBackend::shared()
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
}

/// The factory of the backend called `name`, if this build has it.
pub fn backend_factory(name: &str) -> Option<Arc<dyn BackendFactory>> {
    match name {
        "thread" => Some(Arc::new(ThreadFactory)),
        _ => None,
    }
}

/// The backends this build can run scenarios on.
pub fn backend_names() -> &'static [&'static str] {
    &["thread"]
}
