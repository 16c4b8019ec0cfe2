//! The Python process backend (`PyProcessBackend`): the conformance suite with the Python twins
//! of the standard test functions (the children are this package's `sigint_scenario` binary,
//! which hands control to `maybe_run_child` first), and a numpy function run in a process actor,
//! with the clear error the same import gives in a subint actor.

#![cfg(harrow_python)] // needs Python >= 3.12 with a shared libpython

use std::path::PathBuf;
use std::sync::Arc;

use harrow_integration::PyProcessFactory;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, run_root};
use harrow_spawn_process::PyProcessBackend;
use harrow_spawn_subint::{InterpConfig, SubintBackend};

fn factory() -> Arc<PyProcessFactory> {
    Arc::new(PyProcessFactory::with_program(env!(
        "CARGO_BIN_EXE_sigint_scenario"
    )))
}

harrow_testkit::conformance_suite!(factory());

/// The virtual environment with numpy that `scripts/setup` makes for the tests, if it did.
fn test_venv() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("HARROW_TEST_VENV")?);
    dir.is_dir().then_some(dir)
}

fn numpy_spec(name: &str, venv: &std::path::Path) -> ActorSpec {
    let config = InterpConfig::new(name)
        .expose("harrow_numpy_fns")
        .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"))
        .venv(venv);
    let mut spec = ActorSpec::new();
    spec.params = config.to_params();
    spec
}

#[test]
fn numpy_runs_in_a_process_actor_and_a_subint_actor_says_why_not() {
    let Some(venv) = test_venv() else {
        eprintln!(
            "SKIPPED: no test virtual environment with numpy (HARROW_TEST_VENV is unset or \
             missing): run scripts/setup with the package index reachable"
        );
        return;
    };
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let backend = PyProcessBackend::new()
        .with_program(env!("CARGO_BIN_EXE_sigint_scenario"))
        .into_shared();
    let (mean, product, refused) = run_root(config, |n| async move {
        let np = n
            .start_actor("np", backend, numpy_spec("np", &venv))
            .await?;
        let mean = np
            .run(
                "harrow_numpy_fns:mean",
                Value::List(vec![1.into(), 2.into(), 3.into(), 4.into()]),
            )
            .await?;
        let m = |rows: &[[i64; 2]; 2]| {
            Value::List(
                rows.iter()
                    .map(|r| Value::List(r.iter().map(|v| Value::Int(*v)).collect()))
                    .collect(),
            )
        };
        let product = np
            .run(
                "harrow_numpy_fns:matmul",
                Value::List(vec![m(&[[1, 2], [3, 4]]), m(&[[5, 6], [7, 8]])]),
            )
            .await?;
        let sub = n
            .start_actor(
                "np-subint",
                SubintBackend::shared(),
                numpy_spec("np-subint", &venv),
            )
            .await?;
        let refused = sub
            .run("harrow_numpy_fns:mean", Value::List(vec![1.into()]))
            .await
            .map(|v| format!("unexpectedly returned {v:?}"))
            .unwrap_or_else(|e| e.to_string());
        Ok((mean, product, refused))
    })
    .map_err(|e| e.to_string())
    .unwrap();
    assert_eq!(mean, Value::Float(2.5));
    let row = |a: i64, b: i64| Value::List(vec![Value::Int(a), Value::Int(b)]);
    assert_eq!(product, Value::List(vec![row(19, 22), row(43, 50)]));
    assert!(
        refused.contains("refuses this subinterpreter")
            && refused.contains("numpy._core._multiarray_umath")
            && refused.contains("ProcessBackend::python()")
            && refused.contains("--backend process"),
        "the subint error does not name the module and the fix: {refused}"
    );
}

#[test]
fn a_venv_made_for_no_python_is_refused_at_spawn() {
    let dir = std::env::temp_dir().join(format!("harrow-not-a-venv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let spec = numpy_spec("bad-venv", &dir);
    let err = run_root(config, |n| async move {
        n.start_actor("bad-venv", PyProcessBackend::shared(), spec)
            .await?;
        Ok(())
    })
    .expect_err("a venv without site-packages is refused");
    let _ = std::fs::remove_dir(&dir);
    let text = err.to_string();
    assert!(
        text.contains("has no lib/python") && text.contains("bad-venv"),
        "{text}"
    );
}

/// Python process actors serving `harrow_testfns.actors` (the full-actor test functions); the
/// children are the scenario binary, which offers their Python code thread and subint children
/// besides pyprocess and process (`harrow_integration::offer_thread_and_subint`).
struct ActorsFactory;

impl harrow_testkit::conformance::BackendFactory for ActorsFactory {
    fn backend(&self) -> Arc<dyn harrow_runtime_core::SpawnBackend> {
        PyProcessBackend::new()
            .with_program(env!("CARGO_BIN_EXE_sigint_scenario"))
            .into_shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("actors").expose(ACTORS).sys_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../spawn-subint/tests/pyfns"
        ));
        ActorSpec::new().params(config.to_params())
    }
    fn func(&self, name: &str) -> String {
        format!("{ACTORS}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
}

const ACTORS: &str = "harrow_testfns.actors";

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v:?}"))
}

/// A Python process actor starts a process, a pyprocess (its default) and a thread child and
/// calls each; then a subint child (the program offers subint), and names a backend nobody
/// offers (a clear error listing the offered ones).
fn python_process_mixed_tree(f: &ActorsFactory) -> harrow_testkit::conformance::Outcome {
    use harrow_testkit::conformance::BackendFactory;
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let (tree, on_subint, refused) = run_root(config, |n| async move {
        let py = n.start_actor("py-parent", f.backend(), f.spec()).await?;
        let tree = py.run(&f.func("mixed_tree"), Value::Null).await?;
        let on_subint = py.run(&f.func("child_on"), Value::from("subint")).await?;
        let refused = py
            .run(&f.func("child_on"), Value::from("nope"))
            .await
            .map(|v| format!("unexpectedly returned {v:?}"))
            .unwrap_or_else(|e| e.to_string());
        Ok((tree, on_subint, refused))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&tree, "process"), &Value::Int(42), "{tree:?}");
    assert_eq!(get(&tree, "process_backend").as_str(), Some("process"));
    assert_eq!(get(&tree, "thread").as_str(), Some("t"), "{tree:?}");
    assert_eq!(get(&tree, "me").as_str(), Some("py-parent"), "{tree:?}");
    let sub = get(&tree, "subint");
    assert_eq!(get(sub, "name").as_str(), Some("sub-child"), "{tree:?}");
    // A child started without a backend runs on its parent's.
    assert_eq!(get(sub, "backend").as_str(), Some("pyprocess"), "{tree:?}");
    assert_eq!(get(sub, "parent").as_str(), Some("py-parent"), "{tree:?}");
    let offered = |v: &Value| -> Vec<String> {
        get(v, "offered")
            .as_list()
            .unwrap_or_else(|| panic!("{v:?}"))
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        offered(&tree),
        ["process", "pyprocess", "subint", "thread"],
        "{tree:?}"
    );
    let child = get(&on_subint, "child");
    assert_eq!(
        get(child, "backend").as_str(),
        Some("subint"),
        "{on_subint:?}"
    );
    assert_eq!(
        get(child, "name").as_str(),
        Some("on-subint"),
        "{on_subint:?}"
    );
    assert_eq!(
        get(child, "parent").as_str(),
        Some("py-parent"),
        "{on_subint:?}"
    );
    assert!(
        refused.contains("no backend \"nope\" is offered")
            && refused.contains("process, pyprocess, subint, thread"),
        "{refused}"
    );
    harrow_testkit::conformance::Outcome::Passed
}

#[test]
fn python_process_actor_mixed_tree() {
    harrow_testkit::conformance::run(
        "python_process_actor_mixed_tree",
        &ActorsFactory,
        python_process_mixed_tree,
    );
}
