//! `CalleeContext::answer_now`: a unary call answered from another thread, before its future
//! ends. The caller gets exactly that answer, once; what the future ends with later is not
//! sent; a cancel that came first decides the answer as it would for the future.

mod common;

use std::sync::Arc;

use common::unary_start as start;
use common::*;
use harrow_portal::ipc::{ActorId, CallKind, Cid, ErrorKind, Msg, Value};
use harrow_portal::{CallError, CallFuture, Executor, FnRegistry, Invocation, Link, Resolver};

/// What the test tells the thread that answers a `t:later` call.
enum Answer {
    /// `answer_now` with this.
    Now(Result<Value, CallError>),
    /// `answer_now` twice: the first, then the second.
    Twice(Value, Value),
}

/// Serves `t:at_once` (answered from `start` itself, before the call is first polled; its
/// future ends once `release` delivers), `t:later` (observes its cancel; a thread of its own answers with what `answers`
/// delivers, after telling `cancel_seen` whether the call was cancelled by then; the future
/// ends only once `release` delivers, with that) and `t:echo`.
#[derive(Debug)]
struct LaterResolver {
    answers: async_channel::Receiver<Answer>,
    release: async_channel::Receiver<Value>,
    running: async_channel::Sender<()>,
    echo: FnRegistry,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer")
    }
}

impl Resolver for LaterResolver {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        if call.func.to_string() == "t:at_once" {
            // Answered before the call's first poll (before its ack was queued): the answer
            // must still follow the ack.
            call.ctx.answer_now(Ok(Value::Int(5)));
            let release = self.release.clone();
            return Ok(Box::pin(async move {
                Ok(release.recv().await.unwrap_or(Value::Null))
            }));
        }
        if call.func.to_string() != "t:later" {
            return self.echo.start(call);
        }
        assert_eq!(call.kind, CallKind::Unary);
        let ctx = call.ctx;
        ctx.observe_cancel();
        let answers = self.answers.clone();
        let release = self.release.clone();
        let running = self.running.clone();
        let answering = ctx.clone();
        std::thread::spawn(move || {
            let _ = running.send_blocking(());
            match answers.recv_blocking() {
                Ok(Answer::Now(r)) => answering.answer_now(r),
                Ok(Answer::Twice(a, b)) => {
                    answering.answer_now(Ok(a));
                    answering.answer_now(Ok(b));
                }
                Err(_) => {}
            }
        });
        Ok(Box::pin(async move {
            // Keeps the call's context alive until the future ends, as a real one does.
            let _ctx = ctx;
            Ok(release.recv().await.unwrap_or(Value::Null))
        }))
    }
}

struct Setup {
    callee: Link,
    caller: harrow_portal::ipc::Channel,
    answers: async_channel::Sender<Answer>,
    release: async_channel::Sender<Value>,
    running: async_channel::Receiver<()>,
}

async fn setup(exec: &Executor, t: Transport) -> Setup {
    let (answers, answers_rx) = async_channel::unbounded();
    let (release, release_rx) = async_channel::unbounded();
    let (running_tx, running) = async_channel::unbounded();
    let mut echo = FnRegistry::new();
    echo.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    let resolver = LaterResolver {
        answers: answers_rx,
        release: release_rx,
        running: running_tx,
        echo,
    };
    let (callee, caller) = callee_with_raw_caller(exec, t, Arc::new(resolver)).await;
    Setup {
        callee,
        caller,
        answers,
        release,
        running,
    }
}

async fn recv(s: &Setup) -> Msg {
    next_msg(&s.caller).await
}

/// After the call's answer: its future ends (with something else, which must not be sent),
/// then an echo call is answered, and nothing else came in between.
async fn nothing_more_for(s: &Setup, cid: u64) {
    s.release.send(Value::from("not sent")).await.unwrap();
    s.caller
        .send(start(cid + 2, "t:echo", Value::Int(9)))
        .await
        .unwrap();
    assert_eq!(recv(s).await, Msg::StartAck { cid: Cid(cid + 2) });
    assert_eq!(
        recv(s).await,
        Msg::Return {
            cid: Cid(cid + 2),
            value: Value::Int(9)
        }
    );
    assert_eq!(s.callee.served_calls(), 0);
}

async fn an_answer_from_another_thread_reaches_the_caller_before_the_future_ends(
    exec: Executor,
    t: Transport,
) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:later", Value::Null))
        .await
        .unwrap();
    bounded("the call runs", s.running.recv()).await.unwrap();
    s.answers
        .send(Answer::Now(Ok(Value::Int(42))))
        .await
        .unwrap();
    assert_eq!(recv(&s).await, Msg::StartAck { cid: Cid(2) });
    assert_eq!(
        recv(&s).await,
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(42)
        }
    );
    nothing_more_for(&s, 2).await;
}

async fn a_failure_answered_from_another_thread_is_the_callers_error(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:later", Value::Null))
        .await
        .unwrap();
    bounded("the call runs", s.running.recv()).await.unwrap();
    s.answers
        .send(Answer::Now(Err(CallError::raised("ValueError", "no"))))
        .await
        .unwrap();
    assert_eq!(recv(&s).await, Msg::StartAck { cid: Cid(2) });
    match recv(&s).await {
        Msg::Error {
            cid: Some(Cid(2)),
            error,
        } => {
            assert_eq!(error.kind, ErrorKind::Raised);
            assert_eq!(error.type_name, "ValueError");
            assert_eq!(error.source.name, "b");
        }
        other => panic!("expected the call's error, got {other:?}"),
    }
    nothing_more_for(&s, 2).await;
}

async fn a_second_answer_is_not_sent(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:later", Value::Null))
        .await
        .unwrap();
    bounded("the call runs", s.running.recv()).await.unwrap();
    s.answers
        .send(Answer::Twice(Value::Int(1), Value::Int(2)))
        .await
        .unwrap();
    assert_eq!(recv(&s).await, Msg::StartAck { cid: Cid(2) });
    assert_eq!(
        recv(&s).await,
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(1)
        }
    );
    nothing_more_for(&s, 2).await;
}

async fn a_cancelled_answer_after_a_cancel_names_the_canceller(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:later", Value::Null))
        .await
        .unwrap();
    bounded("the call runs", s.running.recv()).await.unwrap();
    let canceller = ActorId::new("the-canceller");
    s.callee.cancel_calls(&canceller);
    // The call observes its cancel, so it is not answered until it ends: it ends here,
    // cancelled, from its own thread.
    s.answers
        .send(Answer::Now(Err(CallError::new(
            ErrorKind::Cancelled,
            "Cancelled",
            "cancelled",
        ))))
        .await
        .unwrap();
    assert_eq!(recv(&s).await, Msg::StartAck { cid: Cid(2) });
    match recv(&s).await {
        Msg::Error {
            cid: Some(Cid(2)),
            error,
        } => {
            assert!(error.is_cancelled(), "{error}");
            assert_eq!(error.canceller.as_ref(), Some(&canceller), "{error}");
        }
        other => panic!("expected the cancelled answer, got {other:?}"),
    }
    nothing_more_for(&s, 2).await;
}

async fn an_answer_before_the_first_poll_still_follows_the_ack(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:at_once", Value::Null))
        .await
        .unwrap();
    assert_eq!(recv(&s).await, Msg::StartAck { cid: Cid(2) });
    assert_eq!(
        recv(&s).await,
        Msg::Return {
            cid: Cid(2),
            value: Value::Int(5)
        }
    );
    nothing_more_for(&s, 2).await;
}

both_transports!(
    an_answer_before_the_first_poll_still_follows_the_ack,
    an_answer_from_another_thread_reaches_the_caller_before_the_future_ends,
    a_failure_answered_from_another_thread_is_the_callers_error,
    a_second_answer_is_not_sent,
    a_cancelled_answer_after_a_cancel_names_the_canceller,
);
