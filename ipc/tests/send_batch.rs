//! `send_batch`: order, partial failure hands back exactly the failing message.

use std::collections::VecDeque;
use std::time::Duration;

use harrow_ipc::codec::CodecConfig;
use harrow_ipc::{Channel, Cid, Msg, SendError, Value, mem, unix};

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
