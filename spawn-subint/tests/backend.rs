//! `SubintBackend` end to end through the runtime: a root nursery starts a Python actor, calls
//! it, and tears it down. (Own test binary: process-global Python runtime.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::Result;
use common::*;
use futures_lite::FutureExt;
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

/// Calls started together, from tasks on two threads at once: the interpreter thread takes
/// each call while it runs the actor's tasks itself, and the actor's own thread takes over
/// those tasks while a long call holds the interpreter thread (over a millisecond). Jobs are
/// then queued from either thread, while the interpreter thread looks for one, runs one, or
/// has just taken one with more behind it. Every call gets its own answer.
#[test]
fn calls_queued_from_two_threads_at_once_are_all_answered() -> Result<()> {
    let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let child = n.start_actor("py", SubintBackend::shared(), spec()).await?;
        // Callers on a thread of their own besides the root's own.
        let exec = std::sync::Arc::new(async_executor::Executor::new());
        let (stop, stopped) = flume::bounded::<()>(1);
        let runner = {
            let exec = exec.clone();
            std::thread::spawn(move || {
                futures_lite::future::block_on(exec.run(stopped.recv_async()))
            })
        };
        let mut wrong = Vec::new();
        for round in 0..25_i64 {
            let mut tasks = Vec::new();
            for i in 0..12_i64 {
                let p = child.portal().clone();
                let (func, args, want) = if i % 4 == 0 {
                    // Busy for a few milliseconds, holding the interpreter thread.
                    let n = Value::Int(60_000);
                    ("harrow_testfns:cpu", n, None)
                } else {
                    let args = list([Value::Int(round), Value::Int(i)]);
                    ("harrow_testfns:add", args, Some(Value::Int(round + i)))
                };
                let call = async move { (p.run(func, args).await, want) };
                // Half from the root's thread, half from the other one.
                tasks.push(if i % 2 == 0 {
                    harrow_runtime_core::current_actor()
                        .expect("inside the root")
                        .executor()
                        .spawn(call)
                } else {
                    exec.spawn(call)
                });
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let bounded = async { Some(t.await) }.or(async {
                    async_io::Timer::after(BOUND).await;
                    None
                });
                match bounded.await {
                    Some((Ok(got), Some(want))) if got == want => {}
                    Some((Ok(Value::Int(_)), None)) => {}
                    Some((got, want)) => {
                        wrong.push(format!("round {round}, call {i}: {got:?}, want {want:?}"))
                    }
                    None => {
                        return Err(
                            format!("round {round}, call {i}: no answer in {BOUND:?}").into()
                        );
                    }
                }
            }
        }
        let _ = stop.send(());
        let _ = runner.join();
        Ok(Value::List(wrong.into_iter().map(Value::Str).collect()))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(out, Value::List(Vec::new()), "calls answered wrongly");
    assert!(
        wait_until(BOUND, || live_interpreters() == 0),
        "live: {}",
        live_interpreters()
    );
    Ok(())
}
