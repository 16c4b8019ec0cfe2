//! `CalleeContext::ends_with_answer_now`: a served call whose future only waits for an answer
//! sent with `answer_now` is kept without a task of its own. Answered that way, the future is
//! dropped without another poll; anything else that wakes it (its cancel, an answer through
//! the future, a wake during its first poll) runs it to its end as any served call; the link's
//! end drops it.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;

use common::unary_start as start;
use common::*;
use harrow_portal::ipc::{ActorId, CallKind, Cid, ErrorKind, Msg, Value};
use harrow_portal::{
    CallError, CallFuture, CalleeContext, Executor, FnRegistry, Invocation, Link, Resolver,
};

/// Serves, each call saying `ends_with_answer_now` and counting its future's polls in `polls`:
///
/// - `t:answered`: a thread of its own answers with `answer_now` once `answers` delivers; the
///   future waits for `release` (a value it returns) or its cancel (then it fails cancelled);
/// - `t:aware`: observes its cancel but does not wait for it: it waits for `release` only,
///   and looks at `is_cancelled` at each poll (it fails cancelled once it sees it); it says
///   it runs at the end of its first poll, once it is pending (so a cancel after that is one
///   its first poll did not see);
/// - `t:aware_self_cancelled`: `t:aware`, whose first poll, once pending, cancels the link's
///   served calls itself (through `link`), by "the-canceller", before it returns;
/// - `t:self_woken`: wakes its own waker in its first poll and returns the argument at its
///   second;
/// - `t:echo` (not parked).
#[derive(Debug)]
struct ParkResolver {
    answers: async_channel::Receiver<Value>,
    release: async_channel::Receiver<Value>,
    running: async_channel::Sender<()>,
    dropped: async_channel::Sender<&'static str>,
    link: Arc<OnceLock<(Weak<Link>, ActorId)>>,
    polls: Arc<AtomicUsize>,
    echo: FnRegistry,
}

/// `ctx`'s call ended cancelled: the error a cancelled function returns.
fn cancelled() -> CallError {
    CallError::new(ErrorKind::Cancelled, "Cancelled", "cancelled")
}

impl Resolver for ParkResolver {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        let func = call.func.to_string();
        if func == "t:echo" {
            return self.echo.start(call);
        }
        assert_eq!(call.kind, CallKind::Unary);
        let ctx: CalleeContext = call.ctx;
        ctx.observe_cancel();
        ctx.ends_with_answer_now();
        let polls = self.polls.clone();
        let signal = DropProbe(self.dropped.clone(), "dropped");
        match func.as_str() {
            "t:answered" => {
                let answers = self.answers.clone();
                let running = self.running.clone();
                let answering = ctx.clone();
                std::thread::spawn(move || {
                    let _ = running.send_blocking(());
                    if let Ok(v) = answers.recv_blocking() {
                        answering.answer_now(Ok(v));
                    }
                });
                let release = self.release.clone();
                Ok(Box::pin(async move {
                    let _signal = signal;
                    let counted = std::future::poll_fn(|_| {
                        polls.fetch_add(1, Ordering::SeqCst);
                        Poll::Ready(())
                    });
                    counted.await;
                    use futures_lite::FutureExt;
                    let released = async { Ok(release.recv().await.unwrap_or(Value::Null)) };
                    let cancel = async {
                        ctx.cancelled().await;
                        Err(cancelled())
                    };
                    released.or(cancel).await
                }))
            }
            "t:aware" | "t:aware_self_cancelled" => {
                let running = self.running.clone();
                let release = self.release.clone();
                let link = (func == "t:aware_self_cancelled").then(|| self.link.clone());
                Ok(Box::pin(async move {
                    let _signal = signal;
                    let mut recv = std::pin::pin!(release.recv());
                    let mut first = true;
                    std::future::poll_fn(|cx| {
                        polls.fetch_add(1, Ordering::SeqCst);
                        if ctx.is_cancelled() {
                            return Poll::Ready(Err(cancelled()));
                        }
                        let polled = recv.as_mut().poll(cx).map(|v| Ok(v.unwrap_or(Value::Null)));
                        if polled.is_pending() && std::mem::take(&mut first) {
                            // Still inside the first poll: the link has not parked it yet.
                            if let Some((link, canceller)) = link.as_ref().and_then(|l| l.get())
                                && let Some(link) = link.upgrade()
                            {
                                link.cancel_calls(canceller);
                            }
                            let _ = running.send_blocking(());
                        }
                        polled
                    })
                    .await
                }))
            }
            "t:self_woken" => {
                let args = call.args;
                Ok(Box::pin(async move {
                    let _signal = signal;
                    let mut first = true;
                    std::future::poll_fn(|cx| {
                        polls.fetch_add(1, Ordering::SeqCst);
                        if std::mem::take(&mut first) {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(args.clone()))
                    })
                    .await
                }))
            }
            other => Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{other}: not served here"),
            )),
        }
    }
}

struct Setup {
    callee: Arc<Link>,
    caller: harrow_portal::ipc::Channel,
    answers: async_channel::Sender<Value>,
    release: async_channel::Sender<Value>,
    running: async_channel::Receiver<()>,
    dropped: async_channel::Receiver<&'static str>,
    polls: Arc<AtomicUsize>,
    /// Who `t:aware_self_cancelled` cancels its call as.
    self_canceller: ActorId,
}

async fn setup(exec: &Executor, t: Transport) -> Setup {
    let (answers, answers_rx) = async_channel::unbounded();
    let (release, release_rx) = async_channel::unbounded();
    let (running_tx, running) = async_channel::unbounded();
    let (dropped_tx, dropped) = async_channel::unbounded();
    let polls = Arc::new(AtomicUsize::new(0));
    let link = Arc::new(OnceLock::new());
    let mut echo = FnRegistry::new();
    echo.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    let resolver = ParkResolver {
        answers: answers_rx,
        release: release_rx,
        running: running_tx,
        dropped: dropped_tx,
        link: link.clone(),
        polls: polls.clone(),
        echo,
    };
    let (callee, caller) = callee_with_raw_caller(exec, t, Arc::new(resolver)).await;
    // Weak: the link holds the resolver.
    let callee = Arc::new(callee);
    let self_canceller = ActorId::new("the-canceller");
    let _ = link.set((Arc::downgrade(&callee), self_canceller.clone()));
    Setup {
        callee,
        caller,
        answers,
        release,
        running,
        dropped,
        polls,
        self_canceller,
    }
}

async fn recv(s: &Setup) -> Msg {
    next_msg(&s.caller).await
}

/// Starts call `cid` of `func` and waits until its function runs.
async fn start_running(s: &Setup, cid: u64, func: &str) {
    s.caller.send(start(cid, func, Value::Null)).await.unwrap();
    bounded("the call runs", s.running.recv()).await.unwrap();
}

/// Expects call `cid`'s ack, then its `Return` of `value`.
async fn expect_return(s: &Setup, cid: u64, value: Value) {
    assert_eq!(recv(s).await, Msg::StartAck { cid: Cid(cid) });
    assert_eq!(
        recv(s).await,
        Msg::Return {
            cid: Cid(cid),
            value
        }
    );
}

/// The link still serves: an echo call is answered, and nothing else came before it.
async fn still_serving(s: &Setup, cid: u64) {
    s.caller
        .send(start(cid, "t:echo", Value::Int(9)))
        .await
        .unwrap();
    expect_return(s, cid, Value::Int(9)).await;
    assert_eq!(s.callee.served_calls(), 0);
}

/// Expects call `cid`'s cancelled answer, naming `canceller`.
async fn expect_cancelled(s: &Setup, cid: u64, canceller: &ActorId) {
    assert_eq!(recv(s).await, Msg::StartAck { cid: Cid(cid) });
    match recv(s).await {
        Msg::Error {
            cid: Some(c),
            error,
        } if c == Cid(cid) => {
            assert!(error.is_cancelled(), "{error}");
            assert_eq!(error.canceller.as_ref(), Some(canceller), "{error}");
        }
        other => panic!("expected the cancelled answer, got {other:?}"),
    }
}

async fn answered_now_the_future_is_dropped_without_another_poll(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    start_running(&s, 2, "t:answered").await;
    s.answers.send(Value::Int(42)).await.unwrap();
    expect_return(&s, 2, Value::Int(42)).await;
    expect_probe(&s.dropped, "dropped").await;
    // At most its first poll, in the link's reader (none when the answer came before it: the
    // call was over), and no other: it was never released.
    assert!(s.polls.load(Ordering::SeqCst) <= 1);
    still_serving(&s, 4).await;
}

async fn a_cancel_runs_the_future_it_woke_to_its_end(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    start_running(&s, 2, "t:answered").await;
    let canceller = ActorId::new("the-canceller");
    s.callee.cancel_calls(&canceller);
    expect_cancelled(&s, 2, &canceller).await;
    expect_probe(&s.dropped, "dropped").await;
    // An answer now comes too late: the call is over (the answering thread ends with it).
    s.answers.send(Value::Int(1)).await.unwrap();
    still_serving(&s, 4).await;
}

async fn a_cancel_reaches_a_parked_future_that_does_not_wait_for_it(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    start_running(&s, 2, "t:aware").await;
    let canceller = ActorId::new("the-canceller");
    s.callee.cancel_calls(&canceller);
    // Nothing the future waits for wakes it: the cancel itself must move it into a task,
    // whose poll sees the cancel (long before the cleanup bound would answer for it).
    expect_cancelled(&s, 2, &canceller).await;
    expect_probe(&s.dropped, "dropped").await;
    assert!(s.polls.load(Ordering::SeqCst) >= 2);
    still_serving(&s, 4).await;
}

async fn a_cancel_during_the_first_poll_reaches_the_future_once_parked(
    exec: Executor,
    t: Transport,
) {
    let s = setup(&exec, t).await;
    // Its first poll found no cancel, is pending, and then cancels the call before it returns.
    start_running(&s, 2, "t:aware_self_cancelled").await;
    let canceller = s.self_canceller.clone();
    // The cancel's wake came before the future was parked: it is acted on once it is, and a
    // task polls the future, which sees its cancel (the cleanup bound is far off).
    expect_cancelled(&s, 2, &canceller).await;
    expect_probe(&s.dropped, "dropped").await;
    assert!(s.polls.load(Ordering::SeqCst) >= 2);
    still_serving(&s, 4).await;
}

async fn a_wake_in_the_first_poll_is_not_lost(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    s.caller
        .send(start(2, "t:self_woken", Value::Int(7)))
        .await
        .unwrap();
    expect_return(&s, 2, Value::Int(7)).await;
    assert_eq!(s.polls.load(Ordering::SeqCst), 2);
    expect_probe(&s.dropped, "dropped").await;
    still_serving(&s, 4).await;
}

async fn an_answer_through_the_future_still_reaches_the_caller(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    start_running(&s, 2, "t:answered").await;
    s.release.send(Value::Int(11)).await.unwrap();
    expect_return(&s, 2, Value::Int(11)).await;
    expect_probe(&s.dropped, "dropped").await;
    // A late answer from the other thread is not sent.
    s.answers.send(Value::Int(1)).await.unwrap();
    still_serving(&s, 4).await;
}

async fn the_links_end_drops_a_parked_future(exec: Executor, t: Transport) {
    let s = setup(&exec, t).await;
    start_running(&s, 2, "t:answered").await;
    assert_eq!(s.callee.served_calls(), 1);
    s.callee.close();
    expect_probe(&s.dropped, "dropped").await;
    assert_eq!(s.callee.served_calls(), 0);
    // The answering thread's answer, after the end, goes nowhere.
    s.answers.send(Value::Int(1)).await.unwrap();
}

both_transports!(
    answered_now_the_future_is_dropped_without_another_poll,
    a_cancel_runs_the_future_it_woke_to_its_end,
    a_cancel_reaches_a_parked_future_that_does_not_wait_for_it,
    a_cancel_during_the_first_poll_reaches_the_future_once_parked,
    a_wake_in_the_first_poll_is_not_lost,
    an_answer_through_the_future_still_reaches_the_caller,
    the_links_end_drops_a_parked_future,
);
