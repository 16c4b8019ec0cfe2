//! A broken channel: every pending caller operation returns `Closed` promptly; served calls are
//! cancelled; `closed()` says why. Local `close()` and dropping the `Link`.

mod common;

use common::*;
use harrow_portal::ipc::{ActorId, CallKind, Cid, FnPath, Msg, Value};
use harrow_portal::{Error, Executor, Link, LinkConfig, LinkEnd};
use std::time::Duration;

/// A raw peer: Hello, acks the first Start (and starts it, for contexts) then vanishes when told.
async fn flaky_peer(
    exec: &Executor,
    t: Transport,
) -> (Link, async_channel::Sender<()>, async_executor::Task<()>) {
    let (ca, cb) = pair(t);
    let (go_tx, go_rx) = async_channel::bounded::<()>(1);
    let peer_id = ActorId::new("flaky");
    let task = exec.spawn(async move {
        raw_hello(&cb, &peer_id).await;
        while let Ok(msg) = cb.recv().await {
            if let Msg::Start { cid, kind, .. } = msg {
                cb.send(Msg::StartAck { cid }).await.unwrap();
                if kind == CallKind::Context {
                    cb.send(Msg::Started {
                        cid,
                        value: Value::Null,
                    })
                    .await
                    .unwrap();
                }
                break;
            }
        }
        let _ = go_rx.recv().await;
        drop(cb);
    });
    let a = bounded(
        "establish",
        Link::establish(ca, local("a"), None, exec, LinkConfig::default()),
    )
    .await
    .unwrap();
    (a, go_tx, task)
}

async fn peer_gone_mid_call_fails_run_with_closed(exec: Executor, t: Transport) {
    let (a, go, peer) = flaky_peer(&exec, t).await;
    let p = a.portal();
    let call = exec.spawn(async move { p.run("t:x", Value::Null).await });
    go.send(()).await.unwrap();
    bounded("peer", peer).await;
    let err = bounded("run", call).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert!(matches!(
        bounded("closed", a.closed()).await,
        LinkEnd::Broken(_)
    ));
    let err = bounded("later run", a.portal().run("t:x", Value::Null))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert!(a.portal().is_closed());
}

async fn peer_gone_mid_stream_fails_everything_with_closed(exec: Executor, t: Transport) {
    let (a, go, peer) = flaky_peer(&exec, t).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:x", Value::Null))
        .await
        .unwrap();
    let s = ctx.open_stream().await.unwrap();
    let (tx, mut rx) = s.split();
    // No credit was ever granted: this send waits until the link breaks.
    let sender = exec.spawn(async move { tx.send(Value::Int(1)).await });
    let receiver = exec.spawn(async move { rx.recv().await });
    let cancel_actor = exec.spawn({
        let p = a.portal();
        async move { p.cancel_actor(BOUND * 10).await }
    });
    go.send(()).await.unwrap();
    bounded("peer", peer).await;
    assert!(bounded("send", sender).await.unwrap_err().is_closed());
    assert!(bounded("recv", receiver).await.unwrap_err().is_closed());
    assert!(!bounded("cancel_actor", cancel_actor).await);
    assert!(
        bounded("result", ctx.result())
            .await
            .unwrap_err()
            .is_closed()
    );
}

async fn broken_channel_cancels_served_calls(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (ca, cb) = pair(t);
    let e2 = exec.clone();
    let b = exec.spawn(async move {
        let reg = Some(std::sync::Arc::new(reg) as _);
        Link::establish(cb, local("b"), reg, &e2, LinkConfig::default()).await
    });
    raw_hello(&ca, &ActorId::new("raw")).await;
    let b = bounded("b", b).await.unwrap();
    for (i, func) in ["t:block", "t:ctx_block"].into_iter().enumerate() {
        let kind = if i == 0 {
            CallKind::Unary
        } else {
            CallKind::Context
        };
        ca.send(Msg::Start {
            cid: Cid(100 + 2 * i as u64),
            func: FnPath::parse(func).unwrap(),
            kind,
            args: Value::Null,
        })
        .await
        .unwrap();
        expect_probe(&probe, "started").await;
    }
    assert_eq!(b.served_calls(), 2);
    drop(ca);
    expect_probe(&probe, "dropped").await;
    expect_probe(&probe, "dropped").await;
    assert!(matches!(
        bounded("closed", b.closed()).await,
        LinkEnd::Broken(_)
    ));
    assert_eq!(b.served_calls(), 0);
}

async fn local_close_fails_local_ops_and_tells_the_peer(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let call = exec.spawn({
        let p = p.clone();
        async move { p.run("t:block", Value::Null).await }
    });
    expect_probe(&probe, "started").await;
    a.close();
    a.close(); // idempotent
    assert!(bounded("run", call).await.unwrap_err().is_closed());
    assert_eq!(bounded("closed", a.closed()).await, LinkEnd::Closed);
    assert!(matches!(
        bounded("peer end", b.closed()).await,
        LinkEnd::Broken(_)
    ));
    expect_probe(&probe, "dropped").await;
    let err = bounded("after close", p.run("t:echo", Value::Null))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
}

async fn dropping_the_link_closes_it_and_fails_portals(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    drop(a);
    assert!(p.is_closed());
    assert!(
        bounded("run", p.run("t:echo", Value::Null))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert!(matches!(
        bounded("peer end", b.closed()).await,
        LinkEnd::Broken(_)
    ));
}

async fn closing_the_callee_answers_its_callers_then_closes(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let call = exec.spawn(async move { p.run("t:block", Value::Null).await });
    expect_probe(&probe, "started").await;
    b.close();
    let err = bounded("run", call).await.unwrap_err();
    // The callee cancelled it while closing (or the channel closed first): never a hang.
    assert!(err.is_cancelled() || err.is_closed(), "{err:?}");
    expect_probe(&probe, "dropped").await;
}

async fn drain_waits_for_served_calls(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    assert!(bounded("idle drain", b.drain(BOUND)).await);
    let p = a.portal();
    let _call = exec.spawn(async move { p.run("t:block", Value::Null).await });
    expect_probe(&probe, "started").await;
    assert!(!b.drain(std::time::Duration::from_millis(50)).await);
    b.cancel_calls(&b.local().id.clone());
    expect_probe(&probe, "dropped").await;
    assert!(bounded("drain", b.drain(BOUND)).await);
}

both_transports!(
    peer_gone_mid_call_fails_run_with_closed,
    peer_gone_mid_stream_fails_everything_with_closed,
    broken_channel_cancels_served_calls,
    local_close_fails_local_ops_and_tells_the_peer,
    dropping_the_link_closes_it_and_fails_portals,
    closing_the_callee_answers_its_callers_then_closes,
    drain_waits_for_served_calls,
);

/// A peer that stops reading: the writer is stuck in a send. Closing the link still stops its
/// I/O within the flush bound, releasing the channel (nothing outlives its owner's executor).
#[test]
fn a_writer_stuck_on_a_peer_that_never_reads_stops_at_the_flush_bound() {
    common::run_test(Transport::Unix, |exec: Executor, _t| async move {
        let (ca, cb) = pair(Transport::Unix);
        let peer_id = harrow_portal::ipc::ActorId::new("mute");
        // The peer says Hello, then never reads again (but keeps its end open).
        let (hold_tx, hold_rx) = async_channel::bounded::<()>(1);
        let mute = exec.spawn(async move {
            raw_hello(&cb, &peer_id).await;
            let _ = hold_rx.recv().await;
            drop(cb);
        });
        let mut config = LinkConfig::default();
        config.close_flush_timeout = Duration::from_millis(300);
        let a = bounded(
            "establish",
            harrow_portal::Link::establish(ca, local("a"), None, &exec, config),
        )
        .await
        .unwrap();
        // Far more than a socket buffer: the writer blocks on the unread socket.
        let p = a.portal();
        let big = Value::Bytes(vec![7; 8 << 20]);
        let mut call = std::pin::pin!(p.run("t:echo", big));
        // One poll queues the Start; the writer takes it even after the close (the queue is
        // drained), and blocks on the unread socket until the flush bound.
        assert!(futures_lite::future::poll_once(&mut call).await.is_none());
        a.close();
        bounded("io stops", a.io_stopped()).await;
        assert!(bounded("call fails", call).await.unwrap_err().is_closed());
        let _ = hold_tx.send(()).await;
        bounded("peer ends", mute).await;
    });
}
