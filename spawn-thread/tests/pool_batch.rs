//! `ActorPool` batching (`PoolConfig::batch`, `ActorPool::map_batched`) on the thread backend,
//! with a Rust batch runner that follows the runner contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::{CallError, FnRegistry, current_call};
use harrow_runtime_core::{
    ActorPool, ActorSpec, PoolConfig, PoolError, RootConfig, Timeouts, current_actor,
    move_on_after, run_root,
};
use harrow_spawn_thread::ThreadBackend;
use harrow_testkit::faults::CrashingBackend;

/// Set once a `t:end_self` batch has ended its actor.
static ENDING: AtomicBool = AtomicBool::new(false);

/// `t:square(x)` fails on negative numbers; `t:run_batch([func, items])` is the batch runner
/// (it knows `t:square`, and the test functions `t:hang_below_4` and `t:end_self`).
fn registry() -> Arc<FnRegistry> {
    fn square(x: i64) -> Result<i64, String> {
        if x < 0 {
            Err(format!("negative: {x}"))
        } else {
            Ok(x * x)
        }
    }
    let mut r = FnRegistry::new();
    r.unary("t:square", |v| async move {
        let x = v
            .as_i64()
            .ok_or_else(|| CallError::raised("TypeError", "an int"))?;
        square(x)
            .map(Value::Int)
            .map_err(|e| CallError::raised("ValueError", e))
    })
    .expect("valid path");
    r.unary("t:run_batch", |v| async move {
        let Some([Value::Str(func), Value::List(items)]) = v.as_list() else {
            return Err(CallError::raised("TypeError", "[func, items]"));
        };
        if func == "t:hang_below_4" {
            // Items under 4 make the batch wait (cooperatively) for a minute; the others pass.
            if items.iter().any(|i| i.as_i64().is_some_and(|i| i < 4)) {
                let _ = move_on_after(Duration::from_secs(60), std::future::pending::<()>()).await;
            }
            return Ok(Value::List(vec![
                Value::List(items.clone()),
                Value::List(vec![]),
            ]));
        }
        if func == "t:end_self" {
            // Ends its own actor, then holds the actor's drain (its cleanup) until the actor
            // has refused a call from its parent: the pool's next batch, sent to it meanwhile.
            let call =
                current_call().ok_or_else(|| CallError::raised("RuntimeError", "no call"))?;
            let me =
                current_actor().ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
            let parent = me
                .parent()
                .ok_or_else(|| CallError::raised("RuntimeError", "orphan"))?;
            call.reserve_cleanup(Duration::from_secs(30));
            me.cancel_self(me.id().clone());
            ENDING.store(true, Ordering::SeqCst);
            let refused = move_on_after(Duration::from_secs(30), async {
                while parent.refused_calls() == 0 {
                    async_io::Timer::after(Duration::from_millis(2)).await;
                }
            })
            .await;
            return match refused {
                Some(()) => Ok(Value::List(vec![
                    Value::List(items.clone()),
                    Value::List(vec![]),
                ])),
                None => Err(CallError::raised("TimeoutError", "nothing was refused")),
            };
        }
        if func != "t:square" {
            return Err(CallError::raised("LookupError", func.clone()));
        }
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        for (i, item) in items.iter().enumerate() {
            match square(item.as_i64().unwrap_or(-1)) {
                Ok(x) => results.push(Value::Int(x)),
                Err(e) => {
                    results.push(Value::Null);
                    errors.push(Value::List(vec![
                        Value::Int(i as i64),
                        Value::from("ValueError"),
                        Value::from(e),
                    ]));
                }
            }
        }
        Ok(Value::List(vec![Value::List(results), Value::List(errors)]))
    })
    .expect("valid path");
    Arc::new(r)
}

#[test]
fn batched_maps_answer_every_item_in_order_with_its_own_error() {
    harrow_testkit::harness(
        "batched_maps_answer_every_item_in_order_with_its_own_error",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let pool_config = PoolConfig::new("batched", 2).batch("t:run_batch", 4);
                let spec = ActorSpec::with_resolver(registry());
                let pool = ActorPool::start(&n, ThreadBackend::shared(), spec, pool_config).await?;
                // 0..30 with one negative item: 8 batches, the last one short.
                let inputs = (0..30).map(|i| Value::Int(if i == 13 { -1 } else { i }));
                let results: Vec<_> = pool.map("t:square", inputs, true).collect().await;
                assert_eq!(results.len(), 30);
                for (k, (i, r)) in results.iter().enumerate() {
                    assert_eq!(*i, k as u64, "in input order");
                    if k == 13 {
                        let e = r.as_ref().expect_err("item 13 raised");
                        assert_eq!(
                            e.remote_error().map(|e| e.message.as_str()),
                            Some("negative: -1")
                        );
                    } else {
                        assert_eq!(r.as_ref().ok(), Some(&Value::Int((k * k) as i64)));
                    }
                }
                // A runner that refuses the batch fails each of its items.
                let r: Vec<_> = pool
                    .map_batched("t:other", (0..5).map(Value::Int), false, "t:run_batch", 2)
                    .collect()
                    .await;
                assert_eq!(r.len(), 5);
                assert!(
                    r.iter().all(|(_, r)| matches!(r, Err(PoolError::Call(_)))),
                    "{r:?}"
                );
                pool.cancel().await;
                Ok(())
            })
            .expect("the tree runs");
        },
    )
}

#[test]
fn a_dying_worker_fails_each_item_of_the_batches_it_had_in_flight() {
    harrow_testkit::harness(
        "a_dying_worker_fails_each_item_of_the_batches_it_had_in_flight",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let crashing = CrashingBackend::wrap(ThreadBackend::shared());
                let spec = ActorSpec::with_resolver(registry());
                let pool_config = PoolConfig::new("dying", 1).batch("t:run_batch", 2);
                let pool = ActorPool::start(&n, crashing.clone(), spec, pool_config).await?;
                // Three batches: [0, 1] and [2, 3] hang, [4, 5] passes.
                let mut results = pool.map("t:hang_below_4", (0..6).map(Value::Int), true);
                // The worker runs the first batch and has taken the second one ahead.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while pool.running() < 2 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the worker took two batches"
                    );
                    let _ =
                        move_on_after(Duration::from_millis(5), std::future::pending::<()>()).await;
                }
                for w in pool.workers() {
                    assert!(crashing.crash(w.id()));
                }
                let mut got = Vec::new();
                while let Some(item) = results.next().await {
                    got.push(item);
                }
                assert_eq!(got.len(), 6, "{got:?}");
                for (k, (i, r)) in got.iter().enumerate() {
                    assert_eq!(*i, k as u64, "in input order");
                    if k < 4 {
                        assert!(matches!(r, Err(PoolError::WorkerDied { .. })), "{k}: {r:?}");
                    } else {
                        assert_eq!(r.as_ref().ok(), Some(&Value::Int(k as i64)), "{k}");
                    }
                }
                assert_eq!(pool.replaced(), 1);
                pool.cancel().await;
                Ok(())
            })
            .expect("the tree runs");
        },
    )
}

#[test]
fn a_batch_its_ending_worker_refused_runs_again_or_is_answered_refused() {
    harrow_testkit::harness(
        "a_batch_its_ending_worker_refused_runs_again_or_is_answered_refused",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default().handle_sigint(false);
            run_root(config, |n| async move {
                for retries in [1, 0] {
                    refused_batch(&n, retries).await?;
                }
                Ok(())
            })
            .expect("the tree runs");
        },
    )
}

/// A pool of one worker whose first batch ends the worker's actor; a second batch, sent ahead
/// to it meanwhile, is refused unstarted. With retries, its arguments were kept and it runs on
/// the replacement; without, it is answered `Refused`. Never `WorkerDied`.
async fn refused_batch(
    n: &harrow_runtime_core::ActorNursery,
    retries: u32,
) -> Result<(), harrow_runtime_core::BoxError> {
    ENDING.store(false, Ordering::SeqCst);
    let spec = ActorSpec::with_resolver(registry());
    let pool_config = PoolConfig::new(format!("ending{retries}"), 1).retries(retries);
    let pool = ActorPool::start(n, ThreadBackend::shared(), spec, pool_config).await?;
    let worker = pool.workers()[0].id().clone();
    let mut first = pool.map_batched("t:end_self", (0..2).map(Value::Int), true, "t:run_batch", 2);
    let ending = move_on_after(Duration::from_secs(30), async {
        while !ENDING.load(Ordering::SeqCst) {
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(ending.is_some(), "the first batch ended its worker");
    let second: Vec<_> = pool
        .map_batched("t:square", (2..4).map(Value::Int), true, "t:run_batch", 2)
        .collect()
        .await;
    let refused = |r: &Result<Value, PoolError>| matches!(r, Err(PoolError::Refused { worker: w, .. }) if w == &worker);
    if retries > 0 {
        let got: Vec<_> = second
            .into_iter()
            .map(|(_, r)| r.map_err(|e| e.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![Ok(Value::Int(4)), Ok(Value::Int(9))],
            "run on the replacement"
        );
    } else {
        assert!(second.iter().all(|(_, r)| refused(r)), "{second:?}");
    }
    assert_eq!(pool.replaced(), 1);
    assert_ne!(pool.workers()[0].id(), &worker);
    // The batch that ended its actor was cancelled by it while it ran, and answered with its
    // value after its cleanup (a cancel-aware call decides its answer).
    let mut answers = Vec::new();
    while let Some((_, r)) = first.next().await {
        answers.push(r.map_err(|e| e.to_string()));
    }
    assert_eq!(answers, vec![Ok(Value::Int(0)), Ok(Value::Int(1))]);
    pool.cancel().await;
    Ok(())
}

#[test]
fn a_pool_configuration_out_of_bounds_is_refused_and_a_huge_batch_works() {
    harrow_testkit::harness(
        "a_pool_configuration_out_of_bounds_is_refused_and_a_huge_batch_works",
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            run_root(config, |n| async move {
                let spec = ActorSpec::with_resolver(registry());
                let longest = harrow_runtime_core::MAX_ACTOR_NAME;
                let refused = [
                    (PoolConfig::new("p", 0), "at least one worker"),
                    (PoolConfig::new("p", usize::MAX), "workers is more than"),
                    (
                        PoolConfig::new("p", harrow_runtime_core::MAX_POOL_SIZE + 1),
                        "workers is more than",
                    ),
                    (PoolConfig::new("p", 1).queue(usize::MAX), "a queue of"),
                    // Its first worker's name would fit, a replacement's would not.
                    (PoolConfig::new("x".repeat(longest - 2), 1), "no room"),
                ];
                for (pool_config, why) in refused {
                    let err =
                        ActorPool::start(&n, ThreadBackend::shared(), spec.clone(), pool_config)
                            .await
                            .expect_err("refused");
                    let text = err.to_string();
                    assert!(text.contains(why), "{text}");
                }
                assert!(n.children().is_empty(), "no worker was started");
                // A batch size larger than any input is one batch.
                let pool_config = PoolConfig::new("huge", 1).batch("t:run_batch", usize::MAX);
                let pool = ActorPool::start(&n, ThreadBackend::shared(), spec, pool_config).await?;
                let results: Vec<_> = pool
                    .map("t:square", (0..5).map(Value::Int), true)
                    .collect()
                    .await;
                let values: Vec<_> = results.into_iter().map(|(_, r)| r.ok()).collect();
                let squares: Vec<_> = (0..5).map(|i| Some(Value::Int(i * i))).collect();
                assert_eq!(values, squares);
                pool.cancel().await;
                Ok(())
            })
            .expect("the tree runs");
        },
    )
}
