//! The writer task's queue: a link's outgoing messages, in order, on their way to a transport
//! whose sends may wait.
//!
//! A deque under a lock and one waker, not a channel. Every message a stream sends passes here,
//! and a channel paid for each one: a lock-free push, and a notification of its event, whose list
//! is locked while the writer listens. Here a push is a lock that is rarely contended (the writer
//! task runs on the executor of most senders; a message from another thread, such as a Python
//! interpreter thread's answer, may meet it) and a push to the deque's end. The writer is woken
//! once per burst: each time it looks, it takes what is there (up to its batch).
//!
//! **Written where it is made.** A push that finds the writer idle (not woken, holding nothing)
//! writes its message straight into the transport if the transport can without waiting
//! ([`ChannelTx::send_batch_now`]: the shared-memory transport, while its peer has read all
//! that came before): a call's `Start`, or a served call's answer, then costs no hop through
//! the writer task (its wake-up, its turn on the executor, its batch). Only on the thread the
//! writer last ran on, though: a message made on another thread (a Python process child's
//! serving thread, with its answer) goes through the writer, which wakes the link's thread.
//! Written from the serving thread, the answer left the link's thread asleep or spinning through
//! the call, and in some runs a failing call, which keeps the serving thread longer, took about
//! three times a succeeding one (docs/performance-log.md, "A Python process child's answers
//! through its writer again"). What is queued at that moment goes first, with it. The writer still takes every message
//! that cannot go at once (a full buffer, a write in progress, a transport that never writes
//! at once), everything pushed while it is busy, and a stream's items (bursts, which its
//! batches serve better than a write each), so the order on the wire is the order of the
//! pushes.
//!
//! **Quiet messages wait.** A message the peer need not act on by itself (a served call's
//! `StartAck`) does not wake the writer: it goes with the next message that does (or when a
//! whole batch of them has gathered, or at the close).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use harrow_ipc::{ChannelTx, Msg, RemoteError, SentNow};

/// How many queued messages the writer hands the transport at once.
pub(crate) const WRITE_BATCH: usize = 256;

/// Whether a message may wait for the next one (see `Shared::enqueue_quiet`).
pub(crate) fn quiet(msg: &Msg) -> bool {
    matches!(msg, Msg::StartAck { .. })
}

/// Whether a message may be written where it is made: not a stream's item, which mostly comes
/// in bursts that the writer's batches serve better than a write each.
fn goes_at_once(msg: &Msg) -> bool {
    !matches!(msg, Msg::Yield { .. }) && !quiet(msg)
}

/// What a message weighs in a link's backlog: an estimate of its size in memory (its values by
/// [`Value::approx_size`](harrow_ipc::Value::approx_size), counted up to `cap`, plus a fixed
/// part for the rest).
pub(crate) fn weight(msg: &Msg, cap: usize) -> usize {
    const FIXED: usize = 64;
    FIXED
        + match msg {
            Msg::Start { args: value, .. }
            | Msg::Started { value, .. }
            | Msg::Yield { value, .. }
            | Msg::Return { value, .. } => value.approx_size(cap),
            Msg::Error { error, .. } => error_weight(error, cap),
            Msg::CancelActor { reason } => reason.len(),
            _ => 0,
        }
}

/// [`weight`] of an error: its texts and those of the errors it holds, counted up to `cap`.
fn error_weight(error: &RemoteError, cap: usize) -> usize {
    let mut total = 0usize;
    let mut pending = vec![error];
    while let Some(e) = pending.pop() {
        total = total
            .saturating_add(e.message.len() + e.traceback.len() + e.type_name.len())
            .saturating_add(std::mem::size_of::<RemoteError>());
        if total > cap {
            break;
        }
        pending.extend(&e.children);
    }
    total
}

pub(crate) struct WriterQueue {
    state: Mutex<State>,
    /// The writer task while it waits for a message.
    writer: AtomicWaker,
    /// The [`weight`] of the messages queued and of those the writer took and has not written
    /// yet: the link's backlog, read without the lock (it changes only under it).
    backlog: AtomicUsize,
}

struct State {
    msgs: VecDeque<Msg>,
    /// The [`weight`] of each message in `msgs`, in the same order.
    weights: VecDeque<usize>,
    /// The sum of `weights`.
    queued: usize,
    /// The weight of the messages the writer took and has not reported written
    /// ([`WriterQueue::wrote`]).
    taken: usize,
    /// No more messages: the link's outlet closed it, or the writer is gone.
    closed: bool,
    /// The writer holds messages it took from here and has not written yet, or is about to
    /// finish an unfinished write: a push must queue behind them.
    busy: bool,
    /// The writer was woken and has not looked since: it takes what is queued.
    woken: bool,
    /// The writer waits to be woken (it found nothing to take; it may hold quiet messages).
    waiting: bool,
    /// Messages a push handed to the transport whose bytes are not all written yet
    /// ([`SentNow::Unfinished`]): the writer finishes them before anything else.
    unfinished: u64,
    /// The transport, for pushes that write at once; `None` once the writer is gone.
    through: Option<ChannelTx>,
    /// The thread the writer last looked from ([`this_thread`]; 0 before its first look): only
    /// pushes on that thread write at once.
    writer_thread: usize,
}

thread_local! {
    /// A byte per thread whose address names the thread (see [`this_thread`]).
    static MARK: u8 = const { 0 };
}

/// A number that tells this thread from every other thread alive (never 0): the address of its
/// [`MARK`]. A thread that starts after another ended may get the ended one's number, which
/// only makes a push write at once where it would have queued.
fn this_thread() -> usize {
    MARK.with(|m| std::ptr::from_ref(m) as usize)
}

/// What became of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The queue is closed: the message was dropped.
    Refused,
    /// Queued for the writer.
    Queued,
    /// Written to the transport at once, with the messages queued before it: this many in all.
    Written(u64),
}

/// What the writer takes from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Messages, moved to the end of its batch.
    Msgs,
    /// This many messages a push left half-written: the writer writes the rest (an empty
    /// `send_batch`) before anything else.
    Unfinished(u64),
    /// The queue is closed and empty.
    Closed,
}

impl WriterQueue {
    /// A queue for a writer that writes to `through`, which pushes also write to when the
    /// writer is idle (`None`: every message goes through the writer).
    pub(crate) fn new(through: Option<ChannelTx>) -> Self {
        WriterQueue {
            state: Mutex::new(State {
                msgs: VecDeque::new(),
                weights: VecDeque::new(),
                queued: 0,
                taken: 0,
                closed: false,
                busy: false,
                woken: false,
                waiting: false,
                unfinished: 0,
                through,
                writer_thread: 0,
            }),
            writer: AtomicWaker::new(),
            backlog: AtomicUsize::new(0),
        }
    }

    /// The estimated bytes of the messages queued and not yet written ([`weight`]).
    pub(crate) fn backlog(&self) -> usize {
        // SeqCst, as `wrote`'s store: with the held-calls count, whose store and load are
        // SeqCst too, either the reader sees the backlog shrink or the writer sees calls held
        // and wakes it (`hold`).
        self.backlog.load(Ordering::SeqCst)
    }

    /// Publishes the backlog; called under the lock, after `queued` or `taken` changed.
    fn publish(&self, st: &State) {
        self.backlog
            .store(st.queued.saturating_add(st.taken), Ordering::Release);
    }

    /// For the writer: everything it took so far is written (or will never be: the channel is
    /// gone). Returns the backlog left.
    pub(crate) fn wrote(&self) -> usize {
        let mut st = self.lock();
        st.taken = 0;
        self.backlog.store(st.queued, Ordering::SeqCst);
        st.queued
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg`, or writes it (after what is queued) when the writer is idle and the
    /// transport can without waiting; see the module docs.
    pub(crate) fn push(&self, msg: Msg, weight: usize) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Refused;
        }
        let loud = !quiet(&msg);
        let at_once =
            goes_at_once(&msg) && (st.writer_thread == 0 || st.writer_thread == this_thread());
        st.msgs.push_back(msg);
        st.weights.push_back(weight);
        st.queued = st.queued.saturating_add(weight);
        self.publish(&st);
        if st.woken || (st.busy && !st.waiting) {
            // The writer comes for it (it looks again before it waits), behind what it has.
            return Pushed::Queued;
        }
        if at_once && !st.busy {
            let st = &mut *st;
            if let Some(tx) = &st.through {
                let n = st.msgs.len() as u64;
                let sent = tx.send_batch_now(&mut st.msgs);
                if sent != SentNow::NotNow {
                    // All of them left the queue (an unfinished write is the transport's,
                    // bounded by its buffer).
                    st.weights.clear();
                    st.queued = 0;
                    self.publish(st);
                }
                match sent {
                    SentNow::Sent => return Pushed::Written(n),
                    SentNow::NotNow => {}
                    SentNow::Unfinished => {
                        st.unfinished += n;
                        st.busy = true;
                    }
                }
            }
        } else if !loud && st.msgs.len() < WRITE_BATCH {
            // Quiet: it goes with the next message that wakes the writer.
            return Pushed::Queued;
        }
        st.woken = true;
        drop(st);
        // A writer that found nothing to take registered its waker under the lock, before this
        // push; one that took messages looks again before it waits.
        self.writer.wake();
        Pushed::Queued
    }

    /// No more messages. What is queued stays for the writer to take.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.woken = true;
        drop(st);
        self.writer.wake();
    }

    /// The writer is gone: the queue is closed and what it held is dropped.
    pub(crate) fn abandon(&self) {
        let (msgs, through) = {
            let mut st = self.lock();
            st.closed = true;
            st.weights.clear();
            st.queued = 0;
            st.taken = 0;
            self.publish(&st);
            (std::mem::take(&mut st.msgs), st.through.take())
        };
        drop(msgs);
        drop(through);
    }

    /// For the writer: what to do next. Unfinished messages first; then moves messages to the
    /// end of `batch` until it holds `full` (at least one moved); `Closed` when the queue is
    /// closed and empty; `Pending` (with the task's waker registered) while it is open and
    /// empty.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Msg>,
        full: usize,
    ) -> Poll<Taken> {
        let mut st = self.lock();
        st.woken = false;
        st.waiting = false;
        st.writer_thread = this_thread();
        if st.unfinished > 0 {
            st.busy = true;
            return Poll::Ready(Taken::Unfinished(std::mem::take(&mut st.unfinished)));
        }
        if st.msgs.is_empty() {
            st.busy = !batch.is_empty();
            if st.closed {
                return Poll::Ready(Taken::Closed);
            }
            self.writer.register(cx.waker());
            st.waiting = true;
            return Poll::Pending;
        }
        st.busy = true;
        let n = st.msgs.len().min(full.saturating_sub(batch.len()).max(1));
        let weight = if n == st.msgs.len() {
            st.weights.clear();
            std::mem::take(&mut st.queued)
        } else {
            let w: usize = st.weights.drain(..n).sum();
            st.queued -= w;
            w
        };
        // Still the writer's until it says it wrote them: the backlog is unchanged.
        st.taken = st.taken.saturating_add(weight);
        if n == st.msgs.len() && batch.is_empty() {
            // All of it: the two deques trade places, and each keeps its allocation.
            std::mem::swap(&mut st.msgs, batch);
        } else {
            batch.extend(st.msgs.drain(..n));
        }
        Poll::Ready(Taken::Msgs)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use harrow_ipc::Cid;
    use harrow_ipc::wait::testing::counting_waker;

    use super::*;

    fn push(q: &WriterQueue, m: Msg) -> Pushed {
        let w = weight(&m, usize::MAX);
        q.push(m, w)
    }

    fn msg(i: u64) -> Msg {
        Msg::Stop { cid: Cid(i) }
    }

    fn cids(batch: &VecDeque<Msg>) -> Vec<u64> {
        batch
            .iter()
            .map(|m| match m {
                Msg::Stop { cid } => cid.0,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn take(
        q: &WriterQueue,
        waker: &std::task::Waker,
        batch: &mut VecDeque<Msg>,
        full: usize,
    ) -> Poll<Taken> {
        q.poll_take(&mut Context::from_waker(waker), batch, full)
    }

    const MSGS: Poll<Taken> = Poll::Ready(Taken::Msgs);
    const CLOSED: Poll<Taken> = Poll::Ready(Taken::Closed);

    #[test]
    fn messages_leave_in_order_in_batches_up_to_full() {
        let q = WriterQueue::new(None);
        let (_, w) = counting_waker();
        for i in 0..6 {
            assert_eq!(push(&q, msg(i)), Pushed::Queued);
        }
        let mut batch = VecDeque::new();
        assert_eq!(take(&q, &w, &mut batch, 2), MSGS);
        assert_eq!(cids(&batch), [0, 1]);
        // Appended after what the batch holds, up to `full` in all.
        assert_eq!(take(&q, &w, &mut batch, 4), MSGS);
        assert_eq!(cids(&batch), [0, 1, 2, 3]);
        // A batch already full still takes one.
        assert_eq!(take(&q, &w, &mut batch, 4), MSGS);
        assert_eq!(cids(&batch), [0, 1, 2, 3, 4]);
        assert_eq!(take(&q, &w, &mut batch, 10), MSGS);
        assert_eq!(cids(&batch), [0, 1, 2, 3, 4, 5]);
        batch.clear();
        assert!(take(&q, &w, &mut batch, 10).is_pending());
    }

    #[test]
    fn a_waiting_writer_is_woken_once_per_burst() {
        let q = WriterQueue::new(None);
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        for i in 0..100 {
            assert_eq!(push(&q, msg(i)), Pushed::Queued);
        }
        assert_eq!(
            count.get(),
            1,
            "the first push woke it, the others found it woken"
        );
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(batch.len(), 100);
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, msg(100)), Pushed::Queued);
        assert_eq!(
            count.get(),
            2,
            "a push into the emptied queue wakes it again"
        );
    }

    #[test]
    fn a_closed_queue_hands_over_what_it_held_then_ends() {
        let q = WriterQueue::new(None);
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, msg(1)), Pushed::Queued);
        q.close();
        assert_eq!(push(&q, msg(2)), Pushed::Refused, "closed: refused");
        assert!(count.get() >= 1);
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(cids(&batch), [1]);
        assert_eq!(take(&q, &w, &mut batch, 256), CLOSED);
    }

    #[test]
    fn a_close_wakes_a_waiting_writer_and_an_abandoned_queue_drops_its_messages() {
        let q = WriterQueue::new(None);
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        q.close();
        assert_eq!(count.get(), 1);
        assert_eq!(take(&q, &w, &mut batch, 256), CLOSED);

        let q = WriterQueue::new(None);
        assert_eq!(push(&q, msg(1)), Pushed::Queued);
        q.abandon();
        assert_eq!(push(&q, msg(2)), Pushed::Refused);
        assert_eq!(take(&q, &w, &mut batch, 256), CLOSED);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_writer_on_another_thread_gets_every_message_in_order() {
        let q = std::sync::Arc::new(WriterQueue::new(None));
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    assert_eq!(push(&q, msg(i)), Pushed::Queued);
                }
                q.close();
            })
        };
        let got = futures_lite::future::block_on(async {
            let mut got = Vec::new();
            let mut batch = VecDeque::new();
            while poll_fn(|cx| q.poll_take(cx, &mut batch, 256)).await == Taken::Msgs {
                got.extend(cids(&batch));
                batch.clear();
            }
            got
        });
        pusher.join().expect("the pusher finished");
        assert_eq!(got, (0..20_000).collect::<Vec<u64>>());
    }

    fn ack(i: u64) -> Msg {
        Msg::StartAck { cid: Cid(i) }
    }

    /// A queue that writes through one end of a shared-memory channel (which writes at once
    /// while its peer has read everything), and the other end (its handshake over, so that
    /// frames of any size are read).
    fn through() -> (WriterQueue, harrow_ipc::Channel) {
        let (a, mut b) = harrow_ipc::shm::pair().expect("shm pair");
        b.end_handshake();
        let (tx, _) = a.split();
        (WriterQueue::new(Some(tx)), b)
    }

    fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(futures_lite::future::or(fut, async {
            async_io::Timer::after(std::time::Duration::from_secs(30)).await;
            panic!("timed out");
        }))
    }

    #[test]
    fn a_push_to_an_idle_writer_goes_at_once_with_the_quiet_ones_before_it() {
        let (q, b) = through();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, ack(1)), Pushed::Queued, "a quiet one waits");
        assert_eq!(push(&q, ack(2)), Pushed::Queued);
        assert_eq!(count.get(), 0, "quiet ones do not wake the writer");
        assert_eq!(push(&q, msg(3)), Pushed::Written(3), "the acks go with it");
        assert_eq!(count.get(), 0, "nothing left for the writer");
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        bounded(async {
            assert_eq!(b.recv().await.expect("a message"), ack(1));
            assert_eq!(b.recv().await.expect("a message"), ack(2));
            assert_eq!(b.recv().await.expect("a message"), msg(3));
        });
    }

    #[test]
    fn a_push_from_another_thread_than_the_writers_goes_through_the_writer() {
        let (q, b) = through();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        // The writer looks from this thread; the push comes from another one.
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        let pushed = std::thread::scope(|s| {
            s.spawn(|| push(&q, msg(1)))
                .join()
                .expect("the pushing thread")
        });
        assert_eq!(pushed, Pushed::Queued, "not written from another thread");
        assert_eq!(count.get(), 1, "the writer is woken for it");
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(cids(&batch), vec![1]);
        batch.clear();
        // Back on the writer's thread, with the writer idle again: written at once.
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, msg(2)), Pushed::Written(1));
        bounded(async {
            assert_eq!(b.recv().await.expect("a message"), msg(2));
        });
    }

    #[test]
    fn a_busy_writer_gets_what_is_pushed_meanwhile_in_order() {
        let (q, b) = through();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        // Before the writer first looks, a push goes at once.
        assert_eq!(push(&q, msg(0)), Pushed::Written(1));
        assert_eq!(push(&q, ack(1)), Pushed::Queued);
        // The writer takes the ack: until it looks again, it is busy with it.
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(
            push(&q, msg(2)),
            Pushed::Queued,
            "behind what the writer holds"
        );
        assert_eq!(push(&q, msg(3)), Pushed::Queued);
        assert_eq!(count.get(), 0, "a running writer looks again by itself");
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(batch.len(), 3);
        assert!(matches!(batch[0], Msg::StartAck { .. }));
        assert_eq!(cids(&batch.split_off(1)), [2, 3]);
        bounded(async { assert_eq!(b.recv().await.expect("a message"), msg(0)) });
    }

    #[test]
    fn a_writer_holding_quiet_ones_is_woken_by_a_loud_one() {
        let q = WriterQueue::new(None);
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, ack(1)), Pushed::Queued);
        assert_eq!(count.get(), 0);
        // A writer that looks takes the ack and holds it, then waits for more.
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, msg(2)), Pushed::Queued, "no transport: queued");
        assert_eq!(count.get(), 1, "the loud one wakes the holding writer");
        assert_eq!(take(&q, &w, &mut batch, 256), MSGS);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_batch_of_quiet_ones_wakes_the_writer() {
        let q = WriterQueue::new(None);
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, WRITE_BATCH).is_pending());
        for i in 0..WRITE_BATCH as u64 - 1 {
            assert_eq!(push(&q, ack(i)), Pushed::Queued);
        }
        assert_eq!(count.get(), 0);
        assert_eq!(push(&q, ack(9_999)), Pushed::Queued);
        assert_eq!(count.get(), 1, "a whole batch of them goes");
    }

    #[test]
    fn a_stream_item_is_left_to_the_writer() {
        let (q, _b) = through();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        let item = Msg::Yield {
            cid: Cid(1),
            value: harrow_ipc::Value::Int(1),
        };
        assert_eq!(
            push(&q, item),
            Pushed::Queued,
            "items go in the writer's batches"
        );
        assert_eq!(count.get(), 1, "and wake it");
    }

    #[test]
    fn an_unfinished_push_is_finished_by_the_writer_before_anything_else() {
        let (q, b) = through();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        // A `Return` larger than the ring: written in part, the rest left to the writer.
        let big = |i: u64| Msg::Return {
            cid: Cid(i),
            value: harrow_ipc::Value::Bytes(vec![i as u8; harrow_ipc::shm::RING_BYTES + 1_000]),
        };
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert_eq!(push(&q, big(0)), Pushed::Queued, "not all of it went");
        assert_eq!(count.get(), 1, "the writer is woken to finish it");
        assert_eq!(
            push(&q, msg(1)),
            Pushed::Queued,
            "behind the unfinished one"
        );
        assert_eq!(
            take(&q, &w, &mut batch, 256),
            Poll::Ready(Taken::Unfinished(1)),
            "the rest first"
        );
        let tx = q.lock().through.clone().expect("the transport");
        bounded(async {
            let writer = async {
                tx.send_batch(&mut VecDeque::new()).await.expect("the rest");
                assert_eq!(
                    poll_fn(|cx| q.poll_take(cx, &mut batch, 256)).await,
                    Taken::Msgs
                );
                assert_eq!(cids(&batch), [1]);
                tx.send_batch(&mut batch).await.expect("the batch");
            };
            let reader = async {
                assert_eq!(b.recv().await.expect("a message"), big(0));
                assert_eq!(b.recv().await.expect("a message"), msg(1));
            };
            futures_lite::future::zip(writer, reader).await;
        });
    }

    #[test]
    fn the_backlog_counts_what_is_queued_and_taken_until_written() {
        let q = WriterQueue::new(None);
        let (_, w) = counting_waker();
        let big = |i: u64, n: usize| Msg::Return {
            cid: Cid(i),
            value: harrow_ipc::Value::Bytes(vec![0; n]),
        };
        assert_eq!(q.backlog(), 0);
        assert_eq!(q.push(big(0, 1000), 1000), Pushed::Queued);
        assert_eq!(q.push(big(1, 500), 500), Pushed::Queued);
        assert_eq!(q.push(msg(2), 10), Pushed::Queued);
        assert_eq!(q.backlog(), 1510);
        let mut batch = VecDeque::new();
        assert_eq!(take(&q, &w, &mut batch, 1), MSGS);
        assert_eq!(q.backlog(), 1510, "taken is not written");
        assert_eq!(q.wrote(), 510, "what is left queued");
        assert_eq!(q.backlog(), 510);
        assert_eq!(take(&q, &w, &mut batch, 10), MSGS);
        assert_eq!(q.wrote(), 0);
        assert_eq!(q.backlog(), 0);
        q.push(msg(3), 7);
        q.abandon();
        assert_eq!(q.backlog(), 0, "nothing is left once the writer is gone");
    }

    #[test]
    fn a_message_weighs_its_values() {
        let v = harrow_ipc::Value::Bytes(vec![0; 10_000]);
        let ret = Msg::Return {
            cid: Cid(1),
            value: v.clone(),
        };
        assert!(weight(&ret, usize::MAX) >= 10_000);
        assert!(weight(&msg(1), usize::MAX) < 100);
        let mut error = RemoteError::new(
            harrow_ipc::ErrorKind::Runtime,
            "E",
            "m".repeat(5_000),
            harrow_ipc::ActorId::new("x"),
        );
        error.children = vec![error.clone(), error.clone()];
        let err = Msg::Error {
            cid: Some(Cid(1)),
            error: Box::new(error),
        };
        assert!(weight(&err, usize::MAX) >= 15_000, "its nested errors too");
    }
}
