//! The unix transport honours the channel contract: order, closure, dead peers, concurrency.

use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use futures_lite::future;
use harrow_ipc::codec::{self, CodecConfig, DecodeError};
use harrow_ipc::{Cid, Msg, RecvError, Value, unix};

/// Runs `fut` to completion on this thread, failing the test if it takes more than 10 s.
fn bounded<T>(fut: impl Future<Output = T>) -> T {
    async_io::block_on(future::or(fut, async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        panic!("timed out after 10 s")
    }))
}

fn yield_msg(i: u64) -> Msg {
    Msg::Yield {
        cid: Cid(i),
        value: Value::Int(i as i64),
    }
}

/// A channel whose peer is a raw socket the test writes bytes to.
fn raw_peer() -> (harrow_ipc::Channel, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (
        unix::from_stream(ours, CodecConfig::default()).unwrap(),
        theirs,
    )
}

#[test]
fn messages_arrive_in_order_both_ways() {
    bounded(async {
        let (a, b) = unix::pair().unwrap();
        for i in 0..200 {
            a.send(yield_msg(i)).await.unwrap();
            b.send(yield_msg(1000 + i)).await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(b.recv().await.unwrap(), yield_msg(i));
            assert_eq!(a.recv().await.unwrap(), yield_msg(1000 + i));
        }
    });
}

#[test]
fn dropped_peer_closes_pending_and_later_recv() {
    let (a, b) = unix::pair().unwrap();
    let reader = std::thread::spawn(move || {
        bounded(async {
            let first = b.recv().await;
            let second = b.recv().await;
            (first, second)
        })
    });
    drop(a);
    let (first, second) = reader.join().unwrap();
    assert!(first.unwrap_err().is_closed());
    assert!(second.unwrap_err().is_closed());
}

#[test]
fn peer_dying_mid_frame_gives_closed_not_a_hang() {
    let (ch, mut raw) = raw_peer();
    let frame = codec::encode(&yield_msg(7), &CodecConfig::default()).unwrap();
    let mut stream = frame.clone();
    stream.extend_from_slice(&frame[..frame.len() / 2]);
    raw.write_all(&stream).unwrap();
    drop(raw);
    bounded(async {
        assert_eq!(ch.recv().await.unwrap(), yield_msg(7));
        assert!(ch.recv().await.unwrap_err().is_closed());
        assert!(ch.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn peer_dying_inside_the_length_prefix_gives_closed() {
    let (ch, mut raw) = raw_peer();
    raw.write_all(&[5, 0]).unwrap();
    drop(raw);
    bounded(async { assert!(ch.recv().await.unwrap_err().is_closed()) });
}

#[test]
fn a_frame_cut_short_then_eof_is_reported_as_truncated_then_closed() {
    let (ch, mut raw) = raw_peer();
    let frame = codec::encode(&yield_msg(7), &CodecConfig::default()).unwrap();
    let half = frame.len() / 2;
    raw.write_all(&frame[..half]).unwrap();
    drop(raw);
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(err, RecvError::TruncatedFrame { expected, got }
                if expected == frame.len() && got == half),
            "{err:?}"
        );
        assert!(err.is_closed());
        let text = err.to_string();
        assert!(
            text.contains("middle of a frame") && text.contains(&format!("{half} of")),
            "{text}"
        );
        assert!(matches!(ch.recv().await.unwrap_err(), RecvError::Closed));
    });
}

#[test]
fn a_cut_length_prefix_is_reported_as_truncated() {
    let (ch, mut raw) = raw_peer();
    raw.write_all(&[5, 0]).unwrap();
    drop(raw);
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                RecvError::TruncatedFrame {
                    expected: codec::LENGTH_PREFIX,
                    got: 2
                }
            ),
            "{err:?}"
        );
    });
}

#[test]
fn an_oversized_header_before_the_handshake_ends_the_connection() {
    let (ch, mut raw) = raw_peer();
    let len = codec::DEFAULT_MAX_HANDSHAKE_FRAME as u32 + 1;
    raw.write_all(&len.to_le_bytes()).unwrap();
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                RecvError::Decode(DecodeError::HandshakeFrameTooLarge { len: l, max })
                    if l == u64::from(len) && max == codec::DEFAULT_MAX_HANDSHAKE_FRAME
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("before the handshake"), "{err}");
        assert!(matches!(ch.recv().await.unwrap_err(), RecvError::Closed));
    });
    // The read side is shut down: the peer's further writes fail instead of piling up.
    let refused = (0..64).find_map(|_| raw.write_all(&[0; 4096]).err());
    assert!(refused.is_some(), "the peer could keep writing");
}

#[test]
fn the_handshake_limit_is_configurable_and_lifted_by_end_handshake() {
    let (ours, mut raw) = UnixStream::pair().unwrap();
    let config = CodecConfig {
        max_handshake_frame: 64,
        ..CodecConfig::default()
    };
    let mut ch = unix::from_stream(ours, config).unwrap();
    let big = Msg::CancelActor {
        reason: "y".repeat(10_000),
    };
    // The handshake message, then a large one the peer may send once it is accepted.
    raw.write_all(&codec::encode(&Msg::CancelAck { teardown_ms: None }, &config).unwrap())
        .unwrap();
    raw.write_all(&codec::encode(&big, &config).unwrap())
        .unwrap();
    bounded(async {
        assert_eq!(
            ch.recv().await.unwrap(),
            Msg::CancelAck { teardown_ms: None }
        );
    });
    ch.end_handshake();
    bounded(async {
        assert_eq!(ch.recv().await.unwrap(), big);
    });
    // The same large frame first is refused.
    let (ours, mut raw) = UnixStream::pair().unwrap();
    let ch = unix::from_stream(ours, config).unwrap();
    raw.write_all(&codec::encode(&big, &config).unwrap())
        .unwrap();
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                RecvError::Decode(DecodeError::HandshakeFrameTooLarge { max: 64, .. })
            ),
            "{err:?}"
        );
    });
}

#[test]
fn send_to_a_gone_peer_hands_the_message_back() {
    bounded(async {
        let (a, b) = unix::pair().unwrap();
        drop(b);
        let err = a.send(yield_msg(3)).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(err.into_msg(), yield_msg(3));
    });
}

#[test]
fn send_to_a_peer_that_dropped_its_receiver_fails() {
    bounded(async {
        let (a, b) = unix::pair().unwrap();
        let (_b_tx, b_rx) = b.split();
        drop(b_rx);
        let err = a.send(yield_msg(4)).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(err.into_msg(), yield_msg(4));
    });
}

#[test]
fn close_delivers_what_was_sent_then_closed() {
    bounded(async {
        let (a, b) = unix::pair().unwrap();
        a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
        a.close();
        a.close();
        let err = a
            .send(Msg::CancelAck { teardown_ms: None })
            .await
            .unwrap_err();
        assert!(err.is_closed());
        assert_eq!(
            b.recv().await.unwrap(),
            Msg::CancelAck { teardown_ms: None }
        );
        assert!(b.recv().await.unwrap_err().is_closed());
        // The other direction still works.
        b.send(yield_msg(1)).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), yield_msg(1));
    });
}

#[test]
fn dropping_the_last_sender_clone_closes_the_direction() {
    bounded(async {
        let (a, b) = unix::pair().unwrap();
        let (a_tx, _a_rx) = a.split();
        let clone = a_tx.clone();
        drop(a_tx);
        clone.send(yield_msg(9)).await.unwrap();
        drop(clone);
        assert_eq!(b.recv().await.unwrap(), yield_msg(9));
        assert!(b.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn concurrent_senders_never_interleave_frames() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 50;
    let (a, mut b) = unix::pair().unwrap();
    b.end_handshake();
    let (tx, _rx) = a.split();
    // Large payloads so writes are partial and a reader has to keep up.
    let payload = Value::Bytes(vec![0xab; 300_000]);
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let tx = tx.clone();
            let payload = payload.clone();
            std::thread::spawn(move || {
                bounded(async {
                    for i in 0..EACH {
                        let value = Value::List(vec![Value::Int(i as i64), payload.clone()]);
                        tx.send(Msg::Yield { cid: Cid(s), value }).await.unwrap();
                    }
                })
            })
        })
        .collect();
    drop(tx);
    let mut next = vec![0i64; SENDERS as usize];
    bounded(async {
        for _ in 0..SENDERS * EACH {
            match b.recv().await.unwrap() {
                Msg::Yield { cid, value } => {
                    let items = value.as_list().unwrap();
                    assert_eq!(
                        items[0],
                        Value::Int(next[cid.0 as usize]),
                        "per-sender order"
                    );
                    assert_eq!(items[1], payload);
                    next[cid.0 as usize] += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    for s in senders {
        s.join().unwrap();
    }
    bounded(async { assert!(b.recv().await.unwrap_err().is_closed()) });
}

#[test]
fn a_cancelled_recv_loses_no_data() {
    let (ch, mut raw) = raw_peer();
    let frame = codec::encode(&yield_msg(5), &CodecConfig::default()).unwrap();
    raw.write_all(&frame[..frame.len() - 2]).unwrap();
    bounded(async {
        // The bytes are already there, so one poll reads them, then waits for the rest.
        assert!(future::poll_once(ch.recv()).await.is_none());
    });
    raw.write_all(&frame[frame.len() - 2..]).unwrap();
    bounded(async { assert_eq!(ch.recv().await.unwrap(), yield_msg(5)) });
}

#[test]
fn a_malformed_frame_is_reported_and_the_next_one_read() {
    let (ch, mut raw) = raw_peer();
    raw.write_all(&[1, 0, 0, 0, 200]).unwrap();
    raw.write_all(
        &codec::encode(
            &Msg::CancelAck { teardown_ms: None },
            &CodecConfig::default(),
        )
        .unwrap(),
    )
    .unwrap();
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(err, RecvError::Decode(DecodeError::Malformed(_))),
            "{err:?}"
        );
        assert_eq!(
            ch.recv().await.unwrap(),
            Msg::CancelAck { teardown_ms: None }
        );
    });
}

#[test]
fn an_oversized_frame_is_reported_then_the_channel_is_closed() {
    let (ours, mut raw) = UnixStream::pair().unwrap();
    let config = CodecConfig {
        max_frame: 1000,
        ..CodecConfig::default()
    };
    let ch = unix::from_stream(ours, config).unwrap();
    raw.write_all(&5000u32.to_le_bytes()).unwrap();
    bounded(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                RecvError::Decode(DecodeError::FrameTooLarge {
                    len: 5000,
                    max: 1000
                })
            ),
            "{err:?}"
        );
        assert!(ch.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn an_oversized_message_is_handed_back_and_the_channel_still_works() {
    let config = CodecConfig {
        max_frame: 1000,
        ..CodecConfig::default()
    };
    bounded(async {
        let (a, b) = unix::pair_with(config).unwrap();
        let big = Msg::CancelActor {
            reason: "x".repeat(2000),
        };
        let err = a.send(big.clone()).await.unwrap_err();
        assert!(!err.is_closed());
        assert_eq!(err.into_msg(), big);
        a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
        assert_eq!(
            b.recv().await.unwrap(),
            Msg::CancelAck { teardown_ms: None }
        );
    });
}

#[test]
fn a_large_message_crosses_whole() {
    let (a, mut b) = unix::pair().unwrap();
    b.end_handshake();
    let msg = Msg::Return {
        cid: Cid(1),
        value: Value::Bytes((0..8_000_000u32).map(|i| i as u8).collect()),
    };
    let sent = msg.clone();
    let writer = std::thread::spawn(move || bounded(a.send(sent)));
    bounded(async { assert_eq!(b.recv().await.unwrap(), msg) });
    writer.join().unwrap().unwrap();
}

#[test]
fn listener_and_connector_make_a_channel() {
    let dir = std::env::temp_dir().join(format!("harrow-ipc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("listen.sock");
    let _ = std::fs::remove_file(&path);
    let listener = unix::bind(&path).unwrap();
    assert_eq!(
        listener.local_addr().unwrap().as_pathname(),
        Some(path.as_path())
    );
    bounded(async {
        let (client, server) = future::zip(unix::connect(&path), listener.accept()).await;
        let (client, server) = (client.unwrap(), server.unwrap());
        client.send(yield_msg(1)).await.unwrap();
        assert_eq!(server.recv().await.unwrap(), yield_msg(1));
        server.send(yield_msg(2)).await.unwrap();
        assert_eq!(client.recv().await.unwrap(), yield_msg(2));
        drop(client);
        assert!(server.recv().await.unwrap_err().is_closed());
    });
    let _ = std::fs::remove_dir_all(&dir);
}
