//! `WarmSubintBackend`: interpreters created ahead of demand serve spawns whose params match
//! the template; other spawns create their own; shutdown ends the idle ones.

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

use std::time::Duration;

use futures_lite::StreamExt;
use harrow_ipc::Value;
use harrow_runtime_core::{ActorPool, ActorSpec, PoolConfig, RootConfig, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, WarmSubintBackend};

const MODULE: &str = "harrow_testfns.conformance";

fn template(name: &str) -> InterpConfig {
    InterpConfig::new(name)
        .expose(MODULE)
        .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"))
}

#[test]
fn a_pool_on_warm_interpreters_takes_them_and_the_filler_refills() {
    // The main interpreter and the cancel injector are process-wide: started before the
    // resource tracker's first snapshot.
    harrow_spawn_subint::warm_up().expect("python");
    harrow_testkit::harness(
        "a_pool_on_warm_interpreters_takes_them_and_the_filler_refills",
        Duration::from_secs(90),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let before = harrow_spawn_subint::live_interpreters();
            let warm = WarmSubintBackend::start(template("warm"), 2);
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            let w = warm.clone();
            run_root(config, |n| async move {
                assert!(
                    w.wait_ready(2, Duration::from_secs(30)).await,
                    "two interpreters ready: {:?}",
                    w.last_error()
                );
                let spec = ActorSpec::new().params(template("ignored-name").to_params());
                let pool = ActorPool::start(&n, w.shared(), spec, PoolConfig::new("w", 2)).await?;
                assert_eq!(
                    w.hits_and_misses(),
                    (2, 0),
                    "both workers got a warm interpreter"
                );
                let echo = format!("{MODULE}:echo");
                let out: Vec<_> = pool
                    .map(&echo, (0..10).map(Value::Int), true)
                    .map(|(_, r)| r.expect("echo"))
                    .collect()
                    .await;
                assert_eq!(out, (0..10).map(Value::Int).collect::<Vec<_>>());
                // The filler makes up for what was taken.
                assert!(w.wait_ready(2, Duration::from_secs(30)).await, "refilled");
                // Other params: a fresh interpreter, not a warm one.
                let other = template("other").legacy(true).to_params();
                let child = n
                    .start_actor("cold", w.shared(), ActorSpec::new().params(other))
                    .await?;
                assert_eq!(child.run(&echo, Value::Int(5)).await?, Value::Int(5));
                assert_eq!(w.hits_and_misses(), (2, 1));
                child.cancel().await;
                pool.cancel().await;
                Ok(())
            })
            .expect("the tree runs");
            warm.shutdown(Duration::from_secs(5));
            assert_eq!(warm.ready(), 0);
            assert_eq!(
                harrow_spawn_subint::live_interpreters(),
                before,
                "every interpreter ended"
            );
        },
    )
}
