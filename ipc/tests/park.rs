//! `park::block_on`: a thread that sleeps in an epoll instance of its own, with its unix channels'
//! sockets registered there edge-triggered. The channel contract must hold there as it does
//! under async-io's reactor (tests/unix_transport.rs), and every other wake-up (timers, other
//! threads, tasks of the same thread) must still reach the thread.

use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use futures_lite::future;
use harrow_ipc::codec::{self, CodecConfig};
use harrow_ipc::park::spin::SpinGate;
use harrow_ipc::{Cid, Msg, RecvError, Value, park, unix};

/// Runs `fut` under `park::block_on`, failing the test if it takes more than 10 s.
fn bounded<T>(fut: impl Future<Output = T>) -> T {
    park::block_on(future::or(fut, async {
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

fn raw_peer() -> (harrow_ipc::Channel, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (
        unix::from_stream(ours, CodecConfig::default()).unwrap(),
        theirs,
    )
}

#[test]
fn ping_pong_between_two_parked_threads_keeps_order() {
    let (a, b) = unix::pair().unwrap();
    let echo = std::thread::spawn(move || {
        bounded(async {
            while let Ok(msg) = b.recv().await {
                b.send(msg).await.unwrap();
            }
        })
    });
    bounded(async {
        for i in 0..2000 {
            a.send(yield_msg(i)).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), yield_msg(i));
        }
    });
    a.close();
    drop(a);
    echo.join().unwrap();
}

#[test]
fn ping_pong_caught_while_spinning_or_after_sleeping_keeps_order() {
    // Both threads spin before every sleep. A long spin catches most replies awake (the sockets
    // polled without sleeping); a spin of a microsecond runs out before most replies come, so
    // the threads sleep in `epoll_wait` and are woken by the socket's edge.
    for spin in [Duration::from_micros(200), Duration::from_micros(1)] {
        let (a, b) = unix::pair().unwrap();
        let echo = std::thread::spawn(move || {
            park::block_on_gated(SpinGate::always(spin), async {
                while let Ok(msg) = b.recv().await {
                    b.send(msg).await.unwrap();
                }
            })
        });
        park::block_on_gated(
            SpinGate::always(spin),
            future::or(
                async {
                    for i in 0..300 {
                        a.send(yield_msg(i)).await.unwrap();
                        assert_eq!(a.recv().await.unwrap(), yield_msg(i));
                    }
                },
                async {
                    async_io::Timer::after(Duration::from_secs(10)).await;
                    panic!("timed out after 10 s")
                },
            ),
        );
        a.close();
        drop(a);
        echo.join().unwrap();
    }
}

#[test]
fn a_burst_is_read_whole_and_in_order() {
    // Many frames queued before the reader looks: reads that fill the buffer must not wait for
    // an edge that already came.
    let (b, mut raw) = raw_peer();
    let mut bytes = Vec::new();
    for i in 0..5000 {
        bytes.extend(codec::encode(&yield_msg(i), &CodecConfig::default()).unwrap());
    }
    let writer = std::thread::spawn(move || raw.write_all(&bytes).map(|()| raw));
    bounded(async {
        for i in 0..5000 {
            assert_eq!(b.recv().await.unwrap(), yield_msg(i));
        }
    });
    drop(writer.join().unwrap().unwrap());
    bounded(async { assert!(b.recv().await.unwrap_err().is_closed()) });
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
fn a_frame_in_pieces_then_eof_is_truncated_then_closed() {
    let (ch, mut raw) = raw_peer();
    let frame = codec::encode(&yield_msg(5), &CodecConfig::default()).unwrap();
    raw.write_all(&frame[..2]).unwrap();
    bounded(async {
        // Reads the two bytes, then waits for an edge.
        assert!(future::poll_once(ch.recv()).await.is_none());
    });
    let writer = std::thread::spawn(move || {
        raw.write_all(&frame[2..frame.len() - 1]).unwrap();
        raw
    });
    let raw = writer.join().unwrap();
    drop(raw);
    bounded(async {
        assert!(matches!(
            ch.recv().await.unwrap_err(),
            RecvError::TruncatedFrame { .. }
        ));
        assert!(ch.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn a_last_frame_and_the_peer_closing_seen_in_one_edge_give_the_frame_then_closed() {
    // The peer writes its last frame and closes before the reader looks again: epoll reports
    // both in one edge, and the read that takes the frame is short. The end of the stream must
    // still be read (no further edge announces it); a reader that took the short read for
    // "drained" waited for ever (a child's channel seemed open after the child exited).
    // All in one `block_on`: a new one registers the socket afresh, which reports it again.
    let (ch, mut raw) = raw_peer();
    let frame = codec::encode(&yield_msg(7), &CodecConfig::default()).unwrap();
    bounded(async move {
        // Registers the socket and finds nothing: the next data comes with an edge.
        assert!(future::poll_once(ch.recv()).await.is_none());
        // Both happen before this thread waits again.
        raw.write_all(&frame).unwrap();
        drop(raw);
        assert_eq!(ch.recv().await.unwrap(), yield_msg(7));
        assert!(ch.recv().await.unwrap_err().is_closed());
    });
}

#[test]
fn a_peer_that_goes_away_while_the_reader_sleeps_gives_closed() {
    let (a, b) = unix::pair().unwrap();
    let (started_tx, started_rx) = flume::bounded::<()>(1);
    let reader = std::thread::spawn(move || {
        bounded(async {
            started_tx.send(()).unwrap();
            b.recv().await
        })
    });
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(a);
    assert!(reader.join().unwrap().unwrap_err().is_closed());
}

#[test]
fn a_channel_read_on_one_parked_thread_then_another_then_in_async_io_still_works() {
    let (a, b) = unix::pair().unwrap();
    bounded(async {
        a.send(yield_msg(1)).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), yield_msg(1));
    });
    let b = std::thread::spawn(move || {
        bounded(async {
            assert!(future::poll_once(b.recv()).await.is_none());
            b
        })
    })
    .join()
    .unwrap();
    let b = std::thread::spawn(move || {
        bounded(async {
            a.send(yield_msg(2)).await.unwrap();
            assert_eq!(b.recv().await.unwrap(), yield_msg(2));
            (a, b)
        })
    })
    .join()
    .unwrap();
    let (a, b) = b;
    async_io::block_on(async {
        a.send(yield_msg(3)).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), yield_msg(3));
    });
}

#[test]
fn wakeups_from_timers_other_threads_and_nested_block_ons_arrive() {
    let (tx, rx) = flume::bounded::<u32>(1);
    let sender = std::thread::spawn(move || {
        for i in 0..100 {
            tx.send(i).unwrap();
        }
    });
    bounded(async {
        for i in 0..100 {
            assert_eq!(rx.recv_async().await.unwrap(), i);
        }
        async_io::Timer::after(Duration::from_millis(5)).await;
        // A nested block_on gets a poller of its own; the outer one is back afterwards.
        let inner = park::block_on(async {
            let (a, b) = unix::pair().unwrap();
            a.send(yield_msg(9)).await.unwrap();
            b.recv().await.unwrap()
        });
        assert_eq!(inner, yield_msg(9));
        let (a, b) = unix::pair().unwrap();
        a.send(yield_msg(10)).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), yield_msg(10));
    });
    sender.join().unwrap();
}

#[test]
fn a_refused_frame_ends_reading_and_the_peer_sees_its_sends_fail() {
    let (ours, mut raw) = UnixStream::pair().unwrap();
    let config = CodecConfig {
        max_frame: 1000,
        ..CodecConfig::default()
    };
    let ch = unix::from_stream(ours, config).unwrap();
    raw.write_all(&5000u32.to_le_bytes()).unwrap();
    bounded(async {
        assert!(matches!(
            ch.recv().await.unwrap_err(),
            RecvError::Decode(codec::DecodeError::FrameTooLarge { .. })
        ));
        assert!(ch.recv().await.unwrap_err().is_closed());
    });
    // The receiving side shut its read direction down when it gave up: the peer's writes fail
    // instead of filling a buffer nobody reads.
    // (Bounded: a write that blocked would fail with a timeout, not `BrokenPipe`.)
    raw.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut refused = None;
    for _ in 0..10_000 {
        if let Err(e) = raw.write_all(&[0u8; 4096]) {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the peer could keep writing");
    assert_eq!(refused.kind(), std::io::ErrorKind::BrokenPipe, "{refused}");
}
