//! A peer that sends calls and does not read their answers: the callee holds its later calls
//! back once the answers queued for it pass `LinkConfig::max_backlog`, starts them once the peer
//! reads, answers a held call that is cancelled without running it, refuses the held calls on
//! `CancelActor` before its ack, and ends the link when the peer neither reads nor stops
//! calling. Over the byte transports (unix, shared memory), whose links have a writer's queue.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_lite::future;
use harrow_portal::ipc::{ActorId, Channel, Msg, Value};
use harrow_portal::{Executor, FnRegistry, Link, LinkConfig, LinkEnd};

/// The size of each answer of `m:big`.
const ANSWER: usize = 256 << 10;
/// The backlog bound of these tests' callees.
const MAX_BACKLOG: usize = 1 << 20;

/// `m:big` answers `ANSWER` bytes and records the int it was called with in `ran`.
fn big_registry() -> (FnRegistry, Arc<std::sync::Mutex<Vec<i64>>>) {
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut reg = FnRegistry::new();
    let r = ran.clone();
    reg.unary("m:big", move |v| {
        let r = r.clone();
        async move {
            if let Some(i) = v.as_list().and_then(|l| l.first()).and_then(Value::as_i64) {
                r.lock().unwrap().push(i);
            }
            Ok(Value::Bytes(vec![7; ANSWER]))
        }
    })
    .unwrap();
    (reg, ran)
}

fn config(stall: Option<Duration>) -> LinkConfig {
    let mut config = LinkConfig::default();
    config.max_backlog = MAX_BACKLOG;
    config.backlog_stall_timeout = stall;
    config
}

/// A callee serving `reg` with `config`, and the raw channel of its caller "a".
async fn callee(
    exec: &Executor,
    t: Transport,
    reg: FnRegistry,
    config: LinkConfig,
) -> (Link, Channel) {
    let (mut ca, cb) = pair(t);
    let serve = Link::establish(cb, local("b"), Some(Arc::new(reg)), exec, config);
    let (b, _) = bounded(
        "hello exchange",
        future::zip(serve, raw_hello(&ca, &ActorId::new("a"))),
    )
    .await;
    // The answers are larger than the frames allowed before the handshake ends.
    ca.end_handshake();
    (b.expect("link b"), ca)
}

/// Call `i`'s `Start` (cid `2 i`, as the caller "a" allocates even ids), with `pad` bytes in
/// its arguments besides `i`.
fn start(i: i64, pad: usize) -> Msg {
    let args = Value::List(vec![Value::Int(i), Value::Bytes(vec![0; pad])]);
    unary_start(2 * i as u64, "m:big", args)
}

/// Waits (bounded) until `cond` holds, looking every 2 ms: the callee's state has no event of
/// its own for a test to wait on.
async fn until(what: &str, cond: impl Fn() -> bool) {
    bounded(what, async {
        while !cond() {
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// What the raw caller reads, by call id, until every one of `n` calls is answered.
async fn answers(ch: &Channel, n: usize) -> BTreeMap<u64, Msg> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        match next_msg(ch).await {
            Msg::StartAck { .. } | Msg::Heartbeat => {}
            m @ Msg::Return { cid, .. } | m @ Msg::Error { cid: Some(cid), .. } => {
                assert!(got.insert(cid.0, m).is_none(), "call {cid} answered twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

fn assert_big_return(m: &Msg) {
    let Msg::Return {
        value: Value::Bytes(b),
        ..
    } = m
    else {
        panic!("expected the big answer, got {m:?}")
    };
    assert_eq!(b.len(), ANSWER);
}

async fn calls_wait_while_answers_pile_up_and_start_once_read(exec: Executor, t: Transport) {
    let (reg, ran) = big_registry();
    let (link, ch) = callee(&exec, t, reg, config(None)).await;
    const N: i64 = 40;
    for i in 0..N {
        ch.send(start(i, 0)).await.expect("send");
    }
    until("calls held back", || link.held_calls() > 0).await;
    // Held once the answers queued passed the bound: at most one answer over it.
    let backlog = link.outgoing_backlog();
    assert!(backlog > MAX_BACKLOG, "held only past the bound: {backlog}");
    assert!(backlog <= MAX_BACKLOG + ANSWER + 4096, "{backlog}");
    let ran_then = ran.lock().unwrap().len();
    assert!(ran_then < N as usize, "{ran_then} ran of {N}");
    // The peer reads: every call runs and is answered, once, in order of its start.
    let got = answers(&ch, N as usize).await;
    assert_eq!(got.len(), N as usize);
    got.values().for_each(assert_big_return);
    assert_eq!(*ran.lock().unwrap(), (0..N).collect::<Vec<_>>());
    assert_eq!(link.held_calls(), 0);
    assert!(!link.is_closed());
}

async fn a_held_call_cancelled_never_runs(exec: Executor, t: Transport) {
    let (reg, ran) = big_registry();
    let (link, ch) = callee(&exec, t, reg, config(None)).await;
    const N: i64 = 30;
    for i in 0..N {
        ch.send(start(i, 0)).await.expect("send");
    }
    until("the last call held back", || link.held_calls() > 1).await;
    let last = 2 * (N as u64 - 1);
    ch.send(Msg::Cancel {
        cid: harrow_portal::ipc::Cid(last),
    })
    .await
    .expect("send");
    let got = answers(&ch, N as usize).await;
    let Msg::Error { error, .. } = &got[&last] else {
        panic!("the cancelled call: {:?}", got[&last])
    };
    assert!(error.is_cancelled(), "{error:?}");
    assert_eq!(
        error.canceller.as_ref(),
        Some(&link.peer().id),
        "the caller cancelled it"
    );
    for (cid, m) in &got {
        if *cid != last {
            assert_big_return(m);
        }
    }
    assert_eq!(*ran.lock().unwrap(), (0..N - 1).collect::<Vec<_>>());
    drop(link);
}

async fn cancel_actor_refuses_the_held_calls_before_its_ack(exec: Executor, t: Transport) {
    let (reg, ran) = big_registry();
    let (link, ch) = callee(&exec, t, reg, config(None)).await;
    const N: i64 = 30;
    for i in 0..N {
        ch.send(start(i, 0)).await.expect("send");
    }
    until("calls held back", || link.held_calls() > 0).await;
    let held = link.held_calls();
    ch.send(Msg::CancelActor {
        reason: "test".into(),
    })
    .await
    .expect("send");
    // Every call is answered before the ack: the ones that ran with their answer, the held
    // ones refused (they never ran).
    let mut got = BTreeMap::new();
    loop {
        match next_msg(&ch).await {
            Msg::StartAck { .. } | Msg::Heartbeat => {}
            m @ Msg::Return { cid, .. } | m @ Msg::Error { cid: Some(cid), .. } => {
                assert!(got.insert(cid.0, m).is_none());
            }
            Msg::CancelAck { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), N as usize, "every call answered before the ack");
    let ran = ran.lock().unwrap().clone();
    let refused: Vec<i64> = got
        .iter()
        .filter_map(|(cid, m)| match m {
            Msg::Error { error, .. } => {
                assert!(error.is_refused(), "{error:?}");
                Some((cid / 2) as i64)
            }
            m => {
                assert_big_return(m);
                None
            }
        })
        .collect();
    assert!(
        refused.len() >= held,
        "{} refused, {held} were held",
        refused.len()
    );
    assert_eq!(ran.len() + refused.len(), N as usize);
    assert!(
        refused.iter().all(|i| !ran.contains(i)),
        "a refused call ran"
    );
}

async fn a_peer_that_neither_reads_nor_stops_calling_loses_the_link(exec: Executor, t: Transport) {
    let (reg, ran) = big_registry();
    let (link, ch) = callee(&exec, t, reg, config(Some(Duration::from_millis(300)))).await;
    let ch = Arc::new(ch);
    // Calls whose own arguments weigh 16 KiB each: the held ones reach the bound after about 64.
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (ch, sent) = (ch.clone(), sent.clone());
        exec.spawn(async move {
            for i in 0..1000 {
                if ch.send(start(i, 16 << 10)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let end = bounded("the link ends", link.closed()).await;
    let LinkEnd::Broken(why) = &end else {
        panic!("{end:?}")
    };
    assert!(why.contains("backlog_stall_timeout"), "{why}");
    assert!(why.contains('a'), "names the peer: {why}");
    // What ran is what the bound let through (about four answers over it), not what was sent.
    let ran = ran.lock().unwrap().len();
    assert!(ran <= 16, "{ran} calls ran");
    bounded("the sender stops", sender).await;
    assert!(
        sent.load(Ordering::Relaxed) < 1000,
        "the peer's sends waited"
    );
}

/// Two links that call each other with large answers, both at once, and both over a small
/// bound: each holds the other's calls at times, neither stops reading the other's answers,
/// and every call completes.
async fn two_peers_holding_each_others_calls_both_finish(exec: Executor, t: Transport) {
    let mut cfg = config(Some(Duration::from_secs(30)));
    cfg.max_backlog = 256 << 10;
    let (ra, _) = big_registry();
    let (rb, _) = big_registry();
    let (a, b) = link_pair(&exec, t, Some(Arc::new(ra)), Some(Arc::new(rb)), cfg).await;
    let calls = |p: harrow_portal::Portal| {
        (0..50)
            .map(|i| {
                let p = p.clone();
                exec.spawn(async move { p.run("m:big", Value::List(vec![Value::Int(i)])).await })
            })
            .collect::<Vec<_>>()
    };
    let all: Vec<_> = calls(a.portal())
        .into_iter()
        .chain(calls(b.portal()))
        .collect();
    for task in all {
        let v = bounded("a call", task).await.expect("answered");
        assert!(matches!(&v, Value::Bytes(b) if b.len() == ANSWER), "{v:?}");
    }
    assert!(!a.is_closed() && !b.is_closed());
}

macro_rules! byte_transports {
    ($($name:ident),* $(,)?) => {
        mod unix {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_test($crate::common::Transport::Unix, super::$name);
                }
            )*
        }
        #[cfg(target_os = "linux")]
        mod shm {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_test($crate::common::Transport::Shm, super::$name);
                }
            )*
        }
    };
}

byte_transports!(
    calls_wait_while_answers_pile_up_and_start_once_read,
    a_held_call_cancelled_never_runs,
    cancel_actor_refuses_the_held_calls_before_its_ack,
    a_peer_that_neither_reads_nor_stops_calling_loses_the_link,
    two_peers_holding_each_others_calls_both_finish,
);
