//! The writer task's queue: a link's outgoing messages, in order, on their way to a transport
//! whose sends may wait.
//!
//! A deque under a lock and one waker, not a channel. Every message a stream sends passes here,
//! and a channel paid for each one: a lock-free push, and a notification of its event, whose list
//! is locked while the writer listens. Here a push is a lock that is rarely contended (the writer
//! task runs on the executor of most senders; a message from another thread, such as a Python
//! interpreter thread's answer, may meet it) and a push to the deque's end. The writer is woken
//! only by a push that finds the queue empty: each time the writer looks, it takes what is there
//! (up to its batch), so a burst costs it one wake-up.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use harrow_ipc::Msg;

#[derive(Default)]
pub(crate) struct WriterQueue {
    state: Mutex<State>,
    /// The writer task while it waits for a message.
    writer: AtomicWaker,
}

#[derive(Default)]
struct State {
    msgs: VecDeque<Msg>,
    /// No more messages: the link's outlet closed it, or the writer is gone.
    closed: bool,
}

impl WriterQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg`; false (and `msg` dropped) once the queue is closed.
    pub(crate) fn push(&self, msg: Msg) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        let was_empty = st.msgs.is_empty();
        st.msgs.push_back(msg);
        drop(st);
        // A writer that found the queue empty registered its waker under the lock, before this
        // push; one that took messages and has not looked again finds this one when it does.
        if was_empty {
            self.writer.wake();
        }
        true
    }

    /// No more messages. What is queued stays for the writer to take.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.writer.wake();
    }

    /// The writer is gone: the queue is closed and what it held is dropped.
    pub(crate) fn abandon(&self) {
        let msgs = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.msgs)
        };
        drop(msgs);
    }

    /// For the writer: moves messages to the end of `batch` until it holds `full` (at least one
    /// moved). `Ready(true)` when it moved any, `Ready(false)` when the queue is closed and
    /// empty, `Pending` (with the task's waker registered) while it is open and empty.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Msg>,
        full: usize,
    ) -> Poll<bool> {
        let mut st = self.lock();
        if st.msgs.is_empty() {
            if st.closed {
                return Poll::Ready(false);
            }
            self.writer.register(cx.waker());
            return Poll::Pending;
        }
        let n = st.msgs.len().min(full.saturating_sub(batch.len()).max(1));
        if n == st.msgs.len() && batch.is_empty() {
            // All of it: the two deques trade places, and each keeps its allocation.
            std::mem::swap(&mut st.msgs, batch);
        } else {
            batch.extend(st.msgs.drain(..n));
        }
        Poll::Ready(true)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use harrow_ipc::Cid;
    use harrow_ipc::wait::testing::counting_waker;

    use super::*;

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
    ) -> Poll<bool> {
        q.poll_take(&mut Context::from_waker(waker), batch, full)
    }

    #[test]
    fn messages_leave_in_order_in_batches_up_to_full() {
        let q = WriterQueue::default();
        let (_, w) = counting_waker();
        for i in 0..6 {
            assert!(q.push(msg(i)));
        }
        let mut batch = VecDeque::new();
        assert_eq!(take(&q, &w, &mut batch, 2), Poll::Ready(true));
        assert_eq!(cids(&batch), [0, 1]);
        // Appended after what the batch holds, up to `full` in all.
        assert_eq!(take(&q, &w, &mut batch, 4), Poll::Ready(true));
        assert_eq!(cids(&batch), [0, 1, 2, 3]);
        // A batch already full still takes one.
        assert_eq!(take(&q, &w, &mut batch, 4), Poll::Ready(true));
        assert_eq!(cids(&batch), [0, 1, 2, 3, 4]);
        assert_eq!(take(&q, &w, &mut batch, 10), Poll::Ready(true));
        assert_eq!(cids(&batch), [0, 1, 2, 3, 4, 5]);
        batch.clear();
        assert!(take(&q, &w, &mut batch, 10).is_pending());
    }

    #[test]
    fn a_waiting_writer_is_woken_once_per_burst() {
        let q = WriterQueue::default();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        for i in 0..100 {
            assert!(q.push(msg(i)));
        }
        assert_eq!(
            count.get(),
            1,
            "the first push woke it, the others found it woken"
        );
        assert_eq!(take(&q, &w, &mut batch, 256), Poll::Ready(true));
        assert_eq!(batch.len(), 100);
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert!(q.push(msg(100)));
        assert_eq!(
            count.get(),
            2,
            "a push into the emptied queue wakes it again"
        );
    }

    #[test]
    fn a_closed_queue_hands_over_what_it_held_then_ends() {
        let q = WriterQueue::default();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        assert!(q.push(msg(1)));
        q.close();
        assert!(!q.push(msg(2)), "closed: refused");
        assert!(count.get() >= 1);
        assert_eq!(take(&q, &w, &mut batch, 256), Poll::Ready(true));
        assert_eq!(cids(&batch), [1]);
        assert_eq!(take(&q, &w, &mut batch, 256), Poll::Ready(false));
    }

    #[test]
    fn a_close_wakes_a_waiting_writer_and_an_abandoned_queue_drops_its_messages() {
        let q = WriterQueue::default();
        let (count, w) = counting_waker();
        let mut batch = VecDeque::new();
        assert!(take(&q, &w, &mut batch, 256).is_pending());
        q.close();
        assert_eq!(count.get(), 1);
        assert_eq!(take(&q, &w, &mut batch, 256), Poll::Ready(false));

        let q = WriterQueue::default();
        assert!(q.push(msg(1)));
        q.abandon();
        assert!(!q.push(msg(2)));
        assert_eq!(take(&q, &w, &mut batch, 256), Poll::Ready(false));
        assert!(batch.is_empty());
    }

    #[test]
    fn a_writer_on_another_thread_gets_every_message_in_order() {
        let q = std::sync::Arc::new(WriterQueue::default());
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    assert!(q.push(msg(i)));
                }
                q.close();
            })
        };
        let got = futures_lite::future::block_on(async {
            let mut got = Vec::new();
            let mut batch = VecDeque::new();
            while poll_fn(|cx| q.poll_take(cx, &mut batch, 256)).await {
                got.extend(cids(&batch));
                batch.clear();
            }
            got
        });
        pusher.join().expect("the pusher finished");
        assert_eq!(got, (0..20_000).collect::<Vec<u64>>());
    }
}
