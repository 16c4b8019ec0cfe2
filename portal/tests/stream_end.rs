//! Streams: both directions, explicit end (`Stop`), send after close.

mod common;

use common::*;
use harrow_portal::ContextEndpoint;
use harrow_portal::ipc::Value;
use harrow_portal::{Error, Executor, FnRegistry};

async fn echo_stream_both_ways(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, first) = bounded("open", a.portal().open_context("t:ctx_echo", Value::Int(0)))
        .await
        .unwrap();
    assert_eq!(first, Value::Int(0));
    let mut s = ctx.open_stream().await.unwrap();
    for i in 0..200 {
        bounded("send", s.send(Value::Int(i))).await.unwrap();
        assert_eq!(
            bounded("recv", s.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    s.close().await.unwrap();
    s.close().await.unwrap(); // idempotent
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(200)
    );
}

async fn recv_after_peer_stop_ends_cleanly_every_time(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:ctx_produce", Value::Int(3)),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    for i in 0..3 {
        assert_eq!(
            bounded("recv", s.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    for _ in 0..3 {
        assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    }
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(3)
    );
}

/// A caller that stops reading before the end (drops its stream, or just its receiving half)
/// tells the callee: a producer waiting for credit fails at once with `NotRead`, so the call
/// ends and its answer arrives; it never waits for credit that will not come.
async fn a_stream_dropped_before_its_end_stops_its_producer(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    for whole in [true, false] {
        // Far more items than the window: the producer waits for credit after the first ones.
        let (mut ctx, _) = bounded(
            "open",
            a.portal()
                .open_context("t:ctx_produce", Value::Int(1_000_000)),
        )
        .await
        .unwrap();
        let mut s = ctx.open_stream().await.unwrap();
        for i in 0..3 {
            assert_eq!(
                bounded("recv", s.recv()).await.unwrap(),
                Some(Value::Int(i))
            );
        }
        let kept_tx = if whole {
            drop(s);
            None
        } else {
            let (tx, rx) = s.split();
            drop(rx);
            Some(tx)
        };
        let err = bounded("result", ctx.result()).await.unwrap_err();
        let remote = err.remote_error().expect("the producer's error");
        assert!(
            remote.message.contains("reads no more"),
            "{err:?} (whole stream dropped: {whole})"
        );
        drop(kept_tx);
        assert!(bounded("drain", b.drain(BOUND)).await);
    }
}

/// A callee that fails while its caller still sends: the caller's send fails with that
/// failure, never with "not read" (the function dropped its stream on its way out), every time.
/// One that stops reading and goes on still tells its caller, whose sends then fail so.
async fn a_callee_failing_mid_stream_fails_the_callers_send_with_its_failure(
    exec: Executor,
    t: Transport,
) {
    let (mut reg, _probe) = standard_registry();
    reg.context("t:fail_after_three", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        for _ in 0..3 {
            s.recv().await?;
        }
        Err::<Value, _>(harrow_portal::CallError::raised(
            "ValueError",
            "failed mid-stream",
        ))
    })
    .unwrap();
    reg.context("t:stop_reading_after_three", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        for _ in 0..3 {
            s.recv().await?;
        }
        drop(s);
        ctx.cancelled().await;
        Ok(Value::Null)
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    for (func, expected) in [
        ("t:fail_after_three", "failed mid-stream"),
        ("t:stop_reading_after_three", "reads no more"),
    ] {
        for _ in 0..50 {
            let (mut ctx, _) = bounded("open", a.portal().open_context(func, Value::Null))
                .await
                .unwrap();
            let s = ctx.open_stream().await.unwrap();
            let err = bounded("send until it fails", async {
                let mut i = 0;
                loop {
                    if let Err(e) = s.send(Value::Int(i)).await {
                        break e;
                    }
                    i += 1;
                }
            })
            .await;
            assert!(err.to_string().contains(expected), "{func}: {err}");
            drop(s);
            let _ = bounded("cancel", ctx.cancel()).await;
        }
    }
}

/// A context dropped with its stream (the stream first, as locals drop) is a cancel: its
/// callee never reads a normal end of the caller's input, in any of 200 rounds.
async fn a_context_dropped_with_its_stream_is_never_a_normal_end(exec: Executor, t: Transport) {
    let (ends_tx, ends) = async_channel::unbounded::<&'static str>();
    let mut reg = FnRegistry::new();
    reg.context("t:sum_until_end", move |ctx, _| {
        // Says how the input ended; a future dropped by its cancel says "cancelled".
        struct Ends(async_channel::Sender<&'static str>, &'static str);
        impl Drop for Ends {
            fn drop(&mut self) {
                let _ = self.0.try_send(self.1);
            }
        }
        let mut ends = Ends(ends_tx.clone(), "cancelled");
        async move {
            ctx.started(Value::Null).await?;
            let mut s = ctx.open_stream().await?;
            ends.1 = loop {
                match s.recv().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break "a normal end",
                    Err(e) if e.is_cancelled() => break "cancelled",
                    Err(_) => break "another error",
                }
            };
            drop(ends);
            Ok(Value::Null)
        }
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    for round in 0..200 {
        {
            let (mut ctx, _) = bounded(
                "open",
                a.portal().open_context("t:sum_until_end", Value::Null),
            )
            .await
            .unwrap();
            let s = ctx.open_stream().await.unwrap();
            for i in 0..round % 4 {
                bounded("send", s.send(Value::Int(i))).await.unwrap();
            }
        }
        let end = bounded("the callee's end", ends.recv()).await.unwrap();
        assert_eq!(end, "cancelled", "round {round}");
    }
    // A stream dropped alone, its context kept: that is the caller's input complete.
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:sum_until_end", Value::Null),
    )
    .await
    .unwrap();
    drop(ctx.open_stream().await.unwrap());
    assert_eq!(
        bounded("the callee's end", ends.recv()).await.unwrap(),
        "a normal end"
    );
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), Value::Null);
}

async fn send_after_local_close_errors(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_echo", Value::Null))
        .await
        .unwrap();
    let s = ctx.open_stream().await.unwrap();
    let (tx, mut rx) = s.split();
    tx.send(Value::Int(1)).await.unwrap();
    tx.close().await.unwrap();
    let err = tx.send(Value::Int(2)).await.unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert_eq!(
        bounded("echo", rx.recv()).await.unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(bounded("end", rx.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(1)
    );
}

async fn callee_send_after_close_errors_and_reaches_caller(exec: Executor, t: Transport) {
    let (seen_tx, seen_rx) = async_channel::unbounded();
    let mut reg = FnRegistry::new();
    reg.context("t:close_then_send", move |ctx, _| {
        let seen = seen_tx.clone();
        async move {
            ctx.started(Value::Null).await?;
            let s = ctx.open_stream().await?;
            s.send(Value::Int(1)).await?;
            s.close().await?;
            let r = s.send(Value::Int(2)).await;
            let _ = seen.try_send(format!("{r:?}"));
            Ok(Value::Null)
        }
    })
    .unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:close_then_send", Value::Null),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    assert_eq!(
        bounded("item", s.recv()).await.unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    let saw = bounded("callee", seen_rx.recv()).await.unwrap();
    assert!(saw.contains("Protocol") && saw.contains("closed"), "{saw}");
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), Value::Null);
}

async fn typed_stream_items(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    // A typed caller of an untyped (Value) callee: only the shapes have to agree.
    const ECHO: ContextEndpoint<(), (), (String, u32), (String, u32), i64> =
        ContextEndpoint::new("t:ctx_echo");
    let (mut ctx, ()) = bounded("open", a.portal().open(ECHO, &())).await.unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    s.send(&("x".to_string(), 5)).await.unwrap();
    let back = bounded("typed", s.recv()).await.unwrap();
    assert_eq!(back, Some(("x".to_string(), 5)));
    drop(s); // dropping the only sending handle closes our side
    let n = bounded("result", ctx.result()).await.unwrap();
    assert_eq!(n, 1);
}

async fn receiving_half_as_a_stream(exec: Executor, t: Transport) {
    use futures_lite::StreamExt;
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:ctx_produce", Value::Int(100)),
    )
    .await
    .unwrap();
    let (_tx, rx) = ctx.open_stream().await.unwrap().split();
    let items: Vec<Value> =
        bounded("collect", rx.into_stream().map(|r| r.unwrap()).collect()).await;
    assert_eq!(items, (0..100).map(Value::Int).collect::<Vec<_>>());
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(100)
    );
}

/// Two streams of one link produce at once, so the caller's reader routes their items
/// interleaved (its route cache switching between the two calls every few messages): each call
/// gets exactly its own items, in order; then a later stream on the same link gets its own too.
async fn interleaved_streams_each_get_their_own_items(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let n = 300;
    let (mut c1, _) = bounded(
        "open 1",
        a.portal().open_context("t:ctx_produce", Value::Int(n)),
    )
    .await
    .unwrap();
    let (mut c2, _) = bounded(
        "open 2",
        a.portal().open_context("t:ctx_produce", Value::Int(n)),
    )
    .await
    .unwrap();
    let mut s1 = c1.open_stream().await.unwrap();
    let mut s2 = c2.open_stream().await.unwrap();
    for i in 0..n {
        assert_eq!(
            bounded("recv 1", s1.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
        assert_eq!(
            bounded("recv 2", s2.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    assert_eq!(bounded("end 1", s1.recv()).await.unwrap(), None);
    assert_eq!(bounded("end 2", s2.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result 1", c1.result()).await.unwrap(),
        Value::Int(n)
    );
    assert_eq!(
        bounded("result 2", c2.result()).await.unwrap(),
        Value::Int(n)
    );
    let (mut c3, _) = bounded(
        "open 3",
        a.portal().open_context("t:ctx_produce", Value::Int(5)),
    )
    .await
    .unwrap();
    let mut s3 = c3.open_stream().await.unwrap();
    for i in 0..5 {
        assert_eq!(
            bounded("recv 3", s3.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    assert_eq!(bounded("end 3", s3.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result 3", c3.result()).await.unwrap(),
        Value::Int(5)
    );
}

both_transports!(
    interleaved_streams_each_get_their_own_items,
    receiving_half_as_a_stream,
    echo_stream_both_ways,
    recv_after_peer_stop_ends_cleanly_every_time,
    a_stream_dropped_before_its_end_stops_its_producer,
    a_callee_failing_mid_stream_fails_the_callers_send_with_its_failure,
    a_context_dropped_with_its_stream_is_never_a_normal_end,
    send_after_local_close_errors,
    callee_send_after_close_errors_and_reaches_caller,
    typed_stream_items,
);
