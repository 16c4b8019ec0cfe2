//! The reply of one call: a one-shot slot shared by the call's future ([`PyCall`](crate::PyCall))
//! and the thread that serves the interpreter.
//!
//! The slot is part of the call's [`JobState`], which both sides hold already: no allocation
//! of its own (a channel per call cost several: the channel, its boxed receive future, a waiter
//! registration when the future waits). The sender either puts the result in the slot
//! ([`ReplyTx::send`]), says that the answer went straight to the caller
//! ([`ReplyTx::answered_elsewhere`]), or is dropped without sending (its job was never run: the
//! interpreter shut down with it queued); either way the slot is closed and the waiting future
//! woken. A receiver that gave up (the call's future was dropped) is no concern of the
//! sender's: an answer sent after that is dropped at once, not kept with the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use harrow_ipc::Value;
use harrow_portal::CallError;
use parking_lot::Mutex;

use crate::state::JobState;

/// What a call answers.
pub type Answer = Result<Value, CallError>;

/// A call's reply slot, in its [`JobState`].
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Set (release) once `state` holds the answer or the sender is gone: lets a spinning
    /// receiver look without taking the lock.
    closed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    answer: Option<Answer>,
    /// The answer went straight to the caller (nothing to take here).
    elsewhere: bool,
    /// The sender sent or was dropped.
    closed: bool,
    /// The receiving future's waker, while it waits.
    waker: Option<Waker>,
    /// The receiver was dropped before it took anything: an answer is not kept.
    unwanted: bool,
}

/// The sending half: where a call's result goes (see the module doc).
#[derive(Debug)]
pub struct ReplyTx {
    job: Option<Arc<JobState>>,
}

/// The receiving half, owned by the call's future.
#[derive(Debug)]
pub(crate) struct ReplyRx {
    job: Arc<JobState>,
    /// It took what the closed slot held: nothing is left for its drop to discard.
    took: bool,
}

/// Why a closed slot holds no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The sender was dropped without sending (or the answer was already taken).
    Gone,
    /// The answer went straight to the caller ([`ReplyTx::answered_elsewhere`]).
    AnsweredElsewhere,
}

/// The two halves of `job`'s reply slot (one pair per job).
pub(crate) fn reply(job: &Arc<JobState>) -> (ReplyTx, ReplyRx) {
    (
        ReplyTx {
            job: Some(Arc::clone(job)),
        },
        ReplyRx {
            job: Arc::clone(job),
            took: false,
        },
    )
}

impl ReplyTx {
    /// Sends the call's answer and wakes its future, if it waits. An answer nobody waits for
    /// any more (the caller gave up) is dropped.
    pub fn send(mut self, answer: Answer) {
        if let Some(job) = self.job.take() {
            close(job.reply_slot(), Some(answer), false);
        }
    }

    /// The call's answer went straight to its caller: the slot closes with nothing in it, and
    /// its future ends without an answer of its own to give.
    pub fn answered_elsewhere(mut self) {
        if let Some(job) = self.job.take() {
            close(job.reply_slot(), None, true);
        }
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            close(job.reply_slot(), None, false);
        }
    }
}

fn close(slot: &Slot, answer: Option<Answer>, elsewhere: bool) {
    let (waker, unwanted) = {
        let mut st = slot.state.lock();
        let unwanted = if st.unwanted {
            answer
        } else {
            st.answer = answer;
            None
        };
        st.elsewhere = elsewhere;
        st.closed = true;
        slot.closed.store(true, Ordering::Release);
        (st.waker.take(), unwanted)
    };
    // Outside the lock: dropping a value may take a while.
    drop(unwanted);
    if let Some(w) = waker {
        w.wake();
    }
}

impl ReplyRx {
    /// The call this is the reply of.
    pub(crate) fn job(&self) -> &Arc<JobState> {
        &self.job
    }

    /// The answer if the slot is closed (`Err`: closed without one, and why), without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Result<Answer, Closed>> {
        let slot = self.job.reply_slot();
        if !slot.closed.load(Ordering::Acquire) {
            return None;
        }
        self.took = true;
        Some(take(&mut slot.state.lock()))
    }

    /// Whether the slot is closed: the call ended (answered here, answered straight to its
    /// caller, or never run).
    pub(crate) fn is_closed(&self) -> bool {
        self.job.reply_slot().closed.load(Ordering::Acquire)
    }

    /// The answer once the slot is closed; until then keeps `cx`'s waker to be woken.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Answer, Closed>> {
        let mut st = self.job.reply_slot().state.lock();
        if st.closed {
            self.took = true;
            return Poll::Ready(take(&mut st));
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            w @ None => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ReplyRx {
    fn drop(&mut self) {
        if self.took {
            return;
        }
        // Gave up: an answer in the slot, or one sent later, goes now, not with the job (which
        // a Python `ctx` kept by the call's code may hold for longer).
        let answer = {
            let mut st = self.job.reply_slot().state.lock();
            st.unwanted = true;
            st.waker = None;
            st.answer.take()
        };
        drop(answer);
    }
}

/// What a closed slot gives its receiver: the answer once, then `Gone`.
fn take(st: &mut State) -> Result<Answer, Closed> {
    match st.answer.take() {
        Some(answer) => Ok(answer),
        None if st.elsewhere => Err(Closed::AnsweredElsewhere),
        None => Err(Closed::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harrow_ipc::FnPath;

    /// The reply halves of a new job.
    fn reply_pair() -> (Arc<JobState>, ReplyTx, ReplyRx) {
        let job = JobState::new(FnPath::parse("m:f").expect("a valid path"));
        let (tx, rx) = reply(&job);
        (job, tx, rx)
    }

    #[test]
    fn sent_then_received_once() {
        let (_job, tx, mut rx) = reply_pair();
        assert!(rx.try_recv().is_none());
        tx.send(Ok(Value::Int(3)));
        assert!(matches!(rx.try_recv(), Some(Ok(Ok(Value::Int(3))))));
        // Taken: what is left is a closed slot.
        assert!(matches!(rx.try_recv(), Some(Err(Closed::Gone))));
    }

    /// Polls a fresh slot's receiver (it waits), closes the slot with `close`, checks that the
    /// waiting receiver was woken, and returns what it then receives.
    fn received_after(close: impl FnOnce(ReplyTx)) -> Result<Answer, Closed> {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (_job, tx, mut rx) = reply_pair();
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        close(tx);
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the waiting receiver is woken"
        );
        assert!(rx.is_closed());
        match rx.poll_recv(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("a closed slot is ready"),
        }
    }

    #[test]
    fn an_answer_sent_elsewhere_closes_and_wakes_without_one() {
        let got = received_after(ReplyTx::answered_elsewhere);
        assert!(matches!(got, Err(Closed::AnsweredElsewhere)));
    }

    #[test]
    fn a_dropped_sender_closes_and_wakes() {
        assert!(matches!(received_after(drop), Err(Closed::Gone)));
    }

    #[test]
    fn the_waiting_future_is_woken_by_a_send_from_another_thread() {
        let (_job, tx, mut rx) = reply_pair();
        let t = std::thread::spawn(move || tx.send(Ok(Value::Null)));
        let got =
            futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| rx.poll_recv(cx)));
        assert!(matches!(got, Ok(Ok(Value::Null))));
        t.join().expect("sender thread");
    }

    #[test]
    fn a_receiver_that_gave_up_does_not_bother_the_sender() {
        let (job, tx, rx) = reply_pair();
        drop(rx);
        tx.send(Ok(Value::Int(1)));
        // Dropped at once, although the job (which holds the slot) lives on.
        let st = job.reply_slot().state.lock();
        assert!(st.closed && st.answer.is_none());
    }

    #[test]
    fn an_answer_not_taken_goes_with_its_receiver() {
        let (job, tx, rx) = reply_pair();
        tx.send(Ok(Value::Int(1)));
        assert!(job.reply_slot().state.lock().answer.is_some());
        drop(rx);
        assert!(job.reply_slot().state.lock().answer.is_none());
    }
}
