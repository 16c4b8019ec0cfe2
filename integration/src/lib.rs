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

/// The Python module of the subint backend's standard test functions (the twins of
/// [`testfns`], in `spawn-subint/tests/pyfns/harrow_testfns/conformance.py`).
pub const SUBINT_MODULE: &str = "harrow_testfns.conformance";

/// The subint backend serving the Python twins of the standard test functions.
#[derive(Debug, Default)]
pub struct SubintFactory;

impl BackendFactory for SubintFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        harrow_spawn_subint::SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = harrow_spawn_subint::InterpConfig::new("scenario")
            .expose(SUBINT_MODULE)
            .sys_path(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../spawn-subint/tests/pyfns"
            ));
        let mut spec = ActorSpec::new();
        spec.params = config.to_params();
        spec
    }
    fn func(&self, name: &str) -> String {
        format!("{SUBINT_MODULE}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn ends_on_its_own(&self) -> bool {
        true
    }
    fn warm_up(&self) {
        // The main interpreter and the cancel injector live as long as the process.
        if let Err(e) = harrow_spawn_subint::warm_up() {
            eprintln!("subint warm-up failed: {e}");
        }
    }
}

/// The Python process backend serving the same Python twins as [`SubintFactory`], in children
/// started from `program` (the running binary when `None`), which must hand control to
/// `harrow_spawn_process::maybe_run_child` first.
#[derive(Debug, Default)]
pub struct PyProcessFactory {
    program: Option<std::path::PathBuf>,
}

impl PyProcessFactory {
    /// Children re-execute the running binary.
    pub fn current() -> Self {
        PyProcessFactory { program: None }
    }

    /// Children are started from `program`.
    pub fn with_program(program: impl Into<std::path::PathBuf>) -> Self {
        PyProcessFactory {
            program: Some(program.into()),
        }
    }
}

impl BackendFactory for PyProcessFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        let backend = harrow_spawn_process::PyProcessBackend::new();
        match &self.program {
            Some(p) => backend.with_program(p).into_shared(),
            None => backend.into_shared(),
        }
    }
    fn spec(&self) -> ActorSpec {
        SubintFactory.spec()
    }
    fn func(&self, name: &str) -> String {
        SubintFactory.func(name)
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn always_has_traceback(&self) -> bool {
        true
    }
    fn ends_on_its_own(&self) -> bool {
        true
    }
    fn bad_spec(&self) -> Option<ActorSpec> {
        // An invalid config: "modules" must be a list of str.
        let mut spec = ActorSpec::new();
        spec.params = harrow_runtime_core::ipc::Value::Map(vec![(
            "modules".into(),
            harrow_runtime_core::ipc::Value::Int(3),
        )]);
        Some(spec)
    }
}

/// The factory of the backend called `name`, if this build has it.
pub fn backend_factory(name: &str) -> Option<Arc<dyn BackendFactory>> {
    match name {
        "thread" => Some(Arc::new(ThreadFactory)),
        "subint" if harrow_spawn_subint::available() => Some(Arc::new(SubintFactory)),
        // Children re-execute the running binary, which must hand control to
        // `harrow_spawn_process::maybe_run_child(harrow_process_testchild::child_registry)` first.
        "process" => Some(Arc::new(harrow_process_testchild::ProcessFactory::current())),
        // The same: the Python child is served by `maybe_run_child` too.
        "pyprocess" if harrow_spawn_subint::available() => {
            Some(Arc::new(PyProcessFactory::current()))
        }
        _ => None,
    }
}

/// The backends this build can run scenarios on (`subint` and `pyprocess` only when built
/// against a Python that can host own-GIL subinterpreters).
pub fn backend_names() -> &'static [&'static str] {
    if harrow_spawn_subint::available() {
        &["thread", "process", "subint", "pyprocess"]
    } else {
        &["thread", "process"]
    }
}

/// What a Python process actor of a scenario binary offers its Python code beside
/// `"pyprocess"` and `"process"` (for `harrow_spawn_process::maybe_run_child_offering`): the
/// thread backend, the standard Rust test functions under the name `"testfns"`, and the subint
/// backend (when this build has it), whose actors get the same offers.
pub fn offer_thread_and_subint(offers: &mut harrow_spawn_process::PyOffers) {
    let testfns = testfns::registry(Arc::new(ThreadFactory));
    offers.add_backend("thread", harrow_spawn_thread::ThreadBackend::shared());
    offers.add_resolver("testfns", testfns.clone());
    if harrow_spawn_subint::available() {
        let process = harrow_spawn_process::ProcessBackend::shared();
        let subint = harrow_spawn_subint::SubintBackend::new()
            .offer_backend("thread", harrow_spawn_thread::ThreadBackend::shared())
            .offer_backend("process", process)
            .offer_backend(
                "pyprocess",
                harrow_spawn_process::PyProcessBackend::shared(),
            )
            .offer_resolver("testfns", testfns);
        offers.add_backend("subint", subint.into_shared());
    }
}
