//! `park::SharedParker`: one parker that threads use in turn (a co-driven actor's helper and
//! owner). A reader's socket stays registered in it whichever thread polls the reader, so the
//! thread whose turn it is takes the edges, including those that came while no thread waited.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use async_executor::Executor;
use futures_lite::future;
use harrow_ipc::park::spin::SpinGate;
use harrow_ipc::park::{ParkTurn, SharedParker};
use harrow_ipc::{Channel, Cid, Msg, Value, shm, unix};

fn yield_msg(i: u64) -> Msg {
    Msg::Yield {
        cid: Cid(i),
        value: Value::Int(i as i64),
    }
}

/// An executor with a task that reads `rx` and forwards what it reads to the receiver returned.
fn reading(rx: Channel) -> (Arc<Executor<'static>>, flume::Receiver<Msg>) {
    let ex: Arc<Executor<'static>> = Arc::new(Executor::new());
    let got = forwarding(&ex, rx);
    (ex, got)
}

/// A task on `ex` that reads `rx` and forwards what it reads to the receiver returned.
fn forwarding(ex: &Executor<'static>, rx: Channel) -> flume::Receiver<Msg> {
    let (fwd, got) = flume::unbounded();
    ex.spawn(async move {
        while let Ok(msg) = rx.recv().await {
            if fwd.send_async(msg).await.is_err() {
                break;
            }
        }
    })
    .detach();
    got
}

/// A thread that, at each turn it is given, runs the executor in the shared parker until the
/// reader task has forwarded one message, and reports that message.
struct Turns {
    turn: mpsc::Sender<()>,
    took: mpsc::Receiver<Msg>,
    thread: std::thread::JoinHandle<()>,
}

impl Turns {
    fn start(
        parker: SharedParker,
        ex: Arc<Executor<'static>>,
        got: flume::Receiver<Msg>,
        spin: Option<Duration>,
    ) -> Turns {
        let (turn, turns) = mpsc::channel::<()>();
        let (took_tx, took) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut mine = match spin {
                Some(spin) => ParkTurn::gated(SpinGate::always(spin)),
                None => ParkTurn::new(false),
            };
            while turns.recv().is_ok() {
                let msg = parker.block_on(&mut mine, ex.run(got.recv_async()));
                if took_tx.send(msg.expect("a message")).is_err() {
                    break;
                }
            }
        });
        Turns { turn, took, thread }
    }
}

/// Two threads take turns running one executor whose task reads a channel, in one shared
/// parker; each message is sent before its turn begins (nobody waits in the parker then) or
/// after. Every message arrives, in order, whichever thread's turn it is.
fn turns_take_every_message(pair: fn() -> std::io::Result<(Channel, Channel)>, spin: Duration) {
    let (tx, rx) = pair().expect("a channel pair");
    let (ex, got) = reading(rx);
    let parker = SharedParker::new();
    let threads = [
        Turns::start(parker.clone(), ex.clone(), got.clone(), Some(spin)),
        Turns::start(parker, ex, got, Some(spin)),
    ];
    for i in 0..60u64 {
        let this = &threads[(i % 2) as usize];
        let send = || future::block_on(tx.send(yield_msg(i))).expect("send");
        if i % 4 < 2 {
            send();
            this.turn.send(()).expect("a turn");
        } else {
            this.turn.send(()).expect("a turn");
            send();
        }
        let msg = this
            .took
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("message {i} not read within 10 s: {e}"));
        assert_eq!(msg, yield_msg(i));
    }
    for t in threads {
        drop(t.turn);
        t.thread.join().expect("a turn thread");
    }
}

#[test]
fn turns_on_a_socket_take_every_message() {
    turns_take_every_message(unix::pair, Duration::from_micros(50));
}

#[test]
fn turns_on_a_ring_take_every_message() {
    turns_take_every_message(shm::pair, Duration::from_micros(50));
}

#[test]
fn turns_that_never_spin_take_every_message() {
    // No spin: every message is caught by an edge (a ring's wake-up byte) in `epoll_wait`.
    turns_take_every_message(unix::pair, Duration::ZERO);
    turns_take_every_message(shm::pair, Duration::ZERO);
}

#[test]
fn a_second_thread_waits_for_the_first_to_leave_the_parker() {
    // One thread waits in the parker for a message on one channel; another thread's turn on
    // the same parker waits for it to leave, and then reads what came for it meanwhile. (Had
    // the second thread run the tasks outside the parker, a reader last polled by the first
    // would stay registered in the parker, where nobody waits once the first left.)
    let (tx_a, rx_a) = shm::pair().expect("a channel pair");
    let (tx_b, rx_b) = shm::pair().expect("a channel pair");
    let (ex, got_a) = reading(rx_a);
    let got_b = forwarding(&ex, rx_b);
    let parker = SharedParker::new();
    let a = Turns::start(parker.clone(), ex.clone(), got_a, None);
    let b = Turns::start(parker.clone(), ex, got_b, None);
    a.turn.send(()).expect("a's turn");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while !parker.in_use() {
        assert!(
            std::time::Instant::now() < give_up,
            "a never entered the parker"
        );
        std::thread::yield_now();
    }
    b.turn.send(()).expect("b's turn");
    // b's message is read by a (it runs every task) and waits for b.
    future::block_on(tx_b.send(yield_msg(2))).expect("send");
    future::block_on(tx_a.send(yield_msg(1))).expect("send");
    assert_eq!(
        a.took
            .recv_timeout(Duration::from_secs(10))
            .expect("a's message within 10 s"),
        yield_msg(1)
    );
    assert_eq!(
        b.took
            .recv_timeout(Duration::from_secs(10))
            .expect("b's message within 10 s"),
        yield_msg(2)
    );
    // And the reader of each channel still reads, from either thread's turn.
    for (i, t) in [(3, &a), (4, &b)] {
        t.turn.send(()).expect("a turn");
        let tx = if i == 3 { &tx_a } else { &tx_b };
        future::block_on(tx.send(yield_msg(i))).expect("send");
        assert_eq!(
            t.took
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("message {i} not read within 10 s: {e}")),
            yield_msg(i)
        );
    }
    for t in [a, b] {
        drop(t.turn);
        t.thread.join().expect("a turn thread");
    }
}
