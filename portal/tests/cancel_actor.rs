//! `cancel_actor`: the callee cancels every running call, acks, and its link ends; without an ack
//! in time the caller gets `false`, never a hang.

mod common;

use std::time::{Duration, Instant};

use common::*;
use harrow_portal::ipc::{ActorId, ErrorKind, Msg, Value};
use harrow_portal::{Executor, Link, LinkConfig, LinkEnd};

async fn cancel_actor_cancels_calls_acks_and_ends_link(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let unary = exec.spawn({
        let p = p.clone();
        async move { p.run("t:block", Value::Null).await }
    });
    expect_probe(&probe, "started").await;
    let (mut ctx, _) = bounded("open", p.open_context("t:ctx_block", Value::Null))
        .await
        .unwrap();
    expect_probe(&probe, "started").await;
    let mut s = ctx.open_stream().await.unwrap();
    assert_eq!(b.served_calls(), 2);

    assert!(bounded("cancel_actor", p.cancel_actor(BOUND)).await);
    expect_probe(&probe, "dropped").await;
    expect_probe(&probe, "dropped").await;
    match bounded("b ends", b.closed()).await {
        LinkEnd::CancelRequested { canceller, reason } => {
            assert_eq!(canceller, a.local().id);
            assert!(reason.contains(&a.local().id.name), "{reason}");
        }
        other => panic!("unexpected end {other:?}"),
    }
    assert!(b.is_closed());
    // The caller asked for it: its own calls end as cancelled by itself, streams included (a
    // cancelled stream is an error, never a normal end).
    let err = bounded("unary", unary).await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.canceller(), Some(&a.local().id));
    let err = bounded("recv", s.recv()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.canceller(), Some(&a.local().id));
    // Later Starts are refused.
    let err = bounded("refused", p.run("t:echo", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(err.remote_error().unwrap().kind, ErrorKind::Cancelled);
    assert!(err.is_refused(), "{err:?}");
    assert_eq!(b.portal().refused_calls(), 1);
    assert!(bounded("drain", b.drain(BOUND)).await);
}

/// `refuse_calls`: every later call from the peer is answered at once as refused unstarted
/// (the function never runs), naming who asked; the calls already served go on.
async fn refused_calls_do_not_run_and_served_ones_go_on(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let running = exec.spawn({
        let p = p.clone();
        async move { p.run("t:block", Value::Null).await }
    });
    expect_probe(&probe, "started").await;
    let ending = ActorId::new("ending");
    b.portal().refuse_calls(&ending);
    b.portal().refuse_calls(&ActorId::new("later")); // the first reason stands
    for _ in 0..2 {
        let err = bounded("refused", p.run("t:block", Value::Null))
            .await
            .unwrap_err();
        assert!(err.is_refused() && err.is_cancelled(), "{err:?}");
        assert_eq!(err.canceller(), Some(&ending));
        let msg = &err.remote_error().unwrap().message;
        assert!(
            msg.contains("t:block") && msg.contains("did not run"),
            "{msg}"
        );
    }
    assert_eq!(b.portal().refused_calls(), 2);
    // Neither refused call reached the function; the one running before still runs.
    assert!(probe.try_recv().is_err());
    assert_eq!(b.served_calls(), 1);
    assert!(!running.is_finished());
    b.cancel_calls(&ending);
    expect_probe(&probe, "dropped").await;
    let err = bounded("running", running).await.unwrap_err();
    assert!(err.is_cancelled() && !err.is_refused(), "{err:?}");
}

async fn cancel_actor_without_ack_returns_false_in_time(exec: Executor, t: Transport) {
    let (ca, cb) = pair(t);
    let peer_id = ActorId::new("mute");
    let mute = exec.spawn(async move {
        raw_hello(&cb, &peer_id).await;
        let mut seen = Vec::new();
        while let Ok(m) = cb.recv().await {
            seen.push(m);
        }
        seen
    });
    let a = bounded(
        "establish",
        Link::establish(ca, local("a"), None, &exec, LinkConfig::default()),
    )
    .await
    .unwrap();
    let started = Instant::now();
    assert!(!a.portal().cancel_actor(Duration::from_millis(200)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
    a.close();
    let seen = bounded("mute ends", mute).await;
    assert!(
        seen.iter().any(|m| matches!(m, Msg::CancelActor { .. })),
        "{seen:?}"
    );
}

async fn cancel_actor_on_closed_link_is_false(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    drop(b);
    bounded("a sees the end", a.closed()).await;
    assert!(!bounded("cancel_actor", p.cancel_actor(BOUND)).await);
    // Also when the peer goes away while we wait for the ack.
    let (ca, cb) = pair(t);
    let peer_id = ActorId::new("leaver");
    let leaver = exec.spawn(async move {
        raw_hello(&cb, &peer_id).await;
        let first = cb.recv().await;
        drop(cb);
        first
    });
    let a = bounded(
        "establish",
        Link::establish(ca, local("a"), None, &exec, LinkConfig::default()),
    )
    .await
    .unwrap();
    assert!(!bounded("cancel_actor", a.portal().cancel_actor(BOUND)).await);
    assert!(matches!(
        bounded("leaver", leaver).await,
        Ok(Msg::CancelActor { .. })
    ));
}

both_transports!(
    cancel_actor_cancels_calls_acks_and_ends_link,
    cancel_actor_without_ack_returns_false_in_time,
    cancel_actor_on_closed_link_is_false,
    refused_calls_do_not_run_and_served_ones_go_on,
);
