//! `SendHalf::try_write_now` on the unix transport (writing without waiting, for a sender that
//! falls back to ordinary sends), and `park::at_turn_end`.

use std::collections::VecDeque;
use std::time::Duration;

use futures_lite::future;
use harrow_ipc::{Cid, Msg, Value, WriteNow, park, unix, wait};

const BOUND: Duration = Duration::from_secs(20);

fn item(i: u64, len: usize) -> Msg {
    Msg::Return {
        cid: Cid(i),
        value: Value::Bytes(vec![i as u8; len]),
    }
}

#[test]
fn a_full_socket_hands_everything_back_and_order_holds_with_ordinary_sends() {
    future::block_on(async {
        let (a, mut b) = unix::pair().expect("socketpair");
        b.end_handshake();
        let (tx, _rx) = a.split();
        assert!(tx.writes_now());
        let mut next = 0u64;
        let mut partial = false;
        // Write 64 KiB messages until the socket takes no more.
        loop {
            let mut msgs = VecDeque::from([item(next, 64 << 10), item(next + 1, 10)]);
            match tx.try_write_now(&mut msgs) {
                WriteNow::Done => {
                    assert!(msgs.is_empty());
                    next += 2;
                    assert!(next < 100_000, "the socket never filled up");
                }
                WriteNow::Partial => {
                    // Committed; the rest of the bytes wait for the next ordinary send.
                    assert!(msgs.is_empty());
                    next += 2;
                    partial = true;
                }
                WriteNow::NotNow => {
                    // Untouched.
                    assert_eq!(msgs.len(), 2);
                    assert_eq!(msgs[0], item(next, 64 << 10));
                    break;
                }
            }
            if partial {
                // Full: the next try must hand everything back (a frame is half written).
                let mut msgs = VecDeque::from([item(next, 10)]);
                assert_eq!(tx.try_write_now(&mut msgs), WriteNow::NotNow);
                assert_eq!(msgs, VecDeque::from([item(next, 10)]));
                break;
            }
        }
        // The rest go the ordinary way, which first finishes what was half written, while the
        // peer reads: everything arrives whole, in order.
        let last = next + 5;
        let send = async {
            for i in next..last {
                tx.send(item(i, 1000)).await.expect("send");
            }
        };
        let recv = async {
            for i in 0..last {
                let got = wait::deadline(BOUND, b.recv())
                    .await
                    .expect("bounded")
                    .expect("recv");
                let Msg::Return {
                    cid,
                    value: Value::Bytes(bytes),
                } = &got
                else {
                    panic!("unexpected {}", got.kind_name());
                };
                let cid = *cid;
                assert_eq!(cid, Cid(i));
                assert!(bytes.iter().all(|&x| x == i as u8));
            }
        };
        future::zip(send, recv).await;
    });
}

#[test]
fn a_large_message_is_committed_in_part_and_finished_by_the_next_send() {
    future::block_on(async {
        let (a, mut b) = unix::pair().expect("socketpair");
        b.end_handshake();
        let (tx, _rx) = a.split();
        let mut msgs = VecDeque::from([item(1, 8 << 20), item(2, 8)]);
        // Larger than a batch: the first goes (in part), the second stays for later.
        assert_eq!(tx.try_write_now(&mut msgs), WriteNow::Partial);
        assert_eq!(msgs, VecDeque::from([item(2, 8)]));
        let send = async {
            let m = msgs.pop_front().expect("left");
            tx.send(m).await.expect("send");
        };
        let recv = async {
            for i in 1..=2u64 {
                let got = wait::deadline(BOUND, b.recv())
                    .await
                    .expect("bounded")
                    .expect("recv");
                let Msg::Return { cid, .. } = &got else {
                    panic!("unexpected {}", got.kind_name());
                };
                assert_eq!(*cid, Cid(i));
                assert_eq!(got, item(i, if i == 1 { 8 << 20 } else { 8 }));
            }
        };
        future::zip(send, recv).await;
    });
}

#[test]
fn a_peer_gone_hands_the_messages_back_and_the_ordinary_send_reports_it() {
    future::block_on(async {
        let (a, b) = unix::pair().expect("socketpair");
        drop(b);
        let (tx, _rx) = a.split();
        let mut msgs = VecDeque::from([item(1, 8)]);
        assert_eq!(tx.try_write_now(&mut msgs), WriteNow::NotNow);
        assert_eq!(msgs, VecDeque::from([item(1, 8)]));
        let err = tx.send(item(1, 8)).await.expect_err("peer gone");
        assert!(err.is_closed(), "{err}");
    });
}

#[test]
fn a_refused_message_stays_at_the_front() {
    future::block_on(async {
        let config = harrow_ipc::codec::CodecConfig {
            max_frame: 1024,
            ..Default::default()
        };
        let (a, mut b) = unix::pair_with(config).expect("socketpair");
        b.end_handshake();
        let (tx, _rx) = a.split();
        let mut msgs = VecDeque::from([item(1, 8), item(2, 4096), item(3, 8)]);
        assert_eq!(tx.try_write_now(&mut msgs), WriteNow::Done);
        assert_eq!(msgs, VecDeque::from([item(2, 4096), item(3, 8)]));
        let got = wait::deadline(BOUND, b.recv()).await.expect("bounded");
        assert_eq!(got.expect("recv"), item(1, 8));
    });
}

#[test]
fn turn_end_work_runs_before_the_thread_waits_and_not_outside_block_on() {
    assert!(park::at_turn_end(Box::new(|| {})).is_err());
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    park::block_on(async {
        let tx2 = tx.clone();
        park::at_turn_end(Box::new(move || tx2.send("turn end").expect("send")))
            .unwrap_or_else(|_| panic!("in block_on"));
        // Still in the turn: nothing ran yet.
        assert!(rx.try_recv().is_err());
        // Pending once: the turn ends, then the future is polled again.
        future::yield_now().await;
        assert_eq!(rx.try_recv(), Ok("turn end"));
        // One left when block_on returns runs too.
        let tx3 = tx.clone();
        park::at_turn_end(Box::new(move || tx3.send("at return").expect("send")))
            .unwrap_or_else(|_| panic!("in block_on"));
    });
    assert_eq!(rx.try_recv(), Ok("at return"));
}
