//! The transport-independent channel contract.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use crate::Msg;
use crate::codec::DecodeError;

/// A boxed, sendable future: what the object-safe transport traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a message could not be sent. Every variant hands the message back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer is gone (its receiving half was dropped, or the connection broke).
    #[error("channel closed: the peer is gone")]
    Closed(Box<Msg>),
    /// The message encodes to a frame larger than the configured maximum.
    #[error("message of {size} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// The message.
        msg: Box<Msg>,
        /// Its encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The message could not be encoded.
    #[error("message could not be encoded: {reason}")]
    Encode {
        /// The message.
        msg: Box<Msg>,
        /// The encoder's complaint.
        reason: String,
    },
    /// The transport failed while writing.
    #[error("transport failed while sending: {source}")]
    Io {
        /// The message.
        msg: Box<Msg>,
        /// The I/O error.
        source: io::Error,
    },
}

impl SendError {
    /// Whether the peer is gone (as opposed to a problem with this message).
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed(_) | SendError::Io { .. })
    }

    /// Takes the unsent message back.
    pub fn into_msg(self) -> Msg {
        match self {
            SendError::Closed(msg)
            | SendError::TooLarge { msg, .. }
            | SendError::Encode { msg, .. }
            | SendError::Io { msg, .. } => *msg,
        }
    }
}

/// Why no message could be received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer is gone, or closed its sending side; no more messages will arrive.
    #[error("channel closed: the peer is gone")]
    Closed,
    /// The peer is gone in the middle of a frame: the stream ended after `got` of the frame's
    /// `expected` bytes (length prefix included; while the prefix itself is incomplete,
    /// `expected` is the prefix's size). No more messages will arrive: later calls return
    /// `Closed`.
    #[error(
        "channel closed in the middle of a frame: the peer is gone after sending {got} of its \
         {expected} bytes"
    )]
    TruncatedFrame {
        /// The frame's size, as far as it is known.
        expected: usize,
        /// How many of its bytes arrived.
        got: usize,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame from peer: {0}")]
    Decode(#[from] DecodeError),
    /// The transport failed while reading.
    #[error("transport failed while receiving: {0}")]
    Io(#[from] io::Error),
}

impl RecvError {
    /// Whether the peer is gone (cleanly, or in the middle of a frame).
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Closed | RecvError::TruncatedFrame { .. })
    }
}

/// The sending half of a transport. Implement it (with [`RecvHalf`]) to add a transport or to
/// wrap one (fault injection does).
///
/// Sends may be issued concurrently from several tasks; each message is delivered whole and in the
/// order the sends completed.
pub trait SendHalf: Send + Sync + fmt::Debug + 'static {
    /// Sends one message. Fails, handing the message back, when the peer is gone.
    fn send(&self, msg: Msg) -> BoxFuture<'_, Result<(), SendError>>;

    /// Sends the messages of `msgs` in order, taking them out as they go; byte transports write
    /// them with as few system calls as they can. On failure the error hands back the message that
    /// failed; those before it were sent and those after it are still in `msgs`.
    ///
    /// The default sends them one by one.
    fn send_batch<'a>(
        &'a self,
        msgs: &'a mut VecDeque<Msg>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            while let Some(msg) = msgs.pop_front() {
                self.send(msg).await?;
            }
            Ok(())
        })
    }
    /// Closes this direction: the peer receives what was already sent, then `Closed`.
    /// Later sends fail with `Closed`. Idempotent.
    fn close(&self);

    /// Whether [`send_now`](Self::send_now) and [`flush_now`](Self::flush_now) work on this
    /// half: its sends never wait and fail only when the peer is gone (an in-memory queue). A
    /// sender may then hand messages over from where they are made, with no task of its own in
    /// between, and wake the peer once per batch (the portal's link does).
    ///
    /// The default is false, which is right for every transport that may wait (byte streams)
    /// and for wrappers: a wrapper that forwards `send` must say true only if it also forwards
    /// both methods below.
    fn sends_immediately(&self) -> bool {
        false
    }

    /// Hands `msg` over without waiting, for halves whose
    /// [`sends_immediately`](Self::sends_immediately) is true. The peer may receive it at once,
    /// but is only sure to receive it, and a peer waiting for a message to be woken, after the
    /// next [`flush_now`](Self::flush_now) (or [`send`](Self::send),
    /// [`send_batch`](Self::send_batch) or [`close`](Self::close), which deliver it first): a
    /// sender that hands over a batch wakes the peer once, and a half may gather the batch
    /// before it hands it over (the `mem` pair of thread actors does). The default (for halves
    /// that may wait) sends nothing and hands the message back as `Closed`.
    fn send_now(&self, msg: Msg) -> Result<(), SendError> {
        Err(SendError::Closed(Box::new(msg)))
    }

    /// Delivers what [`send_now`](Self::send_now) handed over and wakes the peer for it. The
    /// default does nothing.
    fn flush_now(&self) {}

    /// Sends the messages of `msgs` without waiting, if this half can right now, from whatever
    /// thread calls it: for halves whose sends may wait (byte streams), so that a sender that
    /// finds nothing else in flight writes its message where it is made instead of through a
    /// writer task. Says what became of them ([`SentNow`]); a half that would have to wait (a
    /// send in progress, a full buffer), or whose send would fail, sends nothing and answers
    /// [`SentNow::NotNow`], and the caller goes through [`send_batch`](Self::send_batch),
    /// which waits or reports the failure.
    ///
    /// The default answers `NotNow`, which is right for any half (a wrapper that forwards
    /// `send` included).
    fn send_batch_now(&self, msgs: &mut VecDeque<Msg>) -> SentNow {
        let _ = msgs;
        SentNow::NotNow
    }
}

/// What [`SendHalf::send_batch_now`] did with the messages it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentNow {
    /// All of them went out whole; the batch is empty.
    Sent,
    /// None went out; the batch is as it was.
    NotNow,
    /// All of them were taken (the batch is empty) but their bytes are not all written yet:
    /// the rest goes before anything else, and the next [`SendHalf::send_batch`] waits for it
    /// (an empty batch writes just the rest). The caller must make that call, or the messages
    /// may never reach the peer.
    Unfinished,
}

/// The receiving half of a transport.
pub trait RecvHalf: Send + fmt::Debug + 'static {
    /// Receives the next message. After the peer is gone every call returns `Closed` promptly.
    /// Cancel-safe: dropping the future loses no message.
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>>;

    /// Declares the handshake with the peer complete: byte transports lift their small
    /// pre-handshake frame limit ([`CodecConfig::max_handshake_frame`](crate::codec::CodecConfig))
    /// for the frames after the ones already returned. Idempotent.
    ///
    /// The default does nothing, which is right for transports that decode nothing (`mem`).
    /// A wrapper around another half must forward the call.
    fn end_handshake(&mut self) {}

    /// The next message if one is already there, without waiting and without a future: `None`
    /// when none is ready (or the half cannot tell without waiting: the default). A reader may
    /// drain what is there this way and await [`recv`](Self::recv) only when it is empty.
    fn try_recv_now(&mut self) -> Option<Result<Msg, RecvError>> {
        None
    }

    /// Polls for the next message without a future of its own: `None` when the half cannot
    /// (the default: use [`recv`](Self::recv), whose future holds the wait's state). A half that
    /// keeps the waker itself (`mem`) implements it, sparing a waiting reader a boxed future
    /// per wait. Cancel-safe like `recv`.
    fn poll_recv_now(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> Option<std::task::Poll<Result<Msg, RecvError>>> {
        None
    }
}

/// The sending side of a [`Channel`]. Cheap to clone; the direction closes when the last clone is
/// dropped or [`close`](ChannelTx::close) is called.
#[derive(Clone, Debug)]
pub struct ChannelTx {
    inner: Arc<dyn SendHalf>,
}

impl ChannelTx {
    /// Wraps a transport's sending half.
    pub fn new(half: impl SendHalf) -> Self {
        ChannelTx {
            inner: Arc::new(half),
        }
    }

    /// Sends one message; see [`SendHalf::send`].
    pub async fn send(&self, msg: Msg) -> Result<(), SendError> {
        self.inner.send(msg).await
    }

    /// Sends several messages; see [`SendHalf::send_batch`].
    pub async fn send_batch(&self, msgs: &mut VecDeque<Msg>) -> Result<(), SendError> {
        self.inner.send_batch(msgs).await
    }

    /// Closes this direction; see [`SendHalf::close`].
    pub fn close(&self) {
        self.inner.close()
    }

    /// Whether sends complete without waiting; see [`SendHalf::sends_immediately`].
    pub fn sends_immediately(&self) -> bool {
        self.inner.sends_immediately()
    }

    /// Hands one message over without waiting; see [`SendHalf::send_now`].
    pub fn send_now(&self, msg: Msg) -> Result<(), SendError> {
        self.inner.send_now(msg)
    }

    /// Wakes the peer for what `send_now` handed over; see [`SendHalf::flush_now`].
    pub fn flush_now(&self) {
        self.inner.flush_now()
    }

    /// Sends several messages if it can without waiting; see [`SendHalf::send_batch_now`].
    pub fn send_batch_now(&self, msgs: &mut VecDeque<Msg>) -> SentNow {
        self.inner.send_batch_now(msgs)
    }
}

/// The receiving side of a [`Channel`].
#[derive(Debug)]
pub struct ChannelRx {
    inner: Box<dyn RecvHalf>,
}

impl ChannelRx {
    /// Wraps a transport's receiving half.
    pub fn new(half: impl RecvHalf) -> Self {
        ChannelRx {
            inner: Box::new(half),
        }
    }

    /// Receives the next message; see [`RecvHalf::recv`].
    pub async fn recv(&mut self) -> Result<Msg, RecvError> {
        self.inner.recv().await
    }

    /// The next message if one is already there; see [`RecvHalf::try_recv_now`].
    pub fn try_recv_now(&mut self) -> Option<Result<Msg, RecvError>> {
        self.inner.try_recv_now()
    }

    /// Polls for the next message without a future, if the half can; see
    /// [`RecvHalf::poll_recv_now`].
    pub fn poll_recv_now(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<std::task::Poll<Result<Msg, RecvError>>> {
        self.inner.poll_recv_now(cx)
    }

    /// Declares the handshake complete, lifting the pre-handshake frame limit; see
    /// [`RecvHalf::end_handshake`]. Whoever runs the handshake (the portal's link) calls this once
    /// the peer has proven what it must.
    pub fn end_handshake(&mut self) {
        self.inner.end_handshake()
    }
}

/// One end of a bidirectional message channel between two actors.
///
/// Use [`send`](Channel::send) and [`recv`](Channel::recv) directly, or
/// [`split`](Channel::split) it to read in one task and write from many.
#[derive(Debug)]
pub struct Channel {
    tx: ChannelTx,
    rx: async_lock::Mutex<ChannelRx>,
}

impl Channel {
    /// Assembles a channel from two halves.
    pub fn new(tx: ChannelTx, rx: ChannelRx) -> Self {
        Channel {
            tx,
            rx: async_lock::Mutex::new(rx),
        }
    }

    /// Assembles a channel from a transport's two halves.
    pub fn from_halves(tx: impl SendHalf, rx: impl RecvHalf) -> Self {
        Channel::new(ChannelTx::new(tx), ChannelRx::new(rx))
    }

    /// Sends one message.
    pub async fn send(&self, msg: Msg) -> Result<(), SendError> {
        self.tx.send(msg).await
    }

    /// Receives the next message. Concurrent callers are served one at a time.
    pub async fn recv(&self) -> Result<Msg, RecvError> {
        self.rx.lock().await.recv().await
    }

    /// Declares the handshake complete; see [`ChannelRx::end_handshake`]. For channels used
    /// without a link: until this is called, a byte transport accepts only small frames.
    pub fn end_handshake(&mut self) {
        self.rx.get_mut().end_handshake()
    }

    /// Closes the sending direction; the peer's `recv` returns `Closed` after what was sent.
    pub fn close(&self) {
        self.tx.close()
    }

    /// Splits into independently usable halves.
    pub fn split(self) -> (ChannelTx, ChannelRx) {
        (self.tx, self.rx.into_inner())
    }
}
