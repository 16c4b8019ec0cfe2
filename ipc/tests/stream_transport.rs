//! The byte-stream transport over two one-way streams (as a launched program's stdin and stdout
//! are): messages both ways in order, batches, large frames after the handshake, close and drop
//! seen by the peer, a send to a vanished reader handed back.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

use async_io::Async;
use futures_lite::future::block_on;
use harrow_ipc::codec::CodecConfig;
use harrow_ipc::{Channel, Msg, Value, stream};

/// Two channels joined by two one-way byte streams, each end owning a read and a write stream.
fn pair() -> (Channel, Channel) {
    let (a_to_b_w, a_to_b_r) = UnixStream::pair().unwrap();
    let (b_to_a_w, b_to_a_r) = UnixStream::pair().unwrap();
    let a = stream::channel(
        Async::new(b_to_a_r).unwrap(),
        Async::new(a_to_b_w).unwrap(),
        CodecConfig::default(),
    );
    let b = stream::channel(
        Async::new(a_to_b_r).unwrap(),
        Async::new(b_to_a_w).unwrap(),
        CodecConfig::default(),
    );
    (a, b)
}

fn msg(i: i64) -> Msg {
    Msg::Yield {
        cid: harrow_ipc::Cid(3),
        value: Value::Int(i),
    }
}

#[test]
fn both_ways_in_order_with_batches_and_large_frames() {
    block_on(async {
        let (a, mut b) = pair();
        b.end_handshake();
        let (a_tx, mut a_rx) = a.split();
        let mut batch: VecDeque<Msg> = (0..500).map(msg).collect();
        let send = async {
            a_tx.send_batch(&mut batch).await.unwrap();
            assert!(batch.is_empty());
            a_tx.send(Msg::Yield {
                cid: harrow_ipc::Cid(5),
                value: Value::Bytes(vec![7; 1 << 20]),
            })
            .await
            .unwrap();
        };
        let recv = async {
            for i in 0..500 {
                assert_eq!(b.recv().await.unwrap(), msg(i));
            }
            let big = b.recv().await.unwrap();
            match &big {
                Msg::Yield {
                    value: Value::Bytes(v),
                    ..
                } => assert_eq!(v.len(), 1 << 20),
                other => panic!("{other:?}"),
            }
        };
        futures_lite::future::zip(send, recv).await;
        b.send(msg(9)).await.unwrap();
        a_rx.end_handshake();
        assert_eq!(a_rx.recv().await.unwrap(), msg(9));
    });
}

#[test]
fn close_delivers_what_was_sent_then_closed() {
    block_on(async {
        let (a, b) = pair();
        a.send(msg(1)).await.unwrap();
        a.close();
        assert!(a.send(msg(2)).await.unwrap_err().is_closed());
        assert_eq!(b.recv().await.unwrap(), msg(1));
        assert!(b.recv().await.unwrap_err().is_closed());
        assert!(b.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn dropped_peer_is_closed_both_ways() {
    block_on(async {
        let (a, b) = pair();
        let (tx, mut rx) = a.split();
        tx.send(msg(1)).await.unwrap();
        drop(tx);
        assert_eq!(b.recv().await.unwrap(), msg(1));
        assert!(b.recv().await.unwrap_err().is_closed());
        drop(b);
        assert!(rx.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn send_to_a_vanished_reader_hands_the_message_back() {
    block_on(async {
        let (a, b) = pair();
        drop(b);
        // The first writes may still fit the socket buffer; one fails once the peer is gone.
        let mut failed = None;
        for i in 0..10_000 {
            if let Err(e) = a.send(msg(i)).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a send fails once the reader is gone");
        assert!(e.is_closed(), "{e}");
        assert!(matches!(e.into_msg(), Msg::Yield { .. }));
    });
}

#[test]
fn try_recv_now_takes_frames_of_an_earlier_read_then_waits_for_recv() {
    block_on(async {
        let (a, b) = pair();
        let (a_tx, _a_rx) = a.split();
        let (_b_tx, mut b_rx) = b.split();
        assert!(b_rx.try_recv_now().is_none(), "nothing read yet");
        // One batch is one write: all three frames are in the socket before the first read.
        let mut batch: VecDeque<Msg> = (0..3).map(msg).collect();
        a_tx.send_batch(&mut batch).await.unwrap();
        assert_eq!(b_rx.recv().await.unwrap(), msg(0));
        assert_eq!(b_rx.try_recv_now().unwrap().unwrap(), msg(1));
        assert_eq!(b_rx.try_recv_now().unwrap().unwrap(), msg(2));
        assert!(b_rx.try_recv_now().is_none(), "the buffer is drained");
        // What comes later is read by `recv`, in order; the end too.
        a_tx.send(msg(3)).await.unwrap();
        a_tx.close();
        assert_eq!(b_rx.recv().await.unwrap(), msg(3));
        assert!(b_rx.recv().await.unwrap_err().is_closed());
        assert!(
            b_rx.try_recv_now().is_none(),
            "after the end: `recv` reports it"
        );
        assert!(b_rx.recv().await.unwrap_err().is_closed());
    });
}
