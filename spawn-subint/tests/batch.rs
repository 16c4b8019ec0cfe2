//! The built-in batch runner, `harrow:run_batch` (`harrow_python::BATCH_RUNNER`): each item of
//! a batch gets its own result or error, in order; what would fail a single call (a cancel,
//! `SystemExit`) fails the batch; a batch runs only functions of exposed modules, and only plain
//! ones. Then the same runner under an `ActorPool`'s batched map on the subint backend.

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use futures_lite::StreamExt;
use harrow_ipc::{ErrorKind, Value};
use harrow_runtime_core::{
    ActorPool, ActorSpec, PoolConfig, PoolError, RootConfig, Timeouts, run_root,
};
use harrow_spawn_subint::{BATCH_RUNNER, Exit, InterpConfig, InterpThread, PyArgs, SubintBackend};

const FNS: &str = "harrow_testfns.batchfns";

fn batch_config(name: &str) -> InterpConfig {
    config(name).expose(FNS)
}

fn batch(func: &str, items: Vec<Value>) -> Value {
    list([s(&format!("{FNS}:{func}")), Value::List(items)])
}

/// `[results, errors]` of a batch that ran.
fn parts(v: Value) -> (Vec<Value>, Vec<Value>) {
    match v.as_list() {
        Some([Value::List(results), Value::List(errors)]) => (results.clone(), errors.clone()),
        _ => panic!("not [results, errors]: {v:?}"),
    }
}

#[test]
fn each_item_gets_its_own_result_or_error_in_order() -> Result<()> {
    let t = InterpThread::spawn(batch_config("batch-items"))?;
    let h = t.handle();
    let kw = |args: Value, scale: i64| {
        PyArgs::new(args)
            .kwarg("scale", Value::Int(scale))
            .into_value()
    };
    let items = vec![
        Value::Int(2),
        Value::Int(-1),
        Value::Null,
        kw(Value::Int(3), 10),
        kw(Value::Null, 5),
        s("a"),
        Value::Int(7),
    ];
    let (results, errors) = parts(call_ok(&h, BATCH_RUNNER, batch("scaled", items))?);
    assert_eq!(
        results,
        vec![
            Value::Int(2),
            Value::Null,
            s("none"),
            Value::Int(30),
            s("none"),
            Value::Null,
            Value::Int(7),
        ]
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        errors[0],
        list([Value::Int(1), s("ValueError"), s("negative: -1")])
    );
    let Some([Value::Int(5), Value::Str(ty), Value::Str(msg)]) = errors[1].as_list() else {
        panic!("item 5's error: {:?}", errors[1]);
    };
    assert_eq!(ty, "TypeError");
    assert!(msg.contains("not supported"), "{msg}");

    // A result that does not convert back fails its item only.
    let (results, errors) = parts(call_ok(
        &h,
        BATCH_RUNNER,
        batch(
            "unsendable",
            vec![Value::Int(0), Value::Int(1), Value::Int(2)],
        ),
    )?);
    assert_eq!(results, vec![Value::Int(0), Value::Null, Value::Int(2)]);
    let Some([Value::Int(1), Value::Str(ty), Value::Str(msg)]) = errors[0].as_list() else {
        panic!("item 1's error: {errors:?}");
    };
    assert_eq!((ty.as_str(), errors.len()), ("TypeError", 1));
    assert!(msg.contains("cannot send the returned value"), "{msg}");

    // An empty batch is an empty answer.
    let (results, errors) = parts(call_ok(&h, BATCH_RUNNER, batch("scaled", vec![]))?);
    assert!(results.is_empty() && errors.is_empty());
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn what_fails_a_single_call_fails_the_batch() -> Result<()> {
    let t = InterpThread::spawn(batch_config("batch-fails"))?;
    let h = t.handle();
    // SystemExit is not an Exception: the whole batch fails with it (the actor goes on).
    let err = call(
        &h,
        BATCH_RUNNER,
        batch(
            "exits_on",
            vec![Value::Int(1), Value::Int(3), Value::Int(4)],
        ),
    )?
    .unwrap_err();
    assert_eq!(err.to_string(), "SystemExit: 3");
    // Only plain functions.
    let err = call(&h, BATCH_RUNNER, batch("gen", vec![Value::Int(1)]))?.unwrap_err();
    assert!(err.to_string().contains("generator"), "{err}");
    // The function's module must be exposed (the runner itself needs no exposing).
    let err = call(
        &h,
        BATCH_RUNNER,
        list([s("harrow_testfns.other:anything"), list([Value::Int(1)])]),
    )?
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModuleNotExposed, "{err}");
    // Not [func, items].
    for bad in [Value::Int(1), list([s(FNS), Value::Int(1)]), list([])] {
        let err = call(&h, BATCH_RUNNER, bad)?.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
    }
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", Value::Int(1))?,
        Value::Int(1),
        "the interpreter still serves"
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_cancelled_batch_ends_as_cancelled() -> Result<()> {
    let t = InterpThread::spawn(batch_config("batch-cancel"))?;
    let h = t.handle();
    let mut running = start(
        &h,
        BATCH_RUNNER,
        batch("spin", vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
    );
    // Whether the cancel lands before the batch starts or in its spinning item, the batch's
    // answer is the cancel.
    running.cancel();
    let err = bounded(BOUND, &mut running)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", Value::Int(1))?,
        Value::Int(1)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_pool_maps_batches_through_the_builtin_runner() {
    harrow_spawn_subint::warm_up().expect("python");
    harrow_testkit::harness(
        "a_pool_maps_batches_through_the_builtin_runner",
        Duration::from_secs(90),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let spec = ActorSpec::new().params(batch_config("pool-batch").to_params());
                let pool = ActorPool::start(
                    &n,
                    SubintBackend::shared(),
                    spec,
                    PoolConfig::new("batch", 2).batch(BATCH_RUNNER, 4),
                )
                .await?;
                // 0..30 with one negative item: 8 batches, the last one short.
                let inputs = (0..30).map(|i| Value::Int(if i == 13 { -1 } else { i }));
                let func = format!("{FNS}:scaled");
                let results: Vec<_> = pool.map(&func, inputs.clone(), true).collect().await;
                assert_eq!(results.len(), 30);
                for (k, (i, r)) in results.iter().enumerate() {
                    assert_eq!(*i, k as u64, "in input order");
                    if k == 13 {
                        let e = r.as_ref().expect_err("item 13 raised");
                        let remote = e.remote_error().expect("a remote error");
                        assert_eq!(
                            (remote.type_name.as_str(), remote.message.as_str()),
                            ("ValueError", "negative: -1")
                        );
                    } else {
                        assert_eq!(r.as_ref().ok(), Some(&Value::Int(k as i64)));
                    }
                }
                // Unordered: every item once, item 13 still failed alone.
                let mut unordered: Vec<_> = pool.map(&func, inputs, false).collect().await;
                unordered.sort_by_key(|(i, _)| *i);
                assert_eq!(unordered.len(), 30);
                for (k, (i, r)) in unordered.iter().enumerate() {
                    assert_eq!((*i, r.is_err()), (k as u64, k == 13), "{r:?}");
                }
                // A batch the runner refuses (an unexposed module) fails each of its items.
                let refused: Vec<_> = pool
                    .map("harrow_testfns.other:f", (0..5).map(Value::Int), true)
                    .collect()
                    .await;
                assert_eq!(refused.len(), 5);
                assert!(
                    refused
                        .iter()
                        .all(|(_, r)| matches!(r, Err(PoolError::Call(_)))),
                    "{refused:?}"
                );
                pool.cancel().await;
                Ok(())
            })
            .expect("the tree runs");
        },
    )
}
