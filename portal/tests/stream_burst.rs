//! A burst of stream items that arrives together (one read of the transport, one gathered batch)
//! is routed to its stream as a run: the items reach the receiver in order and whole, and what
//! follows them on the wire (an end, an error, a protocol violation) comes after them, never
//! before and never in their place.

mod common;

use common::*;
use harrow_portal::ipc::{
    ActorId, CallKind, ChannelRx, ChannelTx, Cid, ErrorKind, Msg, RemoteError, Value,
};
use harrow_portal::{Context, Error, Executor, Link, LinkConfig};
use std::collections::VecDeque;

/// The window the caller grants for the callee's items.
const WINDOW: u32 = 8;

/// The raw callee's end of the link's channel.
struct Raw {
    tx: ChannelTx,
    rx: ChannelRx,
}

impl Raw {
    async fn recv(&mut self, what: &str) -> Msg {
        bounded(what, self.rx.recv()).await.expect(what)
    }

    /// Answers the next `Start` (a context's) with `Started`; returns its cid.
    async fn start_context(&mut self) -> Cid {
        let cid = match self.recv("the Start").await {
            Msg::Start {
                cid,
                kind: CallKind::Context,
                ..
            } => cid,
            other => panic!("expected a context's Start, got {other:?}"),
        };
        self.tx
            .send(Msg::Started {
                cid,
                value: Value::Null,
            })
            .await
            .expect("Started");
        cid
    }

    async fn send_burst(&self, mut burst: VecDeque<Msg>) {
        self.tx.send_batch(&mut burst).await.expect("the burst");
    }
}

/// A caller `a` (a link) with a context open on a raw callee `b`. Returns the context's cid too.
async fn context_on_raw_callee(exec: &Executor, t: Transport) -> (Link, Context, Raw, Cid) {
    let (ca, cb) = pair(t);
    let (a, hello) = bounded(
        "hello exchange",
        futures_lite::future::zip(
            Link::establish(ca, local("a"), None, exec, LinkConfig::default()),
            raw_hello(&cb, &ActorId::new("b")),
        ),
    )
    .await;
    assert!(matches!(hello, Msg::Hello { .. }), "{hello:?}");
    let a = a.expect("link a");
    let mut cb = cb;
    cb.end_handshake();
    let (tx, rx) = cb.split();
    let mut raw = Raw { tx, rx };
    let (ctx, cid) = open_context(exec, &a, &mut raw).await;
    (a, ctx, raw, cid)
}

/// Opens a context on `a`'s raw callee.
async fn open_context(exec: &Executor, a: &Link, raw: &mut Raw) -> (Context, Cid) {
    let portal = a.portal();
    let opening = exec.spawn(async move { portal.open_context("t:burst", Value::Null).await });
    let cid = raw.start_context().await;
    let (ctx, _) = bounded("the context opens", opening)
        .await
        .expect("the context opens");
    (ctx, cid)
}

/// Opens the caller's stream and reads the credit it grants the raw callee.
async fn open_stream(ctx: &mut Context, raw: &mut Raw, cid: Cid) -> harrow_portal::MsgStream {
    let stream = ctx.open_stream_with_window(WINDOW).await.expect("open");
    assert_eq!(
        raw.recv("the credit").await,
        Msg::Credit {
            cid,
            n: WINDOW,
            consumed: 0
        }
    );
    stream
}

fn items(cid: Cid, range: std::ops::Range<i64>) -> VecDeque<Msg> {
    range
        .map(|i| Msg::Yield {
            cid,
            value: Value::Int(i),
        })
        .collect()
}

async fn items_then_an_error_in_one_burst_arrive_in_order(exec: Executor, t: Transport) {
    let (_a, mut ctx, mut raw, cid) = context_on_raw_callee(&exec, t).await;
    let mut stream = open_stream(&mut ctx, &mut raw, cid).await;
    let mut burst = items(cid, 0..5);
    burst.push_back(Msg::Error {
        cid: Some(cid),
        error: Box::new(RemoteError::new(
            ErrorKind::Raised,
            "ValueError",
            "after five",
            ActorId::new("b"),
        )),
    });
    raw.send_burst(burst).await;
    for i in 0..5 {
        assert_eq!(
            bounded("an item", stream.recv()).await.expect("an item"),
            Some(Value::Int(i))
        );
    }
    match bounded("the error", stream.recv()).await {
        Err(Error::Remote(e)) => assert_eq!(e.message, "after five", "{e:?}"),
        other => panic!("expected the callee's error after its items, got {other:?}"),
    }
}

async fn items_then_the_end_in_one_burst_arrive_in_order(exec: Executor, t: Transport) {
    let (_a, mut ctx, mut raw, cid) = context_on_raw_callee(&exec, t).await;
    let mut stream = open_stream(&mut ctx, &mut raw, cid).await;
    let mut burst = items(cid, 0..WINDOW as i64);
    burst.push_back(Msg::Stop { cid });
    burst.push_back(Msg::Return {
        cid,
        value: Value::from("done"),
    });
    raw.send_burst(burst).await;
    for i in 0..WINDOW as i64 {
        assert_eq!(
            bounded("an item", stream.recv()).await.expect("an item"),
            Some(Value::Int(i))
        );
    }
    assert_eq!(bounded("the end", stream.recv()).await.expect("end"), None);
    drop(stream);
    assert_eq!(
        bounded("the result", ctx.result())
            .await
            .expect("the result"),
        Value::from("done")
    );
}

async fn items_past_the_credit_fail_the_stream_after_those_within_it(exec: Executor, t: Transport) {
    let (_a, mut ctx, mut raw, cid) = context_on_raw_callee(&exec, t).await;
    let mut stream = open_stream(&mut ctx, &mut raw, cid).await;
    // Three more than granted, in one burst.
    let burst = items(cid, 0..WINDOW as i64 + 3);
    raw.send_burst(burst).await;
    for i in 0..WINDOW as i64 {
        assert_eq!(
            bounded("an item within the credit", stream.recv())
                .await
                .expect("an item"),
            Some(Value::Int(i))
        );
    }
    match bounded("the violation", stream.recv()).await {
        Err(Error::Protocol(text)) => assert!(text.contains("without credit"), "{text}"),
        other => panic!("expected a protocol error for the items past the credit, got {other:?}"),
    }
}

/// Items, then the raw callee's end of the channel closes: the items arrive, then the failure
/// (a closed link is an error, never an end of stream).
async fn items_then_a_closed_channel_arrive_before_the_failure(exec: Executor, t: Transport) {
    let (_a, mut ctx, mut raw, cid) = context_on_raw_callee(&exec, t).await;
    let mut stream = open_stream(&mut ctx, &mut raw, cid).await;
    raw.send_burst(items(cid, 0..5)).await;
    raw.tx.close();
    drop(raw);
    for i in 0..5 {
        assert_eq!(
            bounded("an item", stream.recv()).await.expect("an item"),
            Some(Value::Int(i))
        );
    }
    match bounded("the failure", stream.recv()).await {
        Err(e) => assert!(!e.is_cancelled(), "a closed link, not a cancel: {e:?}"),
        Ok(other) => panic!("expected the link's failure after the items, got {other:?}"),
    }
}

/// Items for two streams, interleaved in one burst: each stream gets its own, in order.
async fn interleaved_items_of_two_streams_each_reach_their_own(exec: Executor, t: Transport) {
    let (a, mut ctx, mut raw, cid) = context_on_raw_callee(&exec, t).await;
    let mut first = open_stream(&mut ctx, &mut raw, cid).await;
    // A second context on the same link.
    let (mut ctx2, cid2) = open_context(&exec, &a, &mut raw).await;
    let mut second = open_stream(&mut ctx2, &mut raw, cid2).await;
    let mut burst = VecDeque::new();
    for i in 0..WINDOW as i64 {
        // Runs of one, two and three items per stream, taking turns.
        let (to, value) = match i % 3 {
            0 => (cid, i),
            _ => (cid2, i),
        };
        burst.push_back(Msg::Yield {
            cid: to,
            value: Value::Int(value),
        });
    }
    raw.send_burst(burst).await;
    let want_first: Vec<i64> = (0..WINDOW as i64).filter(|i| i % 3 == 0).collect();
    let want_second: Vec<i64> = (0..WINDOW as i64).filter(|i| i % 3 != 0).collect();
    for want in want_first {
        assert_eq!(
            bounded("first's item", first.recv()).await.expect("item"),
            Some(Value::Int(want))
        );
    }
    for want in want_second {
        assert_eq!(
            bounded("second's item", second.recv()).await.expect("item"),
            Some(Value::Int(want))
        );
    }
}

both_transports!(
    items_then_an_error_in_one_burst_arrive_in_order,
    items_then_the_end_in_one_burst_arrive_in_order,
    items_past_the_credit_fail_the_stream_after_those_within_it,
    interleaved_items_of_two_streams_each_reach_their_own,
    items_then_a_closed_channel_arrive_before_the_failure,
);
