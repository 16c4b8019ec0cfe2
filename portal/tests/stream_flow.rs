//! Flow control: a credit window per stream direction. A fast sender waits for credit, a slow
//! consumer loses nothing, the receiving buffer never exceeds the window, and another call on the
//! same channel answers while a stream is stalled (no head-of-line blocking).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use harrow_portal::ipc::Value;
use harrow_portal::{Executor, FnRegistry, LinkConfig};

/// `t:produce`: streams 0..n and reports each sent index on `sent`. `t:consume`: counts items
/// the caller streams in, returns their sum.
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
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    reg.context("t:consume", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        let mut sum = 0i64;
        let mut n = 0u64;
        while let Some(v) = s.recv().await? {
            sum += v.as_i64().unwrap_or(0);
            n += 1;
            if n % 97 == 0 {
                // A slow consumer, now and then.
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        }
        Ok(Value::Int(sum))
    })
    .unwrap();
    reg
}

async fn slow_consumer_bounded_buffer_nothing_lost(exec: Executor, t: Transport, window: u32) {
    let (sent_tx, sent_rx) = async_channel::unbounded();
    let mut config = LinkConfig::default();
    config.credit_window = window;
    let (a, _b) = link_pair(&exec, t, None, Some(Arc::new(registry(sent_tx))), config).await;
    const N: i64 = 10_000;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:produce", Value::Int(N)))
        .await
        .unwrap();
    let mut s = ctx.open_stream().await.unwrap();
    let mut sent_seen = 0i64;
    for i in 0..N {
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
        Value::Int(N)
    );
}

async fn window_default(exec: Executor, t: Transport) {
    slow_consumer_bounded_buffer_nothing_lost(exec, t, 64).await;
}

async fn window_small(exec: Executor, t: Transport) {
    slow_consumer_bounded_buffer_nothing_lost(exec, t, 3).await;
}

async fn stalled_stream_does_not_block_other_calls(exec: Executor, t: Transport) {
    let (sent_tx, sent_rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(sent_tx)).await;
    let window = LinkConfig::default().credit_window as i64;
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
    // Credit is re-granted in batches of window/2 consumed items.
    let granted = window + READ / (window / 2) * (window / 2);
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
    // The stalled producer never got past its credit.
    while let Ok(j) = sent_rx.try_recv() {
        last = j;
    }
    assert_eq!(last + 1, granted, "producer overran its credit");
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

/// Several clones of one sending half wait for credit at the same time (one waits in the
/// chan's sender slot, the others on its event): every one of them gets through, nothing is lost.
async fn cloned_senders_waiting_for_credit_together_all_get_through(exec: Executor, t: Transport) {
    let (sent_tx, _sent_rx) = async_channel::unbounded();
    let mut config = LinkConfig::default();
    config.credit_window = 2;
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

both_transports!(
    window_default,
    window_small,
    stalled_stream_does_not_block_other_calls,
    caller_to_callee_direction_is_flow_controlled,
    cloned_senders_waiting_for_credit_together_all_get_through,
);
