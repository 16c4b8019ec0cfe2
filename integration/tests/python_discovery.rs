//! Discovery across backends with Python actors: a Python (subint) actor finds Rust actors in
//! its own process (thread) and in another (process, over the tree's unix socket and the peer
//! handshake) and calls them; those Rust actors find the Python actor and call it; the Python
//! actor cancels the process actor directly. Runs under the hang watchdog and the resource
//! tracker.

use std::sync::Arc;

use harrow_integration::ThreadFactory;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::{self, BackendFactory, Outcome};

const MODULE: &str = "harrow_testfns.discover";

/// Python actors serving `harrow_testfns.discover`.
struct PyFactory;

impl BackendFactory for PyFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("pydisc").expose(MODULE).sys_path(concat!(
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

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v:?}"))
}

fn peer_call(name: &str, func: &str, args: Value) -> Value {
    Value::Map(vec![
        ("name".into(), name.into()),
        ("func".into(), func.into()),
        ("args".into(), args),
    ])
}

fn cross_backend_peers(f: &PyFactory) -> Outcome {
    let root = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    run_root(root, |n| async move {
        let py = n.start_actor("py", f.backend(), f.spec()).await?;
        let process = harrow_spawn_process::ProcessBackend::new()
            .with_program(env!("CARGO_BIN_EXE_sigint_scenario"))
            .into_shared();
        let proc = n.start_actor("proc", process, ActorSpec::new()).await?;
        let thr = n
            .start_actor("thr", ThreadFactory.backend(), ThreadFactory.spec())
            .await?;
        // Python -> Rust, in this process and in another.
        let v = py.run(&f.func("cross_call"), Value::Null).await?;
        assert_eq!(get(&v, "proc"), &Value::Int(42), "{v:?}");
        assert_eq!(get(&v, "proc_backend").as_str(), Some("process"), "{v:?}");
        assert_eq!(get(&v, "proc_elsewhere"), &Value::Bool(true), "{v:?}");
        assert_eq!(get(&v, "thr").as_str(), Some("t"), "{v:?}");
        assert_eq!(get(&v, "thr_backend").as_str(), Some("thread"), "{v:?}");
        // Rust -> Python, from a thread of this process and from another process.
        let echo = f.func("echo");
        let got = thr
            .run(
                "testfns:peer_call",
                peer_call("py", &echo, "from-thread".into()),
            )
            .await?;
        assert_eq!(got.as_str(), Some("from-thread"));
        let got = proc
            .run(
                "testfns:peer_call",
                peer_call("py", &echo, "from-proc".into()),
            )
            .await?;
        assert_eq!(got.as_str(), Some("from-proc"));
        // Python cancels the process actor directly. A later call fails either way: refused as
        // cancelled by py while the process actor tears down, or with the link gone once it
        // has (which of the two is a race between that call and the teardown).
        let v = py
            .run(
                &f.func("cancel_peer"),
                Value::Map(vec![("name".into(), "proc".into())]),
            )
            .await?;
        let refused = Value::List(vec![Value::Bool(true), "Cancelled by py".into()]);
        let gone = Value::List(vec![Value::Bool(true), "HarrowError".into()]);
        assert!(v == gone || v == refused, "{v:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Outcome::Passed
}

#[test]
fn python_cross_backend_peers() {
    if !harrow_spawn_subint::available() {
        eprintln!("SKIPPED python_cross_backend_peers: no Python >= 3.12 in this build");
        return;
    }
    conformance::run(
        "python_cross_backend_peers",
        &PyFactory,
        cross_backend_peers,
    );
}
