//! The in-memory transport: a flume pair, no encoding. For peers in one address space.

use std::sync::Mutex;

use crate::channel::BoxFuture;
use crate::{Channel, Msg, RecvError, RecvHalf, SendError, SendHalf};

/// Makes a connected pair of in-memory channels.
pub fn pair() -> (Channel, Channel) {
    let (a_tx, b_rx) = flume::unbounded();
    let (b_tx, a_rx) = flume::unbounded();
    (
        Channel::from_halves(MemTx::new(a_tx), MemRx { rx: a_rx }),
        Channel::from_halves(MemTx::new(b_tx), MemRx { rx: b_rx }),
    )
}

/// The sending half of a [`pair`] end.
#[derive(Debug)]
pub struct MemTx {
    // `None` once closed: dropping the only flume sender is what tells the peer.
    tx: Mutex<Option<flume::Sender<Msg>>>,
}

impl MemTx {
    fn new(tx: flume::Sender<Msg>) -> Self {
        MemTx {
            tx: Mutex::new(Some(tx)),
        }
    }

    fn try_send(&self, msg: Msg) -> Result<(), SendError> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx
                .send(msg)
                .map_err(|flume::SendError(msg)| SendError::Closed(Box::new(msg))),
            None => Err(SendError::Closed(Box::new(msg))),
        }
    }
}

impl SendHalf for MemTx {
    fn send(&self, msg: Msg) -> BoxFuture<'_, Result<(), SendError>> {
        // Unbounded: never waits. Flow control lives in the protocol (credits), not here.
        let result = self.try_send(msg);
        Box::pin(std::future::ready(result))
    }

    fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The receiving half of a [`pair`] end.
#[derive(Debug)]
pub struct MemRx {
    rx: flume::Receiver<Msg>,
}

impl RecvHalf for MemRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(async move { self.rx.recv_async().await.map_err(|_| RecvError::Closed) })
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
    fn send_to_dropped_peer_hands_message_back() {
        block_on(async {
            let (a, b) = pair();
            drop(b);
            let err = a.send(Msg::CancelAck).await.unwrap_err();
            assert!(err.is_closed());
            assert_eq!(err.into_msg(), Msg::CancelAck);
        });
    }

    #[test]
    fn close_delivers_what_was_sent_then_closed() {
        block_on(async {
            let (a, b) = pair();
            a.send(Msg::CancelAck).await.unwrap();
            a.close();
            assert!(a.send(Msg::CancelAck).await.unwrap_err().is_closed());
            assert_eq!(b.recv().await.unwrap(), Msg::CancelAck);
            assert!(b.recv().await.unwrap_err().is_closed());
            assert!(b.recv().await.unwrap_err().is_closed());
        });
    }
}
