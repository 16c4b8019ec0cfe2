//! `SubintBackend` end to end through the runtime: a root nursery starts a Python actor, calls
//! it, and tears it down. (Own test binary: process-global Python runtime.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::Result;
use common::*;
use harrow_ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, run_root};
use harrow_spawn_subint::{PyArgs, SubintBackend, live_interpreters};

fn spec() -> ActorSpec {
    let mut spec = ActorSpec::new();
    spec.params = config("unused").expose("harrow_testfns.aio").to_params();
    spec
}

#[test]
fn python_actor_in_a_nursery() -> Result<()> {
    let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let child = n.start_actor("py", SubintBackend::shared(), spec()).await?;
        let sum = child
            .run("harrow_testfns:add", list([Value::Int(40), Value::Int(2)]))
            .await?;
        let err = child
            .run("harrow_testfns:fail", s("nope"))
            .await
            .unwrap_err();
        let err_text = err.to_string();
        let hidden = child
            .run("os:getcwd", Value::Null)
            .await
            .unwrap_err()
            .to_string();
        // An async function with a keyword argument, through the portal.
        let args = PyArgs::new(s("a")).kwarg("x", Value::Int(5)).into_value();
        let async_kw = child.run("harrow_testfns.aio:akw", args).await?;
        Ok(Value::List(vec![
            sum,
            Value::Str(err_text),
            Value::Str(hidden),
            async_kw,
        ]))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let items = match out.into_list() {
        Ok(items) => items,
        Err(out) => anyhow::bail!("unexpected {out:?}"),
    };
    assert_eq!(items[0], Value::Int(42));
    assert!(
        items[1]
            .as_str()
            .is_some_and(|t| t.contains("ValueError") && t.contains("nope")),
        "{items:?}"
    );
    assert!(
        items[2].as_str().is_some_and(|t| t.contains("not exposed")),
        "{items:?}"
    );
    assert_eq!(items[3], list([s("a"), Value::Int(5)]));
    assert!(
        wait_until(BOUND, || live_interpreters() == 0),
        "live: {}",
        live_interpreters()
    );
    Ok(())
}
