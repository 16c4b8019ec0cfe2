//! The stream halves in the futures ecosystem (`Stream`, `Sink`), per-stream credit windows, and
//! a context's outcome queried without consuming it.

mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use futures_sink::Sink;
use harrow_portal::ipc::Value;
use harrow_portal::{Executor, StreamTx};

async fn send_via_sink(tx: &mut StreamTx, v: Value) {
    poll_fn(|cx| Pin::new(&mut *tx).poll_ready(cx))
        .await
        .expect("ready");
    Pin::new(&mut *tx).start_send(v).expect("sent");
}

async fn a_sink_and_a_stream_carry_a_whole_echo(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_echo", Value::Null))
        .await
        .unwrap();
    // A small window toward us: the echo cannot run ahead of our reading by more than it.
    let s = ctx.open_stream_with_window(4).await.unwrap();
    let (mut tx, rx) = s.split();
    let n = 1000;
    let reader = exec.spawn(async move {
        let mut items = rx.into_stream();
        let mut got = Vec::new();
        while let Some(item) = items.next().await {
            got.push(item.unwrap());
        }
        got
    });
    for i in 0..n {
        bounded("send", send_via_sink(&mut tx, Value::Int(i))).await;
    }
    poll_fn(|cx| Pin::new(&mut tx).poll_close(cx))
        .await
        .unwrap();
    let got = bounded("echo back", reader).await;
    assert_eq!(got, (0..n).map(Value::Int).collect::<Vec<_>>());
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(n)
    );
}

async fn a_sink_fails_once_the_stream_is_over(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_block", Value::Null))
        .await
        .unwrap();
    let s = ctx.open_stream().await.unwrap();
    let (mut tx, _rx) = s.split();
    bounded("cancel", ctx.cancel()).await.unwrap();
    let err = bounded("ready", poll_fn(|cx| Pin::new(&mut tx).poll_ready(cx)))
        .await
        .unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}

async fn each_side_sets_the_window_of_what_it_receives(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:ctx_produce", Value::Int(200)),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream_with_window(3).await.unwrap();
    let mut n = 0;
    while let Some(_item) = bounded("recv", s.recv()).await.unwrap() {
        // Read slowly: the producer can never have more than the window outstanding.
        async_io::Timer::after(Duration::from_micros(200)).await;
        n += 1;
    }
    assert_eq!(n, 200);
    assert!(s.max_buffered() <= 3, "buffered {}", s.max_buffered());
}

async fn a_context_outcome_can_be_asked_without_consuming_it(exec: Executor, t: Transport) {
    let (reg, probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let (ctx, _) = bounded("open", a.portal().open_context("t:ctx_block", Value::Null))
        .await
        .unwrap();
    expect_probe(&probe, "started").await;
    assert!(ctx.outcome().is_none());
    assert!(ctx.error().is_none());
    assert!(
        ctx.wait_result(Duration::from_millis(20)).await.is_none(),
        "still running: the wait gives up and keeps the context"
    );
    bounded("cancel", ctx.cancel()).await.unwrap();
    assert!(ctx.is_answered(), "the callee confirmed the cancel");
    assert_eq!(ctx.cancelled_by(), Some(a.local().id.clone()));
    let err = ctx.error().expect("ended with an error");
    assert_eq!(err.remote_error().unwrap().source, b.local().id);
    let again = bounded("wait", ctx.wait_result(Duration::from_secs(5)))
        .await
        .expect("ended");
    assert!(again.unwrap_err().is_cancelled());
}

async fn a_callee_can_cancel_its_own_context(exec: Executor, t: Transport) {
    let mut reg = harrow_portal::FnRegistry::new();
    reg.context("t:give_up_after", |ctx, v| async move {
        let n = v.as_i64().unwrap_or(0);
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        for i in 0.. {
            if i == n {
                ctx.cancel();
            }
            s.send(Value::Int(i)).await?; // fails with the cancel once given up
        }
        Ok(Value::Null)
    })
    .unwrap();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:give_up_after", Value::Int(5)),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let mut got = 0;
    let end = loop {
        match bounded("recv", s.recv()).await {
            Ok(Some(_)) => got += 1,
            other => break other,
        }
    };
    assert_eq!(got, 5);
    let err = end.expect_err("a cancelled stream is an error");
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(
        err.canceller(),
        Some(&b.local().id),
        "cancelled by the callee itself"
    );
    assert_eq!(ctx.cancelled_by(), Some(b.local().id.clone()));
}

/// Every stream item builds a send and a receive future and moves it into its caller's state:
/// they stay small (the wait for credit is boxed, and neither is an `async fn` around another).
async fn a_streams_send_and_receive_futures_are_small(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_echo", Value::Null))
        .await
        .unwrap();
    let mut s = bounded("stream", ctx.open_stream()).await.unwrap();
    let send = std::mem::size_of_val(&s.send(Value::Int(1)));
    let recv = std::mem::size_of_val(&s.recv());
    assert!(send <= 64, "a send's future is {send} bytes");
    assert!(recv <= 64, "a receive's future is {recv} bytes");
    // Made and dropped unpolled: nothing was sent, and the stream works on.
    bounded("send", s.send(Value::Int(7))).await.unwrap();
    assert_eq!(
        bounded("echo", s.recv()).await.unwrap(),
        Some(Value::Int(7))
    );
    // A send polled again after it finished says so, without a panic, and sends nothing more.
    {
        let mut send = std::pin::pin!(s.send(Value::Int(8)));
        let first = futures_lite::future::poll_once(send.as_mut()).await;
        assert!(matches!(first, Some(Ok(()))), "{first:?}");
        let again = futures_lite::future::poll_once(send.as_mut()).await;
        assert!(
            matches!(again, Some(Err(harrow_portal::Error::Protocol(_)))),
            "{again:?}"
        );
    }
    assert_eq!(
        bounded("echo", s.recv()).await.unwrap(),
        Some(Value::Int(8))
    );
    s.close().await.unwrap();
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
}

both_transports!(
    a_streams_send_and_receive_futures_are_small,
    a_callee_can_cancel_its_own_context,
    a_sink_and_a_stream_carry_a_whole_echo,
    a_sink_fails_once_the_stream_is_over,
    each_side_sets_the_window_of_what_it_receives,
    a_context_outcome_can_be_asked_without_consuming_it,
);

mod endpoints {
    use super::*;
    use harrow_portal::{Endpoint, FnRegistry};

    const SUM: Endpoint<(i64, i64), i64> = Endpoint::new("e:sum");

    async fn an_endpoint_is_served_and_called_with_its_types(exec: Executor, t: Transport) {
        let mut reg = FnRegistry::new();
        reg.serve(SUM, |(a, b)| async move { Ok(a + b) }).unwrap();
        let (a, _b) = caller_callee(&exec, t, reg).await;
        let p = a.portal();
        assert_eq!(bounded("call", p.call(SUM, &(40, 2))).await.unwrap(), 42);
        // A dynamic caller with the wrong shape gets a typed error, not a panic.
        let err = bounded("bad", p.run(SUM.path(), Value::from("x")))
            .await
            .unwrap_err();
        let remote = err.remote_error().expect("a remote error");
        assert_eq!(
            remote.kind,
            harrow_portal::ipc::ErrorKind::BadArguments,
            "{remote}"
        );
    }

    both_transports!(an_endpoint_is_served_and_called_with_its_types);
}

mod one_way {
    use super::*;
    use harrow_portal::{CallError, FnRegistry};

    fn registry() -> FnRegistry {
        let mut reg = FnRegistry::new();
        reg.stream("s:count", |v: Value| {
            let n = v.as_i64().unwrap_or(0);
            futures_lite::stream::iter((0..n).map(|i| Ok(Value::Int(i))))
        })
        .unwrap();
        reg.stream("s:fail_after", |v: Value| {
            let n = v.as_i64().unwrap_or(0);
            futures_lite::stream::iter((0..=n).map(move |i| {
                if i < n {
                    Ok(Value::Int(i))
                } else {
                    Err(CallError::raised("ValueError", "ran dry"))
                }
            }))
        })
        .unwrap();
        reg.context("s:fail_later", |ctx, _| async move {
            ctx.started(Value::Null).await?;
            async_io::Timer::after(Duration::from_millis(20)).await;
            Err::<Value, _>(CallError::raised(
                "ValueError",
                "failed while the caller was busy",
            ))
        })
        .unwrap();
        reg
    }

    async fn a_stream_function_streams_without_ceremony(exec: Executor, t: Transport) {
        let (a, _b) = caller_callee(&exec, t, registry()).await;
        let mut s = bounded(
            "open",
            a.portal().open_stream_from("s:count", Value::Int(1000)),
        )
        .await
        .unwrap();
        let mut n = 0;
        while let Some(v) = bounded("recv", s.recv()).await.unwrap() {
            assert_eq!(v, Value::Int(n));
            n += 1;
        }
        assert_eq!(n, 1000);
        assert_eq!(
            bounded("result", s.result()).await.unwrap(),
            Value::Int(1000)
        );
    }

    /// `result()` with items left unread gives them up and tells the producer, which stops
    /// (it was waiting for credit): no wait for ever, and the answer is the producer's, never
    /// a success it did not have.
    async fn the_result_of_a_stream_read_in_part_does_not_wait_for_ever(
        exec: Executor,
        t: Transport,
    ) {
        let (a, _b) = caller_callee(&exec, t, registry()).await;
        let mut s = bounded(
            "open",
            a.portal().open_stream_from("s:count", Value::Int(100_000)),
        )
        .await
        .unwrap();
        assert_eq!(
            bounded("recv", s.recv()).await.unwrap(),
            Some(Value::Int(0))
        );
        let err = bounded("result", s.result()).await.unwrap_err();
        assert!(!err.is_cancelled(), "{err}");
        assert!(err.to_string().contains("stream not read"), "{err}");
    }

    async fn a_failing_stream_ends_in_its_error(exec: Executor, t: Transport) {
        let (a, _b) = caller_callee(&exec, t, registry()).await;
        let mut s = bounded(
            "open",
            a.portal().open_stream_from("s:fail_after", Value::Int(3)),
        )
        .await
        .unwrap();
        let mut n = 0;
        let end = loop {
            match bounded("recv", s.recv()).await {
                Ok(Some(_)) => n += 1,
                other => break other,
            }
        };
        assert_eq!(n, 3);
        let err = end.expect_err("the stream's error, not an end");
        assert_eq!(err.remote_error().unwrap().message, "ran dry");
        assert!(!err.is_cancelled());
    }

    async fn a_remote_failure_reaches_a_busy_caller(exec: Executor, t: Transport) {
        let (a, _b) = caller_callee(&exec, t, registry()).await;
        let (ctx, _) = bounded("open", a.portal().open_context("s:fail_later", Value::Null))
            .await
            .unwrap();
        // The caller is busy with something that never ends by itself.
        let err = bounded("guard", ctx.guard(std::future::pending::<()>()))
            .await
            .unwrap_err();
        assert_eq!(
            err.remote_error().unwrap().message,
            "failed while the caller was busy"
        );
    }

    both_transports!(
        a_stream_function_streams_without_ceremony,
        the_result_of_a_stream_read_in_part_does_not_wait_for_ever,
        a_failing_stream_ends_in_its_error,
        a_remote_failure_reaches_a_busy_caller,
    );
}
