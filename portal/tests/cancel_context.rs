//! `Cancel { cid }`: confirmed to the caller that asked (a stream it cancelled ends in an error,
//! never a normal end), loud when a third actor asked, and drop is cancel (the callee's future is
//! really dropped).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use harrow_portal::ipc::{ErrorKind, Value};
use harrow_portal::{CallError, Executor, LinkConfig, LinkEnd};

async fn self_cancel_is_confirmed_and_the_stream_errors(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, first) = bounded(
        "open",
        a.portal().open_context("t:ctx_block", Value::Int(3)),
    )
    .await
    .unwrap();
    assert_eq!(first, Value::Int(3));
    expect_probe(&probe, "started").await;
    let mut s = ctx.open_stream().await.unwrap();
    bounded("cancel", ctx.cancel()).await.unwrap();
    expect_probe(&probe, "dropped").await;
    let err = bounded("recv", s.recv()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.canceller(), Some(&a.local().id));
    let err = bounded("result", ctx.result()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.canceller(), Some(&a.local().id));
    assert_eq!(err.remote_error().unwrap().source, b.local().id);
    assert_eq!(b.served_calls(), 0);
}

async fn cancel_of_finished_context_is_ok(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:ctx_produce", Value::Int(0)),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    bounded("cancel", ctx.cancel()).await.unwrap();
    let r = bounded("result", ctx.result()).await;
    // The function returned before or after the Cancel arrived: either way no hang, no panic.
    assert!(r.is_ok() || r.as_ref().unwrap_err().is_cancelled(), "{r:?}");
}

/// A cancel never hides a failure: one that came before the cancel is what the cancel returns,
/// every time it is asked.
async fn cancel_after_a_failure_returns_the_failure(exec: Executor, t: Transport) {
    let (mut reg, _probe) = standard_registry();
    reg.context("t:ctx_fails", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        Err::<Value, _>(CallError::raised("ValueError", "failed first"))
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (ctx, _) = bounded("open", a.portal().open_context("t:ctx_fails", Value::Null))
        .await
        .unwrap();
    let outcome = bounded("failure", ctx.wait_result(Duration::from_secs(10))).await;
    assert!(outcome.unwrap().is_err(), "the failure arrived");
    for _ in 0..2 {
        let err = bounded("cancel", ctx.cancel()).await.unwrap_err();
        assert!(!err.is_cancelled(), "{err}");
        assert_eq!(err.remote_error().unwrap().message, "failed first", "{err}");
    }
    let err = bounded("result", ctx.result()).await.unwrap_err();
    assert_eq!(err.remote_error().unwrap().message, "failed first", "{err}");
}

async fn dropping_run_future_cancels_the_callee_task(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let call = exec.spawn(async move { p.run("t:block", Value::Null).await });
    expect_probe(&probe, "started").await;
    assert_eq!(b.served_calls(), 1);
    drop(call); // drops the in-flight run future
    expect_probe(&probe, "dropped").await;
    // The link still works.
    let v = bounded("echo", a.portal().run("t:echo", Value::Int(5)))
        .await
        .unwrap();
    assert_eq!(v, Value::Int(5));
    assert_eq!(b.served_calls(), 0);
}

async fn dropping_context_cancels_the_callee_task(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_block", Value::Null))
        .await
        .unwrap();
    expect_probe(&probe, "started").await;
    let _stream = ctx.open_stream().await.unwrap();
    drop(ctx);
    expect_probe(&probe, "dropped").await;
    // Dropping an open_context future before `started` arrives cancels too.
    let p = a.portal();
    let opening = exec.spawn(async move { p.open_context("t:ctx_hang", Value::Null).await });
    expect_probe(&probe, "started").await;
    drop(opening);
    expect_probe(&probe, "dropped").await;
}

/// B serves A and R. R opens a context into B; A cancels B's actor; B's "runtime" (the test)
/// cancels R's calls on A's behalf; R sees ContextCancelled naming A.
async fn third_party_cancel_names_the_canceller(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let reg = Arc::new(reg);
    let b_info = local("b");
    let (a_link, b_from_a) = link_pair_named(
        &exec,
        t,
        local("a"),
        None,
        b_info.clone(),
        Some(reg.clone()),
        LinkConfig::default(),
    )
    .await;
    let (r_link, b_from_r) = link_pair_named(
        &exec,
        t,
        local("r"),
        None,
        b_info,
        Some(reg),
        LinkConfig::default(),
    )
    .await;
    let (mut ctx, _) = bounded(
        "r opens",
        r_link.portal().open_context("t:ctx_block", Value::Null),
    )
    .await
    .unwrap();
    expect_probe(&probe, "started").await;
    let mut s = ctx.open_stream().await.unwrap();

    assert!(bounded("cancel_actor", a_link.portal().cancel_actor(BOUND)).await);
    let end = bounded("b's a-link ends", b_from_a.closed()).await;
    let canceller = match end {
        LinkEnd::CancelRequested { canceller, .. } => canceller,
        other => panic!("unexpected end {other:?}"),
    };
    assert_eq!(canceller, a_link.local().id);
    b_from_r.cancel_calls(&canceller);
    expect_probe(&probe, "dropped").await;

    let err = bounded("r recv", s.recv()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.canceller(), Some(&a_link.local().id));
    let err = bounded("r result", ctx.result()).await.unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.canceller(), Some(&a_link.local().id));
    assert_eq!(err.remote_error().unwrap().kind, ErrorKind::Cancelled);
}

async fn cancel_without_confirmation_times_out(exec: Executor, t: Transport) {
    // A raw peer that acks the context and then ignores the Cancel.
    let (ca, cb) = pair(t);
    let mut config = LinkConfig::default();
    config.cancel_timeout = Duration::from_millis(100);
    let peer_id = harrow_portal::ipc::ActorId::new("raw");
    let raw = exec.spawn(async move {
        raw_hello(&cb, &peer_id).await;
        let msg = cb.recv().await.unwrap();
        let cid = msg.cid().unwrap();
        cb.send(harrow_portal::ipc::Msg::StartAck { cid })
            .await
            .unwrap();
        cb.send(harrow_portal::ipc::Msg::Started {
            cid,
            value: Value::Null,
        })
        .await
        .unwrap();
        // Swallow everything else until closed.
        while cb.recv().await.is_ok() {}
    });
    let a = bounded(
        "establish",
        harrow_portal::Link::establish(ca, local("a"), None, &exec, config),
    )
    .await
    .unwrap();
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:x", Value::Null))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let err = bounded("cancel", ctx.cancel()).await.unwrap_err();
    assert!(matches!(err, harrow_portal::Error::Timeout(_)), "{err:?}");
    assert!(bounded("recv", s.recv()).await.unwrap_err().is_cancelled());
    assert!(
        bounded("result", ctx.result())
            .await
            .unwrap_err()
            .is_cancelled()
    );
    a.close();
    bounded("raw peer ends", raw).await;
}

both_transports!(
    cancel_after_a_failure_returns_the_failure,
    self_cancel_is_confirmed_and_the_stream_errors,
    cancel_of_finished_context_is_ok,
    dropping_run_future_cancels_the_callee_task,
    dropping_context_cancels_the_callee_task,
    third_party_cancel_names_the_canceller,
    cancel_without_confirmation_times_out,
);
