//! The backend conformance suite (harrow-testkit's scenarios) against `SubintBackend`, serving
//! the Python twins of the standard test functions (`tests/pyfns/harrow_testfns/conformance.py`).
//!
//! The scenarios with nested actors run: the Python twins open nurseries from Python. The
//! blocked-native-call variant of non-checkpointing-child is skipped (`HardKill::Interrupts`; a
//! `time.sleep` in C cannot be interrupted: `tests/leak.rs` covers it). The live-interpreter
//! count is tracked and the hang dump includes every subinterpreter's Python stacks.

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

use std::sync::{Arc, Once};

use harrow_ipc::Value;
use harrow_runtime_core::{ActorSpec, SpawnBackend};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::BackendFactory;

/// The Python module holding the standard test functions.
const MODULE: &str = "harrow_testfns.conformance";

struct SubintFactory;

impl SubintFactory {
    /// The factory; registers the tracker counter, the warm-up and the hang-dump section once.
    fn new() -> Arc<Self> {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            harrow_testkit::tracker::register_counter("live subinterpreters", || {
                harrow_spawn_subint::live_interpreters() as i64
            });
            // The main interpreter and the cancel injector are process-wide and stay.
            harrow_testkit::tracker::register_warm_up(|| {
                if let Err(e) = harrow_spawn_subint::warm_up() {
                    panic!("subint warm-up: {e}");
                }
            });
            harrow_testkit::register_dump_section(
                "python stacks (subinterpreters)",
                harrow_spawn_subint::python_stacks,
            );
        });
        Arc::new(SubintFactory)
    }
}

fn config(name: &str) -> InterpConfig {
    InterpConfig::new(name)
        .expose(MODULE)
        .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"))
}

impl BackendFactory for SubintFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let mut spec = ActorSpec::new();
        spec.params = config("conformance").to_params();
        spec
    }
    fn func(&self, name: &str) -> String {
        format!("{MODULE}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn ends_on_its_own(&self) -> bool {
        true
    }
    fn always_has_traceback(&self) -> bool {
        true
    }
    fn bad_spec(&self) -> Option<ActorSpec> {
        // An invalid config: "modules" must be a list of str.
        let mut spec = ActorSpec::new();
        spec.params = Value::Map(vec![("modules".into(), Value::Int(3))]);
        Some(spec)
    }
}

harrow_testkit::conformance_suite!(SubintFactory::new());

// Discovery and peer portals: Python actors find and call each other (the twins of the Rust peer
// functions, at the end of conformance.py), and are found and called from Rust.
harrow_testkit::discovery_suite!(SubintFactory::new());
