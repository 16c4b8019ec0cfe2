//! `sigint_scenario <backend> <spawn|call|twice|after|at-end>`: a root with children on
//! `backend`, printing phase markers (`harrow-phase: ...`) for the SIGINT harness. Exits with
//! the root's exit code (130 when interrupted).

use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{RootConfig, Timeouts, exit_code, run_root};
use harrow_testkit::sigint::phase;

fn main() {
    // For the process backends: a child re-executes this binary and is served from here. A
    // Python child's code may also start thread children serving the standard Rust test
    // functions (registry "testfns") and subint children.
    harrow_spawn_process::maybe_run_child_offering(
        harrow_process_testchild::child_registry,
        harrow_integration::offer_thread_and_subint,
    );
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(backend), Some(scenario)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: sigint_scenario <backend> <spawn|call|twice|after|at-end>");
        std::process::exit(2);
    };
    let Some(f) = harrow_integration::backend_factory(backend) else {
        eprintln!(
            "unknown backend {backend:?}; known: {:?}",
            harrow_integration::backend_names()
        );
        std::process::exit(2);
    };
    // Slow graceful bounds for `twice`, so that only the second SIGINT can end it quickly.
    let timeouts = if scenario == "twice" {
        Timeouts {
            cancel_ack: Duration::from_secs(10),
            graceful_exit: Duration::from_secs(30),
            hard_kill: Duration::from_millis(500),
        }
    } else {
        Timeouts::default()
    };
    if scenario == "after" {
        // A root that has returned leaves SIGINT to its default action (the process ends).
        let result = run_root(RootConfig::default(), |_n| async { Ok(()) });
        if let Err(e) = result {
            eprintln!("root failed: {e}");
            std::process::exit(1);
        }
        phase("after-root");
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("still alive 60 s after SIGINT");
        std::process::exit(3);
    }
    if scenario == "at-end" {
        // A SIGINT sent just as the root's body returns: it arrives while the root is ending.
        let result = run_root(RootConfig::default(), |_n| async {
            let sent = std::process::Command::new("kill")
                .args(["-INT", &std::process::id().to_string()])
                .status()?;
            if !sent.success() {
                return Err("kill -INT failed".into());
            }
            Ok(())
        });
        if result.is_ok() {
            // The root returned before the signal reached it: the signal, not lost, then ends
            // the process (its default action) while it goes on, as a program would.
            std::thread::sleep(Duration::from_secs(10));
        }
        std::process::exit(exit_code(&result));
    }
    let scenario = scenario.clone();
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| async move {
        match scenario.as_str() {
            "spawn" => {
                phase("spawning");
                for i in 0.. {
                    n.start_actor(&format!("spawned-{i}"), f.backend(), f.spec())
                        .await?;
                }
            }
            "call" => {
                let child = n.start_actor("sleeper", f.backend(), f.spec()).await?;
                phase("calling");
                child.run(&f.func("sleep_ms"), Value::Int(600_000)).await?;
            }
            "twice" => {
                let child = n.start_actor("shielded", f.backend(), f.spec()).await?;
                let marker =
                    std::env::temp_dir().join(format!("harrow-twice-{}", std::process::id()));
                let args = Value::Map(vec![
                    ("ms".into(), Value::Int(600_000)),
                    (
                        "marker".into(),
                        Value::Str(marker.to_string_lossy().into_owned()),
                    ),
                ]);
                let (_ctx, _) = child.open_context(&f.func("ctx_shielded"), args).await?;
                phase("shielded");
                std::future::pending::<()>().await;
            }
            other => return Err(format!("unknown scenario {other:?}").into()),
        }
        Ok(())
    });
    if let Err(e) = &result {
        eprintln!("root ended: {e}");
    }
    std::process::exit(exit_code(&result));
}
