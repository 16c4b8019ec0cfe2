//! Flow control: a credit window per stream direction. A fast sender waits for credit, a slow
//! consumer loses nothing, the receiving buffer never exceeds the window, and another call on the
//! same channel answers while a stream is stalled (no head-of-line blocking). The default window
//! grows while the items are small and shrinks back when they grow; a window set by the link's
//! config alone (`credit_window_max` at most `credit_window`) does not move.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use harrow_portal::ipc::Value;
use harrow_portal::{Executor, FnRegistry, Link, LinkConfig};

/// `t:produce`: streams 0..n and reports each sent index on `sent`. `t:produce_sized` and
/// `t:lists`: streams of byte strings and of lists. `t:consume`: counts items the caller
/// streams in, returns their sum.
fn registry(sent: async_channel::Sender<i64>) -> FnRegistry {
    let mut reg = FnRegistry::new();
    reg.context("t:produce", move |ctx, v| {
        let sent = sent.clone();
        async move {
            let n = v.as_i64().unwrap_or(0);
            ctx.started(Value::Null).await?;
            let s = ctx.open_stream().await?;
            for i in 0..n {
                s.send(Value::Int(i)).await?;
                let _ = sent.try_send(i);
            }
            s.close().await?;
            Ok(Value::Int(n))
        }
    })
    .unwrap();
    reg.context("t:produce_sized", |ctx, v| async move {
        // [small, large, bytes]: `small` ints, then `large` byte strings of `bytes` bytes.
        let args = v.as_list().map(<[Value]>::to_vec).unwrap_or_default();
        let arg = |i: usize| args.get(i).and_then(Value::as_i64).unwrap_or(0);
        let (small, large, bytes) = (arg(0), arg(1), arg(2));
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        for i in 0..small {
            s.send(Value::Int(i)).await?;
        }
        for _ in 0..large {
            s.send(Value::Bytes(vec![7; bytes as usize])).await?;
        }
        s.close().await?;
        Ok(Value::Int(small + large))
    })
    .unwrap();
    reg.context("t:produce_runs", |ctx, v| async move {
        // [[count, bytes], ...]: runs of `count` items each, byte strings of `bytes` bytes (an
        // int, the item's index, where `bytes` is 0).
        let runs = v.as_list().map(<[Value]>::to_vec).unwrap_or_default();
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        let mut sent = 0i64;
        for run in &runs {
            let run = run.as_list().unwrap_or_default();
            let arg = |i: usize| run.get(i).and_then(Value::as_i64).unwrap_or(0);
            for _ in 0..arg(0) {
                let item = match arg(1) {
                    0 => Value::Int(sent),
                    n => Value::Bytes(vec![7; n as usize]),
                };
                s.send(item).await?;
                sent += 1;
            }
        }
        s.close().await?;
        Ok(Value::Int(sent))
    })
    .unwrap();
    reg.context("t:lists", |ctx, v| async move {
        // `n` lists of three copies of their index.
        let n = v.as_i64().unwrap_or(0);
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        for i in 0..n {
            s.send(Value::List(vec![Value::Int(i); 3])).await?;
        }
        s.close().await?;
        Ok(Value::Int(n))
    })
    .unwrap();
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    reg.context("t:consume", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        let mut sum = 0i64;
        let mut n = 0u64;
        while let Some(v) = s.recv().await? {
            sum += v.as_i64().unwrap_or(0);
            n += 1;
            if n.is_multiple_of(97) {
                // A slow consumer, now and then.
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        }
        Ok(Value::Int(sum))
    })
    .unwrap();
    reg
}

/// A window that does not move (`credit_window_max` no larger than `credit_window`): the
/// buffer never holds more than it.
async fn slow_consumer_bounded_buffer_nothing_lost(exec: Executor, t: Transport, window: u32) {
    let mut config = LinkConfig::default();
    config.credit_window = window;
    config.credit_window_max = window;
    slow_consumer_bounded_by(exec, t, config, window).await;
}

/// A slow consumer of `t:produce`'s ints over a link with `config`: nothing lost or reordered,
/// and neither the buffer nor the producer's lead ever past `window`.
async fn slow_consumer_bounded_by(exec: Executor, t: Transport, config: LinkConfig, window: u32) {
    let (sent_tx, sent_rx) = async_channel::unbounded();
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    // Several windows' worth, so that the producer runs into the window again and again.
    let n: i64 = (4 * i64::from(window)).max(10_000);
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:produce", Value::Int(n)))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let mut sent_seen = 0i64;
    for i in 0..n {
        assert!(
            s.buffered() <= window as usize,
            "buffered {} > window {window}",
            s.buffered()
        );
        let v = bounded("item", s.recv()).await.unwrap();
        assert_eq!(v, Some(Value::Int(i)), "lost or reordered");
        // The producer never ran further ahead than the window allows.
        while let Ok(j) = sent_rx.try_recv() {
            sent_seen = j + 1;
        }
        assert!(
            sent_seen <= i + 1 + window as i64,
            "sent {sent_seen} after consuming {}",
            i + 1
        );
        if i % 1000 == 0 {
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert!(
        s.max_buffered() <= window as usize,
        "max buffered {}",
        s.max_buffered()
    );
    assert!(s.max_buffered() >= 1);
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(n)
    );
}

async fn window_fixed(exec: Executor, t: Transport) {
    slow_consumer_bounded_buffer_nothing_lost(exec, t, 64).await;
}

/// The default window grows for small items, never past `credit_window_max`.
async fn window_default(exec: Executor, t: Transport) {
    let config = LinkConfig::default();
    let max = config.credit_window_max;
    assert!(max > config.credit_window, "the default window grows");
    slow_consumer_bounded_by(exec, t, config, max).await;
}

/// A link pair serving [`registry`] whose default window grows to at most 256 items, so that
/// its moves show within a few hundred items; and its config.
async fn window_up_to_256(exec: &Executor, t: Transport) -> (Link, Link, LinkConfig) {
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let mut config = LinkConfig::default();
    config.credit_window_max = 256;
    let (a, b) = link_pair(
        exec,
        t,
        None,
        Some(Arc::new(registry(sent_tx))),
        config.clone(),
    )
    .await;
    (a, b, config)
}

/// The receiver's rule, with a grown window of at most 256 (so that its shrinking shows within
/// a few hundred items): items of 8 KiB keep the window at `credit_window` from the first
/// re-grant; a stream of small items that turns large grows to `credit_window_max`, then
/// shrinks back to `credit_window` (and never below it) by withholding re-grants, and nothing
/// is lost.
async fn window_follows_the_items_size(exec: Executor, t: Transport) {
    let (a, _b, config) = window_up_to_256(&exec, t).await;
    let (base, max) = (config.credit_window, config.credit_window_max);
    let large = 8 << 10;
    assert!(
        config.credit_window_bytes / large < base as usize,
        "8 KiB items fit the base window only"
    );

    // Large items from the start: the window stays at its base.
    let (mut ctx, _) = bounded(
        "open large",
        a.portal().open_context(
            "t:produce_sized",
            Value::List(vec![
                Value::Int(0),
                Value::Int(600),
                Value::Int(large as i64),
            ]),
        ),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    for i in 0..600 {
        assert!(s.buffered() <= base as usize, "item {i}: {}", s.buffered());
        let v = bounded("large item", s.recv()).await.unwrap();
        assert_eq!(v.map(|v| v.into_bytes().map(|b| b.len())), Some(Ok(large)));
        assert_eq!(s.window(), base, "after {} large items", i + 1);
        if i % 150 == 0 {
            // Stall: the producer fills the window and waits.
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert!(s.max_buffered() <= base as usize, "{}", s.max_buffered());
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(600)
    );

    // Small items, then large ones.
    const SMALL: i64 = 2_000;
    const LARGE: i64 = 600;
    let (mut ctx, _) = bounded(
        "open mixed",
        a.portal().open_context(
            "t:produce_sized",
            Value::List(vec![
                Value::Int(SMALL),
                Value::Int(LARGE),
                Value::Int(large as i64),
            ]),
        ),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let first_regrant = (base / 4) as i64;
    let mut grown = false;
    for i in 0..SMALL {
        assert!(s.buffered() <= max as usize);
        let v = bounded("small item", s.recv()).await.unwrap();
        assert_eq!(v, Some(Value::Int(i)));
        if i + 1 == first_regrant {
            // Only small items arrived before the first re-grant (the producer had `base`
            // credit): the window grew to its most at once.
            assert_eq!(s.window(), max);
            grown = true;
        }
    }
    assert!(grown);
    for i in 0..LARGE {
        assert!(s.buffered() <= max as usize);
        let v = bounded("large item", s.recv()).await.unwrap();
        assert_eq!(v.map(|v| v.into_bytes().map(|b| b.len())), Some(Ok(large)));
        assert!(s.window() >= base, "never below the base");
        if i == LARGE / 2 {
            // A few re-grants withheld in part: back at the base.
            assert_eq!(s.window(), base, "after {} large items", i + 1);
            async_io::Timer::after(Duration::from_millis(2)).await;
            assert!(s.buffered() <= base as usize, "{}", s.buffered());
        }
    }
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(SMALL + LARGE)
    );
}

/// A large item keeps the window small for a while, not for good: a stream that begins with one
/// 8 KiB item sits at `credit_window`, then grows to `credit_window_max` once a window's worth or
/// two of ints followed it. The buffer never holds more than the window, and nothing is lost.
async fn window_grows_again_after_a_large_item(exec: Executor, t: Transport) {
    let (a, _b, config) = window_up_to_256(&exec, t).await;
    let (base, max) = (config.credit_window, config.credit_window_max);
    let large = 8 << 10;
    const INTS: i64 = 3_000;
    let runs = Value::List(vec![
        Value::List(vec![Value::Int(1), Value::Int(large)]),
        Value::List(vec![Value::Int(INTS), Value::Int(0)]),
    ]);
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:produce_runs", runs))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let v = bounded("the large item", s.recv()).await.unwrap();
    assert_eq!(
        v.map(|v| v.into_bytes().map(|b| b.len())),
        Some(Ok(large as usize))
    );
    let first_regrant = i64::from(base / 4);
    let mut regrown_at = None;
    for i in 1..=INTS {
        let window = s.window();
        assert!(
            s.buffered() <= window as usize,
            "item {i}: {} buffered, window {window}",
            s.buffered()
        );
        let v = bounded("int", s.recv()).await.unwrap();
        assert_eq!(v, Some(Value::Int(i)), "lost or reordered");
        if i + 1 == first_regrant {
            // The first re-grant saw the large item: the window stays at its base.
            assert_eq!(s.window(), base, "at the first re-grant");
        }
        if regrown_at.is_none() && s.window() == max {
            regrown_at = Some(i);
        }
    }
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    let regrown_at = regrown_at.expect("the window grows again once ints followed the large item");
    // The large item is remembered for one to two spans of `base` items, then the next re-grant
    // (a quarter of the window later, or when the queue runs dry) grows the window.
    assert!(
        regrown_at >= i64::from(base) - 1 && regrown_at <= 3 * i64::from(base),
        "grown again after {regrown_at} ints"
    );
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(INTS + 1)
    );
}

/// The sender's byte budget. A callee takes 20,000 ints promptly (its window grows to its most,
/// 8,192), says so, then stops reading. The caller, holding thousands of credits, sends 8 KiB
/// items: it stops at the first item that leaves `credit_window` items or more unreported and
/// `credit_window_bytes` or more of them, not when its credit runs out. (How many of the ints
/// are still unreported then depends on when the callee's queue last ran dry, so the count can
/// be what stops it.) Released, the callee receives everything, in order.
async fn a_stream_that_turns_large_keeps_to_the_byte_budget(exec: Executor, t: Transport) {
    const SMALL: i64 = 20_000;
    const LARGE: usize = 8 << 10;
    let (took_tx, took_rx) = async_channel::bounded::<()>(1);
    let (go_tx, go_rx) = async_channel::bounded::<()>(1);
    let mut reg = FnRegistry::new();
    reg.context("t:stall_after", move |ctx, _| {
        let (took_tx, go_rx) = (took_tx.clone(), go_rx.clone());
        async move {
            ctx.started(Value::Null).await?;
            let mut s = ctx.open_stream().await?;
            let mut small = 0i64;
            while small < SMALL {
                match s.recv().await? {
                    Some(v) if v == Value::Int(small) => small += 1,
                    other => return Ok(Value::Str(format!("item {small}: {other:?}"))),
                }
            }
            let _ = took_tx.send(()).await;
            let _ = go_rx.recv().await;
            let mut large = 0i64;
            while let Some(v) = s.recv().await? {
                match v.into_bytes() {
                    Ok(b) if b.len() == LARGE => large += 1,
                    other => return Ok(Value::Str(format!("large item {large}: {other:?}"))),
                }
            }
            Ok(Value::Int(large))
        }
    })
    .unwrap();
    reg.unary("t:ping", |v| async move { Ok(v) }).unwrap();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let config = LinkConfig::default();
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:stall_after", Value::Null),
    )
    .await
    .unwrap();
    let (tx, _rx) = ctx.open_stream().await.unwrap().split();
    for i in 0..SMALL {
        bounded("small item", tx.send(Value::Int(i))).await.unwrap();
    }
    bounded("the callee took the small items", took_rx.recv())
        .await
        .unwrap();
    // The callee's last report was queued before it said so; an answer queued after it arrives
    // after it, so no report is on its way once this returns, and none comes before `go`.
    bounded(
        "a round trip after the reports",
        a.portal().run("t:ping", Value::Null),
    )
    .await
    .unwrap();
    let credit = tx.credit();
    assert!(credit > 4 * config.credit_window, "credit {credit}");

    let mut sent = 0usize;
    let blocked = loop {
        let mut send = Box::pin(tx.send(Value::Bytes(vec![7; LARGE])));
        // A send may give its executor a turn first (every few hundred items, over a link with
        // a writer task): one still pending on its second poll waits.
        let mut done = None;
        for _ in 0..2 {
            done = futures_lite::future::poll_once(&mut send).await;
            if done.is_some() {
                break;
            }
        }
        match done {
            Some(r) => {
                r.unwrap();
                sent += 1;
            }
            None => break send,
        }
    };
    // It waits once `credit_window` items or more are unreported and they come to the budget,
    // and the last item sent is the one that made both true. Some of the unreported items are
    // small ones the callee took after its last report (it reports again when it reads on).
    let (unacked, bytes) = tx.unacked();
    let one = Value::Bytes(vec![7; LARGE]).approx_size(usize::MAX);
    let budget = config.credit_window_bytes;
    let count = config.credit_window as usize;
    assert!(
        unacked >= count && bytes >= budget,
        "{unacked} items and {bytes} bytes unreported: the sender could go on"
    );
    assert!(
        unacked - 1 < count || bytes - one < budget,
        "{unacked} items and {bytes} bytes unreported: it went on one item too long"
    );
    assert!(
        (1..=(budget / one + 1).max(count)).contains(&sent),
        "{sent} large items sent before waiting"
    );
    assert!(tx.credit() > 0, "credit was not what stopped the sender");

    go_tx.send(()).await.unwrap();
    bounded("the waiting send", blocked).await.unwrap();
    for _ in 0..200 {
        bounded("large item", tx.send(Value::Bytes(vec![7; LARGE])))
            .await
            .unwrap();
    }
    tx.close().await.unwrap();
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(sent as i64 + 201)
    );
}

async fn window_small(exec: Executor, t: Transport) {
    slow_consumer_bounded_buffer_nothing_lost(exec, t, 3).await;
}

/// No byte limit (`usize::MAX`) over a window of 1: the window grows to its most, and the
/// measuring of each item (lists here, which are walked) neither overflows nor loses anything.
async fn window_without_a_byte_limit(exec: Executor, t: Transport) {
    let mut config = LinkConfig::default();
    config.credit_window = 1;
    config.credit_window_max = 8;
    config.credit_window_bytes = usize::MAX;
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:lists", Value::Int(500)))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    for i in 0..500i64 {
        assert!(s.buffered() <= 8, "{}", s.buffered());
        let v = bounded("list item", s.recv()).await.unwrap();
        assert_eq!(v, Some(Value::List(vec![Value::Int(i); 3])));
    }
    assert_eq!(s.window(), 8);
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(500)
    );
}

async fn stalled_stream_does_not_block_other_calls(exec: Executor, t: Transport) {
    let (sent_tx, sent_rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(sent_tx)).await;
    let config = LinkConfig::default();
    let (base, max) = (
        i64::from(config.credit_window),
        i64::from(config.credit_window_max),
    );
    let (mut ctx, _) = bounded(
        "open",
        a.portal().open_context("t:produce", Value::Int(1_000_000)),
    )
    .await
    .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    const READ: i64 = 40;
    for i in 0..READ {
        assert_eq!(
            bounded("item", s.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    // Credit is re-granted in batches of a quarter of the window. The first re-grant (after
    // base/4 items) also grows the window to its most (the items are small ints); the next is
    // due a quarter of that later, past what was read.
    let first = base / 4;
    assert!(first <= READ && READ < first + max / 4);
    let granted = base + first + (max - base);
    let window = max;
    // Stop reading. The producer uses up its credit and waits...
    let mut last = -1;
    while last + 1 < granted {
        last = bounded("producer fills the window", sent_rx.recv())
            .await
            .unwrap();
    }
    // ...while unary calls on the same link answer promptly.
    for k in 0..20 {
        let v = bounded(
            "echo while stalled",
            a.portal().run("t:echo", Value::Int(k)),
        )
        .await;
        assert_eq!(v.unwrap(), Value::Int(k));
    }
    // And another stream on the same link flows.
    let (mut c2, _) = bounded(
        "open consume",
        a.portal().open_context("t:consume", Value::Null),
    )
    .await
    .unwrap();
    let s2 = c2.open_stream().await.unwrap();
    for i in 0..500 {
        bounded("send to consumer", s2.send(Value::Int(i)))
            .await
            .unwrap();
    }
    s2.close().await.unwrap();
    assert_eq!(
        bounded("sum", c2.result()).await.unwrap(),
        Value::Int(499 * 500 / 2)
    );
    // The stalled producer never got past its credit. The reader may also have re-granted the
    // items it read after the first re-grant, when it found its queue empty on the way (a
    // re-grant on running dry, at 16 items or more since the last one): the producer's credit is
    // then more than `granted`, but never more than the whole window plus the items read.
    while let Ok(j) = sent_rx.try_recv() {
        last = j;
    }
    let most = window + READ;
    assert!(
        (granted..=most).contains(&(last + 1)),
        "producer overran its credit: {} items sent, at most {most} granted",
        last + 1
    );
    assert!(s.buffered() <= window as usize);
    // Resume: the rest flows in order.
    for i in READ..2_000 {
        assert_eq!(
            bounded("item", s.recv()).await.unwrap(),
            Some(Value::Int(i))
        );
    }
    bounded("cancel", ctx.cancel()).await.unwrap();
}

async fn caller_to_callee_direction_is_flow_controlled(exec: Executor, t: Transport) {
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let mut config = LinkConfig::default();
    config.credit_window = 4;
    config.credit_window_max = 4;
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:consume", Value::Null))
        .await
        .unwrap();
    let s = ctx.open_stream().await.unwrap();
    let (tx, _rx) = s.split();
    let mut expected = 0;
    for i in 0..3_000i64 {
        bounded("send", tx.send(Value::Int(i))).await.unwrap();
        assert!(tx.credit() <= 4);
        expected += i;
    }
    tx.close().await.unwrap();
    assert_eq!(
        bounded("sum", ctx.result()).await.unwrap(),
        Value::Int(expected)
    );
}

/// The callee's receiving window grows as the caller's does: the caller's credit goes past the
/// base window (the first re-grant carries the growth), never past the most.
async fn caller_to_callee_window_grows_for_small_items(exec: Executor, t: Transport) {
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(sent_tx)).await;
    let config = LinkConfig::default();
    let (base, max) = (config.credit_window, config.credit_window_max);
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:consume", Value::Null))
        .await
        .unwrap();
    let (tx, _rx) = ctx.open_stream().await.unwrap().split();
    let mut expected = 0;
    let mut most = 0;
    for i in 0..3_000i64 {
        bounded("send", tx.send(Value::Int(i))).await.unwrap();
        most = most.max(tx.credit());
        assert!(tx.credit() <= max);
        expected += i;
    }
    assert!(most > base, "the credit never went past {base}: {most}");
    tx.close().await.unwrap();
    assert_eq!(
        bounded("sum", ctx.result()).await.unwrap(),
        Value::Int(expected)
    );
}

/// Several clones of one sending half wait for credit at the same time (one waits in the
/// chan's sender slot, the others on its event): every one of them gets through, nothing is lost.
async fn cloned_senders_waiting_for_credit_together_all_get_through(exec: Executor, t: Transport) {
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let mut config = LinkConfig::default();
    config.credit_window = 2;
    config.credit_window_max = 2;
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:consume", Value::Null))
        .await
        .unwrap();
    let (tx, _rx) = ctx.open_stream().await.unwrap().split();
    const SENDERS: i64 = 4;
    const EACH: i64 = 300;
    let tasks: Vec<_> = (0..SENDERS)
        .map(|k| {
            let tx = tx.clone();
            exec.spawn(async move {
                for i in 0..EACH {
                    tx.send(Value::Int(k * EACH + i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        bounded("a cloned sender finishes", task).await;
    }
    tx.close().await.unwrap();
    let n = SENDERS * EACH;
    assert_eq!(
        bounded("sum", ctx.result()).await.unwrap(),
        Value::Int(n * (n - 1) / 2)
    );
}

/// A sender holding credit for a long burst. Over a link whose messages leave through a writer
/// task (`unix`), it gives its executor a turn every few hundred items (512), so the writer and
/// the actor's other tasks run during the burst, and nothing is lost by it. Over a link that
/// hands messages to the transport at once (`mem`), it sends the burst without yielding.
async fn a_sender_with_credit_gives_its_executor_a_turn(exec: Executor, t: Transport) {
    burst_with_credit(exec, t, false).await;
}

/// The same through the `Sink` half: `poll_ready` gives the turn.
async fn a_sink_with_credit_gives_its_executor_a_turn(exec: Executor, t: Transport) {
    burst_with_credit(exec, t, true).await;
}

async fn burst_with_credit(exec: Executor, t: Transport, via_sink: bool) {
    const N: i64 = 1_300;
    let mut config = LinkConfig::default();
    config.credit_window = 2048;
    config.credit_window_max = 2048;
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:consume", Value::Null))
        .await
        .unwrap();
    let (mut tx, _rx) = ctx.open_stream().await.unwrap().split();
    // The first item waits for the callee's grant of the whole window.
    bounded("the first item", tx.send(Value::Int(0)))
        .await
        .unwrap();
    assert!(tx.credit() >= N as u32, "credit {}", tx.credit());

    // The burst and a task that notes how far the burst got whenever it runs, on one thread:
    // the task runs only while the burst yields.
    let local = async_executor::LocalExecutor::new();
    let sent = std::rc::Rc::new(std::cell::Cell::new(1i64));
    let turns = std::rc::Rc::new(std::cell::RefCell::new(Vec::<i64>::new()));
    let _watcher = {
        let (sent, turns) = (sent.clone(), turns.clone());
        local.spawn(async move {
            loop {
                let at = sent.get();
                {
                    let mut turns = turns.borrow_mut();
                    if at < N && turns.last() != Some(&at) {
                        turns.push(at);
                    }
                }
                futures_lite::future::yield_now().await;
            }
        })
    };
    let burst = async {
        for i in 1..N {
            if via_sink {
                use futures_sink::Sink;
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut tx).poll_ready(cx))
                    .await
                    .unwrap();
                std::pin::Pin::new(&mut tx)
                    .start_send(Value::Int(i))
                    .unwrap();
            } else {
                tx.send(Value::Int(i)).await.unwrap();
            }
            sent.set(i + 1);
        }
    };
    bounded("the burst", local.run(burst)).await;
    let turns = turns.take();
    match t {
        Transport::Unix | Transport::Shm => {
            assert!(turns.len() >= 2, "turns at {turns:?}");
            let mut last = 1;
            for &at in &turns {
                assert!(
                    at - last <= 512,
                    "no turn for {} items: turns at {turns:?}",
                    at - last
                );
                last = at;
            }
        }
        Transport::Mem => assert!(turns.is_empty(), "turns at {turns:?}"),
    }
    tx.close().await.unwrap();
    assert_eq!(
        bounded("sum", ctx.result()).await.unwrap(),
        Value::Int(N * (N - 1) / 2)
    );
}

both_transports!(
    a_sender_with_credit_gives_its_executor_a_turn,
    a_sink_with_credit_gives_its_executor_a_turn,
    window_fixed,
    window_default,
    window_small,
    window_without_a_byte_limit,
    window_follows_the_items_size,
    window_grows_again_after_a_large_item,
    a_stream_that_turns_large_keeps_to_the_byte_budget,
    stalled_stream_does_not_block_other_calls,
    caller_to_callee_direction_is_flow_controlled,
    caller_to_callee_window_grows_for_small_items,
    cloned_senders_waiting_for_credit_together_all_get_through,
);
