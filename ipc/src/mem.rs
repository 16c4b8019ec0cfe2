//! The in-memory transport: a queue per direction, no encoding. For peers in one address space.
//!
//! Each direction is one mutex-guarded queue holding the messages and the receiver's waker. A
//! sender pushes under the lock and wakes the receiver after releasing it (so the woken receiver
//! never finds the lock still held by its waker). The receiver takes **everything** queued in one
//! lock (swapping the queue with its own, empty, buffer) and hands it out from that buffer
//! without locking again: one lock per batch on the receiving side, one per message on the
//! sending side (one per batch for a pair that gathers, below), and no copy of a message beyond
//! moving it in and out of the queue.
//!
//! [`send_now`](SendHalf::send_now) pushes without waking; [`flush_now`](SendHalf::flush_now)
//! wakes the receiver once for all of them (the portal's link sends that way, one wake-up per
//! batch). A [`pair_waking_early`] gathers what `send_now` hands over on the sender's side and
//! puts it in the queue under one lock per [`EARLY_WAKE`] messages or per flush, waking a
//! waiting receiver there too, so that the two sides overlap and share the lock once per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

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
/// The messages of a burst are gathered on the sender's side (under a lock of the sending
/// half's own, which the receiver never takes) and put in the queue [`EARLY_WAKE`] at a time,
/// or at the flush: so the sender and the receiver take the queue's lock once per batch, not
/// once per message each. Where the two threads run on two CPUs that share no cache, each
/// lock of the queue moves its line between them, and with a lock per message the two sides
/// spun on each other's hold of it (the thread stream echo with the CPUs far apart: 1.2-1.5 M
/// items per second with a lock per message, 2.9-3.3 M gathered). A plain [`pair`] puts each
/// message in the queue at once: the subint echo, whose receiver runs the Python echo on the
/// same thread, went from 0.45-0.47 M to 0.36-0.38 M items per second with gathering.
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

/// How many messages handed over by [`send_now`](SendHalf::send_now) a [`pair_waking_early`]
/// gathers before it puts them in the queue and wakes its waiting receiver, without waiting
/// for the sender's flush: half the portal's default stream window.
pub const EARLY_WAKE: usize = 32;

/// A pair whose queues wake a waiting receiver once `early` messages wait (0: never before a
/// flush), when `may_wake_early` says so at that moment.
fn pair_with(early: usize, may_wake_early: fn() -> bool) -> (Channel, Channel) {
    let a_to_b = Arc::new(Queue::new(early, may_wake_early));
    let b_to_a = Arc::new(Queue::new(early, may_wake_early));
    (
        Channel::from_halves(
            MemTx::new(a_to_b.clone()),
            MemRx {
                q: b_to_a.clone(),
                buf: VecDeque::new(),
            },
        ),
        Channel::from_halves(
            MemTx::new(b_to_a),
            MemRx {
                q: a_to_b,
                buf: VecDeque::new(),
            },
        ),
    )
}

/// One direction.
#[derive(Debug)]
struct Queue {
    st: Mutex<QueueState>,
    /// Whether sends fail now (the sending half closed or the receiving half gone), read
    /// without the lock by a sender that gathers (set under it).
    shut: OwnLine<AtomicBool>,
    /// Wake a waiting receiver once this many messages wait, flushed or not (0: only on a
    /// flush; see [`pair_waking_early`]) ...
    early: usize,
    /// ... if this says so then (not on a crowded machine).
    may_wake_early: fn() -> bool,
}

/// `T` on a cache line of its own: read by senders, written once, away from the lock's line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct OwnLine<T>(T);

#[derive(Debug, Default)]
struct QueueState {
    msgs: VecDeque<Msg>,
    /// The sending half closed (or was dropped): the receiver gets what is queued, then `Closed`.
    closed: bool,
    /// The receiving half was dropped: sends fail.
    rx_gone: bool,
    /// The waker the receiver last registered. It stays here after a wake-up (which is a
    /// `wake_by_ref` of the sender's own clone, see [`SendSide::waker`]): a receiver that waits
    /// again with the same waker only sets `waiting`, and no thread writes the waker's counts.
    waker: Option<Waker>,
    /// The receiver waits for a message: the next wake-up is due to `waker`.
    waiting: bool,
    /// The CPU the receiver ran on when it last waited, where known (kept for a queue that
    /// wakes early only).
    waiter_cpu: Option<usize>,
}

impl QueueState {
    /// If the receiver waits, marks it woken and makes `side` hold its waker (a clone, kept
    /// from one wake-up to the next while the receiver keeps the same waker); true then, and the
    /// caller wakes `side`'s waker once it has let go of the queue's lock. The waker `side` held
    /// before, if it was replaced, goes in `replaced`, to be dropped outside the lock.
    fn claim_waiter(&mut self, side: &mut SendSide, replaced: &mut Option<Waker>) -> bool {
        if !std::mem::take(&mut self.waiting) {
            return false;
        }
        let Some(waker) = self.waker.as_ref() else {
            return false;
        };
        if !side.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *replaced = side.waker.replace(waker.clone());
        }
        true
    }
}

impl Queue {
    fn new(early: usize, may_wake_early: fn() -> bool) -> Queue {
        Queue {
            st: Mutex::default(),
            shut: OwnLine::default(),
            early,
            may_wake_early,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes `msg`, without waking the receiver.
    fn push_quietly(&self, msg: Msg) -> Result<(), SendError> {
        let mut st = self.lock();
        if st.closed || st.rx_gone {
            return Err(SendError::Closed(Box::new(msg)));
        }
        st.msgs.push_back(msg);
        Ok(())
    }

    /// Wakes a waiting receiver through `side`'s waker.
    fn wake(&self, side: &mut SendSide) {
        let mut replaced = None;
        let claimed = self.lock().claim_waiter(side, &mut replaced);
        drop(replaced);
        if claimed {
            side.wake();
        }
    }

    /// Moves `msgs` into the queue under one lock, in order, and wakes a waiting receiver
    /// (through `side`'s waker) when `wake`, or early (see [`pair_waking_early`]). If the queue
    /// is shut, the first message comes back in the error and the rest stay in `msgs`.
    fn push_all(
        &self,
        msgs: &mut VecDeque<Msg>,
        side: &mut SendSide,
        wake: bool,
    ) -> Result<(), SendError> {
        let mut replaced = None;
        let (claimed, early) = {
            let mut st = self.lock();
            if st.closed || st.rx_gone {
                return match msgs.pop_front() {
                    Some(msg) => Err(SendError::Closed(Box::new(msg))),
                    None => Ok(()),
                };
            }
            if st.msgs.is_empty() {
                // Trade buffers rather than move each message.
                std::mem::swap(&mut st.msgs, msgs);
            } else {
                // Moved as slices, not one message at a time.
                st.msgs.append(msgs);
            }
            if wake {
                (st.claim_waiter(side, &mut replaced), false)
            } else {
                let early = self.early > 0
                    && st.waiting
                    && st.msgs.len() >= self.early
                    && apart(st.waiter_cpu, crate::park::spin::this_cpu());
                (false, early)
            }
        };
        drop(replaced);
        // Whether the machine is crowded may take a look at `/proc` now and then: not under
        // the lock. The receiver may have been woken meanwhile; `wake` then finds it not
        // waiting.
        if claimed {
            side.wake();
        } else if early && (self.may_wake_early)() {
            self.wake(side);
        }
        Ok(())
    }

    /// Marks the queue shut for senders that gather (under the lock, held by the caller).
    fn mark_shut(&self) {
        self.shut.0.store(true, Ordering::Release);
    }
}

/// What a sending half keeps on its own side of the queue, under a lock the receiver never
/// takes.
#[derive(Debug, Default)]
struct SendSide {
    /// For a queue that wakes early: what [`send_now`](SendHalf::send_now) handed over and is
    /// not yet in the queue, in order (see [`pair_waking_early`]).
    gathered: VecDeque<Msg>,
    /// A clone of the receiver's waker, made at the first wake-up that found it waiting and
    /// kept while the receiver registers the same one. A wake-up is then a `wake_by_ref` of
    /// it: taking the queue's waker out and waking it by value made the receiver clone it
    /// again at its next wait, so every message moved the waker's reference counts between the
    /// two threads' CPUs (one cache line there and back, on each side's path).
    waker: Option<Waker>,
}

impl SendSide {
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }
}

/// The sending half of a [`pair`] end.
#[derive(Debug)]
pub struct MemTx {
    q: Arc<Queue>,
    side: Mutex<SendSide>,
    /// Whether [`send_now`](SendHalf::send_now) gathers on this side (a queue that wakes
    /// early), rather than pushing into the queue at once.
    gathers: bool,
    /// How many gathered messages go into the queue together: the queue's `early`, kept here
    /// because the queue's own fields share a cache line with its lock, which the receiver
    /// takes (reading them per message cost the thread stream echo about a fifth of its speed).
    batch: usize,
}

impl MemTx {
    fn new(q: Arc<Queue>) -> MemTx {
        let gathers = q.early > 0;
        let batch = q.early;
        MemTx {
            q,
            side: Mutex::default(),
            gathers,
            batch,
        }
    }

    /// This half's own side of the queue, locked.
    fn side(&self) -> MutexGuard<'_, SendSide> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_send(&self, msg: Msg) -> Result<(), SendError> {
        let mut side = self.side();
        // Behind what was gathered (nothing, for a plain pair), all woken for at once.
        let mut msgs = std::mem::take(&mut side.gathered);
        msgs.push_back(msg);
        let result = self.q.push_all(&mut msgs, &mut side, true);
        if result.is_ok() {
            // The queue's old buffer, or this one, emptied: kept for the next gathering.
            side.gathered = msgs;
        }
        result
    }

    fn disconnect(&self) {
        // What was handed over before the close is delivered before it (were the receiver
        // gone, it would go with the queue anyway); this side's lock is held across the close,
        // so a `send_now` on another thread either comes before it or fails.
        let mut side = self.side();
        let mut gathered = std::mem::take(&mut side.gathered);
        if !gathered.is_empty() {
            let _ = self.q.push_all(&mut gathered, &mut side, false);
        }
        let waker = {
            let mut st = self.q.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            st.waiting = false;
            self.q.mark_shut();
            // Woken whether it waits or not: a close is looked at once.
            st.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
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
        let mut side = self.side();
        if side.gathered.is_empty() {
            // One lock and one wake-up for the whole batch.
            let result = self.q.push_all(msgs, &mut side, true);
            return Box::pin(std::future::ready(result));
        }
        // Behind what was gathered: both go in under one lock of the queue, with one wake-up.
        let mut all = std::mem::take(&mut side.gathered);
        all.append(msgs);
        let result = self.q.push_all(&mut all, &mut side, true);
        // A shut queue: the messages not delivered go back to the caller.
        msgs.append(&mut all);
        side.gathered = all;
        Box::pin(std::future::ready(result))
    }

    fn close(&self) {
        self.disconnect();
    }

    fn sends_immediately(&self) -> bool {
        true
    }

    fn send_now(&self, msg: Msg) -> Result<(), SendError> {
        if !self.gathers {
            // A plain pair: in the queue at once, woken for at the flush.
            return self.q.push_quietly(msg);
        }
        let mut side = self.side();
        if self.q.shut.0.load(Ordering::Acquire) {
            return Err(SendError::Closed(Box::new(msg)));
        }
        side.gathered.push_back(msg);
        if side.gathered.len() >= self.batch {
            let mut gathered = std::mem::take(&mut side.gathered);
            let result = self.q.push_all(&mut gathered, &mut side, false);
            // Shut meanwhile: the peer is gone, and so is what was gathered for it.
            gathered.clear();
            side.gathered = gathered;
            result?;
        }
        Ok(())
    }

    fn flush_now(&self) {
        let mut side = self.side();
        if !side.gathered.is_empty() {
            let mut gathered = std::mem::take(&mut side.gathered);
            // A shut queue: the peer is gone, and so is what was gathered for it. (Matched, so
            // that a push that went through costs no out-of-line drop of its `Ok`.)
            if let Err(e) = self.q.push_all(&mut gathered, &mut side, true) {
                drop(e);
            }
            gathered.clear();
            side.gathered = gathered;
            return;
        }
        self.q.wake(&mut side);
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
    /// What the last look at the queue took, handed out in order before looking again.
    buf: VecDeque<Msg>,
}

impl MemRx {
    /// The next message, or `None` after registering `waker` (if given) to be woken for one.
    fn poll_next(&mut self, waker: Option<&Waker>) -> Option<Result<Msg, RecvError>> {
        if let Some(msg) = self.buf.pop_front() {
            return Some(Ok(msg));
        }
        let mut st = self.q.lock();
        if !st.msgs.is_empty() {
            // A wait registered before stays registered (as a waker would in any future that
            // found its value without waiting): the next send wakes it.
            std::mem::swap(&mut st.msgs, &mut self.buf);
            drop(st);
            return self.buf.pop_front().map(Ok);
        }
        if st.closed {
            return Some(Err(RecvError::Closed));
        }
        if let Some(waker) = waker {
            match &st.waker {
                Some(old) if old.will_wake(waker) => {}
                _ => st.waker = Some(waker.clone()),
            }
            st.waiting = true;
            if self.q.early > 0 {
                st.waiter_cpu = crate::park::spin::this_cpu();
            }
        }
        None
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
        // Later sends fail; what is queued goes (dropped outside the lock).
        let queued = {
            let mut st = self.q.lock();
            st.rx_gone = true;
            self.q.mark_shut();
            st.waker = None;
            st.waiting = false;
            std::mem::take(&mut st.msgs)
        };
        drop(queued);
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
        let tx = MemTx::new(q.clone());
        let mut rx = MemRx {
            q: q.clone(),
            buf: VecDeque::new(),
        };
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(rx.poll_next(Some(&waker)).is_none());
        q.lock().waiter_cpu = waiter;
        for i in 0..n {
            tx.send_now(Msg::Stop { cid: crate::Cid(i) }).unwrap();
        }
        let woken = count.0.load(std::sync::atomic::Ordering::SeqCst);
        tx.flush_now();
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
            let mut rx = MemRx {
                q: q.clone(),
                buf: VecDeque::new(),
            };
            let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            assert!(rx.poll_next(Some(&Waker::from(count))).is_none());
            let cpu = crate::park::spin::this_cpu();
            assert_eq!(q.lock().waiter_cpu.is_some(), recorded && cpu.is_some());
        }
    }

    /// Each wake-up of a waiting receiver, through `send` (`flush` false) or `send_now` and a
    /// flush, of a plain pair and a gathering one.
    #[test]
    fn a_waiting_receiver_is_woken_in_place_once_per_send_and_not_when_it_does_not_wait() {
        for early in [0, 4] {
            for flush in [false, true] {
                let q = Arc::new(Queue::new(early, || true));
                let tx = MemTx::new(q.clone());
                let mut rx = MemRx {
                    q: q.clone(),
                    buf: VecDeque::new(),
                };
                let send = |i| {
                    if flush {
                        tx.send_now(stop(i)).unwrap();
                        tx.flush_now();
                    } else {
                        block_on(tx.send(stop(i))).unwrap();
                    }
                };
                let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
                let waker = Waker::from(count.clone());
                let wakes = || count.0.load(std::sync::atomic::Ordering::SeqCst);
                let held = Arc::strong_count(&count);
                for i in 0..100 {
                    assert!(rx.poll_next(Some(&waker)).is_none());
                    send(i);
                    assert_eq!(wakes(), i as usize + 1);
                    // Woken in place: the queue keeps its clone, and the sender one of its
                    // own; no clone is made or dropped per message.
                    assert_eq!(Arc::strong_count(&count), held + 2);
                    assert_eq!(rx.poll_next(Some(&waker)).unwrap().unwrap(), stop(i));
                }
                // Woken once, a receiver is not woken again before it waits again.
                send(100);
                assert_eq!(wakes(), 100);
                assert_eq!(rx.poll_next(Some(&waker)).unwrap().unwrap(), stop(100));
                // A receiver that waits with another waker: that one is woken, and the first
                // one's clones are let go.
                let other = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
                assert!(rx.poll_next(Some(&Waker::from(other.clone()))).is_none());
                send(101);
                assert_eq!(other.0.load(std::sync::atomic::Ordering::SeqCst), 1);
                assert_eq!(wakes(), 100);
                assert_eq!(Arc::strong_count(&count), held);
                assert_eq!(rx.poll_next(None).unwrap().unwrap(), stop(101));
            }
        }
    }

    fn stop(i: u64) -> Msg {
        Msg::Stop { cid: crate::Cid(i) }
    }

    /// The halves of one direction of a pair that gathers batches of `early`.
    fn gathering(early: usize) -> (MemTx, MemRx) {
        let q = Arc::new(Queue::new(early, || true));
        let rx = MemRx {
            q: q.clone(),
            buf: VecDeque::new(),
        };
        (MemTx::new(q), rx)
    }

    #[test]
    fn a_gathering_pair_delivers_at_the_flush_or_a_full_batch_in_order() {
        let (tx, mut rx) = gathering(4);
        // Gathered, not yet in the queue ...
        for i in 0..3 {
            tx.send_now(stop(i)).unwrap();
        }
        assert!(rx.poll_next(None).is_none());
        // ... until the flush.
        tx.flush_now();
        for i in 0..3 {
            assert_eq!(rx.poll_next(None).unwrap().unwrap(), stop(i));
        }
        // A full batch goes in without a flush.
        for i in 3..7 {
            tx.send_now(stop(i)).unwrap();
        }
        for i in 3..7 {
            assert_eq!(rx.poll_next(None).unwrap().unwrap(), stop(i));
        }
        assert!(rx.poll_next(None).is_none());
        // A `send` and a batch go behind what was gathered; a close delivers what came before.
        tx.send_now(stop(7)).unwrap();
        block_on(tx.send(stop(8))).unwrap();
        tx.send_now(stop(9)).unwrap();
        let mut batch: VecDeque<Msg> = [stop(10), stop(11)].into();
        block_on(tx.send_batch(&mut batch)).unwrap();
        tx.send_now(stop(12)).unwrap();
        tx.close();
        assert!(tx.send_now(stop(13)).unwrap_err().is_closed());
        for i in 7..13 {
            assert_eq!(rx.poll_next(None).unwrap().unwrap(), stop(i));
        }
        assert!(rx.poll_next(None).unwrap().unwrap_err().is_closed());
    }

    #[test]
    fn a_gathering_pair_fails_sends_once_the_receiver_is_gone() {
        let (tx, rx) = gathering(4);
        tx.send_now(stop(0)).unwrap();
        drop(rx);
        let err = tx.send_now(stop(1)).unwrap_err();
        assert!(err.is_closed());
        assert_eq!(err.into_msg(), stop(1));
        // The flush of what was gathered before finds nobody, and says nothing.
        tx.flush_now();
        assert!(block_on(tx.send(stop(2))).unwrap_err().is_closed());
    }

    #[test]
    fn every_message_a_gathering_pair_accepts_arrives_though_a_close_races_it() {
        for round in 0..50u64 {
            let (tx, mut rx) = gathering(EARLY_WAKE);
            let tx = Arc::new(tx);
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let sender = {
                let (tx, sent) = (tx.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut accepted = 0u64;
                    while tx.send_now(stop(accepted)).is_ok() {
                        accepted += 1;
                        sent.store(accepted, std::sync::atomic::Ordering::Release);
                        if accepted.is_multiple_of(7) {
                            tx.flush_now();
                        }
                    }
                    accepted
                })
            };
            // Close once the sender is under way (a few rounds close before it starts).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while sent.load(std::sync::atomic::Ordering::Acquire) < round % 5 * 20 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the sender never started"
                );
                std::thread::yield_now();
            }
            tx.close();
            let accepted = sender.join().unwrap();
            for i in 0..accepted {
                assert_eq!(
                    rx.poll_next(None).unwrap().unwrap(),
                    stop(i),
                    "round {round}"
                );
            }
            assert!(rx.poll_next(None).unwrap().unwrap_err().is_closed());
        }
    }

    #[test]
    fn senders_on_two_threads_each_keep_their_order_through_a_gathering_pair() {
        const EACH: u64 = 20_000;
        let (tx, mut rx) = gathering(EARLY_WAKE);
        let tx = Arc::new(tx);
        let senders: Vec<_> = (0..2u64)
            .map(|who| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        tx.send_now(stop(who << 32 | i)).unwrap();
                        if i % 100 == 99 {
                            tx.flush_now();
                        }
                    }
                    tx.flush_now();
                })
            })
            .collect();
        let receiver = std::thread::spawn(move || {
            let next = [std::cell::Cell::new(0u64), std::cell::Cell::new(0u64)];
            let bounded = futures_lite::future::or(
                async {
                    while next.iter().any(|n| n.get() < EACH) {
                        let msg = futures_lite::future::poll_fn(|cx| {
                            match rx.poll_next(Some(cx.waker())) {
                                Some(result) => Poll::Ready(result),
                                None => Poll::Pending,
                            }
                        })
                        .await;
                        let Msg::Stop { cid } = msg.unwrap() else {
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
            rx
        });
        for s in senders {
            s.join().unwrap();
        }
        let mut rx = receiver.join().unwrap();
        assert!(rx.poll_next(None).is_none());
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
    fn a_receiver_that_waits_with_another_waker_each_time_is_woken_every_time() {
        // The sender wakes its own clone of the receiver's waker, replaced when the receiver
        // waits with another: here every other wait is in another `block_on` (another waker),
        // with the echo on another thread.
        for (name, make) in [
            ("plain", pair as fn() -> _),
            ("gathering", pair_waking_early),
        ] {
            let (a, b) = make();
            let echo = std::thread::spawn(move || {
                block_on(async {
                    while let Ok(m) = b.recv().await {
                        if b.send(m).await.is_err() {
                            break;
                        }
                    }
                })
            });
            let bound = std::time::Duration::from_secs(10);
            for i in 0..2000u64 {
                block_on(a.send(stop(i))).unwrap();
                // The bound's timer is looked at first: an answer that only the timer's wake-up
                // made the wait look for (it was there, but its wake-up went elsewhere) fails.
                let wait = futures_lite::future::or(
                    async {
                        async_io::Timer::after(bound).await;
                        None
                    },
                    async { Some(a.recv().await) },
                );
                let got = if i % 2 == 0 {
                    block_on(wait)
                } else {
                    async_io::block_on(wait)
                };
                let got = got.unwrap_or_else(|| panic!("{name}: answer {i} not woken for"));
                assert_eq!(got.unwrap(), stop(i), "{name}");
            }
            a.close();
            echo.join().unwrap();
        }
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
