//! The shared-memory transport honours the channel contract (order, closure, dead peers, a full
//! ring, concurrency), both where a parker watches its rings (`park::block_on`) and where it
//! waits for its socket in async-io's reactor; and it turns a peer that breaks its protocol into
//! an error, never a hang or a read outside its rings.

use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::future;
use harrow_ipc::codec::{self, CodecConfig, DecodeError};
use harrow_ipc::park::spin::SpinGate;
use harrow_ipc::shm::{self, Segment, Side};
use harrow_ipc::{Channel, Cid, Msg, RecvError, Value, park};

const BOUND: Duration = Duration::from_secs(20);

async fn timeout<T>() -> T {
    timeout_after(BOUND).await
}

async fn timeout_after<T>(bound: Duration) -> T {
    async_io::Timer::after(bound).await;
    panic!("timed out after {bound:?}");
}

/// Runs `fut` under async-io's executor (no parker: rings armed, sockets in async-io's reactor).
fn plain<T>(fut: impl Future<Output = T>) -> T {
    async_io::block_on(future::or(fut, timeout()))
}

/// Runs `fut` under `park::block_on` (rings watched by the parker).
fn parked<T>(fut: impl Future<Output = T>) -> T {
    park::block_on(future::or(fut, timeout()))
}

/// Runs `fut` under `park::block_on` with `spin` before every sleep (zero: never spin, so every
/// wait arms the ring and sleeps).
fn parked_spin<T>(spin: Duration, fut: impl Future<Output = T>) -> T {
    park::block_on_gated(SpinGate::always(spin), future::or(fut, timeout()))
}

type Boxed<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Both executors, for tests that run their body under each.
const RUNNERS: [for<'a> fn(Boxed<'a>); 2] = [|f| plain(f), |f| parked(f)];

fn yield_msg(i: u64) -> Msg {
    Msg::Yield {
        cid: Cid(i),
        value: Value::Int(i as i64),
    }
}

/// A channel whose peer writes raw bytes into its ring.
fn raw_peer() -> (Channel, shm::RawWriter, UnixStream) {
    let segment = Segment::new().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let ch = shm::channel(
        ours,
        segment.try_clone().unwrap(),
        Side::First,
        CodecConfig::default(),
    )
    .unwrap();
    let keep = theirs.try_clone().unwrap();
    let raw = shm::raw_writer(theirs, segment, Side::Second, BOUND).unwrap();
    (ch, raw, keep)
}

async fn order_both_ways() {
    let (a, b) = shm::pair().unwrap();
    for i in 0..200 {
        a.send(yield_msg(i)).await.unwrap();
        b.send(yield_msg(1000 + i)).await.unwrap();
    }
    for i in 0..200 {
        assert_eq!(b.recv().await.unwrap(), yield_msg(i));
        assert_eq!(a.recv().await.unwrap(), yield_msg(1000 + i));
    }
}

#[test]
fn messages_arrive_in_order_both_ways() {
    plain(order_both_ways());
    parked(order_both_ways());
}

/// More than a ring's worth in flight, both ways: writers wait for room, readers make it.
async fn more_than_a_ring(a: Channel, mut b: Channel) {
    b.end_handshake();
    let payload = Value::Bytes(vec![0x5a; 3 * shm::RING_BYTES + 17]);
    let sent = payload.clone();
    let writer = async move {
        for i in 0..20 {
            a.send(Msg::Yield {
                cid: Cid(i),
                value: sent.clone(),
            })
            .await
            .unwrap();
        }
        a
    };
    let reader = async {
        for i in 0..20 {
            assert_eq!(
                b.recv().await.unwrap(),
                Msg::Yield {
                    cid: Cid(i),
                    value: payload.clone(),
                }
            );
        }
    };
    let (a, ()) = future::zip(writer, reader).await;
    drop(a);
    assert!(b.recv().await.unwrap_err().is_closed());
}

#[test]
fn a_message_larger_than_the_ring_crosses_whole_on_one_thread() {
    let (a, b) = shm::pair().unwrap();
    plain(more_than_a_ring(a, b));
    let (a, b) = shm::pair().unwrap();
    parked(more_than_a_ring(a, b));
}

#[test]
fn concurrent_senders_on_other_threads_never_interleave_frames() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 40;
    for run in RUNNERS {
        let (a, mut b) = shm::pair().unwrap();
        b.end_handshake();
        let (tx, _rx) = a.split();
        let payload = Value::Bytes(vec![0xab; 100_000]);
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let tx = tx.clone();
                let payload = payload.clone();
                std::thread::spawn(move || {
                    parked(async {
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
        let payload2 = payload.clone();
        let next_ref = &mut next;
        run(Box::pin(async move {
            for _ in 0..SENDERS * EACH {
                match b.recv().await.unwrap() {
                    Msg::Yield { cid, value } => {
                        let items = value.as_list().unwrap();
                        assert_eq!(items[0], Value::Int(next_ref[cid.0 as usize]));
                        assert_eq!(items[1], payload2);
                        next_ref[cid.0 as usize] += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(b.recv().await.unwrap_err().is_closed());
        }));
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(next, vec![EACH as i64; SENDERS as usize]);
    }
}

/// A ping-pong between two threads, each in `park::block_on` with the given spin: a long spin
/// catches replies in the ring; no spin makes every wait arm the ring and sleep, so every reply
/// must ring the bell (a lost bell is a hang, caught by the bound).
#[test]
fn ping_pong_caught_while_spinning_or_after_sleeping_keeps_order() {
    // Few rounds with a forced spin: two threads that spin whatever the load starve the tests
    // beside them on a loaded machine (the parkers' own gate turns spinning off there). Many
    // without: a sleeping round costs no CPU, and every one of them must ring the bell.
    for (spin, rounds) in [
        (Duration::from_micros(200), 300),
        (Duration::from_micros(1), 300),
        (Duration::ZERO, 2000),
    ] {
        let (a, b) = shm::pair().unwrap();
        let echo = std::thread::spawn(move || {
            parked_spin(spin, async {
                while let Ok(msg) = b.recv().await {
                    b.send(msg).await.unwrap();
                }
            })
        });
        parked_spin(spin, async {
            for i in 0..rounds {
                a.send(yield_msg(i)).await.unwrap();
                assert_eq!(a.recv().await.unwrap(), yield_msg(i), "spin {spin:?}");
            }
        });
        a.close();
        drop(a);
        echo.join().unwrap();
    }
}

/// An actor's parker that follows the writer of its rings onto its CPU on a crowded machine
/// (`park::block_on_following`): whether or not the machine is crowded now (a loaded test run
/// may be), every reply comes, in order, and the thread's affinity is what it was.
#[test]
fn ping_pong_with_a_following_peer_keeps_order_and_affinity() {
    let (a, b) = shm::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let before = rustix::thread::sched_getaffinity(None).expect("affinity");
        park::block_on_following(future::or(
            async {
                while let Ok(msg) = b.recv().await {
                    b.send(msg).await.unwrap();
                }
            },
            timeout(),
        ));
        let after = rustix::thread::sched_getaffinity(None).expect("affinity");
        assert_eq!(after, before, "the affinity is given back after any move");
    });
    parked_spin(Duration::ZERO, async {
        for i in 0..2000 {
            a.send(yield_msg(i)).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), yield_msg(i));
        }
    });
    a.close();
    drop(a);
    echo.join().unwrap();
}

/// The same with the echo waiting in async-io's reactor (it arms its ring before every wait).
/// Many rounds: a wait kept across a taken bell (the writer clears the flag when it rings) hung
/// here about one run in three before the reader re-armed before every wait. A round costs two
/// sleeps, so the bound is a hang's, not a speed's.
#[test]
fn ping_pong_with_an_unparked_peer_keeps_order() {
    const BOUND: Duration = Duration::from_secs(90);
    let (a, b) = shm::pair().unwrap();
    let echo = std::thread::spawn(move || {
        async_io::block_on(future::or(
            async {
                while let Ok(msg) = b.recv().await {
                    b.send(msg).await.unwrap();
                }
            },
            timeout_after(BOUND),
        ))
    });
    park::block_on_gated(
        SpinGate::always(Duration::ZERO),
        future::or(
            async {
                for i in 0..20_000 {
                    a.send(yield_msg(i)).await.unwrap();
                    assert_eq!(a.recv().await.unwrap(), yield_msg(i));
                }
            },
            timeout_after(BOUND),
        ),
    );
    drop(a);
    echo.join().unwrap();
}

#[test]
fn dropped_peer_closes_pending_and_later_recv() {
    for parked_reader in [false, true] {
        let (a, b) = shm::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let body = async {
                let first = b.recv().await;
                let second = b.recv().await;
                (first, second)
            };
            if parked_reader {
                parked_spin(Duration::ZERO, body)
            } else {
                plain(body)
            }
        });
        drop(a);
        let (first, second) = reader.join().unwrap();
        assert!(first.unwrap_err().is_closed());
        assert!(second.unwrap_err().is_closed());
    }
}

#[test]
fn close_delivers_what_was_sent_then_closed() {
    parked(async {
        let (a, b) = shm::pair().unwrap();
        a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
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
fn send_to_a_peer_that_dropped_its_receiver_hands_the_message_back() {
    plain(async {
        let (a, b) = shm::pair().unwrap();
        drop(b);
        let err = a.send(yield_msg(3)).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(err.into_msg(), yield_msg(3));

        let (a, b) = shm::pair().unwrap();
        let (_b_tx, b_rx) = b.split();
        drop(b_rx);
        let err = a.send(yield_msg(4)).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(err.into_msg(), yield_msg(4));
    });
}

#[test]
fn a_full_ring_whose_reader_is_gone_fails_the_send_instead_of_waiting() {
    // The peer's process "dies": its socket closes without the receiver's goodbye flag in the
    // segment, as a killed process leaves it; nobody ever read the ring.
    let (ch, raw, keep) = raw_peer();
    parked(async {
        let payload = Value::Bytes(vec![1; shm::RING_BYTES / 4]);
        let mut sent = 0;
        while sent < 8 {
            let send = ch.send(Msg::Yield {
                cid: Cid(sent),
                value: payload.clone(),
            });
            match future::poll_once(Box::pin(send)).await {
                Some(r) => r.unwrap(),
                None => break,
            }
            sent += 1;
        }
        assert!(sent < 8, "the ring never filled");
        drop(raw);
        drop(keep);
        let err = ch.send(yield_msg(99)).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
    });
}

#[test]
fn a_cancelled_recv_loses_no_data() {
    let (ch, mut raw, _keep) = raw_peer();
    let frame = codec::encode(&yield_msg(5), &CodecConfig::default()).unwrap();
    raw.write_all(&frame[..frame.len() - 2]).unwrap();
    parked(async {
        assert!(future::poll_once(ch.recv()).await.is_none());
    });
    raw.write_all(&frame[frame.len() - 2..]).unwrap();
    parked(async { assert_eq!(ch.recv().await.unwrap(), yield_msg(5)) });
}

#[test]
fn a_frame_cut_short_then_the_peer_gone_is_reported_as_truncated_then_closed() {
    for run in RUNNERS {
        let (ch, mut raw, keep) = raw_peer();
        let frame = codec::encode(&yield_msg(7), &CodecConfig::default()).unwrap();
        let mut bytes = frame.clone();
        let half = frame.len() / 2;
        bytes.extend_from_slice(&frame[..half]);
        raw.write_all(&bytes).unwrap();
        drop(raw);
        drop(keep);
        run(Box::pin(async move {
            assert_eq!(ch.recv().await.unwrap(), yield_msg(7));
            let err = ch.recv().await.unwrap_err();
            assert!(
                matches!(err, RecvError::TruncatedFrame { expected, got }
                    if expected == frame.len() && got == half),
                "{err:?}"
            );
            assert!(matches!(ch.recv().await.unwrap_err(), RecvError::Closed));
        }));
    }
}

#[test]
fn an_oversized_header_before_the_handshake_ends_the_connection() {
    let (ch, mut raw, _keep) = raw_peer();
    let len = codec::DEFAULT_MAX_HANDSHAKE_FRAME as u32 + 1;
    raw.write_all(&len.to_le_bytes()).unwrap();
    parked(async {
        let err = ch.recv().await.unwrap_err();
        assert!(
            matches!(
                err,
                RecvError::Decode(DecodeError::HandshakeFrameTooLarge { len: l, max })
                    if l == u64::from(len) && max == codec::DEFAULT_MAX_HANDSHAKE_FRAME
            ),
            "{err:?}"
        );
        assert!(matches!(ch.recv().await.unwrap_err(), RecvError::Closed));
    });
    // The receiver stopped reading for good: the peer's further writes fail instead of waiting
    // for room that never comes.
    let refused = (0..64).find_map(|_| raw.write_all(&[0; 4096]).err());
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe),
        "the peer could keep writing: {refused:?}"
    );
}

#[test]
fn a_peer_writing_frames_on_the_socket_is_an_error_not_a_hang() {
    for run in RUNNERS {
        let (ch, raw, mut sock) = raw_peer();
        drop(raw);
        let frame = codec::encode(&yield_msg(1), &CodecConfig::default()).unwrap();
        sock.write_all(&frame).unwrap();
        run(Box::pin(async move {
            let err = ch.recv().await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains("shared-memory"), "{text}");
        }));
    }
}

#[test]
fn a_segment_that_is_not_sealed_or_has_another_size_is_refused() {
    use rustix::fs::{MemfdFlags, ftruncate, memfd_create};
    let fd = memfd_create("test", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&fd, shm::SEGMENT_BYTES as u64).unwrap();
    let err = Segment::from_fd(fd).unwrap_err();
    assert!(err.to_string().contains("seal"), "{err}");

    let fd = memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, 4096).unwrap();
    rustix::fs::fcntl_add_seals(
        &fd,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .unwrap();
    let err = Segment::from_fd(fd).unwrap_err();
    assert!(err.to_string().contains("bytes instead of"), "{err}");

    let not_memfd = std::fs::File::open("/proc/self/stat").unwrap();
    assert!(Segment::from_fd(not_memfd.into()).is_err());
}

#[test]
fn a_segment_with_another_header_is_refused() {
    let segment = Segment::new().unwrap();
    rustix::io::pwrite(&segment, b"notharro", 0).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let err = shm::channel(a, segment, Side::Second, CodecConfig::default()).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
}

/// A parked thread that never sleeps (a task keeps yielding beside the read) still learns that
/// its peer ended: the end comes on the socket, which the spin does not look at for a ring, so
/// the parker takes the sockets' edges at least every millisecond.
#[test]
fn a_thread_that_never_sleeps_still_sees_its_peer_end() {
    let (a, b) = shm::pair().unwrap();
    let closer = std::thread::spawn(move || {
        parked(async {
            a.send(yield_msg(1)).await.unwrap();
        });
        drop(a);
    });
    parked(async {
        let busy = async {
            loop {
                future::yield_now().await;
            }
        };
        let read = async {
            assert_eq!(b.recv().await.unwrap(), yield_msg(1));
            b.recv().await
        };
        let end = future::or(read, busy).await;
        assert!(end.unwrap_err().is_closed());
    });
    closer.join().unwrap();
}
