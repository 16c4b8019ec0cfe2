//! Nurseries and portals from `async def` functions (subint only): `async with
//! harrow.open_nursery()`, awaited `start_actor`/`run_in_actor`/`run`/`result`, contexts and
//! streams, a nursery failure's group, a cancel at an await, and an actor's other async calls
//! going on while one awaits a child (`tests/pyfns/harrow_testfns/aio_nested.py`). Each test runs
//! alone in its process under the hang watchdog and the resource tracker, like tests/nested.rs.

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use harrow_ipc::Value;
use harrow_runtime_core::{ActorSpec, RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::{BackendFactory, Outcome};

const MODULE: &str = "harrow_testfns.aio_nested";

struct Factory;

impl BackendFactory for Factory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("async-nested")
            .expose(MODULE)
            .expose("harrow_testfns.actors")
            .expose("harrow_testfns.conformance")
            .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"));
        ActorSpec::new().params(config.to_params())
    }
    fn func(&self, name: &str) -> String {
        format!("{MODULE}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn warm_up(&self) {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            harrow_testkit::tracker::register_counter("live subinterpreters", || {
                harrow_spawn_subint::live_interpreters() as i64
            });
            harrow_testkit::tracker::register_warm_up(|| {
                if let Err(e) = harrow_spawn_subint::warm_up() {
                    panic!("subint warm-up: {e}");
                }
            });
            harrow_testkit::register_dump_section(
                "python stacks (subinterpreters)",
                harrow_spawn_subint::python_stacks,
            );
        });
    }
}

fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

/// Runs `f` with a root whose one child `py` is a Python actor; returns what `f` returns.
fn with_py<T: Send + 'static>(
    f: impl AsyncFnOnce(harrow_runtime_core::ChildHandle) -> anyhow::Result<T>,
) -> T {
    let out = run_root(root_config(), |n| async move {
        let py = n
            .start_actor("py", Factory.backend(), Factory.spec())
            .await?;
        f(py).await.map_err(|e| e.to_string().into())
    });
    match out {
        Ok(v) => v,
        Err(e) => panic!("the root failed: {e}"),
    }
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v:?}"))
}

/// A scratch directory of this test (removed by the caller).
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("harrow-anest-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

/// Polls `held` until `marker` exists (bounded), failing if the call ends first.
async fn until_exists<F: std::future::Future + Unpin>(held: &mut F, marker: &std::path::Path) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < give_up, "the call never started waiting");
        assert!(
            futures_lite::future::poll_once(&mut *held).await.is_none(),
            "the call ended early"
        );
        async_io::Timer::after(Duration::from_millis(2)).await;
    }
}

fn children(_: &Factory) -> Outcome {
    let v = with_py(async |py| Ok(py.run(&Factory.func("run_children"), Value::Null).await?));
    assert_eq!(
        v,
        Value::List(vec![
            Value::from("hi"),
            Value::from("achild"),
            Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
            Value::from("py"),
            Value::List(vec![Value::Int(1), Value::Int(2)]),
        ])
    );
    Outcome::Passed
}

fn context_stream(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("context_stream"), Value::Int(20))
            .await?)
    });
    let got: Vec<i64> = match get(&v, "got") {
        Value::List(items) => items.iter().filter_map(Value::as_i64).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(get(&v, "result"), &Value::Int(20));
    assert_eq!(get(&v, "first"), &Value::Null);
    Outcome::Passed
}

fn stream_both_ways_at_once(_: &Factory) -> Outcome {
    // One task sends while another receives on the same stream (the stream's two directions
    // are independent), and a second task's result() wait gets the same result as the first;
    // open_stream() while the result wait holds the context says so.
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("stream_both_ways_at_once"), Value::Int(50))
            .await?)
    });
    let got: Vec<i64> = match get(&v, "got") {
        Value::List(items) => items.iter().filter_map(Value::as_i64).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "{v:?}");
    assert_eq!(get(&v, "result"), &Value::Int(50), "{v:?}");
    assert_eq!(get(&v, "second_result"), &Value::Int(50), "{v:?}");
    let opened = get(&v, "open_stream_error");
    assert!(
        opened
            .as_str()
            .is_some_and(|m| m.contains("another operation on this context is in progress")),
        "{v:?}"
    );
    Outcome::Passed
}

fn expect_two_members(v: &Value) {
    assert_eq!(get(v, "is_group"), &Value::Bool(true), "{v:?}");
    let member = |source: &str, msg: &str| {
        Value::List(vec![
            Value::from(source),
            Value::from("ValueError"),
            Value::from(msg),
            Value::List(vec![Value::from("py")]),
        ])
    };
    assert_eq!(
        get(v, "members"),
        &Value::List(vec![member("afail-1", "one"), member("afail-2", "two")]),
        "{v:?}"
    );
}

fn error_group(_: &Factory) -> Outcome {
    // Two children failing together: the async nursery raises both as one NurseryError.
    let v = with_py(async |py| Ok(py.run(&Factory.func("catch_two"), Value::Null).await?));
    expect_two_members(&v);
    Outcome::Passed
}

fn failure_cancels_awaiting_block(_: &Factory) -> Outcome {
    // The block awaits a third child's long call: the first failure cancels it with
    // harrow.Cancelled at that await, and the group holds only the children's failures.
    let dir = scratch("block");
    let dir_s = dir.to_string_lossy().into_owned();
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("catch_two"), Value::from(dir_s.as_str()))
            .await?)
    });
    expect_two_members(&v);
    let cancelled = dir.join("block.cancelled").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(cancelled, "the awaiting block did not get harrow.Cancelled");
    Outcome::Passed
}

fn cancel_while_awaiting_result(_: &Factory) -> Outcome {
    // One task awaits a context's result while another cancels the context: the cancel reaches
    // it (it used to find the context held by the wait and do nothing, so the wait got the
    // result 5 s later).
    let v = with_py(async |py| {
        Ok(py
            .run(
                &Factory.func("cancel_while_awaiting_result"),
                Value::Int(5000),
            )
            .await?)
    });
    assert_eq!(
        v,
        Value::List(vec![
            Value::List(vec![Value::from("raised"), Value::Bool(true)]),
            Value::Bool(true),
        ]),
        "the wait ended with the cancel (not with the result the callee returns after 5 s)"
    );
    Outcome::Passed
}

fn cancel_at_await(_: &Factory) -> Outcome {
    let dir = scratch("cancel");
    let marker = dir.join("waiting");
    let marker_s = marker.to_string_lossy().into_owned();
    with_py(async |py| {
        let func = Factory.func("hold_child_call");
        let mut held = Box::pin(py.run(&func, Value::from(marker_s.as_str())));
        until_exists(&mut held, &marker).await;
        // Ending the root cancels the actor: its call is interrupted at the await.
        drop(held);
        Ok(())
    });
    let cancelled = dir.join("waiting.cancelled").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        cancelled,
        "the await was not interrupted by harrow.Cancelled"
    );
    Outcome::Passed
}

fn other_calls_go_on(_: &Factory) -> Outcome {
    // One async call awaits a child whose call ends only once a file exists; another async call
    // of the same actor creates that file. Were the event loop blocked by the first, the second
    // would never run and the first would fail at its child's bound.
    let dir = scratch("concurrent");
    let marker = dir.join("waiting");
    let release = dir.join("release");
    let args = Value::Map(vec![
        (
            Value::from("marker"),
            Value::from(marker.to_string_lossy().as_ref()),
        ),
        (
            Value::from("release"),
            Value::from(release.to_string_lossy().as_ref()),
        ),
    ]);
    let release_s = release.to_string_lossy().into_owned();
    let (first, second) = with_py(async |py| {
        let func = Factory.func("wait_on_child");
        let mut held = Box::pin(py.run(&func, args));
        until_exists(&mut held, &marker).await;
        let second = py
            .run(&Factory.func("release"), Value::from(release_s.as_str()))
            .await?;
        Ok((held.await?, second))
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(second, Value::from("released"));
    assert_eq!(first, Value::Bool(true));
    Outcome::Passed
}

fn deadlines(_: &Factory) -> Outcome {
    // move_on_after and fail_after end an await of a child's long call at their deadline.
    let v = with_py(async |py| Ok(py.run(&Factory.func("deadlines"), Value::Int(50)).await?));
    assert_eq!(
        v,
        Value::List(vec![Value::Bool(true), Value::from("TimeoutError")])
    );
    Outcome::Passed
}

fn context_block_fails_with_its_cleanup(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(
                &Factory.func("context_block_fails_with_its_cleanup"),
                Value::Null,
            )
            .await?)
    });
    assert_eq!(
        v,
        Value::List(vec![
            Value::from("ExceptionGroup"),
            Value::List(vec![
                Value::from("the block's own"),
                Value::from("cleanup failed"),
            ]),
        ]),
        "both failures leave the block"
    );
    Outcome::Passed
}

fn plain_with_is_an_error(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("plain_with_fails"), Value::Null)
            .await?)
    });
    let text = v.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("async with"), "{v:?}");
    Outcome::Passed
}

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                conformance::run(stringify!($name), &Factory, super::$name);
            }
        )*
    };
}

mod async_nested {
    tests!(
        children,
        context_stream,
        stream_both_ways_at_once,
        error_group,
        failure_cancels_awaiting_block,
        cancel_at_await,
        cancel_while_awaiting_result,
        other_calls_go_on,
        deadlines,
        context_block_fails_with_its_cleanup,
        plain_with_is_an_error,
    );
    use super::Factory;
    use harrow_testkit::conformance;
}
