//! The in-memory transport: a flume pair, no encoding. For peers in one address space.
//!
//! The receiver never waits inside flume: it polls the queue with `try_recv` and leaves its waker
//! in a slot that the sender empties and wakes after the push, outside every lock. flume's own
//! async receive wakes the receiver while the sender still holds a lock the woken receiver needs
//! at once, so each hand-off pays for extra context switches (a ping-pong round trip measured
//! about 4x slower than flume's blocking receive).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::channel::BoxFuture;
use crate::{Channel, Msg, RecvError, RecvHalf, SendError, SendHalf};

/// Makes a connected pair of in-memory channels.
pub fn pair() -> (Channel, Channel) {
    let (a_tx, b_rx) = flume::unbounded();
    let (b_tx, a_rx) = flume::unbounded();
    let a_to_b = Arc::new(WakeSlot::default());
    let b_to_a = Arc::new(WakeSlot::default());
    (
        Channel::from_halves(
            MemTx::new(a_tx, a_to_b.clone()),
            MemRx {
                rx: a_rx,
                ready: b_to_a.clone(),
            },
        ),
        Channel::from_halves(
            MemTx::new(b_tx, b_to_a),
            MemRx {
                rx: b_rx,
                ready: a_to_b,
            },
        ),
    )
}

/// The sending half of a [`pair`] end.
#[derive(Debug)]
pub struct MemTx {
    // `None` once closed: dropping the only flume sender is what tells the peer.
    tx: Mutex<Option<flume::Sender<Msg>>>,
    // Woken after every push and when the sender goes away.
    ready: Arc<WakeSlot>,
}

/// Where a waiting receiver leaves its waker.
#[derive(Debug, Default)]
struct WakeSlot {
    waker: Mutex<Option<Waker>>,
}

impl WakeSlot {
    fn lock(&self) -> MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.lock();
        match &*slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        // Take the waker under the lock, wake it after releasing the lock.
        let waker = self.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl MemTx {
    fn new(tx: flume::Sender<Msg>, ready: Arc<WakeSlot>) -> Self {
        MemTx {
            tx: Mutex::new(Some(tx)),
            ready,
        }
    }

    fn try_send(&self, msg: Msg) -> Result<(), SendError> {
        let result = {
            let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            push(guard.as_ref(), msg)
        };
        if result.is_ok() {
            self.ready.wake();
        }
        result
    }

    fn disconnect(&self) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if tx.is_some() {
            drop(tx);
            self.ready.wake();
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
        // One lock and one wake-up for the whole batch.
        let result = {
            let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let mut result = Ok(());
            while let Some(msg) = msgs.pop_front() {
                if let Err(e) = push(guard.as_ref(), msg) {
                    result = Err(e);
                    break;
                }
            }
            result
        };
        self.ready.wake();
        Box::pin(std::future::ready(result))
    }

    fn close(&self) {
        self.disconnect();
    }

    fn sends_immediately(&self) -> bool {
        true
    }

    fn send_now(&self, msg: Msg) -> Result<(), SendError> {
        // Pushed under the lock (so concurrent senders keep one order), woken by `flush_now`.
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        push(guard.as_ref(), msg)
    }

    fn flush_now(&self) {
        self.ready.wake();
    }
}

fn push(tx: Option<&flume::Sender<Msg>>, msg: Msg) -> Result<(), SendError> {
    match tx {
        Some(tx) => tx
            .send(msg)
            .map_err(|flume::SendError(msg)| SendError::Closed(Box::new(msg))),
        None => Err(SendError::Closed(Box::new(msg))),
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
    rx: flume::Receiver<Msg>,
    ready: Arc<WakeSlot>,
}

impl MemRx {
    fn poll_queue(&self) -> Option<Result<Msg, RecvError>> {
        match self.rx.try_recv() {
            Ok(msg) => Some(Ok(msg)),
            Err(flume::TryRecvError::Disconnected) => Some(Err(RecvError::Closed)),
            Err(flume::TryRecvError::Empty) => None,
        }
    }
}

impl RecvHalf for MemRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(futures_lite::future::poll_fn(move |cx| {
            if let Some(result) = self.poll_queue() {
                return Poll::Ready(result);
            }
            // Register, then look again: a push between the two looks is not missed.
            self.ready.register(cx.waker());
            match self.poll_queue() {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

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
