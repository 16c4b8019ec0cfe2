//! A root body that panics: its tree is torn down (the child process stopped and reaped) before
//! the panic goes on out of `run_root`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, panic_message, run_root};
use harrow_spawn_process::ProcessBackend;

const BIN: &str = env!("CARGO_BIN_EXE_harrow-process-testchild");

#[test]
fn a_panicking_root_body_tears_its_tree_down_first() {
    harrow_testkit::run_bounded("panicking_body", Duration::from_secs(60), || {
        let pid = Arc::new(Mutex::new(None));
        let seen = pid.clone();
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let backend = Arc::new(ProcessBackend::new().with_program(BIN));
                let child = n.start_actor("child", backend, ActorSpec::new()).await?;
                let got = child.run("proc:pid", Value::Null).await?;
                *seen.lock().expect("not poisoned") = got.as_i64();
                if got.as_i64().is_some() {
                    panic!("boom in the body");
                }
                Ok(())
            })
        }));
        let payload = caught.expect_err("the body's panic goes on out of run_root");
        assert!(
            panic_message(&*payload).contains("boom in the body"),
            "{}",
            panic_message(&*payload)
        );
        let pid = pid.lock().expect("not poisoned").expect("the child's pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the child {pid} was stopped and reaped before run_root returned"
        );
        // The thread runs another root as before.
        let config = RootConfig::default().handle_sigint(false);
        let again = run_root(config, |n| async move {
            let backend = Arc::new(ProcessBackend::new().with_program(BIN));
            let child = n.start_actor("again", backend, ActorSpec::new()).await?;
            Ok(child.run("testfns:echo", Value::Int(7)).await?)
        });
        assert_eq!(again.expect("a second root runs"), Value::Int(7));
    });
}
