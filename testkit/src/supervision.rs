//! Scenarios for restarting supervision and actor pools, for every backend: each is a plain
//! function of a [`BackendFactory`], like the conformance scenarios, stamped out per backend by
//! [`supervision_suite!`](crate::supervision_suite). Children crash through
//! [`CrashingBackend`], so no backend needs a function that dies.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use harrow_runtime_core::ipc::{ActorId, Value};
use harrow_runtime_core::{
    ActorPool, ChildOutcome, NurseryError, PoolConfig, PoolError, Restart, RootConfig, Strategy,
    SupervisedChild, SupervisorEnd, SupervisorEvent, SupervisorEvents, SupervisorSpec, Timeouts,
    move_on_after, run_root,
};

use crate::conformance::{BackendFactory, Outcome};
use crate::faults::CrashingBackend;

/// How long a scenario waits for one event it expects before it fails.
const EVENT_BOUND: Duration = Duration::from_secs(20);

/// The default ladder rather than `Timeouts::quick()`: these scenarios end many actors (every
/// crash is followed by a teardown and a restart), and on a loaded machine an interpreter's own
/// teardown can outlast the quick bounds. A passing run does not wait for them.
fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::default())
}

#[track_caller]
fn expect_ok<T>(r: Result<T, NurseryError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("nursery failed: {e}"),
    }
}

/// A supervisor's events as a test reads them: each expected event is matched once, whether it
/// was read already (while waiting for another) or is still to come.
struct Watch {
    events: SupervisorEvents,
    log: Vec<(SupervisorEvent, bool)>,
}

impl Watch {
    fn new(events: SupervisorEvents) -> Self {
        Watch {
            events,
            log: Vec::new(),
        }
    }

    /// The first event not matched before for which `want` holds, reading more (bounded) if
    /// needed; returns every event read so far, that one last among the new.
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&SupervisorEvent) -> bool,
    ) -> Vec<SupervisorEvent> {
        if let Some(hit) = self.log.iter_mut().find(|(e, used)| !used && want(e)) {
            hit.1 = true;
            return vec![hit.0.clone()];
        }
        let (events, log) = (&mut self.events, &mut self.log);
        let mut seen = Vec::new();
        let found = move_on_after(EVENT_BOUND, async {
            while let Some(e) = events.next().await {
                let hit = want(&e);
                log.push((e.clone(), hit));
                seen.push(e);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Some(true), "no {what} event; saw {:?}", self.log);
        seen
    }
}

/// Waits (bounded) until `cond` holds, checking every few milliseconds.
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let ok = move_on_after(EVENT_BOUND, async {
        while !cond() {
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ok.is_some(), "timed out waiting for {what}");
}

fn three(
    f: &(impl BackendFactory + ?Sized),
    crashing: &Arc<CrashingBackend>,
    s: Strategy,
) -> SupervisorSpec {
    ["a", "b", "c"].iter().fold(
        SupervisorSpec::new("sup", s).intensity(10, Duration::from_secs(60)),
        |spec, name| spec.child(SupervisedChild::new(*name, crashing.clone(), f.spec())),
    )
}

/// Runs one strategy: crash `b` of `a, b, c` and return which children got a new actor, after
/// checking that the old `b` portal fails cleanly and the new one answers.
fn crash_b<F: BackendFactory + ?Sized>(f: &F, strategy: Strategy) -> BTreeSet<String> {
    let crashing = CrashingBackend::wrap(f.backend());
    expect_ok(run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            let sup = n.start_supervisor(three(f, &crashing, strategy)).await?;
            let mut events = Watch::new(sup.events());
            events
                .until(
                    "third start",
                    |e| matches!(e, SupervisorEvent::Started { child, .. } if child == "c"),
                )
                .await;
            let before: Vec<ActorId> = ["a", "b", "c"]
                .iter()
                .map(|c| sup.child(c).expect("running").id().clone())
                .collect();
            let old_b = sup.portal("b").expect("b runs");
            assert!(crashing.crash(&before[1]));
            let seen = events
                .until(
                    "restart of b",
                    |e| matches!(e, SupervisorEvent::Restarted { child, .. } if child == "b"),
                )
                .await;
            assert!(
                seen.iter().any(|e| matches!(e,
                    SupervisorEvent::Failed { child, error, .. }
                        if child == "b" && error.contains("crashed"))),
                "{seen:?}"
            );
            // In strategy order the restarted group ends with the last child: wait for it.
            if strategy != Strategy::OneForOne {
                events
                    .until(
                        "restart of c",
                        |e| matches!(e, SupervisorEvent::Restarted { child, .. } if child == "c"),
                    )
                    .await;
            }
            let err = old_b
                .run(&f.func("echo"), Value::Int(1))
                .await
                .expect_err("the old incarnation is gone");
            assert!(err.is_closed(), "{err}");
            let new_b = sup.portal("b").expect("b runs again");
            assert_eq!(
                new_b.run(&f.func("echo"), Value::Int(2)).await?,
                Value::Int(2)
            );
            let mut renewed = BTreeSet::new();
            for (i, c) in ["a", "b", "c"].iter().enumerate() {
                if sup.child(c).expect("running").id() != &before[i] {
                    renewed.insert((*c).to_owned());
                }
            }
            assert_eq!(
                sup.cancel().await,
                SupervisorEnd::Cancelled { failed: vec![] }
            );
            events
                .until("stop", |e| matches!(e, SupervisorEvent::Stopped))
                .await;
            Ok(renewed)
        }
    }))
}

/// one-for-one: only the crashed child gets a new actor; its old portal fails as closed.
pub fn supervisor_one_for_one<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let renewed = crash_b(f, Strategy::OneForOne);
    assert_eq!(renewed, BTreeSet::from(["b".to_owned()]));
    Outcome::Passed
}

/// one-for-all: every child gets a new actor.
pub fn supervisor_one_for_all<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let renewed = crash_b(f, Strategy::OneForAll);
    assert_eq!(renewed, ["a", "b", "c"].map(str::to_owned).into());
    Outcome::Passed
}

/// rest-for-one: the crashed child and those started after it get new actors.
pub fn supervisor_rest_for_one<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let renewed = crash_b(f, Strategy::RestForOne);
    assert_eq!(renewed, ["b", "c"].map(str::to_owned).into());
    Outcome::Passed
}

/// crashes the supervisor must not miss: a child that crashes just before the supervisor is
/// cancelled, and, under one-for-all, a sibling that crashes while the first crash's restart
/// stops it. Each is a `Failed` event naming its child, never taken for the stop.
pub fn supervisor_reports_every_crash<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let crashing = CrashingBackend::wrap(f.backend());
    expect_ok(run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            let failed = |name: &'static str| {
                move |e: &SupervisorEvent| {
                    matches!(e, SupervisorEvent::Failed { child, error, .. }
                        if child == name && error.contains("crashed"))
                }
            };
            // One-for-all: both children crash at once.
            let spec = ["a", "b"].iter().fold(
                SupervisorSpec::new("all", Strategy::OneForAll)
                    .intensity(10, Duration::from_secs(60)),
                |spec, name| spec.child(SupervisedChild::new(*name, crashing.clone(), f.spec())),
            );
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            let ids: Vec<ActorId> = ["a", "b"]
                .iter()
                .map(|c| sup.child(c).expect("running").id().clone())
                .collect();
            assert!(crashing.crash(&ids[0]) && crashing.crash(&ids[1]));
            events.until("the crash of a", failed("a")).await;
            events.until("the crash of b", failed("b")).await;
            sup.cancel().await;

            // A crash just before the cancel.
            let spec = SupervisorSpec::new("last", Strategy::OneForOne)
                .intensity(10, Duration::from_secs(60))
                .child(SupervisedChild::new("c", crashing.clone(), f.spec()));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            let c = sup.child("c").expect("running");
            assert!(crashing.crash(c.id()));
            c.ended().await;
            // Restarted before the cancel (only the event says it), or found crashed by the
            // stop (the end says it too).
            match sup.cancel().await {
                SupervisorEnd::Cancelled { failed } => assert!(
                    failed.len() <= 1 && failed.iter().all(|e| e.contains(&c.id().to_string())),
                    "{failed:?}"
                ),
                other => panic!("{other:?}"),
            }
            events.until("the crash of c", failed("c")).await;

            // A panicking `on_started` callback is reported; the supervisor goes on and ends.
            let spec = SupervisorSpec::new("hook", Strategy::OneForOne)
                .child(SupervisedChild::new("d", f.backend(), f.spec()))
                .on_started(|_, _| panic!("a bug in the callback"));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            events
                .until("the callback's panic", |e| {
                    matches!(e, SupervisorEvent::Failed { child, error, .. }
                        if child == "d" && error.contains("a bug in the callback"))
                })
                .await;
            let d = sup.portal("d").expect("d runs");
            assert_eq!(d.run(&f.func("echo"), Value::Int(4)).await?, Value::Int(4));
            assert_eq!(
                sup.cancel().await,
                SupervisorEnd::Cancelled { failed: vec![] }
            );
            Ok(())
        }
    }));
    Outcome::Passed
}

/// A supervisor's end carries every failure it did not restart: a `Never` child's crash before
/// a cancel, a child that fails as the cancel stops it, and, on a give-up, a sibling that fails
/// as it is stopped, beside the crash that made it give up (reported once).
pub fn supervisor_reports_crashes_at_its_end<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let crashing = CrashingBackend::wrap(f.backend());
    let err = run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            let child = |name: &str, restart| {
                SupervisedChild::new(name, crashing.clone(), f.spec()).restart(restart)
            };
            // A `Never` child crashed, then the supervisor is cancelled while another child
            // runs; that one fails as it is stopped.
            let spec = SupervisorSpec::new("ends", Strategy::OneForOne)
                .child(child("never", Restart::Never))
                .child(child("stays", Restart::Always));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            let never = sup.child("never").expect("runs").id().clone();
            let stays = sup.child("stays").expect("runs").id().clone();
            assert!(crashing.crash(&never));
            events
                .until(
                    "the crash of never",
                    |e| matches!(e, SupervisorEvent::Failed { child, .. } if child == "never"),
                )
                .await;
            assert!(crashing.crash_on_teardown(&stays));
            let SupervisorEnd::Cancelled { failed } = sup.cancel().await else {
                panic!("not a cancel")
            };
            assert_eq!(failed.len(), 2, "{failed:?}");
            assert!(failed[0].contains(&never.to_string()), "{failed:?}");
            assert!(
                failed[1].contains(&stays.to_string()) && failed[1].contains("torn down"),
                "{failed:?}"
            );
            events
                .until(
                    "the failure of stays",
                    |e| matches!(e, SupervisorEvent::Failed { child, .. } if child == "stays"),
                )
                .await;

            // A give-up: `a` crashes past an intensity of 0, and `b` fails as it is stopped.
            let spec = SupervisorSpec::new("gives-up", Strategy::OneForOne)
                .intensity(0, Duration::from_secs(60))
                .child(child("a", Restart::Always))
                .child(child("b", Restart::Always));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            let a = sup.child("a").expect("runs").id().clone();
            let b = sup.child("b").expect("runs").id().clone();
            assert!(crashing.crash_on_teardown(&b));
            assert!(crashing.crash(&a));
            let SupervisorEnd::GaveUp(errors) = sup.wait().await else {
                panic!("no give-up")
            };
            assert_eq!(errors.len(), 2, "{errors:?}");
            assert!(errors[0].contains(&a.to_string()), "{errors:?}");
            assert!(errors[1].contains(&b.to_string()), "{errors:?}");
            let seen = events
                .until("the end", |e| matches!(e, SupervisorEvent::Stopped))
                .await;
            let failures_of = |id: &ActorId| {
                seen.iter()
                    .filter(|e| matches!(e, SupervisorEvent::Failed { id: Some(i), .. } if i == id))
                    .count()
            };
            assert_eq!(failures_of(&a), 1, "a's crash reported once: {seen:?}");
            assert_eq!(failures_of(&b), 1, "{seen:?}");
            assert!(
                seen.iter()
                    .any(|e| matches!(e, SupervisorEvent::GaveUp { errors: e2, .. }
                    if *e2 == errors)),
                "{seen:?}"
            );
            Ok(())
        }
    })
    .expect_err("the give-up fails the nursery");
    let text = err.to_string();
    assert!(
        text.contains("gives-up") || text.contains("gave up"),
        "{text}"
    );
    Outcome::Passed
}

/// intensity: more than N restarts within T, and the supervisor gives up, tears its children
/// down and fails its nursery with the last errors.
pub fn supervisor_gives_up<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let crashing = CrashingBackend::wrap(f.backend());
    let err = run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            let spec = SupervisorSpec::new("fragile", Strategy::OneForOne)
                .intensity(2, Duration::from_secs(600))
                .child(SupervisedChild::new("w", crashing.clone(), f.spec()));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            for round in 0..3 {
                let id = sup.child("w").expect("w runs").id().clone();
                assert!(crashing.crash(&id));
                if round < 2 {
                    events
                        .until("restart", |e| {
                            matches!(e, SupervisorEvent::Restarted { .. })
                        })
                        .await;
                }
            }
            let seen = events
                .until("give-up", |e| matches!(e, SupervisorEvent::GaveUp { .. }))
                .await;
            let Some(SupervisorEvent::GaveUp {
                restarts, errors, ..
            }) = seen.last()
            else {
                unreachable!("until returns the matching event last")
            };
            assert_eq!(*restarts, 3);
            assert_eq!(errors.len(), 3, "{errors:?}");
            assert!(matches!(sup.wait().await, SupervisorEnd::GaveUp(e) if e.len() == 3));
            // The give-up fails the nursery: this body is cancelled while it waits.
            std::future::pending::<()>().await;
            Ok(())
        }
    })
    .expect_err("a supervisor that gives up fails its nursery");
    let failures = err.failures();
    assert_eq!(failures.len(), 1, "{err}");
    assert!(failures[0].is_gave_up(), "{err}");
    assert_eq!(failures[0].last_errors().len(), 3, "{err}");
    Outcome::Passed
}

/// per-child policies: after a normal exit only `Always` restarts; after a crash `Always` and
/// `OnFailure` do, `Never` does not; a supervisor with no child left completes, naming the
/// crashes of those that ended for good.
pub fn supervisor_restart_policies<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let crashing = CrashingBackend::wrap(f.backend());
    expect_ok(run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            let child =
                |name: &str, r| SupervisedChild::new(name, crashing.clone(), f.spec()).restart(r);
            let spec = SupervisorSpec::new("policies", Strategy::OneForOne)
                .intensity(10, Duration::from_secs(60))
                .child(child("always", Restart::Always))
                .child(child("on-failure", Restart::OnFailure))
                .child(child("on-failure-2", Restart::OnFailure))
                .child(child("never", Restart::Never));
            let sup = n.start_supervisor(spec).await?;
            let mut events = Watch::new(sup.events());
            // Normal exits (torn down by someone else).
            for name in ["always", "on-failure"] {
                assert_eq!(
                    sup.child(name).expect("runs").cancel().await,
                    ChildOutcome::Exited
                );
                events
                    .until(
                        "exit",
                        |e| matches!(e, SupervisorEvent::Exited { child, .. } if child == name),
                    )
                    .await;
            }
            events
                .until(
                    "restart of always",
                    |e| matches!(e, SupervisorEvent::Restarted { child, .. } if child == "always"),
                )
                .await;
            // Crashes.
            for name in ["on-failure-2", "never"] {
                let id = sup.child(name).expect("runs").id().clone();
                assert!(crashing.crash(&id));
                events
                    .until(
                        "failure",
                        |e| matches!(e, SupervisorEvent::Failed { child, .. } if child == name),
                    )
                    .await;
            }
            events.until("restart of on-failure-2", |e| {
                matches!(e, SupervisorEvent::Restarted { child, .. } if child == "on-failure-2")
            })
            .await;
            assert!(sup.child("always").is_some());
            assert!(
                sup.child("on-failure").is_none(),
                "a normal exit is not restarted"
            );
            assert!(sup.child("on-failure-2").is_some());
            assert!(sup.child("never").is_none());
            assert_eq!(sup.restarts(), 2);
            // Cancelling stops restarting first: nothing restarts during the teardown. The end
            // carries the crash of `never`, which ended for good.
            let SupervisorEnd::Cancelled { failed } = sup.cancel().await else {
                panic!("not a cancel")
            };
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert!(failed[0].contains("crashed"), "{failed:?}");
            let rest = events
                .until("stop", |e| matches!(e, SupervisorEvent::Stopped))
                .await;
            assert!(
                !rest
                    .iter()
                    .any(|e| matches!(e, SupervisorEvent::Restarted { .. })),
                "{rest:?}"
            );
            // When no child is left to run, the supervisor completes, with the failures of
            // those that ended for good by crashing: an exit and a crash are told apart.
            for crash in [false, true] {
                let spec = SupervisorSpec::new("ending", Strategy::OneForOne)
                    .child(child("exits", Restart::Never))
                    .child(child("maybe-crashes", Restart::Never));
                let sup = n.start_supervisor(spec).await?;
                assert_eq!(
                    sup.child("exits").expect("runs").cancel().await,
                    ChildOutcome::Exited
                );
                let last = sup.child("maybe-crashes").expect("runs");
                if crash {
                    assert!(crashing.crash(last.id()));
                } else {
                    assert_eq!(last.cancel().await, ChildOutcome::Exited);
                }
                let end = move_on_after(EVENT_BOUND, sup.wait()).await;
                match end {
                    Some(SupervisorEnd::Completed { failed }) if crash => {
                        assert_eq!(failed.len(), 1, "{failed:?}");
                        assert!(
                            failed[0].contains(&last.id().to_string())
                                && failed[0].contains("crashed"),
                            "{failed:?}"
                        );
                    }
                    Some(SupervisorEnd::Completed { failed }) => {
                        assert!(failed.is_empty(), "{failed:?}")
                    }
                    other => panic!("the supervisor did not complete: {other:?}"),
                }
            }
            Ok(())
        }
    }));
    Outcome::Passed
}

/// pool map: results of an ordered map come in input order, an unordered map's are all there.
pub fn pool_map<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let pool = ActorPool::start(&n, f.backend(), f.spec(), PoolConfig::new("pool", 3)).await?;
        let inputs: Vec<Value> = (0..40).map(Value::Int).collect();
        let ordered: Vec<(u64, Value)> = pool
            .map(&f.func("echo"), inputs.clone(), true)
            .map(|(i, r)| (i, r.expect("echo answers")))
            .collect()
            .await;
        let want: Vec<(u64, Value)> = (0..40).map(|i| (i as u64, Value::Int(i))).collect();
        assert_eq!(ordered, want);
        let mut unordered: Vec<(u64, Value)> = pool
            .map(&f.func("echo"), inputs, false)
            .map(|(i, r)| (i, r.expect("echo answers")))
            .collect()
            .await;
        unordered.sort_by_key(|(i, _)| *i);
        assert_eq!(unordered, want);
        // A failing item is reported as that item's failure; the pool goes on.
        let r = pool.run(&f.func("fail"), Value::from("boom")).await;
        assert!(
            matches!(&r, Err(PoolError::Call(e)) if e.is_remote()),
            "{r:?}"
        );
        assert_eq!(
            pool.run(&f.func("echo"), Value::Int(7)).await.ok(),
            Some(Value::Int(7))
        );
        pool.cancel().await;
        Ok(())
    }));
    Outcome::Passed
}

/// pool backpressure and cancel: with every worker busy and the queue full, `try_submit` is
/// refused and `submit` waits; cancelling the pool fails what is queued and running.
pub fn pool_backpressure_and_cancel<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let outcomes = expect_ok(run_root(root_config(), |n| async move {
        let pool =
            ActorPool::start(&n, f.backend(), f.spec(), PoolConfig::new("bp", 1).queue(2)).await?;
        let long = Value::Int(60_000);
        let running = pool.submit(&f.func("sleep_ms"), long.clone()).await;
        wait_for("the worker to take the first item", || pool.running() == 1).await;
        let q1 = pool
            .try_submit(&f.func("sleep_ms"), long.clone())
            .expect("room");
        let q2 = pool
            .try_submit(&f.func("sleep_ms"), long.clone())
            .expect("room");
        let full = pool.try_submit(&f.func("sleep_ms"), long.clone());
        assert!(matches!(full, Err(PoolError::Full)), "{full:?}");
        let sleep = f.func("sleep_ms");
        let mut blocked = Box::pin(pool.submit(&sleep, long.clone()));
        assert!(
            futures_lite::future::poll_once(&mut blocked)
                .await
                .is_none(),
            "submit waits while the queue is full"
        );
        pool.cancel().await;
        let late = blocked.await.await;
        let mut outcomes = Vec::new();
        for t in [running, q1, q2] {
            outcomes.push(t.await);
        }
        outcomes.push(late);
        Ok(outcomes)
    }));
    for o in outcomes {
        assert!(matches!(o, Err(PoolError::Cancelled)), "{o:?}");
    }
    Outcome::Passed
}

/// pool map cut short: a pool cancelled while a map has items running, queued and not yet fed.
/// Every input still gets exactly one answer, in order: the ones done before the cancel their
/// value, every other one `Cancelled`; a map on the cancelled pool answers each input the same
/// way (an endless one as far as it is read). Never a stream that just stops early.
pub fn pool_map_cut_short<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    const INPUTS: u64 = 20;
    let (answers, after) = expect_ok(run_root(root_config(), |n| async move {
        let pool = ActorPool::start(&n, f.backend(), f.spec(), PoolConfig::new("cut", 1)).await?;
        let inputs = (0..INPUTS).map(|i| Value::Int(if i == 0 { 0 } else { 60_000 }));
        let mut m = pool.map(&f.func("sleep_ms"), inputs, true);
        let mut answers = vec![m.next().await.expect("the first answer")];
        pool.cancel().await;
        while let Some(a) = m.next().await {
            answers.push(a);
        }
        let endless = std::iter::repeat(Value::Int(1));
        let after: Vec<_> = pool
            .map(&f.func("echo"), endless, true)
            .take(5)
            .collect()
            .await;
        Ok((answers, after))
    }));
    let idx: Vec<u64> = answers.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (0..INPUTS).collect::<Vec<_>>(), "{answers:?}");
    assert!(answers[0].1.is_ok(), "{:?}", answers[0]);
    for (i, r) in &answers[1..] {
        assert!(matches!(r, Err(PoolError::Cancelled)), "{i}: {r:?}");
    }
    let idx: Vec<u64> = after.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [0, 1, 2, 3, 4], "{after:?}");
    for (i, r) in &after {
        assert!(matches!(r, Err(PoolError::Cancelled)), "{i}: {r:?}");
    }
    Outcome::Passed
}

/// pool worker death: a worker that dies is replaced and its item reported failed, or run
/// again on the replacement with `retries`.
pub fn pool_worker_death<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let crashing = CrashingBackend::wrap(f.backend());
    expect_ok(run_root(root_config(), |n| {
        let crashing = crashing.clone();
        async move {
            for retries in [0, 1] {
                let config = PoolConfig::new(format!("dying{retries}"), 2).retries(retries);
                let pool = ActorPool::start(&n, crashing.clone(), f.spec(), config).await?;
                // Long enough that the crash surely lands while it runs, short enough that
                // the retry finishes soon.
                let ms = if retries == 0 { 60_000 } else { 1_500 };
                let task = pool.submit(&f.func("sleep_ms"), Value::Int(ms)).await;
                wait_for("a worker to take the item", || pool.running() == 1).await;
                for w in pool.workers() {
                    crashing.crash(w.id());
                }
                let r = task.await;
                if retries == 0 {
                    assert!(matches!(&r, Err(PoolError::WorkerDied { .. })), "{r:?}");
                } else {
                    assert_eq!(r.ok(), Some(Value::Null), "retried on the replacement");
                }
                wait_for("both workers replaced", || pool.replaced() == 2).await;
                let results: Vec<_> = pool
                    .map(
                        &f.func("add"),
                        (0..10).map(|i| Value::List(vec![Value::Int(i), Value::Int(1)])),
                        true,
                    )
                    .map(|(_, r)| r.expect("replacements answer"))
                    .collect()
                    .await;
                assert_eq!(results, (1..11).map(Value::Int).collect::<Vec<_>>());
                drop(pool);
            }
            Ok(())
        }
    }));
    Outcome::Passed
}

/// dropping: a dropped pool answers its items `Cancelled`; a pool and a supervisor still running
/// when the nursery's body returns end with it, quietly.
pub fn pool_and_supervisor_end_with_their_nursery<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    let (dropped, kept) = expect_ok(run_root(root_config(), |n| async move {
        let pool =
            ActorPool::start(&n, f.backend(), f.spec(), PoolConfig::new("dropped", 1)).await?;
        let long = pool.submit(&f.func("sleep_ms"), Value::Int(60_000)).await;
        wait_for("the worker to take the item", || pool.running() == 1).await;
        let queued = pool.submit(&f.func("echo"), Value::Int(1)).await;
        let worker = pool.workers().pop().expect("one worker");
        drop(pool);
        let dropped = (long.await, queued.await);
        // The dropped pool's worker is torn down (by the ladder), not left to the nursery.
        let ended = move_on_after(EVENT_BOUND, worker.ended()).await;
        assert!(ended.is_some(), "the dropped pool's worker ended");
        let kept = ActorPool::start(&n, f.backend(), f.spec(), PoolConfig::new("kept", 2)).await?;
        let busy = kept.submit(&f.func("sleep_ms"), Value::Int(60_000)).await;
        let spec = SupervisorSpec::new("kept-sup", Strategy::OneForAll)
            .child(SupervisedChild::new("x", f.backend(), f.spec()))
            .child(SupervisedChild::new("y", f.backend(), f.spec()));
        let sup = n.start_supervisor(spec).await?;
        // A supervisor runs on without its handle: both are running when the body returns.
        drop(sup);
        Ok((dropped, (kept, busy)))
    }));
    assert!(
        matches!(dropped.0, Err(PoolError::Cancelled)),
        "{:?}",
        dropped.0
    );
    assert!(
        matches!(dropped.1, Err(PoolError::Cancelled)),
        "{:?}",
        dropped.1
    );
    let (kept, busy) = kept;
    let r = futures_lite::future::block_on(busy);
    assert!(matches!(r, Err(PoolError::Cancelled)), "{r:?}");
    drop(kept);
    Outcome::Passed
}

/// Stamps out the supervision and pool scenarios as tests for one backend, like
/// [`conformance_suite!`](crate::conformance_suite).
#[macro_export]
macro_rules! supervision_suite {
    ($factory:expr) => {
        $crate::supervision_suite!(@each $factory;
            supervisor_one_for_one,
            supervisor_one_for_all,
            supervisor_rest_for_one,
            supervisor_gives_up,
            supervisor_reports_every_crash,
            supervisor_reports_crashes_at_its_end,
            supervisor_restart_policies,
            pool_map,
            pool_backpressure_and_cancel,
            pool_map_cut_short,
            pool_worker_death,
            pool_and_supervisor_end_with_their_nursery
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let factory = $factory;
                $crate::conformance::run(
                    stringify!($name),
                    &*factory,
                    $crate::supervision::$name,
                );
            }
        )*
    };
}
