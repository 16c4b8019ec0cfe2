//! The reply of one call: a one-shot slot shared by the call's future ([`PyCall`](crate::PyCall))
//! and the thread that serves the interpreter.
//!
//! One allocation per call (the slot), where a channel per call cost several (the channel, its
//! boxed receive future, a waiter registration when the future waits). The sender either puts
//! the result in the slot ([`ReplyTx::send`]), says that the answer went straight to the caller
//! ([`ReplyTx::answered_elsewhere`]), or is dropped without sending (its job was never run: the
//! interpreter shut down with it queued); either way the slot is closed and the waiting future
//! woken. A receiver that gave up (the call's future was dropped) is no concern
//! of the sender's: the result is dropped with the slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use harrow_ipc::Value;
use harrow_portal::CallError;
use parking_lot::Mutex;

/// What a call answers.
pub type Answer = Result<Value, CallError>;

#[derive(Debug, Default)]
struct Slot {
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
}

/// The sending half: where a call's result goes (see the module doc).
#[derive(Debug)]
pub struct ReplyTx {
    slot: Option<Arc<Slot>>,
}

/// The receiving half, owned by the call's future.
#[derive(Debug)]
pub(crate) struct ReplyRx {
    slot: Arc<Slot>,
}

/// Why a closed slot holds no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The sender was dropped without sending (or the answer was already taken).
    Gone,
    /// The answer went straight to the caller ([`ReplyTx::answered_elsewhere`]).
    AnsweredElsewhere,
}

/// A new reply slot.
pub(crate) fn reply() -> (ReplyTx, ReplyRx) {
    let slot = Arc::new(Slot::default());
    (
        ReplyTx {
            slot: Some(Arc::clone(&slot)),
        },
        ReplyRx { slot },
    )
}

impl ReplyTx {
    /// Sends the call's answer and wakes its future, if it waits. An answer nobody waits for
    /// any more (the caller gave up) is dropped with the slot.
    pub fn send(mut self, answer: Answer) {
        if let Some(slot) = self.slot.take() {
            close(&slot, Some(answer), false);
        }
    }

    /// The call's answer went straight to its caller: the slot closes with nothing in it, and
    /// its future ends without an answer of its own to give.
    pub fn answered_elsewhere(mut self) {
        if let Some(slot) = self.slot.take() {
            close(&slot, None, true);
        }
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            close(&slot, None, false);
        }
    }
}

fn close(slot: &Slot, answer: Option<Answer>, elsewhere: bool) {
    let waker = {
        let mut st = slot.state.lock();
        st.answer = answer;
        st.elsewhere = elsewhere;
        st.closed = true;
        slot.closed.store(true, Ordering::Release);
        st.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

impl ReplyRx {
    /// The answer if the slot is closed (`Err`: closed without one, and why), without waiting.
    pub(crate) fn try_recv(&self) -> Option<Result<Answer, Closed>> {
        if !self.slot.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(take(&mut self.slot.state.lock()))
    }

    /// Whether the slot is closed: the call ended (answered here, answered straight to its
    /// caller, or never run).
    pub(crate) fn is_closed(&self) -> bool {
        self.slot.closed.load(Ordering::Acquire)
    }

    /// The answer once the slot is closed; until then keeps `cx`'s waker to be woken.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Answer, Closed>> {
        let mut st = self.slot.state.lock();
        if st.closed {
            return Poll::Ready(take(&mut st));
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            w @ None => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
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

    #[test]
    fn sent_then_received_once() {
        let (tx, rx) = reply();
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
        let (tx, rx) = reply();
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
        let (tx, rx) = reply();
        let t = std::thread::spawn(move || tx.send(Ok(Value::Null)));
        let got =
            futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| rx.poll_recv(cx)));
        assert!(matches!(got, Ok(Ok(Value::Null))));
        t.join().expect("sender thread");
    }

    #[test]
    fn a_receiver_that_gave_up_does_not_bother_the_sender() {
        let (tx, rx) = reply();
        drop(rx);
        tx.send(Ok(Value::Int(1)));
    }
}
