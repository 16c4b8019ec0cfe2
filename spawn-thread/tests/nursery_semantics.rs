//! Nursery semantics beyond the conformance scenarios, on the thread backend.

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::ipc::{ActorId, Channel, Value, mem};
use harrow_runtime_core::{
    ActorInit, ActorSpec, BoxFuture, Capabilities, Child, ChildOutcome, DedicatedThread, Error,
    Exit, HardKill, RootConfig, SpawnBackend, SpawnError, SpawnSpec, Timeouts, open_nursery,
    run_root, shield,
};
use harrow_spawn_thread::ThreadBackend;
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns;

struct Factory;

impl BackendFactory for Factory {
    fn backend(&self) -> Arc<dyn harrow_runtime_core::SpawnBackend> {
        ThreadBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        ActorSpec::with_resolver(testfns::registry(Arc::new(Factory)))
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
}

fn config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

fn bounded(name: &str, f: impl FnOnce()) {
    harrow_testkit::harness(
        name,
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        f,
    )
}

#[test]
fn a_failing_body_cancels_its_children_and_is_returned() {
    bounded(
        "a_failing_body_cancels_its_children_and_is_returned",
        || {
            let err = run_root(config(), |n| async move {
                let f = Factory;
                let child = n.start_actor("daemon", f.backend(), f.spec()).await?;
                child.run("testfns:echo", Value::Null).await?;
                Err::<(), _>("the body gave up".into())
            })
            .expect_err("the body failed");
            assert_eq!(
                err.body_error().map(|e| e.to_string()),
                Some("the body gave up".to_owned())
            );
            assert!(err.failures().is_empty(), "{err}");
        },
    );
}

#[test]
fn daemons_still_running_when_the_body_returns_are_cancelled() {
    bounded(
        "daemons_still_running_when_the_body_returns_are_cancelled",
        || {
            let children = run_root(config(), |n| async move {
                let f = Factory;
                n.start_actor("d1", f.backend(), f.spec()).await?;
                n.start_actor("d2", f.backend(), f.spec()).await?;
                Ok(n)
            })
            .expect("a clean nursery")
            .children();
            assert_eq!(children.len(), 2);
            for (id, backend, outcome) in children {
                assert_eq!(backend, "thread");
                assert_eq!(outcome, Some(ChildOutcome::Exited), "{id}");
            }
        },
    );
}

#[test]
fn open_nursery_outside_an_actor_is_a_clear_error() {
    bounded("open_nursery_outside_an_actor_is_a_clear_error", || {
        let err = futures_lite::future::block_on(open_nursery(|_n| async { Ok(()) }))
            .expect_err("no actor here");
        let body = err.body_error().expect("a body error").to_string();
        assert!(body.contains("no actor runs on this thread"), "{body}");
    });
}

#[test]
fn run_in_actor_rejects_a_malformed_function_path() {
    bounded("run_in_actor_rejects_a_malformed_function_path", || {
        run_root(config(), |n| async move {
            let f = Factory;
            let err = n
                .run_in_actor("x", f.backend(), "not a path", Value::Null, f.spec())
                .await
                .expect_err("a malformed path");
            assert!(matches!(err, Error::Portal(_)), "{err}");
            assert!(err.to_string().contains("not a path"), "{err}");
            // start_actor'ed children have no result.
            let child = n.start_actor("daemon", f.backend(), f.spec()).await?;
            assert!(child.result().await.is_err());
            Ok(())
        })
        .expect("the nursery stays usable");
    });
}

#[test]
fn bad_actor_names_are_refused_and_the_nursery_stays_usable() {
    bounded("bad_actor_names_are_refused", || {
        run_root(config(), |n| async move {
            let f = Factory;
            let long = "x".repeat(100_000);
            for bad in ["", "a/b", "nul\0", long.as_str()] {
                let err = n
                    .start_actor(bad, f.backend(), f.spec())
                    .await
                    .expect_err("a bad name");
                assert!(err.to_string().contains("bad spec"), "{err}");
            }
            // A supervisor whose two children share a name: neither could be told apart.
            let spec = harrow_runtime_core::SupervisorSpec::new(
                "twins",
                harrow_runtime_core::Strategy::OneForOne,
            )
            .child(harrow_runtime_core::SupervisedChild::new(
                "d",
                f.backend(),
                f.spec(),
            ))
            .child(harrow_runtime_core::SupervisedChild::new(
                "d",
                f.backend(),
                f.spec(),
            ));
            let err = n
                .start_supervisor(spec)
                .await
                .expect_err("two children named d");
            assert!(err.to_string().contains("named \"d\""), "{err}");
            assert!(n.children().is_empty(), "nothing was started");
            let child = n.start_actor("fine", f.backend(), f.spec()).await?;
            assert_eq!(
                child.run("testfns:echo", Value::Int(1)).await?,
                Value::Int(1)
            );
            Ok(())
        })
        .expect("usable");
    });
}

#[test]
fn a_child_whose_channel_breaks_while_idle_exits_by_itself() {
    bounded(
        "a_child_whose_channel_breaks_while_idle_exits_by_itself",
        || {
            let breakable = harrow_testkit::faults::BreakableBackend::wrap(ThreadBackend::shared());
            let outcome = run_root(config(), |n| {
                let breakable = breakable.clone();
                async move {
                    let f = Factory;
                    let child = n.start_actor("idle", breakable.clone(), f.spec()).await?;
                    child.run("testfns:echo", Value::Null).await?;
                    breakable.breaker(child.id()).expect("breaker").break_now();
                    // No cancel from us: the supervisor sees the broken link and reaps the orphan.
                    Ok(child.cancel().await)
                }
            })
            .expect("an orphan that exits cleanly is not a failure");
            assert_eq!(outcome, ChildOutcome::Exited);
        },
    );
}

/// A child that crashes while the nursery's body waits on a call to it: the crash ends the call,
/// which lets the body return (and so asks for the child's teardown), and it ends the child's
/// link, which its supervisor waits for. Both come from the one link reader, in an order that
/// is the runtime's to pick; the crash must be reported, never taken for the teardown that came
/// after it. (Here the supervisor happens to see the link's end first whatever it looks at
/// first; the remote `routed_hop_dies` is where the order flipped, and fails without the
/// supervisor looking at the link's end first.)
#[test]
fn a_crash_that_ends_the_bodys_call_is_reported_as_a_crash() {
    bounded(
        "a_crash_that_ends_the_bodys_call_is_reported_as_a_crash",
        || {
            let crashing = harrow_testkit::faults::CrashingBackend::wrap(ThreadBackend::shared());
            run_root(config(), |_n| {
                let crashing = crashing.clone();
                async move {
                    let inner = open_nursery(|inner| async move {
                        let f = Factory;
                        let child = inner
                            .start_actor("victim", crashing.clone(), f.spec())
                            .await?;
                        child.run("testfns:echo", Value::Null).await?;
                        let (call, crashed) = futures_lite::future::zip(
                            child.run("testfns:sleep_ms", Value::Int(60_000)),
                            async { crashing.crash(child.id()) },
                        )
                        .await;
                        assert!(crashed, "the victim was found");
                        let err = call.expect_err("the call ended with the crash");
                        assert!(err.is_closed(), "{err:?}");
                        // The body returns as if nothing happened: the nursery reports.
                        Ok(())
                    })
                    .await;
                    let err = inner.expect_err("the crash fails the nursery");
                    assert!(
                        err.failures()
                            .iter()
                            .any(|f| f.is_crash() && f.to_string().contains("victim")),
                        "{err}"
                    );
                    Ok(())
                }
            })
            .expect("the outer nursery is clean");
        },
    );
}

/// A thread child's spawn waits for nothing (its `Hello` is said for it as its thread is made),
/// so every spawn yields to the executor once: a body that does nothing but spawn must still
/// let a failure elsewhere tear its nursery down. Without the yield the body never gives the
/// failing child's call a turn, and the loop runs to its end.
#[test]
fn a_loop_of_spawns_lets_a_failure_tear_the_nursery_down() {
    bounded(
        "a_loop_of_spawns_lets_a_failure_tear_the_nursery_down",
        || {
            const MOST: usize = 2_000;
            let err = run_root(config(), |n| async move {
                let f = Factory;
                let why = Value::from("the failer failed");
                n.run_in_actor("failer", f.backend(), "testfns:fail", why, f.spec())
                    .await?;
                for i in 0..MOST {
                    n.start_actor(&format!("spawned-{i}"), f.backend(), f.spec())
                        .await?;
                }
                Err::<(), _>(format!("{MOST} spawns and the nursery was never torn down").into())
            })
            .expect_err("the failer's failure ends the root");
            assert!(err.body_error().is_none(), "{err}");
            assert!(
                err.failures()
                    .iter()
                    .any(|f| f.to_string().contains("the failer failed")),
                "{err}"
            );
        },
    );
}

/// Like the thread backend, it says its child's `Hello` for it; then the child's thread panics
/// before its runtime ever runs.
#[derive(Debug)]
struct DiesBeforeServing;

#[derive(Debug)]
struct DyingChild {
    id: ActorId,
    channel: Option<Channel>,
    thread: DedicatedThread<()>,
}

impl SpawnBackend for DiesBeforeServing {
    fn name(&self) -> &'static str {
        "dies-before-serving"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_hard_kill(HardKill::Detaches)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            let id = spec.id.clone();
            let failed = |reason: String| SpawnError::Failed {
                actor: id.clone(),
                reason,
            };
            let (parent_end, child_end) = mem::pair();
            let mut init = ActorInit::from_spec(spec, "dies-before-serving");
            init.introduce_in_process(&child_end)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let thread = DedicatedThread::spawn(id.name.clone(), move || {
                let _unused = (child_end, init);
                panic!("died before serving");
            })
            .map_err(|e| failed(e.to_string()))?;
            Ok(Box::new(DyingChild {
                id: id.clone(),
                channel: Some(parent_end),
                thread,
            }) as Box<dyn Child>)
        })
    }
}

impl Child for DyingChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move { self.thread.join(bound).await.into() })
    }

    fn describe(&self) -> String {
        format!("dying actor {}", self.id)
    }
}

/// A child whose `Hello` its backend said for it, and whose thread then dies before its runtime
/// runs: the spawn has succeeded, so the death is the child's crash, reported by its nursery
/// with the panic, and a call to it ends as closed rather than waiting.
#[test]
fn an_introduced_child_that_dies_before_serving_is_a_crash() {
    bounded(
        "an_introduced_child_that_dies_before_serving_is_a_crash",
        || {
            let err = run_root(config(), |n| async move {
                let child = n
                    .start_actor("doomed", Arc::new(DiesBeforeServing), Factory.spec())
                    .await?;
                let call = child.run("testfns:echo", Value::Null).await;
                let err = call.expect_err("nobody serves the call");
                assert!(err.is_closed(), "{err:?}");
                Ok(())
            })
            .expect_err("the crash fails the nursery");
            assert!(
                err.failures().iter().any(|f| f.is_crash()
                    && f.to_string().contains("doomed")
                    && f.to_string().contains("died before serving")),
                "{err}"
            );
        },
    );
}

#[test]
fn shield_outside_an_actor_just_runs() {
    bounded("shield_outside_an_actor_just_runs", || {
        assert_eq!(futures_lite::future::block_on(shield(async { 5 })), 5);
    });
}

#[test]
fn a_result_can_be_awaited_by_several_handles() {
    bounded("a_result_can_be_awaited_by_several_handles", || {
        run_root(config(), |n| async move {
            let f = Factory;
            let child = n
                .run_in_actor(
                    "adder",
                    f.backend(),
                    "testfns:add",
                    Value::List(vec![Value::Int(1), Value::Int(2)]),
                    f.spec(),
                )
                .await?;
            let other = child.clone();
            assert_eq!(child.result().await?, Value::Int(3));
            assert_eq!(other.result().await?, Value::Int(3));
            Ok(())
        })
        .expect("clean");
    });
}

/// Starts a child whose call fails with "boom", and waits until that failure has begun the
/// nursery's teardown.
async fn a_child_fails_and_the_teardown_begins(
    n: &harrow_runtime_core::ActorNursery,
) -> Result<(), harrow_runtime_core::BoxError> {
    let f = Factory;
    n.run_in_actor(
        "failing",
        f.backend(),
        "testfns:fail",
        "boom".into(),
        f.spec(),
    )
    .await?;
    n.tearing_down().cancelled().await;
    Ok(())
}

/// A body whose wait the teardown ended, ready at the same poll as the teardown: its error is
/// the teardown's consequence and not a failure of its own; the child's failure that started
/// the teardown is what the nursery reports. (Built without a timing window: the body's wait
/// is the teardown itself, so both are ready whenever the nursery task wakes.)
#[test]
fn a_body_error_the_teardown_caused_is_not_reported_as_the_bodys_failure() {
    bounded(
        "a_body_error_the_teardown_caused_is_not_reported_as_the_bodys_failure",
        || {
            for closed in [true, false] {
                let err = run_root(config(), |n| async move {
                    a_child_fails_and_the_teardown_begins(&n).await?;
                    // What a call to a child, or a start, returns once the teardown began.
                    let e: Error = if closed {
                        harrow_runtime_core::portal::Error::Closed("the link was shut".into())
                            .into()
                    } else {
                        Error::NurseryClosed
                    };
                    Err::<(), _>(e.into())
                })
                .expect_err("the child failed");
                assert!(err.body_error().is_none(), "closed={closed}: {err}");
                assert_eq!(err.failures().len(), 1, "{err}");
                let remote = err.failures()[0].remote_error().expect("the child raised");
                assert_eq!(remote.message, "boom", "{err}");
            }
        },
    );
}

/// A body that fails on its own while the nursery tears down: both failures are reported.
#[test]
fn a_body_failure_during_the_teardown_is_reported_with_the_childs() {
    bounded(
        "a_body_failure_during_the_teardown_is_reported_with_the_childs",
        || {
            let err = run_root(config(), |n| async move {
                a_child_fails_and_the_teardown_begins(&n).await?;
                Err::<(), _>("the body's own failure".into())
            })
            .expect_err("both failed");
            assert_eq!(
                err.body_error().map(|e| e.to_string()),
                Some("the body's own failure".to_owned()),
                "{err}"
            );
            assert_eq!(err.failures().len(), 1, "{err}");
        },
    );
}

/// A nursery's body that waits on its own call's stream when the call is cancelled: the cancel
/// ends the body's `recv` and the call's cancel together, and the body is looked at first. Its
/// error is the cancel's consequence, so the call answers as cancelled (naming the canceller),
/// not with a group holding the cancel as the body's failure.
#[test]
fn a_cancel_that_ends_a_nursery_bodys_stream_is_reported_as_the_cancel() {
    bounded(
        "a_cancel_that_ends_a_nursery_bodys_stream_is_reported_as_the_cancel",
        || {
            run_root(config(), |n| async move {
                let f = Factory;
                let child = n.start_actor("callee", f.backend(), f.spec()).await?;
                for round in 0..20 {
                    let (mut ctx, _) = child
                        .open_context("testfns:ctx_echo_in_nursery", Value::Null)
                        .await?;
                    let mut stream = ctx.open_stream().await?;
                    stream.send(Value::Int(round)).await?;
                    assert_eq!(stream.recv().await?, Some(Value::Int(round)));
                    ctx.cancel()
                        .await
                        .unwrap_or_else(|e| panic!("round {round}: cancel() got {e:?}"));
                    let err = ctx
                        .result()
                        .await
                        .expect_err("a cancelled call has no result");
                    assert!(err.is_cancelled(), "round {round}: {err:?}");
                    assert_eq!(err.canceller(), Some(n.actor().id()), "{err}");
                }
                // The actor is fine afterwards.
                assert_eq!(
                    child.run("testfns:echo", Value::Int(3)).await?,
                    Value::Int(3)
                );
                Ok(())
            })
            .expect("a clean nursery");
        },
    );
}

/// Bounds of any length are accepted, `Duration::MAX` included (read as "no bound" in practice):
/// the ladder's sums and the deadlines made from them saturate instead of overflowing.
#[test]
fn bounds_as_long_as_duration_max_do_not_overflow() {
    bounded("bounds_as_long_as_duration_max_do_not_overflow", || {
        let mut config = RootConfig::default()
            .handle_sigint(false)
            .timeouts(Timeouts {
                cancel_ack: Duration::MAX,
                graceful_exit: Duration::MAX,
                hard_kill: Duration::MAX,
            });
        config.link_config.hello_timeout = Duration::MAX;
        config.link_config.cancel_timeout = Duration::MAX;
        config.link_config.close_flush_timeout = Duration::MAX;
        config.link_config.cancel_cleanup = Duration::MAX;
        let exits = run_root(config, |n| async move {
            let f = Factory;
            let child = n.start_actor("long", f.backend(), f.spec()).await?;
            assert_eq!(
                child.run("testfns:echo", Value::Int(1)).await?,
                Value::Int(1)
            );
            let found = n.actor().wait_for_actor("long", Duration::MAX).await?;
            assert_eq!(
                found.run("testfns:echo", Value::Int(2)).await?,
                Value::Int(2)
            );
            let (ctx, _) = child
                .open_context("testfns:ctx_wait_forever", Value::Null)
                .await?;
            ctx.cancel().await?;
            let run = n
                .run_in_actor(
                    "runner",
                    f.backend(),
                    "testfns:sleep_ms",
                    Value::Int(600_000),
                    f.spec(),
                )
                .await?;
            Ok(vec![child.cancel().await, run.cancel().await])
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exits, vec![ChildOutcome::Exited, ChildOutcome::Exited]);
    });
}

#[test]
fn a_panicking_body_tears_its_thread_children_down_first() {
    // The harness checks that no thread, fd or task of the root outlives the test.
    bounded(
        "a_panicking_body_tears_its_thread_children_down_first",
        || {
            let started = std::time::Instant::now();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_root(config(), |n| async move {
                    let f = Factory;
                    let child = n.start_actor("daemon", f.backend(), f.spec()).await?;
                    let v = child.run("testfns:echo", Value::Int(1)).await?;
                    if v == Value::Int(1) {
                        panic!("boom in the body");
                    }
                    Ok(())
                })
            }));
            let payload = caught.expect_err("the panic goes on");
            assert!(harrow_runtime_core::panic_message(&*payload).contains("boom in the body"));
            eprintln!(
                "panicking body: run_root ended after {:?}",
                started.elapsed()
            );
            let again = run_root(config(), |n| async move {
                let f = Factory;
                let child = n.start_actor("again", f.backend(), f.spec()).await?;
                Ok(child.run("testfns:echo", Value::Int(2)).await?)
            });
            assert_eq!(again.expect("another root runs"), Value::Int(2));
        },
    );
}
