//! The byte-stream transport: [`codec`] frames over any pair of async byte streams — the two pipes
//! of a launched program (its stdin and stdout), a socket split in two, a TCP connection.
//!
//! Same contract as [`unix`](crate::unix): when the peer's writing side closes (or its process
//! dies) every pending and later `recv` returns [`RecvError::Closed`] (the first one
//! [`RecvError::TruncatedFrame`] when the peer left a frame unfinished); a send to a peer that is
//! gone hands the message back; [`close`](crate::Channel::close), or dropping the last
//! [`ChannelTx`](crate::ChannelTx), closes the writing stream (the writer is dropped, which closes
//! a pipe; a socket is also shut down through [`AsyncWrite::poll_close`]) once the frame being
//! written is complete, so the peer receives what was sent and then `Closed`.
//!
//! Every channel starts in handshake mode, as the unix one does: frames above
//! [`CodecConfig::max_handshake_frame`] are refused until
//! [`end_handshake`](crate::ChannelRx::end_handshake).
//!
//! ```
//! use harrow_ipc::{stream, Msg};
//! # futures_lite::future::block_on(async {
//! use std::os::unix::net::UnixStream;
//! // Two one-way byte streams, as a launched program's stdin and stdout are. (Not the two halves
//! // of one split stream: a split stream's pending read holds it, so no write could pass.)
//! let (a_out, b_in) = UnixStream::pair().unwrap();
//! let (b_out, a_in) = UnixStream::pair().unwrap();
//! let io = |s| async_io::Async::new(s).unwrap();
//! let a = stream::channel(io(a_in), io(a_out), Default::default());
//! let mut b = stream::channel(io(b_in), io(b_out), Default::default());
//! b.end_handshake();
//! a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
//! assert_eq!(b.recv().await.unwrap(), Msg::CancelAck { teardown_ms: None });
//! a.close();
//! assert!(b.recv().await.unwrap_err().is_closed());
//! # });
//! ```
//!
//! A writer to a pipe whose reader is gone gets `EPIPE` only when `SIGPIPE` is ignored, which the
//! Rust runtime arranges in every binary it starts.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_io::Async;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::channel::BoxFuture;
use crate::codec::{self, CodecConfig, DecodeError, EncodeError, FrameDecoder};
use crate::{Channel, Msg, RecvError, RecvHalf, SendError, SendHalf, SentNow};

/// Makes a channel that reads frames from `reader` and writes frames to `writer`.
pub fn channel<R, W>(reader: R, writer: W, config: CodecConfig) -> Channel
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    Channel::from_halves(StreamTx::new(writer, config), StreamRx::new(reader, config))
}

/// [`channel`], whose sending half also writes without waiting
/// ([`SendHalf::send_batch_now`]) when `now` says it is worth it: a cheap write, and a peer
/// that has read everything written so far (it waits for this message; a peer still reading
/// is better served by the writer's batches).
pub(crate) fn channel_writing_now<R, W>(
    reader: R,
    writer: W,
    config: CodecConfig,
    now: fn(&W) -> bool,
) -> Channel
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut tx = StreamTx::new(writer, config);
    tx.write_now = Some(now);
    Channel::from_halves(tx, StreamRx::new(reader, config))
}

/// A readable descriptor (a socket, a pipe) for [`channel`], in non-blocking mode.
///
/// On a thread that runs [`park::block_on`](crate::park::block_on) it waits for data in that
/// thread's epoll instance, where it is registered once, edge-triggered: a read that returns
/// less than it asked for drained the descriptor, so the next read waits for the next edge
/// instead of first trying a read that would only return `EAGAIN`. Anywhere else it waits
/// through async-io's reactor, as `Async<T>` does.
pub struct Reader<T: AsFd> {
    // Declared before `io`: removed from the epoll instance while the descriptor is open.
    #[cfg(target_os = "linux")]
    registration: Option<crate::park::Registration>,
    io: Arc<Async<T>>,
    // Elsewhere: the wait for readability after a read that returned `EAGAIN` (kept across
    // polls, as `Async::read_with` keeps its own: a fresh wait does not report the event that
    // ended the previous one).
    waiting: Option<async_io::ReadableOwned<T>>,
}

impl<T: AsFd> Reader<T> {
    /// Wraps `inner`, switching it to non-blocking mode.
    pub fn new(inner: T) -> io::Result<Self> {
        Ok(Reader {
            #[cfg(target_os = "linux")]
            registration: None,
            io: Arc::new(Async::new(inner)?),
            waiting: None,
        })
    }

    /// The wrapped descriptor.
    pub fn get_ref(&self) -> &T {
        self.io.get_ref()
    }
}

impl<T: AsFd> fmt::Debug for Reader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl<T: AsFd> Drop for Reader<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(r) = self.registration.take() {
            r.deregister(self.io.as_fd());
        }
    }
}

impl<T: AsFd> AsyncRead for Reader<T>
where
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        #[cfg(target_os = "linux")]
        {
            let fd = this.io.as_fd();
            let registered =
                crate::park::Registration::on_this_thread(&mut this.registration, fd, || {
                    crate::park::Registration::here(fd)
                });
            if let Some(r) = registered {
                loop {
                    std::task::ready!(r.poll_ready(cx));
                    match this.io.get_ref().read(buf) {
                        Ok(n) => {
                            if n == buf.len() || (n > 0 && r.hung_up()) {
                                // Maybe more queued (or, the peer gone, the end of the stream
                                // still to read): the next read tries before it waits.
                                r.set_ready();
                            }
                            return Poll::Ready(Ok(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            // Not a drained descriptor: the next read tries again.
                            r.set_ready();
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
        loop {
            if let Some(waiting) = this.waiting.as_mut() {
                std::task::ready!(Pin::new(waiting).poll(cx))?;
                this.waiting = None;
            }
            match this.io.get_ref().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    this.waiting = Some(this.io.clone().readable_owned());
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero
    )
}

/// The sending half of a byte-stream channel.
pub struct StreamTx<W> {
    config: CodecConfig,
    // Serialises writers so frames never interleave; holds the stream and the frame buffer.
    writer: async_lock::Mutex<Writer<W>>,
    // Lets the synchronous `close` wait out a frame being written: whoever ends last closes.
    flags: Mutex<TxFlags>,
    // Whether `send_batch_now` writes (see `channel_writing_now`); `None`: it never does.
    write_now: Option<fn(&W) -> bool>,
}

impl<W> fmt::Debug for StreamTx<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.flags();
        f.debug_struct("StreamTx")
            .field("writing", &flags.writing)
            .field("close_requested", &flags.close_requested)
            .finish_non_exhaustive()
    }
}

struct Writer<W> {
    /// `None` once closed.
    sink: Option<W>,
    buf: Vec<u8>,
    // How much of `buf` is on the wire; `0 < written < buf.len()` after a cancelled send or an
    // unfinished `send_batch_now`.
    written: usize,
}

impl<W> Writer<W> {
    /// Whether a frame is on the wire in part only (its rest goes before anything else).
    fn unfinished(&self) -> bool {
        self.written > 0 && self.written < self.buf.len()
    }

    /// Empties the frame buffer for the next frames (what it held is on the wire).
    fn reset(&mut self) {
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP_WRITE_BUF {
            self.buf = Vec::new();
        }
    }
}

#[derive(Debug, Default)]
struct TxFlags {
    writing: bool,
    close_requested: bool,
}

/// Keeps the buffer from pinning the memory of one huge message forever.
const KEEP_WRITE_BUF: usize = 1 << 20;
/// How many bytes of frames one batched write gathers at most.
const BATCH_BYTES: usize = 256 * 1024;

/// Closes a writer without blocking: one poll of `close` (a socket shuts down its write side at
/// once; a pipe needs nothing more than the drop that follows).
fn close_sink<W: AsyncWrite + Unpin>(mut sink: W) {
    let _ = futures_lite::future::block_on(futures_lite::future::poll_once(sink.close()));
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamTx<W> {
    fn new(sink: W, config: CodecConfig) -> Self {
        StreamTx {
            config,
            writer: async_lock::Mutex::new(Writer {
                sink: Some(sink),
                buf: Vec::new(),
                written: 0,
            }),
            flags: Mutex::new(TxFlags::default()),
            write_now: None,
        }
    }
}

impl<W> StreamTx<W> {
    fn flags(&self) -> MutexGuard<'_, TxFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn flush<W: AsyncWrite + Unpin>(w: &mut Writer<W>) -> io::Result<()> {
    let Writer { sink, buf, written } = w;
    let Some(sink) = sink.as_mut() else {
        return Err(io::ErrorKind::BrokenPipe.into());
    };
    while *written < buf.len() {
        let n = sink.write(&buf[*written..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n;
    }
    sink.flush().await
}

/// Marks the end of a frame write (also when the send is cancelled) and performs a `close` that
/// arrived meanwhile.
struct WritingGuard<'a, W: AsyncWrite + Unpin> {
    tx: &'a StreamTx<W>,
    w: async_lock::MutexGuard<'a, Writer<W>>,
}

impl<W: AsyncWrite + Unpin> Drop for WritingGuard<'_, W> {
    fn drop(&mut self) {
        let mut flags = self.tx.flags();
        flags.writing = false;
        if flags.close_requested
            && let Some(sink) = self.w.sink.take()
        {
            close_sink(sink);
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamTx<W> {
    /// Takes the writer lock, finishing a frame a cancelled send left half written.
    async fn lock_writer(
        &self,
    ) -> Result<async_lock::MutexGuard<'_, Writer<W>>, (io::Error, bool)> {
        let mut w = self.writer.lock().await;
        if w.sink.is_none() {
            return Err((io::ErrorKind::BrokenPipe.into(), true));
        }
        if w.unfinished() {
            flush(&mut w).await.map_err(|e| (e, false))?;
        }
        w.reset();
        Ok(w)
    }

    async fn send_frames(&self, msgs: &mut VecDeque<Msg>) -> Result<(), SendError> {
        if msgs.is_empty() {
            // Writes what an unfinished `send_batch_now` left (`SentNow::Unfinished`).
            let w = match self.lock_writer().await {
                Ok(w) => w,
                Err((_, true)) => return Err(closed(msgs)),
                Err((e, false)) => return Err(io_error(e, msgs)),
            };
            // A close that came while the rest was written: this send closes, as a writing one
            // would (see `close`).
            let _done = WritingGuard { tx: self, w };
            return Ok(());
        }
        while !msgs.is_empty() {
            if self.flags().close_requested {
                return Err(closed(msgs));
            }
            let mut w = match self.lock_writer().await {
                Ok(w) => w,
                Err((_, true)) => return Err(closed(msgs)),
                Err((e, false)) => return Err(io_error(e, msgs)),
            };
            // Encode as many frames as fit in one write; stop at the first that cannot travel.
            let mut encoded = 0;
            let mut refused = None;
            for msg in msgs.iter() {
                match codec::encode_into(msg, &self.config, &mut w.buf) {
                    Ok(_) => encoded += 1,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
                if w.buf.len() >= BATCH_BYTES {
                    break;
                }
            }
            if encoded > 0 {
                {
                    let mut flags = self.flags();
                    if flags.close_requested {
                        w.buf.clear();
                        if let Some(sink) = w.sink.take() {
                            close_sink(sink);
                        }
                        return Err(closed(msgs));
                    }
                    flags.writing = true;
                }
                let mut guard = WritingGuard { tx: self, w };
                if let Err(e) = flush(&mut guard.w).await {
                    return Err(io_error(e, msgs));
                }
                drop(guard);
                msgs.drain(..encoded);
            }
            if let Some(e) = refused {
                let Some(msg) = msgs.pop_front() else {
                    return Ok(());
                };
                return Err(encode_error(e, msg));
            }
        }
        Ok(())
    }
}

/// `msgs` is non-empty wherever this is called; the stand-in is never handed out.
fn front(msgs: &mut VecDeque<Msg>) -> Msg {
    msgs.pop_front()
        .unwrap_or(Msg::CancelAck { teardown_ms: None })
}

fn closed(msgs: &mut VecDeque<Msg>) -> SendError {
    SendError::Closed(Box::new(front(msgs)))
}

fn io_error(e: io::Error, msgs: &mut VecDeque<Msg>) -> SendError {
    let msg = Box::new(front(msgs));
    if is_peer_gone(&e) {
        SendError::Closed(msg)
    } else {
        SendError::Io { msg, source: e }
    }
}

/// The send error for a message the codec refused, handing the message back.
fn encode_error(e: EncodeError, msg: Msg) -> SendError {
    match e {
        EncodeError::TooLarge { size, max } => SendError::TooLarge {
            msg: Box::new(msg),
            size,
            max,
        },
        other => SendError::Encode {
            msg: Box::new(msg),
            reason: other.to_string(),
        },
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> SendHalf for StreamTx<W> {
    fn send(&self, msg: Msg) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(async move {
            let mut msgs = VecDeque::from([msg]);
            self.send_frames(&mut msgs).await
        })
    }

    fn send_batch<'a>(
        &'a self,
        msgs: &'a mut VecDeque<Msg>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.send_frames(msgs))
    }

    /// Writes the whole batch in one poll of the sink if this half was made to
    /// (`channel_writing_now`) and its test passes, the writer lock is free, nothing of an
    /// earlier frame is left to write, every message encodes and the batch is within one
    /// write's bytes ([`SentNow`]).
    fn send_batch_now(&self, msgs: &mut VecDeque<Msg>) -> SentNow {
        let Some(now) = self.write_now else {
            return SentNow::NotNow;
        };
        if msgs.is_empty() {
            return SentNow::Sent;
        }
        let Some(mut w) = self.writer.try_lock() else {
            return SentNow::NotNow;
        };
        if w.unfinished() || !w.sink.as_ref().is_some_and(now) {
            return SentNow::NotNow;
        }
        w.reset();
        for msg in msgs.iter() {
            // A message that cannot travel, or a batch too large for one write, is left to
            // `send_batch` (which reports the one, and splits the other).
            if codec::encode_into(msg, &self.config, &mut w.buf).is_err()
                || w.buf.len() > BATCH_BYTES
            {
                w.buf.clear();
                return SentNow::NotNow;
            }
        }
        {
            let mut flags = self.flags();
            if flags.close_requested {
                w.buf.clear();
                return SentNow::NotNow;
            }
            flags.writing = true;
        }
        let mut guard = WritingGuard { tx: self, w };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = std::pin::pin!(flush(&mut guard.w)).poll(&mut cx);
        match polled {
            Poll::Ready(Ok(())) => {
                msgs.clear();
                SentNow::Sent
            }
            // Nothing on the wire: as if never tried (`send_batch` waits, or meets the error).
            _ if guard.w.written == 0 => {
                guard.w.buf.clear();
                SentNow::NotNow
            }
            _ => {
                msgs.clear();
                SentNow::Unfinished
            }
        }
    }

    fn close(&self) {
        let mut flags = self.flags();
        flags.close_requested = true;
        if flags.writing {
            // The writing send closes when its frame is out (its guard).
            return;
        }
        // Not writing: the lock is free, or held by a send between encoding and writing, which
        // sees `close_requested` and closes itself.
        if let Some(mut w) = self.writer.try_lock()
            && let Some(sink) = w.sink.take()
        {
            close_sink(sink);
        }
    }
}

impl<W> Drop for StreamTx<W> {
    fn drop(&mut self) {
        // Dropping the writer closes it (a pipe's descriptor, a socket's write side when it is
        // its last owner).
        let w = self.writer.get_mut();
        w.sink.take();
    }
}

/// The receiving half of a byte-stream channel.
pub struct StreamRx<R> {
    /// `None` once reading stopped for good (dropping the reader closes it, so the peer's later
    /// writes fail instead of filling a buffer nobody reads).
    reader: Option<R>,
    // All partial-frame state lives here, so a dropped `recv` future loses nothing.
    decoder: FrameDecoder,
    done: bool,
}

impl<R> fmt::Debug for StreamRx<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRx")
            .field("buffered", &self.decoder.buffered())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> StreamRx<R> {
    fn new(reader: R, config: CodecConfig) -> Self {
        StreamRx {
            reader: Some(reader),
            decoder: FrameDecoder::handshaking(config),
            done: false,
        }
    }

    /// Stops reading for good: the stream cannot be resynchronised or the peer is gone.
    fn finish(&mut self) {
        self.done = true;
        self.reader = None;
    }

    fn fail(&mut self, e: DecodeError) -> RecvError {
        tracing::warn!(error = %e, "stream channel: refusing the peer's frame, no more reading");
        self.finish();
        RecvError::Decode(e)
    }

    /// The peer is gone: `Closed`, or `TruncatedFrame` if it left a frame unfinished.
    fn peer_gone(&mut self) -> RecvError {
        let got = self.decoder.buffered();
        self.finish();
        if got == 0 {
            return RecvError::Closed;
        }
        let expected = self
            .decoder
            .pending_frame_len()
            .unwrap_or(codec::LENGTH_PREFIX);
        RecvError::TruncatedFrame { expected, got }
    }

    /// The next frame already in the buffer, decoded: `None` when the buffer holds no complete
    /// frame (more must be read).
    fn decode_buffered(&mut self) -> Option<Result<Msg, RecvError>> {
        match self.decoder.decode_next() {
            Ok(Some(msg)) => Some(Ok(msg)),
            Ok(None) => None,
            Err(
                e
                @ (DecodeError::FrameTooLarge { .. } | DecodeError::HandshakeFrameTooLarge { .. }),
            ) => Some(Err(self.fail(e))),
            // The bad frame was consumed; the next one can still be read.
            Err(e) => Some(Err(RecvError::Decode(e))),
        }
    }

    async fn recv_frame(&mut self) -> Result<Msg, RecvError> {
        loop {
            if self.done {
                return Err(RecvError::Closed);
            }
            if let Some(next) = self.decode_buffered() {
                return next;
            }
            let buf = match self.decoder.read_buf() {
                Ok(buf) => buf,
                Err(e) => return Err(self.fail(e)),
            };
            let Some(reader) = self.reader.as_mut() else {
                return Err(RecvError::Closed);
            };
            match reader.read(buf).await {
                Ok(0) => return Err(self.peer_gone()),
                Ok(n) => self.decoder.commit(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_peer_gone(&e) => return Err(self.peer_gone()),
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> RecvHalf for StreamRx<R> {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(self.recv_frame())
    }

    fn end_handshake(&mut self) {
        self.decoder.end_handshake();
    }

    /// A frame that arrived with an earlier read (a peer's batch comes in one read), decoded
    /// without a read and without a future. `None` when the buffer holds no complete frame, and
    /// once reading stopped: [`recv`](RecvHalf::recv) reads, and reports the end.
    fn try_recv_now(&mut self) -> Option<Result<Msg, RecvError>> {
        if self.done {
            return None;
        }
        self.decode_buffered()
    }
}
