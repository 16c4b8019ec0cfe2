//! A cancel is acknowledged only after the cancelled call's cleanup ran (bounded), and what that
//! cleanup raised is what the caller sees; a cancelled stream is an error, never a normal end.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_lite::future;
use harrow_portal::ipc::{ErrorKind, RemoteError, Value};
use harrow_portal::{CallError, Executor, FnRegistry, Link, LinkConfig};

/// Functions that observe their own cancellation. `probe` gets "cleanup-start" when a cancel
/// arrives and "cleanup-done" when the cleanup finished.
fn cleanup_registry() -> (FnRegistry, async_channel::Receiver<&'static str>) {
    let (probe, rx) = async_channel::unbounded();
    let mut reg = FnRegistry::new();
    // On cancel: clean up for `ms` milliseconds, then fail with "cleanup failed".
    let p = probe.clone();
    reg.context("t:cleanup_fails", move |ctx, v| {
        let p = p.clone();
        async move {
            let ms = v.as_i64().unwrap_or(0) as u64;
            ctx.started(Value::Null).await?;
            ctx.cancelled().await;
            let _ = p.try_send("cleanup-start");
            async_io::Timer::after(Duration::from_millis(ms)).await;
            let _ = p.try_send("cleanup-done");
            Err::<Value, _>(CallError::raised("CleanupError", "cleanup failed"))
        }
    })
    .unwrap();
    // On cancel: clean up, then end as cancelled (an `Err` of kind Cancelled).
    let p = probe.clone();
    reg.context("t:cleanup_then_cancelled", move |ctx, _| {
        let p = p.clone();
        async move {
            ctx.started(Value::Null).await?;
            let by = ctx.cancelled().await;
            let _ = p.try_send("cleanup-done");
            Err::<Value, _>(CallError::new(
                ErrorKind::Cancelled,
                "Cancelled",
                format!("cancelled by {by}"),
            ))
        }
    })
    .unwrap();
    // Declares itself cancel-aware but never ends: dropped at the cleanup bound.
    let p = probe.clone();
    reg.context("t:aware_but_stuck", move |ctx, _| {
        let p = p.clone();
        async move {
            let _guard = DropProbe(p.clone(), "dropped");
            ctx.observe_cancel();
            ctx.started(Value::Null).await?;
            future::pending::<()>().await;
            Ok(Value::Null)
        }
    })
    .unwrap();
    // A unary call that fails in its cleanup after `ms`.
    reg.unary("t:unary_cleanup_fails", move |v| async move {
        let ms = v.as_i64().unwrap_or(0) as u64;
        let ctx = harrow_portal::current_call().expect("a served call is current");
        ctx.cancelled().await;
        async_io::Timer::after(Duration::from_millis(ms)).await;
        Err::<Value, _>(CallError::raised("CleanupError", "unary cleanup failed"))
    })
    .unwrap();
    // On cancel: extend the cleanup by 2 s, then take `ms` to finish.
    reg.unary("t:long_teardown", move |v| async move {
        let ms = v.as_i64().unwrap_or(0) as u64;
        let ctx = harrow_portal::current_call().expect("a served call is current");
        ctx.cancelled().await;
        ctx.extend_cleanup(Duration::from_secs(2));
        async_io::Timer::after(Duration::from_millis(ms)).await;
        Err::<Value, _>(CallError::raised("TeardownError", "children failed"))
    })
    .unwrap();
    // Streams items until cancelled.
    reg.context("t:stream_forever", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        let mut i = 0;
        loop {
            s.send(Value::Int(i)).await?;
            i += 1;
        }
    })
    .unwrap();
    (reg, rx)
}

async fn cancel_returns_the_cleanup_error_after_the_cleanup(exec: Executor, t: Transport) {
    let (reg, probe) = cleanup_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let (ctx, _) = bounded(
        "open",
        a.portal().open_context("t:cleanup_fails", Value::Int(100)),
    )
    .await
    .unwrap();
    let err = bounded("cancel", ctx.cancel()).await.unwrap_err();
    // The cleanup ran to its end before cancel() returned.
    assert_eq!(probe.try_recv().unwrap(), "cleanup-start");
    assert_eq!(probe.try_recv().unwrap(), "cleanup-done");
    let remote = err.remote_error().expect("a remote error");
    assert_eq!(remote.type_name, "CleanupError", "{err}");
    assert_eq!(remote.source, b.local().id);
    assert!(
        !err.is_cancelled(),
        "a failure is never reported as a cancellation"
    );
    let err = bounded("result", ctx.result()).await.unwrap_err();
    assert_eq!(err.remote_error().unwrap().message, "cleanup failed");
    assert_eq!(b.served_calls(), 0);
}

async fn a_cleanup_ending_as_cancelled_is_confirmed(exec: Executor, t: Transport) {
    let (reg, probe) = cleanup_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let (ctx, _) = bounded(
        "open",
        a.portal()
            .open_context("t:cleanup_then_cancelled", Value::Null),
    )
    .await
    .unwrap();
    bounded("cancel", ctx.cancel()).await.unwrap();
    assert_eq!(probe.try_recv().unwrap(), "cleanup-done");
    let err = bounded("result", ctx.result()).await.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.canceller(), Some(&a.local().id));
    assert_eq!(err.remote_error().unwrap().source, b.local().id);
}

async fn a_stuck_cleanup_is_dropped_at_the_bound(exec: Executor, t: Transport) {
    let (reg, probe) = cleanup_registry();
    let mut config = LinkConfig::default();
    config.cancel_cleanup = Duration::from_millis(150);
    let (a, b) = link_pair(&exec, t, None, Some(Arc::new(reg)), config).await;
    let (ctx, _) = bounded(
        "open",
        a.portal().open_context("t:aware_but_stuck", Value::Null),
    )
    .await
    .unwrap();
    bounded("cancel", ctx.cancel()).await.unwrap();
    assert_eq!(probe.try_recv().unwrap(), "dropped");
    assert!(
        bounded("result", ctx.result())
            .await
            .unwrap_err()
            .is_cancelled()
    );
    assert_eq!(b.served_calls(), 0);
}

/// A link that closes (either end) cancels the calls it serves; one that observes its cancel
/// still runs its cleanup to its end, or to its bound, as for a cancel from its caller.
async fn a_closed_link_lets_a_cancel_aware_call_clean_up(exec: Executor, t: Transport) {
    for callee_closes in [false, true] {
        let (reg, probe) = cleanup_registry();
        // A cleanup bound far over the 50 ms the cleanup takes, however loaded the machine.
        let mut config = LinkConfig::default();
        config.cancel_cleanup = Duration::from_secs(10);
        let (a, b) = link_pair(&exec, t, None, Some(Arc::new(reg)), config).await;
        let (_ctx, _) = bounded(
            "open",
            a.portal().open_context("t:cleanup_fails", Value::Int(50)),
        )
        .await
        .unwrap();
        until_served(&b).await;
        if callee_closes {
            b.close();
        } else {
            a.close();
        }
        expect_probe(&probe, "cleanup-start").await;
        expect_probe(&probe, "cleanup-done").await;
        bounded("closed", b.closed()).await;
    }
    // One whose cleanup does not end is dropped at the bound.
    let (reg, probe) = cleanup_registry();
    let mut config = LinkConfig::default();
    config.cancel_cleanup = Duration::from_millis(150);
    let (a, b) = link_pair(&exec, t, None, Some(Arc::new(reg)), config).await;
    let (_ctx, _) = bounded(
        "open",
        a.portal().open_context("t:aware_but_stuck", Value::Null),
    )
    .await
    .unwrap();
    until_served(&b).await;
    a.close();
    expect_probe(&probe, "dropped").await;
    assert_eq!(b.served_calls(), 0);
}

/// Waits (bounded) until `b` serves a call: the call under test has reached its callee.
async fn until_served(b: &Link) {
    bounded("served", async {
        while b.served_calls() == 0 {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
    })
    .await;
}

async fn cancel_actor_acks_after_cleanup_with_answers_first(exec: Executor, t: Transport) {
    let (reg, _probe) = cleanup_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    // Polled by hand in this task, so that what it sees is exactly what the link had routed.
    let mut call = std::pin::pin!(p.run("t:unary_cleanup_fails", Value::Int(100)));
    assert!(future::poll_once(&mut call).await.is_none());
    until_served(&b).await;
    let ack = bounded("cancel_actor", a.portal().cancel_actor_ack(BOUND)).await;
    assert_eq!(ack, Some(None), "acked, with nothing left to tear down");
    // The call's answer preceded the ack: the call has its outcome already.
    let outcome = future::poll_once(&mut call)
        .await
        .expect("answered before the ack");
    let err = outcome.unwrap_err();
    assert_eq!(err.remote_error().unwrap().message, "unary cleanup failed");
}

async fn cancel_ack_says_how_long_the_teardown_still_takes(exec: Executor, t: Transport) {
    let (reg, _probe) = cleanup_registry();
    let mut config = LinkConfig::default();
    config.cancel_cleanup = Duration::from_millis(100);
    let (a, b) = link_pair(&exec, t, None, Some(Arc::new(reg)), config).await;
    let p = a.portal();
    let call = exec.spawn(async move { p.run("t:long_teardown", Value::Int(600)).await });
    until_served(&b).await;
    let asked = Instant::now();
    let ack = bounded("cancel_actor", a.portal().cancel_actor_ack(BOUND)).await;
    let teardown = ack.expect("acked").expect("a teardown deadline");
    // Extended by 2 s from about when the cancel landed; acked at the 100 ms bound.
    assert!(teardown > Duration::from_millis(1000), "{teardown:?}");
    assert!(teardown <= Duration::from_secs(2), "{teardown:?}");
    // The failure of the teardown still reaches the caller, after the ack.
    let err = bounded("call", call).await.unwrap_err();
    assert_eq!(err.remote_error().unwrap().type_name, "TeardownError");
    assert!(asked.elapsed() >= Duration::from_millis(600));
}

async fn a_late_cancel_ack_is_still_heard(exec: Executor, t: Transport) {
    let (reg, _probe) = cleanup_registry();
    let mut config = LinkConfig::default();
    config.cancel_cleanup = Duration::from_millis(300);
    let (a, b) = link_pair(&exec, t, None, Some(Arc::new(reg)), config).await;
    let p = a.portal();
    let call = exec.spawn({
        let p = p.clone();
        async move { p.run("t:long_teardown", Value::Int(600)).await }
    });
    until_served(&b).await;
    let request = p.request_cancel_actor().expect("the link is open");
    // The peer acks at its 300 ms cleanup bound (the call's teardown runs on): not within 50 ms.
    assert_eq!(request.ack(Duration::from_millis(50)).await, None);
    // The same request still hears the ack, with what the teardown still needs.
    let teardown = bounded("late ack", request.ack(BOUND))
        .await
        .expect("acked")
        .expect("a teardown deadline");
    assert!(teardown > Duration::from_millis(1000), "{teardown:?}");
    // Once heard, it is the answer at once, however often asked.
    assert_eq!(
        request.ack(Duration::ZERO).await,
        Some(Some(teardown)),
        "the ack already came"
    );
    let err = bounded("call", call).await.unwrap_err();
    assert_eq!(err.remote_error().unwrap().type_name, "TeardownError");
    // A closed link has no cancel to request.
    a.close();
    bounded("a ends", a.closed()).await;
    assert!(p.request_cancel_actor().is_none());
}

async fn a_cancelled_stream_never_looks_finished(exec: Executor, t: Transport) {
    for _ in 0..20 {
        let (reg, _probe) = cleanup_registry();
        let (a, _b) = caller_callee(&exec, t, reg).await;
        let (mut ctx, _) = bounded(
            "open",
            a.portal().open_context("t:stream_forever", Value::Null),
        )
        .await
        .unwrap();
        let mut s = ctx.open_stream().await.unwrap();
        for _ in 0..100 {
            assert!(s.recv().await.unwrap().is_some());
        }
        bounded("cancel", ctx.cancel()).await.unwrap();
        // Whatever was buffered, then an error; never `Ok(None)`.
        let end = bounded("drain", async {
            loop {
                match s.recv().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await;
        let err = end.expect_err("a cancelled stream ends in an error");
        assert!(err.is_cancelled(), "{err:?}");
    }
}

/// A served function failing with an error whose source is a remote error group relays the
/// group whole, so that a nursery failure keeps its structure across hops.
async fn a_group_source_is_relayed_whole(exec: Executor, t: Transport) {
    #[derive(Debug)]
    struct Wrapper(RemoteError);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "wrapped group")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let leaf_src = harrow_portal::ipc::ActorId::new("leaf");
    let leaf = RemoteError::new(ErrorKind::Raised, "ValueError", "bad", leaf_src.clone());
    let mut reg = FnRegistry::new();
    reg.unary("t:group", move |_| {
        let leaf = leaf.clone();
        async move {
            let here = harrow_portal::current_call().unwrap().local().clone();
            let group = RemoteError::group(
                "1 failure",
                here,
                vec![leaf.relayed_by(harrow_portal::current_call().unwrap().local().clone())],
            );
            Err::<Value, _>(Wrapper(group).into())
        }
    })
    .unwrap();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let err = bounded("group", a.portal().run("t:group", Value::Null))
        .await
        .unwrap_err();
    let group = err.remote_error().unwrap();
    assert!(group.is_group(), "{group}");
    assert_eq!(group.source, b.local().id);
    assert_eq!(group.children.len(), 1);
    assert_eq!(group.children[0].source, leaf_src);
    assert_eq!(group.children[0].relay_path, vec![b.local().id.clone()]);
}

/// Errors carry a backtrace only when `RUST_LIB_BACKTRACE` asks for one (not `RUST_BACKTRACE`,
/// which is for panics).
async fn errors_skip_the_backtrace_unless_asked(exec: Executor, t: Transport) {
    let asked = std::env::var("RUST_LIB_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut reg = FnRegistry::new();
    reg.unary("t:io_fail", |_| async move {
        Err::<Value, _>(std::io::Error::other("disk on fire").into())
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let err = bounded("fail", a.portal().run("t:io_fail", Value::Null))
        .await
        .unwrap_err();
    let remote = err.remote_error().unwrap();
    assert_eq!(remote.message, "disk on fire");
    assert_eq!(remote.traceback.is_empty(), !asked, "{}", remote.traceback);
}

both_transports!(
    cancel_returns_the_cleanup_error_after_the_cleanup,
    a_cleanup_ending_as_cancelled_is_confirmed,
    a_stuck_cleanup_is_dropped_at_the_bound,
    a_closed_link_lets_a_cancel_aware_call_clean_up,
    cancel_actor_acks_after_cleanup_with_answers_first,
    a_late_cancel_ack_is_still_heard,
    cancel_ack_says_how_long_the_teardown_still_takes,
    a_cancelled_stream_never_looks_finished,
    a_group_source_is_relayed_whole,
    errors_skip_the_backtrace_unless_asked,
);
