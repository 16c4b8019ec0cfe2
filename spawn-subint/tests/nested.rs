//! Python actors as full actors (subint only): nurseries, portals, contexts and streams, the
//! parent, deadlines and cancellation, driven from Python (`tests/pyfns/harrow_testfns/actors.py`).
//! Each test runs alone in its process under the hang watchdog and the resource tracker (the
//! live-interpreter count included), like the conformance suite. The mixed trees (process and
//! thread children of a Python actor) are in the integration crate (`python_actors`).

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use harrow_ipc::{ErrorKind, Value};
use harrow_runtime_core::{ActorSpec, RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::{BackendFactory, Outcome};

const MODULE: &str = "harrow_testfns.actors";

struct Factory;

impl BackendFactory for Factory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("nested")
            .expose(MODULE)
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

fn identity(_: &Factory) -> Outcome {
    let v = with_py(async |py| Ok(py.run(&Factory.func("whoami"), Value::Null).await?));
    assert_eq!(get(&v, "name").as_str(), Some("py"), "{v:?}");
    assert_eq!(get(&v, "backend").as_str(), Some("subint"), "{v:?}");
    assert_eq!(get(&v, "parent").as_str(), Some("root"), "{v:?}");
    assert!(
        get(&v, "uid").as_str().is_some_and(|u| !u.is_empty()),
        "{v:?}"
    );
    Outcome::Passed
}

fn child_identity_and_result(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("run_in_actor_result"), Value::Null)
            .await?)
    });
    assert_eq!(
        v,
        Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
    );
    Outcome::Passed
}

fn parent_portal(_: &Factory) -> Outcome {
    // The Python actor starts a child that calls back into it through its parent portal.
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("parent_call_via_child"), Value::Int(7))
            .await?)
    });
    assert_eq!(v, Value::Int(7));
    Outcome::Passed
}

fn cancel_child(_: &Factory) -> Outcome {
    let v = with_py(async |py| Ok(py.run(&Factory.func("cancel_child"), Value::Null).await?));
    assert_eq!(
        v,
        Value::List(vec![Value::Bool(true), Value::from("HarrowError")]),
        "a cancelled child ends cleanly and answers no more calls"
    );
    Outcome::Passed
}

fn context_stream(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("stream_to_child"), Value::Int(20))
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

fn stop_reading_early(_: &Factory) -> Outcome {
    // Breaking out of a stream of an endless generator ends the context: the producer is told
    // nobody reads (it waited for credit for ever before).
    for with_block in [true, false] {
        let v = with_py(async |py| {
            Ok(py
                .run(&Factory.func("stop_reading_early"), Value::Bool(with_block))
                .await?)
        });
        let want = Value::List(vec![
            Value::List((0..3).map(Value::Int).collect()),
            Value::Null,
        ]);
        assert_eq!(v, want, "with a stream block: {with_block}");
    }
    Outcome::Passed
}

fn producer_stopped(_: &Factory) -> Outcome {
    // A generator, plain or async, whose reader breaks out is closed in its call: its
    // `finally` has run by the time the call returns.
    let dir = std::env::temp_dir().join(format!("harrow-producer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    for is_async in [false, true] {
        let marker = dir.join(format!("finally-{is_async}"));
        let args = Value::Map(vec![
            (
                Value::from("marker"),
                Value::from(marker.to_string_lossy().as_ref()),
            ),
            (Value::from("is_async"), Value::Bool(is_async)),
        ]);
        let v = with_py(async |py| Ok(py.run(&Factory.func("producer_stopped"), args).await?));
        let want = Value::List(vec![
            Value::List((0..3).map(Value::Int).collect()),
            Value::Null,
            Value::Bool(true),
        ]);
        assert_eq!(v, want, "async: {is_async}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::Passed
}

fn producer_cleanup_fails(_: &Factory) -> Outcome {
    // The consumer fails mid-stream; the producer's cleanup fails too: both are reported,
    // for a plain and an async generator alike (the cleanup ran in its call).
    for is_async in [false, true] {
        let v = with_py(async |py| {
            Ok(py
                .run(
                    &Factory.func("producer_cleanup_fails"),
                    Value::Bool(is_async),
                )
                .await?)
        });
        let pair = |a: &str, b: &str| Value::List(vec![Value::from(a), Value::from(b)]);
        let want = Value::List(vec![
            pair("KeyError", "KeyError"),
            pair("RemoteError", "TypeError"),
        ]);
        assert_eq!(v, want, "async: {is_async}");
    }
    Outcome::Passed
}

fn block_raises_after_the_teardown(_: &Factory) -> Outcome {
    // A block that raises after its nursery's teardown began: its exception is a member of
    // the group the caller gets, beside the child's failure, and counted in its message; a
    // `SystemExit` too (as a RemoteError of its type: an ExceptionGroup holds no other).
    for (exit, block) in [
        (false, ("KeyError", "'after the teardown'")),
        (true, ("SystemExit", "3")),
    ] {
        let err = with_py(async |py| {
            Ok(py
                .run(
                    &Factory.func("block_raises_after_the_teardown"),
                    Value::Bool(exit),
                )
                .await
                .expect_err("the child and the block fail"))
        });
        let group = err.remote_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(group.kind, ErrorKind::Group, "{err}");
        let mut members: Vec<_> = group
            .children
            .iter()
            .map(|c| (c.type_name.as_str(), c.message.as_str()))
            .collect();
        members.sort();
        let mut want = vec![block, ("ValueError", "child")];
        want.sort();
        assert_eq!(members, want, "{err}");
        assert!(group.message.starts_with("2 failures"), "{err}");
    }
    Outcome::Passed
}

fn parent_waits_on_its_canceller(_: &Factory) -> Outcome {
    // A Python actor waiting on the very call of its child that asks it to cancel: the wait
    // raises harrow.Cancelled (it used to raise HarrowError, a closed link's failure), and the
    // actor's answer is a cancellation by that child; or, when the call's answer came first,
    // that answer, or that cancellation landing after it (in the nursery's block).
    let dir = std::env::temp_dir().join(format!("harrow-canceller-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    for i in 0..3 {
        let marker = dir.join(format!("raised-{i}"));
        let arg = Value::from(marker.to_string_lossy().as_ref());
        let got = with_py(async |py| {
            Ok(py
                .run(&Factory.func("parent_waits_on_its_canceller"), arg)
                .await)
        });
        match got {
            Ok(v) => assert_eq!(v, Value::Bool(true)),
            Err(err) => {
                assert!(err.is_cancelled(), "not a cancellation: {err}");
                let canceller = err.canceller().expect("a canceller");
                assert_eq!(canceller.name, "canceller", "{err}");
                // The wait raised the cancel, or returned before it (the cancel then ended the
                // nursery's block).
                let raised = std::fs::read_to_string(&marker).expect("the wait ended");
                assert!(
                    raised == "harrow.Cancelled" || raised == "returned",
                    "the wait raised {raised}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::Passed
}

fn an_error_that_is_not_utf8(_: &Factory) -> Outcome {
    // A message with a lone surrogate keeps its text (the surrogate escaped) and its traceback.
    let err = with_py(async |py| {
        Ok(py
            .run(&Factory.func("raise_surrogate"), Value::Null)
            .await
            .expect_err("it raises"))
    });
    let e = err.remote_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(e.type_name, "ValueError", "{err}");
    assert_eq!(e.message, "bad byte: \\udcff in a file name", "{err}");
    assert!(e.traceback.contains("raise_surrogate"), "{err}");
    Outcome::Passed
}

fn result_after_a_deadline(_: &Factory) -> Outcome {
    // A context's result() given up by a deadline leaves the context running: waiting again
    // gets its result (it used to end the context and leave nothing to wait for).
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("result_after_a_deadline"), Value::Int(300))
            .await?)
    });
    assert_eq!(
        v,
        Value::List(vec![Value::Bool(true), Value::from("done")]),
        "the first wait was given up, the second got the result"
    );
    Outcome::Passed
}

fn recv_after_a_deadline(_: &Factory) -> Outcome {
    // A stream's recv() given up by a deadline leaves the stream open: the next send and recv
    // work, and the context ends normally (the stream used to be dropped, ending it).
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("recv_after_a_deadline"), Value::Null)
            .await?)
    });
    assert_eq!(
        v,
        Value::List(vec![Value::Bool(true), Value::Int(1), Value::Int(1)]),
        "the first recv was given up; the echo and the result came"
    );
    Outcome::Passed
}

fn kwargs(_: &Factory) -> Outcome {
    let v = with_py(async |py| Ok(py.run(&Factory.func("kwargs_call"), Value::Null).await?));
    assert_eq!(v, Value::List(vec![Value::Int(1), Value::Int(2)]));
    Outcome::Passed
}

fn error_group(_: &Factory) -> Outcome {
    // Python sees a nursery's failures as an ExceptionGroup of RemoteErrors ...
    let v = with_py(async |py| Ok(py.run(&Factory.func("catch_two"), Value::Null).await?));
    assert_eq!(get(&v, "is_group"), &Value::Bool(true), "{v:?}");
    let member = |source: &str, msg: &str| {
        Value::List(vec![
            Value::from(source),
            Value::from("ValueError"),
            Value::from(msg),
            Value::List(vec![Value::from("py")]),
        ])
    };
    assert_eq!(
        get(&v, "members"),
        &Value::List(vec![member("fail-1", "one"), member("fail-2", "two")]),
        "{v:?}"
    );
    // ... and, uncaught, the caller gets that group whole; a block cancelled by the first
    // failure (it was waiting) adds no member of its own.
    for wait in [false, true] {
        let err = with_py(async |py| {
            Ok(py
                .run(&Factory.func("two_failures"), Value::Bool(wait))
                .await
                .expect_err("both children fail"))
        });
        let group = err.remote_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(group.kind, ErrorKind::Group, "{err}");
        assert_eq!(group.source.name, "py", "{err}");
        let mut sources: Vec<_> = group
            .children
            .iter()
            .map(|c| c.source.name.as_str())
            .collect();
        sources.sort();
        assert_eq!(sources, ["fail-1", "fail-2"], "{err}");
        for c in &group.children {
            assert_eq!(c.type_name, "ValueError", "{err}");
            assert_eq!(c.relay_path, std::slice::from_ref(&group.source), "{err}");
            assert!(c.traceback.contains("in fail_together"), "{err}");
        }
    }
    Outcome::Passed
}

fn deadlines(_: &Factory) -> Outcome {
    with_py(async |py| {
        let caught = py.run(&Factory.func("move_on"), Value::Int(50)).await?;
        assert_eq!(caught, Value::Bool(true));
        let err = py
            .run(&Factory.func("fail_after"), Value::Int(50))
            .await
            .expect_err("fail_after raises");
        let remote = err.remote_error().expect("a remote error");
        assert_eq!(remote.type_name, "TimeoutError", "{err}");
        // A deadline that fired in a block its nursery had cancelled too: the nursery's cancel
        // goes on (the block does not go on past `move_on_after`), and the nursery reports its
        // child's failure.
        let v = py
            .run(&Factory.func("deadline_in_a_cancelled_block"), Value::Null)
            .await?;
        assert_eq!(
            v,
            Value::List(vec![
                Value::Bool(false),
                Value::Bool(false),
                Value::List(vec![Value::from("boom")]),
            ]),
            "the outer cancel was swallowed by the inner deadline"
        );
        // The block's own exception, raised past the deadline inside a stream block, is not
        // replaced by the deadline's cancel at the stream's exit.
        let v = py
            .run(
                &Factory.func("error_in_a_stream_block_past_a_deadline"),
                Value::Null,
            )
            .await?;
        assert_eq!(
            v,
            Value::List(vec![Value::from("ValueError"), Value::Bool(false)]),
            "the block's exception was replaced and swallowed"
        );
        Ok(())
    });
    Outcome::Passed
}

fn context_block_failures(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("context_block_failures"), Value::Null)
            .await?)
    });
    let remote = |msg: &str, source: &str| {
        Value::List(vec![
            Value::from("remote"),
            Value::from("ValueError"),
            Value::from(msg),
            Value::from(source),
        ])
    };
    assert_eq!(
        v,
        Value::List(vec![
            // The callee's failure mid-stream ends the caller's loop with that failure, once
            // (not as an end of stream, nor twice in a group with the context's outcome).
            Value::List(vec![
                Value::List(vec![Value::Int(1), Value::Int(2)]),
                remote("mid-stream", "streamer"),
            ]),
            // A block that raised while its callee failed in its cleanup: both, not the
            // callee's failure in place of the block's exception.
            Value::List(vec![
                Value::from("group"),
                Value::List(vec![
                    Value::List(vec![
                        Value::from("ValueError"),
                        Value::from("the block's own")
                    ]),
                    remote("cleanup failed", "cleaner"),
                ]),
            ]),
        ]),
    );
    Outcome::Passed
}

fn block_and_child_fail(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("block_and_child_fail"), Value::Null)
            .await?)
    });
    let member = |t: &str, msg: &str, source: Option<&str>| {
        Value::List(vec![
            Value::from(t),
            Value::from(msg),
            source.map_or(Value::Null, Value::from),
        ])
    };
    // Each failure once, with its source: the block's own exception is itself in the group (not
    // also as a `NurseryBodyError` text), and a RemoteError the block raised keeps its source.
    assert_eq!(
        v,
        Value::List(vec![
            Value::List(vec![
                member("ValueError", "child", Some("failing")),
                member("ValueError", "the block's own", None),
            ]),
            Value::List(vec![
                member("ValueError", "child", Some("failing")),
                member("ValueError", "relayed", Some("other")),
            ]),
        ]),
    );
    Outcome::Passed
}

fn block_and_child_fail_uncaught(_: &Factory) -> Outcome {
    // The same failures, the NurseryError left to end the call: the caller's group holds the
    // block's exception as itself (its type and message, and for a RemoteError its source),
    // not as a text member standing for it.
    for relay in [false, true] {
        let err = with_py(async move |py| {
            Ok(py
                .run(
                    &Factory.func("block_and_child_fail_uncaught"),
                    Value::Bool(relay),
                )
                .await
                .expect_err("the block and a child fail"))
        });
        let group = err.remote_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(group.kind, ErrorKind::Group, "{err}");
        assert_eq!(group.source.name, "py", "{err}");
        let mut members: Vec<_> = group
            .children
            .iter()
            .map(|c| {
                (
                    c.type_name.as_str(),
                    c.message.as_str(),
                    c.source.name.as_str(),
                )
            })
            .collect();
        members.sort();
        let block = if relay {
            ("ValueError", "relayed", "other")
        } else {
            ("ValueError", "the block's own", "py")
        };
        let mut want = vec![("ValueError", "child", "failing"), block];
        want.sort();
        assert_eq!(members, want, "{err}");
    }
    Outcome::Passed
}

fn wait_serves_and_cancel_interrupts(_: &Factory) -> Outcome {
    let dir = std::env::temp_dir().join(format!("harrow-nested-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let marker = dir.join("waiting");
    let marker_s = marker.to_string_lossy().into_owned();
    with_py(async |py| {
        // A call that waits in a child call ...
        let func = Factory.func("hold_child_call");
        let mut held = Box::pin(py.run(&func, Value::from(marker_s.as_str())));
        let give_up = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            assert!(Instant::now() < give_up, "the call never started waiting");
            assert!(
                futures_lite::future::poll_once(&mut held).await.is_none(),
                "ended early"
            );
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
        // ... does not keep the actor from serving another one meanwhile.
        assert_eq!(
            py.run(&Factory.func("echo"), Value::Int(5)).await?,
            Value::Int(5)
        );
        assert!(
            futures_lite::future::poll_once(&mut held).await.is_none(),
            "the held call is still waiting"
        );
        // Cancelling the actor interrupts the wait with harrow.Cancelled.
        drop(held);
        Ok(())
    });
    let cancelled = dir.join("waiting.cancelled");
    assert!(
        cancelled.exists(),
        "the wait was not interrupted by harrow.Cancelled"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::Passed
}

fn misuse_is_an_error(_: &Factory) -> Outcome {
    let v = with_py(async |py| {
        Ok(py
            .run(&Factory.func("outside_call_fails"), Value::Null)
            .await?)
    });
    let text = v.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("closed"), "{v:?}");
    // A plain `with` nursery in an async def function: a clear error pointing to `async with`.
    let v = with_py(async |py| Ok(py.run(&Factory.func("from_async"), Value::Null).await?));
    let text = v.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("async def"), "{v:?}");
    assert!(text.contains("async with"), "{v:?}");
    // A child on a backend nobody offered: a clear error naming what is offered.
    let err = with_py(async |py| {
        Ok(py
            .run(&Factory.func("mixed_tree"), Value::Null)
            .await
            .expect_err("no process backend is offered here"))
    });
    let remote = err.remote_error().expect("a remote error");
    assert_eq!(remote.kind, ErrorKind::Raised, "{err}");
    assert!(remote.message.contains("offered"), "{err}");
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

mod nested {
    tests!(
        identity,
        child_identity_and_result,
        parent_portal,
        cancel_child,
        context_stream,
        stop_reading_early,
        producer_stopped,
        producer_cleanup_fails,
        block_raises_after_the_teardown,
        an_error_that_is_not_utf8,
        parent_waits_on_its_canceller,
        result_after_a_deadline,
        recv_after_a_deadline,
        kwargs,
        error_group,
        deadlines,
        context_block_failures,
        block_and_child_fail,
        block_and_child_fail_uncaught,
        wait_serves_and_cancel_interrupts,
        misuse_is_an_error,
    );
    use super::Factory;
    use harrow_testkit::conformance;
}
