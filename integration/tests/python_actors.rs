//! Mixed trees: a Python (subint) actor starting children on every backend the host offers it
//! (a process child, a subint child, a thread child serving the host's Rust functions), and
//! errors keeping their structure across Python and Rust hops. Each test runs alone in its
//! process under the hang watchdog and the resource tracker.

use std::sync::Arc;

use harrow_runtime_core::ipc::{ErrorKind, Value};
use harrow_runtime_core::{ActorSpec, RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::{self, BackendFactory, Outcome};
use harrow_testkit::testfns;

const MODULE: &str = "harrow_testfns.actors";

/// A subint backend offering its Python actors a process backend (the scenario binary, which
/// serves the standard Rust test functions), a thread backend, and the standard Rust test
/// functions under the name "testfns".
struct MixedFactory;

impl BackendFactory for MixedFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        let process = harrow_spawn_process::ProcessBackend::new()
            .with_program(env!("CARGO_BIN_EXE_sigint_scenario"))
            .into_shared();
        SubintBackend::new()
            .offer_backend("process", process)
            .offer_backend("thread", harrow_spawn_thread::ThreadBackend::shared())
            .offer_resolver(
                "testfns",
                testfns::registry(Arc::new(harrow_integration::ThreadFactory)),
            )
            .into_shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("mixed").expose(MODULE).sys_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../spawn-subint/tests/pyfns"
        ));
        ActorSpec::new().params(config.to_params())
    }
    fn func(&self, name: &str) -> String {
        format!("{MODULE}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn warm_up(&self) {
        harrow_integration::SubintFactory.warm_up();
    }
}

fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v:?}"))
}

/// mixed-tree: a Python actor starts a process, a subint and a thread child and calls each.
fn mixed_tree(f: &MixedFactory) -> Outcome {
    let v = run_root(root_config(), |n| async move {
        let py = n.start_actor("py-parent", f.backend(), f.spec()).await?;
        Ok(py.run(&f.func("mixed_tree"), Value::Null).await?)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&v, "process"), &Value::Int(42), "{v:?}");
    assert_eq!(
        get(&v, "process_backend").as_str(),
        Some("process"),
        "{v:?}"
    );
    assert_eq!(get(&v, "thread").as_str(), Some("t"), "{v:?}");
    assert_eq!(get(&v, "me").as_str(), Some("py-parent"), "{v:?}");
    let sub = get(&v, "subint");
    assert_eq!(get(sub, "name").as_str(), Some("sub-child"), "{v:?}");
    assert_eq!(get(sub, "backend").as_str(), Some("subint"), "{v:?}");
    assert_eq!(get(sub, "parent").as_str(), Some("py-parent"), "{v:?}");
    let offered: Vec<_> = match get(&v, "offered") {
        Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(offered, ["process", "subint", "thread"]);
    Outcome::Passed
}

/// mixed-failures: a Python actor's nursery whose process child (Rust) and subint child (Python)
/// both fail: the root gets one group with both errors, each with its source, type and relay
/// path; and Python sees the same group as an `ExceptionGroup`.
fn mixed_failures(f: &MixedFactory) -> Outcome {
    let (err, seen) = run_root(root_config(), |n| async move {
        let py = n.start_actor("py-parent", f.backend(), f.spec()).await?;
        let err = py
            .run(&f.func("failing_children"), Value::Null)
            .await
            .expect_err("both children fail");
        let seen = py.run(&f.func("catch_group"), Value::Null).await?;
        Ok((err, seen))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let group = err.remote_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(group.kind, ErrorKind::Group, "{err}");
    assert_eq!(group.source.name, "py-parent", "{err}");
    assert!(group.relay_path.is_empty(), "{err}");
    let mut members: Vec<_> = group
        .children
        .iter()
        .map(|c| {
            (
                c.source.name.as_str(),
                c.message.as_str(),
                c.relay_path
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            ("py-fail", "python side", vec!["py-parent"]),
            ("rust-fail", "rust side", vec!["py-parent"]),
        ],
        "{err}"
    );
    let py_member = group
        .children
        .iter()
        .find(|c| c.source.name == "py-fail")
        .expect("the Python failure");
    assert_eq!(py_member.type_name, "ValueError", "{err}");
    assert!(py_member.traceback.contains("fail"), "{err}");
    // From Python: an ExceptionGroup of RemoteErrors with the same sources.
    assert_eq!(get(&seen, "is_group"), &Value::Bool(true), "{seen:?}");
    let sources: Vec<_> = match get(&seen, "members") {
        Value::List(ms) => ms
            .iter()
            .filter_map(|m| match m {
                Value::List(parts) => parts.first().and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(sources, ["py-fail", "rust-fail"], "{seen:?}");
    Outcome::Passed
}

#[test]
fn python_mixed_tree() {
    if !harrow_spawn_subint::available() {
        eprintln!("SKIPPED python_mixed_tree: no Python >= 3.12 in this build");
        return;
    }
    conformance::run("python_mixed_tree", &MixedFactory, mixed_tree);
}

#[test]
fn python_mixed_failures() {
    if !harrow_spawn_subint::available() {
        eprintln!("SKIPPED python_mixed_failures: no Python >= 3.12 in this build");
        return;
    }
    conformance::run("python_mixed_failures", &MixedFactory, mixed_failures);
}
