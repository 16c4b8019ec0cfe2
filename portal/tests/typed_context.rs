//! Typed contexts declared once (`ContextEndpoint`): both sides typed, typed stream halves as
//! `Stream`/`Sink`, and values of the wrong shape from a peer (clear errors, never a panic).

mod common;

use std::future::poll_fn;
use std::pin::Pin;

use common::*;
use futures_lite::StreamExt;
use futures_sink::Sink;
use harrow_portal::ipc::{ErrorKind, Value};
use harrow_portal::{CallError, ContextEndpoint, Error, Executor, FnRegistry, StreamEndpoint};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fill {
    item: String,
    price: f64,
}

/// Opens a book for a trader; takes orders on the stream, answers each with a fill; returns
/// how many it filled.
const BOOK: ContextEndpoint<String, u32, Order, Fill, u64> = ContextEndpoint::new("t:book");

/// What the untyped peers below break: a started `i64`, `i64` items, an `i64` result.
const COUNTER: ContextEndpoint<(), i64, i64, i64, i64> = ContextEndpoint::new("t:counter");

fn registry() -> FnRegistry {
    let mut reg = FnRegistry::new();
    reg.serve_context(BOOK, |ctx, trader| async move {
        assert_eq!(trader, "ann");
        ctx.started(&7).await?;
        let mut orders = ctx.open_stream().await?;
        let mut n = 0;
        while let Some(order) = orders.recv().await? {
            let fill = Fill {
                price: f64::from(order.qty) * 1.5,
                item: order.item,
            };
            orders.send(&fill).await?;
            n += 1;
        }
        Ok(n)
    })
    .unwrap();
    // Untyped peers that get COUNTER's shapes wrong, one way each.
    reg.context("t:bad_started", |ctx, _| async move {
        ctx.started(Value::Str("seven".into())).await?;
        Ok(Value::Int(0))
    })
    .unwrap();
    reg.context("t:bad_item", |ctx, _| async move {
        ctx.started(Value::Int(0)).await?;
        let s = ctx.open_stream().await?;
        s.send(Value::Int(1)).await?;
        s.send(Value::Str("two".into())).await?;
        s.send(Value::Int(3)).await?;
        s.close().await?;
        Ok(Value::Int(3))
    })
    .unwrap();
    reg.context("t:bad_result", |ctx, _| async move {
        ctx.started(Value::Int(0)).await?;
        Ok(Value::List(vec![]))
    })
    .unwrap();
    // A typed callee that an untyped caller feeds the wrong shape.
    reg.serve_context(COUNTER, |ctx, ()| async move {
        ctx.started(&0).await?;
        let mut s = ctx.open_stream().await?;
        let mut total = 0;
        // The `?` sends the decode error back to the caller as this call's failure.
        while let Some(n) = s.recv().await? {
            total += n;
        }
        Ok(total)
    })
    .unwrap();
    // One-way streams: a typed server, and an untyped one whose second item has another shape.
    reg.serve_stream(COUNTDOWN, |from| {
        futures_lite::stream::iter((0..=from).rev().map(|i| {
            if i == 13 {
                Err(CallError::raised("ValueError", "unlucky"))
            } else {
                Ok(i)
            }
        }))
    })
    .unwrap();
    reg.stream("t:bad_gen", |_| {
        futures_lite::stream::iter([Value::Int(1), Value::Str("two".into())].map(Ok))
    })
    .unwrap();
    reg
}

/// Counts down from its argument to 0 (and fails at 13).
const COUNTDOWN: StreamEndpoint<u32, u32> = StreamEndpoint::new("t:countdown");
const BAD_GEN: StreamEndpoint<(), i64> = StreamEndpoint::new("t:bad_gen");

const BAD_STARTED: ContextEndpoint<(), i64, i64, i64, i64> = ContextEndpoint::new("t:bad_started");
const BAD_ITEM: ContextEndpoint<(), i64, i64, i64, i64> = ContextEndpoint::new("t:bad_item");
const BAD_RESULT: ContextEndpoint<(), i64, i64, i64, i64> = ContextEndpoint::new("t:bad_result");

async fn both_sides_typed(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, started) = bounded("open", a.portal().open(BOOK, &"ann".to_string()))
        .await
        .unwrap();
    assert_eq!(started, 7u32);
    let mut book = ctx.open_stream().await.unwrap();
    for (item, qty) in [("apples", 2), ("pears", 4)] {
        let order = Order {
            item: item.into(),
            qty,
        };
        book.send(&order).await.unwrap();
        let fill = bounded("fill", book.recv()).await.unwrap().unwrap();
        assert_eq!(fill.item, item);
        assert_eq!(fill.price, f64::from(qty) * 1.5);
    }
    book.close().await.unwrap();
    assert_eq!(bounded("end", book.recv()).await.unwrap(), None);
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 2u64);
}

async fn typed_halves_are_sink_and_stream(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, _) = bounded("open", a.portal().open(BOOK, &"ann".to_string()))
        .await
        .unwrap();
    // A window of 1 toward us: the Sink must wait for credit while we read.
    let (mut tx, rx) = ctx.open_stream_with_window(1).await.unwrap().split();
    let reader = exec.spawn(async move { rx.collect::<Vec<_>>().await });
    for qty in 1..=5 {
        bounded("ready", poll_fn(|cx| Pin::new(&mut tx).poll_ready(cx)))
            .await
            .unwrap();
        let order = Order {
            item: format!("i{qty}"),
            qty,
        };
        Pin::new(&mut tx).start_send(order).unwrap();
    }
    bounded("close", poll_fn(|cx| Pin::new(&mut tx).poll_close(cx)))
        .await
        .unwrap();
    let fills: Vec<Fill> = bounded("collect", reader)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let items: Vec<_> = fills.iter().map(|f| f.item.as_str()).collect();
    assert_eq!(items, ["i1", "i2", "i3", "i4", "i5"]);
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 5);
}

async fn whole_stream_is_sink_and_stream(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, _) = bounded("open", a.portal().open(BOOK, &"ann".to_string()))
        .await
        .unwrap();
    let mut book = ctx.open_stream().await.unwrap();
    bounded("ready", poll_fn(|cx| Pin::new(&mut book).poll_ready(cx)))
        .await
        .unwrap();
    let order = Order {
        item: "figs".into(),
        qty: 2,
    };
    Pin::new(&mut book).start_send(order).unwrap();
    let fill = bounded("next", book.next()).await.unwrap().unwrap();
    assert_eq!(fill.price, 3.0);
    bounded("close", poll_fn(|cx| Pin::new(&mut book).poll_close(cx)))
        .await
        .unwrap();
    assert!(bounded("end", book.next()).await.is_none());
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 1);
}

async fn a_recv_dropped_halfway_loses_nothing(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, _) = bounded("open", a.portal().open(BOOK, &"ann".to_string()))
        .await
        .unwrap();
    let mut book = ctx.open_stream().await.unwrap();
    // Nothing has been sent: the first poll of a receive is pending, and the receive is dropped.
    assert!(futures_lite::future::poll_once(book.recv()).await.is_none());
    let order = Order {
        item: "kiwis".into(),
        qty: 1,
    };
    book.send(&order).await.unwrap();
    let fill = bounded("fill", book.recv()).await.unwrap().unwrap();
    assert_eq!(fill.item, "kiwis");
    book.close().await.unwrap();
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 1);
}

fn assert_value_error(err: &Error, what: &str) {
    match err {
        Error::Value(message) => assert!(message.contains(what), "{message}"),
        other => panic!("expected a value error about {what}, got {other:?}"),
    }
}

async fn wrong_started_value_is_a_value_error(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let err = bounded("open", a.portal().open(BAD_STARTED, &()))
        .await
        .unwrap_err();
    assert_value_error(&err, "started value of t:bad_started");
}

async fn wrong_stream_item_is_a_value_error_and_the_stream_goes_on(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, _) = bounded("open", a.portal().open(BAD_ITEM, &()))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    assert_eq!(bounded("1", s.recv()).await.unwrap(), Some(1));
    let err = bounded("2", s.recv()).await.unwrap_err();
    assert_value_error(&err, "stream item of t:bad_item");
    assert_eq!(bounded("3", s.recv()).await.unwrap(), Some(3));
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 3);
}

async fn wrong_stream_item_ends_the_stream_view(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, _) = bounded("open", a.portal().open(BAD_ITEM, &()))
        .await
        .unwrap();
    let (_tx, rx) = ctx.open_stream().await.unwrap().split();
    let got: Vec<_> = bounded("collect", rx.collect::<Vec<_>>()).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap(), &1);
    assert_value_error(got[1].as_ref().unwrap_err(), "stream item of t:bad_item");
}

async fn wrong_result_is_a_value_error(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (ctx, _) = bounded("open", a.portal().open(BAD_RESULT, &()))
        .await
        .unwrap();
    let kept = bounded("wait", ctx.wait_result(BOUND)).await.unwrap();
    assert_value_error(&kept.unwrap_err(), "result of t:bad_result");
    assert_value_error(
        &ctx.outcome().unwrap().unwrap_err(),
        "result of t:bad_result",
    );
    let err = bounded("result", ctx.result()).await.unwrap_err();
    assert_value_error(&err, "result of t:bad_result");
}

async fn typed_callee_refuses_wrong_args_and_items(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let p = a.portal();
    // Arguments of another shape: refused before the handler runs, naming the function.
    let err = bounded("bad args", p.open_context("t:book", Value::Int(3)))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::BadArguments);
    assert!(re.message.contains("t:book"), "{re}");
    // An item of another shape: the typed callee's recv fails, and its `?` reports it.
    let (mut ctx, started) = bounded("open", p.open_context("t:counter", Value::Null))
        .await
        .unwrap();
    assert_eq!(started, Value::Int(0));
    let s = ctx.open_stream().await.unwrap();
    s.send(Value::Int(2)).await.unwrap();
    s.send(Value::Str("three".into())).await.unwrap();
    let err = bounded("result", ctx.result()).await.unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert!(re.message.contains("stream item of t:counter"), "{re}");
}

async fn typed_caller_of_typed_callee_counts(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let (mut ctx, zero) = bounded("open", a.portal().open(COUNTER, &()))
        .await
        .unwrap();
    assert_eq!(zero, 0);
    let s = ctx.open_stream().await.unwrap();
    for n in 1..=4 {
        s.send(&n).await.unwrap();
    }
    s.close().await.unwrap();
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), 10);
}

async fn typed_one_way_streams(exec: Executor, t: Transport) {
    let (a, _b) = caller_callee(&exec, t, registry()).await;
    let p = a.portal();
    let mut down = bounded("open", p.stream_from(COUNTDOWN, &3)).await.unwrap();
    assert_eq!(bounded("3", down.recv()).await.unwrap(), Some(3));
    let rest: Vec<u32> = bounded("rest", (&mut down).map(Result::unwrap).collect()).await;
    assert_eq!(rest, [2, 1, 0]);
    assert_eq!(
        bounded("result", down.result()).await.unwrap(),
        Value::Int(4)
    );
    // Read in part: `result()` gives the rest up and tells the producer, which stops.
    let mut down = bounded("open", p.stream_from(COUNTDOWN, &1_000_000))
        .await
        .unwrap();
    assert_eq!(
        bounded("first", down.recv()).await.unwrap(),
        Some(1_000_000)
    );
    let err = bounded("result", down.result()).await.unwrap_err();
    assert!(!err.is_cancelled(), "{err}");
    assert!(err.to_string().contains("stream not read"), "{err}");
    // A failing item ends the stream in that failure, never a normal end.
    let mut down = bounded("open", p.stream_from(COUNTDOWN, &14))
        .await
        .unwrap();
    assert_eq!(bounded("14", down.recv()).await.unwrap(), Some(14));
    let err = bounded("13", down.recv()).await.unwrap_err();
    assert_eq!(err.remote_error().expect("remote").message, "unlucky");
    // Arguments of another shape: BadArguments, before the server runs.
    let err = bounded(
        "bad args",
        p.open_stream_from("t:countdown", Value::from("x")),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.remote_error().expect("remote").kind,
        ErrorKind::BadArguments
    );
    // An item of another shape from an untyped server: a value error naming it.
    let mut bad = bounded("open", p.stream_from(BAD_GEN, &())).await.unwrap();
    assert_eq!(bounded("1", bad.recv()).await.unwrap(), Some(1));
    let err = bounded("2", bad.recv()).await.unwrap_err();
    assert_value_error(&err, "stream item of t:bad_gen");
}

both_transports!(
    typed_one_way_streams,
    both_sides_typed,
    typed_halves_are_sink_and_stream,
    whole_stream_is_sink_and_stream,
    a_recv_dropped_halfway_loses_nothing,
    wrong_started_value_is_a_value_error,
    wrong_stream_item_is_a_value_error_and_the_stream_goes_on,
    wrong_stream_item_ends_the_stream_view,
    wrong_result_is_a_value_error,
    typed_callee_refuses_wrong_args_and_items,
    typed_caller_of_typed_callee_counts,
);

/// A typed context served from a `StateRegistry`: every call sees the same state.
mod with_state {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::common::*;
    use harrow_portal::{ContextEndpoint, StateRegistry};

    /// Adds the streamed numbers to a shared total; returns the total after this call.
    const DEPOSIT: ContextEndpoint<(), i64, i64, (), i64> = ContextEndpoint::new("t:deposit");

    #[test]
    fn calls_share_the_state() {
        run_test(Transport::Mem, |exec, t| async move {
            let mut reg = StateRegistry::new(AtomicI64::new(0));
            reg.serve_context(DEPOSIT, |total, ctx, ()| async move {
                ctx.started(&total.load(Ordering::SeqCst)).await?;
                let mut s = ctx.open_stream().await?;
                while let Some(n) = s.recv().await? {
                    total.fetch_add(n, Ordering::SeqCst);
                }
                Ok(total.load(Ordering::SeqCst))
            })
            .unwrap();
            let shared = Arc::clone(reg.state());
            let (a, _b) = caller_callee(&exec, t, reg.into_registry()).await;
            for (round, before, after) in [(1, 0, 3), (2, 3, 6)] {
                let (mut ctx, seen) = bounded("open", a.portal().open(DEPOSIT, &()))
                    .await
                    .unwrap();
                assert_eq!(seen, before, "round {round}");
                let s = ctx.open_stream().await.unwrap();
                s.send(&1).await.unwrap();
                s.send(&2).await.unwrap();
                s.close().await.unwrap();
                assert_eq!(bounded("result", ctx.result()).await.unwrap(), after);
            }
            assert_eq!(shared.load(Ordering::SeqCst), 6);
        });
    }
}
