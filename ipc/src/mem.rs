//! The in-memory transport: a queue per direction, no encoding. For peers in one address space.
//!
//! Each direction is a ring of [`RING`] slots that senders and the receiver use without a lock
//! ([`concurrent_queue`]'s bounded queue: each end on cache lines of its own, a slot claimed by
//! a compare-and-swap), a spill behind it for what does not fit (a mutex-guarded queue, whose
//! lock a sender takes only when the ring is full or the spill holds messages, and the receiver
//! only when the ring is empty and the spill holds messages), and the receiver's waker
//! ([`atomic_waker::AtomicWaker`]). A sender pushes and, when it wakes, wakes the waker; the
//! receiver pops, and when it finds nothing registers its waker and looks once more. Where the
//! sender and the receiver run on two CPUs, a message moves its slot's lines between them and
//! nothing else; with one mutex-guarded queue here, as before, the lock's line went back and
//! forth for every message and every look at the queue, and the two sides spun on each other's
//! hold of it (the thread stream echo, the two CPUs far apart: 1.2-1.5 M items per second with
//! the mutex, 2.2-2.9 M with the ring).
//!
//! While anything waits in the spill, senders add to the spill rather than to the ring, and the
//! receiver empties the ring before it takes the spill: so the messages of one sender arrive in
//! the order sent, as they did through the single queue.
//!
//! [`send_now`](SendHalf::send_now) pushes without waking; [`flush_now`](SendHalf::flush_now)
//! wakes the receiver once for all of them (the portal's link sends that way, one wake-up per
//! batch). A [`pair_waking_early`] also wakes a waiting receiver in the middle of a long batch,
//! so that the two sides overlap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;
use concurrent_queue::{ConcurrentQueue, PopError, PushError};

use crate::channel::BoxFuture;
use crate::{Channel, Msg, RecvError, RecvHalf, SendError, SendHalf};

/// Makes a connected pair of in-memory channels.
pub fn pair() -> (Channel, Channel) {
    pair_with(0, || false)
}

/// [`pair`], where a receiver waiting for messages is also woken in the middle of a batch
/// handed over with [`send_now`](SendHalf::send_now), once [`EARLY_WAKE`] messages wait for
/// it, unless it last waited on the sender's own CPU or the machine has no core to spare
/// ([`cores_to_spare`](crate::park::spin::cores_to_spare): other programs' CPU hogs, or more
/// runnable threads than twice the cores): so that a sender that hands over a long burst and
/// the receiver work on it at once, instead of taking turns.
///
/// For peers that each have a thread of their own, waiting in a spin before they sleep (a
/// thread actor and its parent): the stream echo of `harrow bench --only stream-thread` went
/// from 2.2-2.6 M to 4.0-4.3 M items per second on an idle 2-core machine, and from 0.68 M to
/// 0.90 M with spinning off; beside two CPU hogs it took 2.3-2.6 M, as the plain pair did
/// (1.3-2.6 M in runs interleaved with them). Where the receiver's thread is busy with other
/// work (a subint actor's interpreter thread, which also runs the Python code), the wake-ups
/// cost more than the overlap gives: the subint echo went from 0.67-0.69 M to 0.43-0.50 M items
/// per second, so that backend keeps [`pair`]. A wake-up of a receiver that shares the sender's
/// CPU costs a context switch for no overlap, so none is made then: on one CPU the thread echo
/// took 1.96 M items per second with such wake-ups, and 2.4-2.7 M without them, as with the
/// plain pair.
///
/// An early wake-up does not also wait for a moment when no thread waits for a CPU
/// ([`no_thread_waits`](crate::park::spin::no_thread_waits)). Two spinning threads on a
/// 2-core machine are already two runnable threads, so any third one anywhere, at the instant
/// the count is read (once per [`LOAD_SAMPLE`](crate::park::spin::LOAD_SAMPLE)), turned early
/// wake-ups off until the next reading: in an idle `--only stream-thread`, most 200,000-item
/// echoes had 15,000-27,000 early wake-ups refused that way, against 5,500-7,500 made.
/// Without that condition the echo took 4.26-4.54 M items per second against 3.77-4.22 M in
/// eight interleaved pairs; beside one CPU hog and beside two it did not change (the pair then
/// shares a CPU, or the hogs close [`cores_to_spare`](crate::park::spin::cores_to_spare)).
pub fn pair_waking_early() -> (Channel, Channel) {
    pair_with(EARLY_WAKE, crate::park::spin::cores_to_spare)
}

/// How many messages handed over by [`send_now`](SendHalf::send_now) make a
/// [`pair_waking_early`] wake its waiting receiver before the sender's flush: half the portal's
/// default stream window.
pub const EARLY_WAKE: usize = 32;

/// A pair whose queues wake a waiting receiver once `early` messages wait (0: never before a
/// flush), when `may_wake_early` says so at that moment.
fn pair_with(early: usize, may_wake_early: fn() -> bool) -> (Channel, Channel) {
    let a_to_b = Arc::new(Queue::new(early, may_wake_early));
    let b_to_a = Arc::new(Queue::new(early, may_wake_early));
    (
        Channel::from_halves(MemTx { q: a_to_b.clone() }, MemRx::new(b_to_a.clone())),
        Channel::from_halves(MemTx { q: b_to_a }, MemRx::new(a_to_b)),
    )
}

/// `T` on cache lines of its own (two, against the prefetcher that fetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// How many messages a queue holds without a lock: a stream's default window. Past that,
/// messages wait in the queue's spill, under a lock, until the receiver has taken the ring's.
/// A ring of 64 takes 5.5 KiB (a slot is a message and a stamp, 88 bytes). In the thread stream
/// echo (`harrow bench --only stream-thread`) 0.3 % of the messages spilled with the two
/// threads on two CPUs, 6 % with both on one; a ring of 128 made no difference to its speed.
const RING: usize = 64;

/// [`RxSide::waiting_from`] when the receiver is not known to wait.
const NOT_WAITING: u64 = u64::MAX;
/// [`RxSide::waiter_cpu`] when the receiver's CPU is not known.
const NO_CPU: usize = usize::MAX;

/// One direction.
#[derive(Debug)]
struct Queue {
    /// The messages, while they fit. Closed when the sending half closes (the receiver gets
    /// what is queued, then `Closed`) or the receiving half goes (sends fail).
    ring: ConcurrentQueue<Msg>,
    /// The messages that did not fit, behind those in `ring`, and whether the queue is closed.
    spill: Mutex<Spill>,
    /// Whether `spill` holds messages: while it does, senders add to it rather than to `ring`,
    /// so that a sender's messages keep their order.
    spilled: AtomicBool,
    /// What the receiver writes when it waits, and the senders read.
    rx: Padded<RxSide>,
    /// How many messages were pushed (counted for a queue that wakes early only), written by
    /// the senders alone.
    pushed: Padded<AtomicU64>,
    /// Wake a waiting receiver once this many messages wait, flushed or not (0: only on a
    /// flush; see [`pair_waking_early`]) ...
    early: usize,
    /// ... if this says so then (not on a crowded machine).
    may_wake_early: fn() -> bool,
}

#[derive(Debug, Default)]
struct Spill {
    msgs: VecDeque<Msg>,
    closed: bool,
}

#[derive(Debug)]
struct RxSide {
    /// A receiver waiting for a message.
    waker: AtomicWaker,
    /// For a queue that wakes early: how many messages the receiver had taken when it last
    /// registered its waker and found the queue empty ([`NOT_WAITING`]: it was woken since), so
    /// that a sender knows how many wait for it without reading the receiver's end.
    waiting_from: AtomicU64,
    /// The CPU the receiver ran on when it last registered its waker ([`NO_CPU`]: unknown),
    /// for a queue that wakes early.
    waiter_cpu: AtomicUsize,
}

impl Queue {
    fn new(early: usize, may_wake_early: fn() -> bool) -> Queue {
        Queue {
            ring: ConcurrentQueue::bounded(RING),
            spill: Mutex::default(),
            spilled: AtomicBool::new(false),
            rx: Padded(RxSide {
                waker: AtomicWaker::new(),
                waiting_from: AtomicU64::new(NOT_WAITING),
                waiter_cpu: AtomicUsize::new(NO_CPU),
            }),
            pushed: Padded(AtomicU64::new(0)),
            early,
            may_wake_early,
        }
    }

    fn lock_spill(&self) -> MutexGuard<'_, Spill> {
        self.spill.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes `msg`; returns how many messages were pushed so far, this one included (counted
    /// for a queue that wakes early only: 0 otherwise).
    fn push(&self, msg: Msg) -> Result<u64, SendError> {
        self.enqueue(msg)?;
        Ok(if self.early > 0 {
            self.pushed.0.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        })
    }

    fn enqueue(&self, msg: Msg) -> Result<(), SendError> {
        let msg = if self.spilled.load(Ordering::Acquire) {
            msg
        } else {
            match self.ring.push(msg) {
                Ok(()) => return Ok(()),
                Err(PushError::Full(msg)) => msg,
                Err(PushError::Closed(msg)) => return Err(SendError::Closed(Box::new(msg))),
            }
        };
        let mut spill = self.lock_spill();
        if spill.closed {
            return Err(SendError::Closed(Box::new(msg)));
        }
        spill.msgs.push_back(msg);
        self.spilled.store(true, Ordering::Release);
        Ok(())
    }

    /// Pushes `msg` without waking the receiver, unless this queue wakes early and enough
    /// messages wait for a receiver that waits for them (see [`pair_waking_early`]).
    fn push_quiet(&self, msg: Msg) -> Result<(), SendError> {
        let pushed = self.push(msg)?;
        if self.early == 0 {
            return Ok(());
        }
        let from = self.rx.0.waiting_from.load(Ordering::Relaxed);
        // `from` may run ahead of `pushed` for a moment (the receiver took a message whose
        // sender has not counted it yet): then nothing waits.
        if from != NOT_WAITING
            && pushed.saturating_sub(from) >= self.early as u64
            && apart(
                cpu_from(self.rx.0.waiter_cpu.load(Ordering::Relaxed)),
                crate::park::spin::this_cpu(),
            )
            // Whether the machine is crowded may take a look at `/proc` now and then.
            && (self.may_wake_early)()
        {
            self.wake();
        }
        Ok(())
    }

    /// Wakes the receiver, if it waits.
    fn wake(&self) {
        if self.early > 0 {
            self.rx.0.waiting_from.store(NOT_WAITING, Ordering::Relaxed);
        }
        self.rx.0.waker.wake();
    }

    /// Closes the queue: later sends fail. Whether this call closed it.
    fn close(&self) -> bool {
        // The spill first: a receiver that finds the ring closed then finds every message that
        // made it into the spill there.
        let newly = !std::mem::replace(&mut self.lock_spill().closed, true);
        self.ring.close();
        newly
    }
}

fn cpu_from(cpu: usize) -> Option<usize> {
    (cpu != NO_CPU).then_some(cpu)
}

/// The sending half of a [`pair`] end.
#[derive(Debug)]
pub struct MemTx {
    q: Arc<Queue>,
}

impl MemTx {
    fn try_send(&self, msg: Msg) -> Result<(), SendError> {
        self.q.push(msg)?;
        self.q.wake();
        Ok(())
    }

    fn disconnect(&self) {
        if self.q.close() {
            self.q.wake();
        }
    }
}

impl SendHalf for MemTx {
    fn send(&self, msg: Msg) -> BoxFuture<'_, Result<(), SendError>> {
        // Unbounded: never waits. Flow control lives in the protocol (credits), not here.
        let result = self.try_send(msg);
        Box::pin(std::future::ready(result))
    }

    fn send_batch<'a>(
        &'a self,
        msgs: &'a mut VecDeque<Msg>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        // One wake-up for the whole batch. A send that fails hands its message back; the rest
        // stay in `msgs`.
        let mut result = Ok(());
        while let Some(msg) = msgs.pop_front() {
            if let Err(e) = self.q.push(msg) {
                result = Err(e);
                break;
            }
        }
        self.q.wake();
        Box::pin(std::future::ready(result))
    }

    fn close(&self) {
        self.disconnect();
    }

    fn sends_immediately(&self) -> bool {
        true
    }

    fn send_now(&self, msg: Msg) -> Result<(), SendError> {
        self.q.push_quiet(msg)
    }

    fn flush_now(&self) {
        self.q.wake();
    }
}

impl Drop for MemTx {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// The receiving half of a [`pair`] end.
#[derive(Debug)]
pub struct MemRx {
    q: Arc<Queue>,
    /// What the last look at the spill took, handed out in order before looking again.
    buf: VecDeque<Msg>,
    /// How many messages this half took (for a queue that wakes early, see
    /// [`RxSide::waiting_from`]).
    taken: u64,
}

impl MemRx {
    fn new(q: Arc<Queue>) -> MemRx {
        MemRx {
            q,
            buf: VecDeque::new(),
            taken: 0,
        }
    }

    /// The next message, if one is queued or the queue is closed.
    fn take(&mut self) -> Option<Result<Msg, RecvError>> {
        let next = self.take_msg();
        if let Some(Ok(_)) = next {
            self.taken += 1;
        }
        next
    }

    fn take_msg(&mut self) -> Option<Result<Msg, RecvError>> {
        if let Some(msg) = self.buf.pop_front() {
            return Some(Ok(msg));
        }
        let closed = match self.q.ring.pop() {
            Ok(msg) => return Some(Ok(msg)),
            Err(PopError::Empty) => false,
            Err(PopError::Closed) => true,
        };
        // The ring is empty: what spilled comes next (everything in the ring was pushed before
        // it, or beside it by another sender). Once closed, look whatever the flag says.
        if closed || self.q.spilled.load(Ordering::Acquire) {
            let mut spill = self.q.lock_spill();
            std::mem::swap(&mut spill.msgs, &mut self.buf);
            self.q.spilled.store(false, Ordering::Release);
            drop(spill);
            if let Some(msg) = self.buf.pop_front() {
                return Some(Ok(msg));
            }
        }
        closed.then_some(Err(RecvError::Closed))
    }

    /// The next message, or `None` after registering `waker` (if given) to be woken for one.
    fn poll_next(&mut self, waker: Option<&Waker>) -> Option<Result<Msg, RecvError>> {
        if let Some(next) = self.take() {
            return Some(next);
        }
        let waker = waker?;
        let rx = &self.q.rx.0;
        rx.waker.register(waker);
        if self.q.early > 0 {
            let cpu = crate::park::spin::this_cpu().unwrap_or(NO_CPU);
            rx.waiter_cpu.store(cpu, Ordering::Relaxed);
            rx.waiting_from.store(self.taken, Ordering::Relaxed);
        }
        // A message pushed, or a close made, before the waker was in place woke nobody: look
        // again now that it is (the waker's registration orders this look after it).
        self.take()
    }
}

/// Whether a receiver last seen on `waiter` may run beside a sender on `sender` (either
/// unknown: maybe). A wake-up of a receiver on the sender's own CPU makes it run only once the
/// sender stops, at the price of a context switch, so an early one gains nothing there.
fn apart(waiter: Option<usize>, sender: Option<usize>) -> bool {
    match (waiter, sender) {
        (Some(w), Some(s)) => w != s,
        _ => true,
    }
}

impl RecvHalf for MemRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        // Cancel-safe: a message is only ever taken out of `buf` by a poll that returns it.
        Box::pin(futures_lite::future::poll_fn(move |cx| {
            match self.poll_next(Some(cx.waker())) {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            }
        }))
    }

    fn try_recv_now(&mut self) -> Option<Result<Msg, RecvError>> {
        self.poll_next(None)
    }

    fn poll_recv_now(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<Poll<Result<Msg, RecvError>>> {
        Some(match self.poll_next(Some(cx.waker())) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        })
    }
}

impl Drop for MemRx {
    fn drop(&mut self) {
        // Later sends fail; what is queued goes.
        self.q.close();
        while self.q.ring.pop().is_ok() {}
        drop(std::mem::take(&mut self.q.lock_spill().msgs));
        drop(self.q.rx.0.waker.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// How often a receiver waiting on an empty queue (made with `early` and `may`) is woken
    /// while `n` messages are handed over with `send_now` (no flush), the receiver having last
    /// waited on CPU `waiter` (as the queue records it); and all of them then arrive in order.
    fn wake_ups_during_quiet_sends(
        early: usize,
        may: fn() -> bool,
        waiter: Option<usize>,
        n: u64,
    ) -> usize {
        let q = Arc::new(Queue::new(early, may));
        let tx = MemTx { q: q.clone() };
        let mut rx = MemRx::new(q.clone());
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(rx.poll_next(Some(&waker)).is_none());
        q.rx.0
            .waiter_cpu
            .store(waiter.unwrap_or(NO_CPU), Ordering::Relaxed);
        for i in 0..n {
            tx.send_now(Msg::Stop { cid: crate::Cid(i) }).unwrap();
        }
        let woken = count.0.load(std::sync::atomic::Ordering::SeqCst);
        for i in 0..n {
            assert_eq!(
                rx.poll_next(None).unwrap().unwrap(),
                Msg::Stop { cid: crate::Cid(i) }
            );
        }
        assert!(rx.poll_next(None).is_none());
        woken
    }

    #[test]
    fn a_quiet_burst_wakes_a_waiting_receiver_only_where_the_pair_wakes_early() {
        // A CPU no sender runs on: the receiver waits elsewhere.
        let elsewhere = Some(usize::MAX);
        // The plain pair's queues: no wake-up before the sender's flush, however long the burst.
        assert_eq!(wake_ups_during_quiet_sends(0, || false, elsewhere, 100), 0);
        // Waking early: once the burst reaches the threshold (the receiver then registers no
        // waker until it waits again, so once), and not before.
        assert_eq!(wake_ups_during_quiet_sends(4, || true, elsewhere, 3), 0);
        assert_eq!(wake_ups_during_quiet_sends(4, || true, elsewhere, 4), 1);
        assert_eq!(wake_ups_during_quiet_sends(4, || true, elsewhere, 100), 1);
        assert_eq!(wake_ups_during_quiet_sends(4, || true, None, 100), 1);
        // ... unless the machine is crowded then.
        assert_eq!(wake_ups_during_quiet_sends(4, || false, elsewhere, 100), 0);
    }

    #[test]
    fn an_early_wake_up_counts_messages_sent_every_way() {
        // Messages sent with `send` (each woken at once) and then taken count too: the burst
        // of quiet sends that follows wakes the receiver once it is `early` long, not later.
        let q = Arc::new(Queue::new(4, || true));
        let tx = MemTx { q: q.clone() };
        let mut rx = MemRx::new(q.clone());
        for i in 0..10 {
            tx.try_send(stop(i)).unwrap();
        }
        for i in 0..10 {
            assert_eq!(rx.poll_next(None).unwrap().unwrap(), stop(i));
        }
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        assert!(rx.poll_next(Some(&Waker::from(count.clone()))).is_none());
        q.rx.0.waiter_cpu.store(usize::MAX - 1, Ordering::Relaxed);
        for i in 10..13 {
            tx.send_now(stop(i)).unwrap();
        }
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        tx.send_now(stop(13)).unwrap();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn an_early_wake_up_needs_the_receiver_on_another_cpu() {
        assert!(apart(Some(0), Some(1)));
        assert!(!apart(Some(1), Some(1)));
        // Unknown on either side: maybe apart.
        assert!(apart(None, Some(1)));
        assert!(apart(Some(1), None));
        assert!(apart(None, None));
    }

    #[test]
    fn a_waiting_receiver_records_its_cpu_where_the_queue_wakes_early() {
        for (early, recorded) in [(0, false), (4, true)] {
            let q = Arc::new(Queue::new(early, || true));
            let mut rx = MemRx::new(q.clone());
            let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            assert!(rx.poll_next(Some(&Waker::from(count))).is_none());
            let cpu = crate::park::spin::this_cpu();
            assert_eq!(
                cpu_from(q.rx.0.waiter_cpu.load(Ordering::Relaxed)).is_some(),
                recorded && cpu.is_some()
            );
        }
    }

    fn stop(i: u64) -> Msg {
        Msg::Stop { cid: crate::Cid(i) }
    }

    #[test]
    fn messages_past_the_ring_wait_in_the_spill_and_keep_their_order() {
        let (a, b) = pair();
        let (atx, _arx) = a.split();
        let (_btx, mut brx) = b.split();
        let mut next_sent = 0u64;
        let mut next_taken = 0u64;
        // Fill well past the ring, take part of it, and go on sending while the spill still
        // holds messages: the later ones must queue behind them, not slip into the freed ring.
        for (send, take) in [(RING as u64 * 3, 10), (5, RING as u64), (RING as u64, 1)] {
            for _ in 0..send {
                atx.send_now(stop(next_sent)).unwrap();
                next_sent += 1;
            }
            for _ in 0..take {
                assert_eq!(brx.try_recv_now().unwrap().unwrap(), stop(next_taken));
                next_taken += 1;
            }
        }
        atx.close();
        assert!(atx.send_now(Msg::Heartbeat).unwrap_err().is_closed());
        while next_taken < next_sent {
            assert_eq!(brx.try_recv_now().unwrap().unwrap(), stop(next_taken));
            next_taken += 1;
        }
        assert!(brx.try_recv_now().unwrap().unwrap_err().is_closed());
    }

    #[test]
    fn concurrent_senders_each_keep_their_order_through_ring_and_spill() {
        const EACH: u64 = 20_000;
        let (a, b) = pair();
        let (atx, _arx) = a.split();
        let atx = Arc::new(atx);
        let senders: Vec<_> = (0..2u64)
            .map(|who| {
                let atx = atx.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        atx.send_now(stop(who << 32 | i)).unwrap();
                        // Bursts past the ring now and then, flushed at their end.
                        if i % 500 == 499 {
                            atx.flush_now();
                        }
                    }
                    atx.flush_now();
                })
            })
            .collect();
        let (_btx, mut brx) = b.split();
        let receiver = std::thread::spawn(move || {
            let next = [std::cell::Cell::new(0u64), std::cell::Cell::new(0u64)];
            let bounded = futures_lite::future::or(
                async {
                    while next.iter().any(|n| n.get() < EACH) {
                        let Msg::Stop { cid } = brx.recv().await.unwrap() else {
                            panic!("not a message that was sent");
                        };
                        let n = &next[(cid.0 >> 32) as usize];
                        assert_eq!(
                            cid.0 & 0xffff_ffff,
                            n.get(),
                            "a sender's message out of order"
                        );
                        n.set(n.get() + 1);
                    }
                },
                async {
                    async_io::Timer::after(std::time::Duration::from_secs(30)).await;
                    panic!("not every message arrived within 30 s: {next:?}");
                },
            );
            async_io::block_on(bounded);
            brx
        });
        for s in senders {
            s.join().unwrap();
        }
        let mut brx = receiver.join().unwrap();
        assert!(brx.try_recv_now().is_none());
    }

    #[test]
    fn a_dropped_receiver_fails_later_sends_with_messages_in_the_spill() {
        let (a, b) = pair();
        let (atx, _arx) = a.split();
        for i in 0..RING as u64 + 10 {
            atx.send_now(stop(i)).unwrap();
        }
        drop(b);
        let err = atx.send_now(stop(1)).unwrap_err();
        assert!(err.is_closed());
        assert_eq!(err.into_msg(), stop(1));
    }

    #[test]
    fn messages_arrive_in_order() {
        block_on(async {
            let (a, b) = pair();
            for i in 0..100u64 {
                a.send(Msg::Stop { cid: crate::Cid(i) }).await.unwrap();
            }
            for i in 0..100u64 {
                assert_eq!(b.recv().await.unwrap(), Msg::Stop { cid: crate::Cid(i) });
            }
        });
    }

    #[test]
    fn dropped_peer_closes_pending_recv() {
        let (a, b) = pair();
        let reader = std::thread::spawn(move || block_on(b.recv()));
        drop(a);
        assert!(reader.join().unwrap().unwrap_err().is_closed());
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_each_send() {
        let (a, b) = pair();
        let echo = std::thread::spawn(move || {
            block_on(async {
                while let Ok(m) = b.recv().await {
                    b.send(m).await.unwrap();
                }
            })
        });
        let bounded = futures_lite::future::or(
            async {
                for i in 0..1000u64 {
                    a.send(Msg::Stop { cid: crate::Cid(i) }).await.unwrap();
                    assert_eq!(a.recv().await.unwrap(), Msg::Stop { cid: crate::Cid(i) });
                }
            },
            async {
                async_io::Timer::after(std::time::Duration::from_secs(10)).await;
                panic!("timed out after 10 s");
            },
        );
        async_io::block_on(bounded);
        a.close();
        echo.join().unwrap();
    }

    #[test]
    fn send_now_hands_over_in_order_and_flush_now_wakes_a_waiting_receiver() {
        let (a, b) = pair();
        let (tx, _rx) = a.split();
        assert!(tx.sends_immediately());
        // Ready at once for a receiver that polls, without any flush.
        tx.send_now(Msg::Stop { cid: crate::Cid(1) }).unwrap();
        block_on(async {
            assert_eq!(b.recv().await.unwrap(), Msg::Stop { cid: crate::Cid(1) });
        });
        // A receiver parked on its waker is woken by the flush.
        let reader = std::thread::spawn(move || {
            let bounded = futures_lite::future::or(
                async {
                    let mut got = Vec::new();
                    for _ in 0..3 {
                        got.push(b.recv().await.unwrap());
                    }
                    got
                },
                async {
                    async_io::Timer::after(std::time::Duration::from_secs(10)).await;
                    panic!("not woken within 10 s");
                },
            );
            async_io::block_on(bounded)
        });
        for i in 2..5u64 {
            tx.send_now(Msg::Stop { cid: crate::Cid(i) }).unwrap();
        }
        tx.flush_now();
        let got = reader.join().unwrap();
        let want: Vec<Msg> = (2..5u64)
            .map(|i| Msg::Stop { cid: crate::Cid(i) })
            .collect();
        assert_eq!(got, want);
        tx.close();
        let err = tx.send_now(Msg::Heartbeat).unwrap_err();
        assert!(err.is_closed());
        assert_eq!(err.into_msg(), Msg::Heartbeat);
    }

    #[test]
    fn try_recv_now_takes_what_is_there_then_says_closed() {
        let (a, b) = pair();
        let (_btx, mut brx) = b.split();
        assert!(brx.try_recv_now().is_none());
        for i in 0..3u64 {
            block_on(a.send(Msg::Stop { cid: crate::Cid(i) })).unwrap();
        }
        a.close();
        for i in 0..3u64 {
            assert_eq!(
                brx.try_recv_now().unwrap().unwrap(),
                Msg::Stop { cid: crate::Cid(i) }
            );
        }
        assert!(brx.try_recv_now().unwrap().unwrap_err().is_closed());
    }

    #[test]
    fn send_to_dropped_peer_hands_message_back() {
        block_on(async {
            let (a, b) = pair();
            drop(b);
            let err = a
                .send(Msg::CancelAck { teardown_ms: None })
                .await
                .unwrap_err();
            assert!(err.is_closed());
            assert_eq!(err.into_msg(), Msg::CancelAck { teardown_ms: None });
        });
    }

    #[test]
    fn close_delivers_what_was_sent_then_closed() {
        block_on(async {
            let (a, b) = pair();
            a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
            a.close();
            assert!(
                a.send(Msg::CancelAck { teardown_ms: None })
                    .await
                    .unwrap_err()
                    .is_closed()
            );
            assert_eq!(
                b.recv().await.unwrap(),
                Msg::CancelAck { teardown_ms: None }
            );
            assert!(b.recv().await.unwrap_err().is_closed());
            assert!(b.recv().await.unwrap_err().is_closed());
        });
    }
}
