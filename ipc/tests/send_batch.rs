//! `send_batch`: order, partial failure hands back exactly the failing message.

use std::collections::VecDeque;
use std::time::Duration;

use harrow_ipc::codec::CodecConfig;
use harrow_ipc::{Channel, Cid, Msg, SendError, SentNow, Value, mem, unix};

fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::block_on(futures_lite::future::or(fut, async {
        async_io::Timer::after(Duration::from_secs(30)).await;
        panic!("timed out");
    }))
}

fn item(i: u64) -> Msg {
    Msg::Yield {
        cid: Cid(i),
        value: Value::Int(i as i64),
    }
}

fn batch_in_order(a: Channel, b: Channel) {
    bounded(async {
        let (tx, _) = a.split();
        let mut msgs: VecDeque<Msg> = (0..1000).map(item).collect();
        tx.send_batch(&mut msgs).await.expect("all sent");
        assert!(msgs.is_empty());
        for i in 0..1000 {
            assert_eq!(b.recv().await.expect("a message"), item(i));
        }
    });
}

#[test]
fn mem_batches_arrive_in_order() {
    let (a, b) = mem::pair();
    batch_in_order(a, b);
}

#[test]
fn unix_batches_arrive_in_order() {
    let (a, b) = unix::pair().expect("socketpair");
    batch_in_order(a, b);
}

#[test]
fn unix_batch_stops_at_a_message_that_cannot_travel() {
    let config = CodecConfig {
        max_frame: 1024,
        ..CodecConfig::default()
    };
    let (a, b) = unix::pair_with(config).expect("socketpair");
    bounded(async {
        let (tx, _) = a.split();
        let big = Msg::Yield {
            cid: Cid(99),
            value: Value::Bytes(vec![0; 4096]),
        };
        let mut msgs: VecDeque<Msg> = VecDeque::from([item(1), item(2), big.clone(), item(3)]);
        let err = tx
            .send_batch(&mut msgs)
            .await
            .expect_err("the big one is refused");
        assert!(matches!(err, SendError::TooLarge { .. }), "{err}");
        assert_eq!(err.into_msg(), big);
        assert_eq!(msgs, VecDeque::from([item(3)]), "the rest stays queued");
        tx.send_batch(&mut msgs).await.expect("the rest goes");
        for i in [1, 2, 3] {
            assert_eq!(b.recv().await.expect("a message"), item(i));
        }
    });
}

#[test]
fn batch_to_a_gone_peer_hands_the_first_message_back() {
    let (a, b) = mem::pair();
    drop(b);
    bounded(async {
        let (tx, _) = a.split();
        let mut msgs: VecDeque<Msg> = (0..3).map(item).collect();
        let err = tx.send_batch(&mut msgs).await.expect_err("peer gone");
        assert!(err.is_closed());
        assert_eq!(err.into_msg(), item(0));
        assert_eq!(msgs.len(), 2);
    });
}

fn big(i: u64, len: usize) -> Msg {
    Msg::Yield {
        cid: Cid(i),
        value: Value::Bytes(vec![i as u8; len]),
    }
}

/// `send_batch_now` on the shared-memory transport: a batch larger than the ring's room is
/// left unfinished, and nothing overtakes its rest; once the peer reads, an empty `send_batch`
/// writes the rest and every message arrives whole, in order.
#[cfg(target_os = "linux")]
#[test]
fn shm_send_batch_now_leaves_a_batch_larger_than_the_ring_unfinished() {
    let (a, mut b) = harrow_ipc::shm::pair().expect("shm pair");
    b.end_handshake();
    let (tx, _) = a.split();
    let half = harrow_ipc::shm::RING_BYTES / 2 + 1_000;
    let mut msgs = VecDeque::from([big(0, half), big(1, half)]);
    assert_eq!(tx.send_batch_now(&mut msgs), SentNow::Unfinished);
    assert!(msgs.is_empty(), "an unfinished batch is taken");
    let mut next = VecDeque::from([item(2)]);
    assert_eq!(
        tx.send_batch_now(&mut next),
        SentNow::NotNow,
        "the rest of the unfinished batch goes first"
    );
    bounded(async {
        let reader = async {
            assert_eq!(b.recv().await.expect("a message"), big(0, half));
            assert_eq!(b.recv().await.expect("a message"), big(1, half));
            assert_eq!(b.recv().await.expect("a message"), item(2));
        };
        let writer = async {
            tx.send_batch(&mut VecDeque::new()).await.expect("the rest");
            tx.send_batch(&mut next).await.expect("what was left");
        };
        futures_lite::future::zip(reader, writer).await;
    });
}

/// The shared-memory transport writes at once only while its peer has read all that came
/// before (a peer still reading is better served by the writer's batches).
#[cfg(target_os = "linux")]
#[test]
fn shm_send_batch_now_waits_for_a_peer_that_is_behind() {
    let (a, b) = harrow_ipc::shm::pair().expect("shm pair");
    let (tx, _) = a.split();
    let mut msgs: VecDeque<Msg> = (0..10).map(item).collect();
    assert_eq!(tx.send_batch_now(&mut msgs), SentNow::Sent);
    assert!(msgs.is_empty(), "a sent batch is emptied");
    let mut more = VecDeque::from([item(10)]);
    assert_eq!(
        tx.send_batch_now(&mut more),
        SentNow::NotNow,
        "the peer is behind"
    );
    assert_eq!(more.len(), 1, "handed back");
    bounded(async {
        for i in 0..10 {
            assert_eq!(b.recv().await.expect("a message"), item(i));
        }
    });
    assert_eq!(tx.send_batch_now(&mut more), SentNow::Sent, "caught up");
    tx.close();
    let mut after = VecDeque::from([item(11)]);
    assert_eq!(tx.send_batch_now(&mut after), SentNow::NotNow, "closed");
    assert_eq!(after, VecDeque::from([item(11)]), "handed back");
    bounded(async { assert_eq!(b.recv().await.expect("a message"), item(10)) });
}

#[cfg(target_os = "linux")]
#[test]
fn send_batch_now_leaves_a_message_that_cannot_travel_to_send_batch() {
    let config = CodecConfig {
        max_frame: 1024,
        ..CodecConfig::default()
    };
    let (a, _b) = harrow_ipc::shm::pair_with(config).expect("shm pair");
    let (tx, _) = a.split();
    let mut msgs = VecDeque::from([item(1), big(2, 4_096)]);
    assert_eq!(tx.send_batch_now(&mut msgs), SentNow::NotNow);
    assert_eq!(msgs.len(), 2, "nothing sent, nothing taken");
}

/// Halves that do not write at once: `mem` (its sends never wait: `send_now`) and a socket
/// (a system call per message; the writer's batches take fewer).
#[test]
fn mem_and_unix_halves_never_send_a_batch_now() {
    let (m, _m) = mem::pair();
    let (u, _u) = unix::pair().expect("socketpair");
    for ch in [m, u] {
        let (tx, _) = ch.split();
        let mut msgs = VecDeque::from([item(1)]);
        assert_eq!(tx.send_batch_now(&mut msgs), SentNow::NotNow);
        assert_eq!(msgs.len(), 1);
    }
}
