//! A link over a unix socket on a thread in `harrow_ipc::park::block_on` writes the messages of
//! a turn itself, at the end of the turn, and hands the writer what cannot be written at once.
//! These tests drive that path against a raw peer that controls when it reads: order is kept
//! across direct writes, queued ones and a frame written in parts, and a peer that closes in the
//! middle of a write ends the link instead of hanging it.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{BOUND, bounded, local};
use futures_lite::future;
use harrow_portal::ipc::{self, ActorId, Channel, Msg, PROTOCOL_VERSION, Value};
use harrow_portal::{Executor, Link, LinkConfig};

/// The raw peer's side of the `Hello` exchange.
async fn raw_hello(peer: &mut Channel) {
    peer.send(Msg::Hello {
        actor: ActorId::new("raw"),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        backend: "test".into(),
    })
    .await
    .expect("send Hello");
    match bounded("the link's Hello", peer.recv()).await {
        Ok(Msg::Hello { .. }) => {}
        other => panic!("expected Hello, got {other:?}"),
    }
    peer.end_handshake();
}

/// Runs `body` on a link established over `chan`, on a thread of its own in
/// `park::block_on` (as a process actor's link runs).
fn link_thread<F, Fut, T>(chan: Channel, config: LinkConfig, body: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce(Executor, Link) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let exec: Executor = Arc::new(async_executor::Executor::new());
        ipc::park::block_on(exec.run(async {
            let link = bounded(
                "link establish",
                Link::establish(chan, local("a"), None, &exec, config),
            )
            .await
            .expect("establish");
            body(exec.clone(), link).await
        }))
    })
}

fn quiet_config() -> LinkConfig {
    LinkConfig::default().heartbeat(None, None)
}

/// The argument of call `i`: some calls carry a megabyte (more than a socket buffer takes at
/// once, so it is written in parts), the others a few bytes; each is recognisable.
fn arg(i: usize) -> Value {
    let len = if i % 7 == 3 { 1 << 20 } else { 16 + i };
    Value::Bytes((0..len).map(|k| (k.wrapping_mul(31) ^ i) as u8).collect())
}

#[test]
fn order_is_kept_across_direct_queued_and_partial_writes() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 5;
    const N: usize = ROUNDS * PER_ROUND;
    let (a, mut b) = ipc::unix::pair().expect("socketpair");
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let a_thread = link_thread(a, quiet_config(), move |exec, link| async move {
        let portal = link.portal();
        let mut calls = Vec::new();
        // Calls started over several turns while the peer reads nothing: the first turn's go
        // out directly (until the socket is full), the later ones find the writer busy.
        for round in 0..ROUNDS {
            for k in 0..PER_ROUND {
                let i = round * PER_ROUND + k;
                let portal = portal.clone();
                calls.push((
                    i,
                    exec.spawn(async move { portal.run("t:f", arg(i)).await }),
                ));
            }
            // A later turn (the timer only separates the turns; nothing depends on its length).
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        sent_tx.send(()).expect("main thread");
        let mut results = Vec::new();
        for (i, call) in calls {
            results.push((i, bounded("a call's answer", call).await));
        }
        drop(link);
        results
    });
    future::block_on(async {
        raw_hello(&mut b).await;
        // The peer resumes reading only once every call was started.
        sent_rx.recv_timeout(BOUND).expect("calls started");
        let mut seen = Vec::new();
        while seen.len() < N {
            match bounded("the next Start", b.recv()).await.expect("recv") {
                Msg::Start { cid, args, .. } => seen.push((cid, args)),
                Msg::Heartbeat => {}
                other => panic!("unexpected {}", other.kind_name()),
            }
        }
        // Cids are allocated in the order the Starts were queued: they must arrive in it.
        for w in seen.windows(2) {
            assert!(
                w[0].0.0 < w[1].0.0,
                "Start {} arrived after {}",
                w[1].0,
                w[0].0
            );
        }
        // Answer each with its own argument's length.
        for (cid, args) in &seen {
            let Value::Bytes(bytes) = args else {
                panic!("args of {cid} are not bytes");
            };
            b.send(Msg::StartAck { cid: *cid }).await.expect("ack");
            b.send(Msg::Return {
                cid: *cid,
                value: Value::Int(bytes.len() as i64),
            })
            .await
            .expect("return");
        }
    });
    let results = a_thread.join().expect("link thread");
    assert_eq!(results.len(), N);
    for (i, result) in results {
        let expected = arg(i);
        let Value::Bytes(expected) = &expected else {
            unreachable!()
        };
        assert_eq!(
            result.expect("call"),
            Value::Int(expected.len() as i64),
            "call {i}"
        );
    }
}

#[test]
fn arguments_written_in_parts_arrive_intact() {
    let (a, mut b) = ipc::unix::pair().expect("socketpair");
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let a_thread = link_thread(a, quiet_config(), move |exec, link| async move {
        let portal = link.portal();
        let big = Value::Bytes((0..(4usize << 20)).map(|k| (k % 251) as u8).collect());
        let call = exec.spawn(async move { portal.run("t:f", big).await });
        async_io::Timer::after(Duration::from_millis(1)).await;
        sent_tx.send(()).expect("main thread");
        let result = bounded("the answer", call).await;
        drop(link);
        result
    });
    future::block_on(async {
        raw_hello(&mut b).await;
        sent_rx.recv_timeout(BOUND).expect("call started");
        let (cid, args) = loop {
            match bounded("the Start", b.recv()).await.expect("recv") {
                Msg::Start { cid, args, .. } => break (cid, args),
                Msg::Heartbeat => {}
                other => panic!("unexpected {}", other.kind_name()),
            }
        };
        let Value::Bytes(bytes) = &args else {
            panic!("args are not bytes");
        };
        assert_eq!(bytes.len(), 4 << 20);
        assert!(bytes.iter().enumerate().all(|(k, &x)| x == (k % 251) as u8));
        b.send(Msg::StartAck { cid }).await.expect("ack");
        b.send(Msg::Return {
            cid,
            value: Value::Str("ok".into()),
        })
        .await
        .expect("return");
    });
    let result = a_thread.join().expect("link thread");
    assert_eq!(result.expect("call"), Value::Str("ok".into()));
}

#[test]
fn a_peer_that_closes_in_the_middle_of_a_write_ends_the_link() {
    let (a, mut b) = ipc::unix::pair().expect("socketpair");
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (closed_tx, closed_rx) = async_channel::bounded::<()>(1);
    let a_thread = link_thread(a, quiet_config(), move |exec, link| async move {
        let portal = link.portal();
        let big = Value::Bytes(vec![7; 4 << 20]);
        let call = exec.spawn(async move { portal.run("t:f", big).await });
        async_io::Timer::after(Duration::from_millis(1)).await;
        sent_tx.send(()).expect("main thread");
        let _ = bounded("the peer's close", closed_rx.recv()).await;
        let result = bounded("the call's failure", call).await;
        let end = bounded("the link's end", link.closed()).await;
        (result, end)
    });
    future::block_on(async {
        raw_hello(&mut b).await;
        sent_rx.recv_timeout(BOUND).expect("call started");
    });
    // Only part of the frame can be in the socket's buffer: the peer goes away with the rest
    // unwritten.
    drop(b);
    closed_tx.send_blocking(()).expect("link thread");
    let (result, end) = a_thread.join().expect("link thread");
    assert!(result.is_err(), "the call must fail: {result:?}");
    assert!(
        matches!(end, harrow_portal::LinkEnd::Broken(_)),
        "the link must end as broken: {end:?}"
    );
}

#[test]
fn calls_and_answers_over_a_parked_pair() {
    // Both ends on park threads: every message of a round trip is written at a turn's end.
    let (a, b) = ipc::unix::pair().expect("socketpair");
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let b_thread = std::thread::spawn(move || {
        let exec: Executor = Arc::new(async_executor::Executor::new());
        let mut reg = harrow_portal::FnRegistry::new();
        reg.unary("t:echo", |args| async move { Ok(args) })
            .expect("path");
        let resolver: Arc<dyn harrow_portal::Resolver> = Arc::new(reg);
        ipc::park::block_on(exec.run(async {
            let link = Link::establish(b, local("b"), Some(resolver), &exec, quiet_config())
                .await
                .expect("establish");
            let _ = bounded("stop", stop_rx.recv()).await;
            drop(link);
        }))
    });
    let a_thread = link_thread(a, quiet_config(), |_exec, link| async move {
        let portal = link.portal();
        for i in 0..200i64 {
            let v = bounded("echo", portal.run("t:echo", Value::Int(i))).await;
            assert_eq!(v.expect("echo"), Value::Int(i));
        }
        drop(link);
    });
    a_thread.join().expect("a");
    stop_tx.send_blocking(()).expect("b");
    b_thread.join().expect("b");
}
