//! A served call's `StartAck` travels with the call's next message instead of costing the
//! caller a wake-up of its own; it still precedes everything else of the call, and it is never
//! lost: not when the answer comes from a task later, not when the link closes first.

mod common;

use common::unary_start as start;
use common::*;
use harrow_portal::ipc::{Cid, Msg, Value};
use harrow_portal::{FnRegistry, Link};

/// A callee `b` serving `t:wait` (says "entered" on `entered`, then answers once `release`
/// delivers) and `t:echo`, linked to a raw caller whose end is returned.
async fn wait_and_echo(
    exec: &harrow_portal::Executor,
    t: Transport,
) -> (
    Link,
    harrow_portal::ipc::Channel,
    async_channel::Receiver<()>,
    async_channel::Sender<Value>,
) {
    let (entered_tx, entered) = async_channel::unbounded::<()>();
    let (release, release_rx) = async_channel::unbounded::<Value>();
    let mut reg = FnRegistry::new();
    reg.unary("t:wait", move |_| {
        let entered_tx = entered_tx.clone();
        let release_rx = release_rx.clone();
        async move {
            let _ = entered_tx.send(()).await;
            Ok(release_rx.recv().await.unwrap_or(Value::Null))
        }
    })
    .unwrap();
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    let (b, ca) = common::callee_with_raw_caller(exec, t, std::sync::Arc::new(reg)).await;
    (b, ca, entered, release)
}

async fn a_call_answered_later_sends_its_ack_then_its_answer(
    exec: harrow_portal::Executor,
    t: Transport,
) {
    let (_b, ca, entered, release) = wait_and_echo(&exec, t).await;
    ca.send(start(2, "t:wait", Value::Null)).await.unwrap();
    bounded("the call runs", entered.recv()).await.unwrap();
    // Another call, answered at once, while the first is still running: its messages come
    // after the first call's ack.
    ca.send(start(4, "t:echo", Value::Int(4))).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(next_msg(&ca).await);
    }
    assert_eq!(
        got,
        [
            Msg::StartAck { cid: Cid(2) },
            Msg::StartAck { cid: Cid(4) },
            Msg::Return {
                cid: Cid(4),
                value: Value::Int(4)
            },
        ]
    );
    release.send(Value::Int(2)).await.unwrap();
    assert_eq!(
        bounded("the answer", ca.recv()).await.unwrap(),
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(2)
        }
    );
}

async fn a_call_alone_answered_later_has_its_ack_before_its_answer(
    exec: harrow_portal::Executor,
    t: Transport,
) {
    let (_b, ca, entered, release) = wait_and_echo(&exec, t).await;
    ca.send(start(2, "t:wait", Value::Null)).await.unwrap();
    bounded("the call runs", entered.recv()).await.unwrap();
    release.send(Value::from("done")).await.unwrap();
    assert_eq!(
        bounded("the ack", ca.recv()).await.unwrap(),
        Msg::StartAck { cid: Cid(2) }
    );
    assert_eq!(
        bounded("the answer", ca.recv()).await.unwrap(),
        Msg::Return {
            cid: Cid(2),
            value: Value::from("done")
        }
    );
}

async fn a_held_ack_leaves_when_the_link_closes(exec: harrow_portal::Executor, t: Transport) {
    let (b, ca, entered, _release) = wait_and_echo(&exec, t).await;
    ca.send(start(2, "t:wait", Value::Null)).await.unwrap();
    bounded("the call runs", entered.recv()).await.unwrap();
    b.close();
    assert_eq!(
        bounded("the ack", ca.recv()).await.unwrap(),
        Msg::StartAck { cid: Cid(2) }
    );
    // Then whatever the close sends (the call's cancellation, if it got out), then the end.
    loop {
        match bounded("the end", ca.recv()).await {
            Ok(Msg::Error { cid: Some(cid), .. }) => assert_eq!(cid, Cid(2)),
            Ok(other) => panic!("unexpected after the ack: {other:?}"),
            Err(e) => {
                assert!(e.is_closed(), "{e:?}");
                break;
            }
        }
    }
}

async fn a_call_id_in_use_is_refused_and_the_first_call_goes_on(
    exec: harrow_portal::Executor,
    t: Transport,
) {
    let (_b, ca, entered, release) = wait_and_echo(&exec, t).await;
    ca.send(start(2, "t:wait", Value::Null)).await.unwrap();
    bounded("the call runs", entered.recv()).await.unwrap();
    // The same id again while the first call runs: refused, with no effect on the first.
    ca.send(start(2, "t:echo", Value::Int(7))).await.unwrap();
    assert_eq!(
        bounded("the ack", ca.recv()).await.unwrap(),
        Msg::StartAck { cid: Cid(2) }
    );
    match bounded("the refusal", ca.recv()).await.unwrap() {
        Msg::Error {
            cid: Some(cid),
            error,
        } => {
            assert_eq!(cid, Cid(2));
            assert_eq!(
                error.kind,
                harrow_portal::ipc::ErrorKind::Protocol,
                "{error:?}"
            );
            assert!(error.message.contains("already in use"), "{error:?}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    release.send(Value::Int(2)).await.unwrap();
    assert_eq!(
        bounded("the first call's answer", ca.recv()).await.unwrap(),
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(2)
        }
    );
    // The id is free again once its call ended.
    ca.send(start(2, "t:echo", Value::Int(9))).await.unwrap();
    assert_eq!(
        bounded("the reused id's ack", ca.recv()).await.unwrap(),
        Msg::StartAck { cid: Cid(2) }
    );
    assert_eq!(
        bounded("the reused id's answer", ca.recv()).await.unwrap(),
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(9)
        }
    );
}

both_transports!(
    a_call_answered_later_sends_its_ack_then_its_answer,
    a_call_alone_answered_later_has_its_ack_before_its_answer,
    a_held_ack_leaves_when_the_link_closes,
    a_call_id_in_use_is_refused_and_the_first_call_goes_on,
);
