//! The Unix socket transport: [`codec`] frames over a `UnixStream`, driven by
//! async-io. For peers in other processes (or anywhere a byte stream is all there is).
//!
//! Same contract as [`mem`](crate::mem): when the peer drops its channel or dies every pending and
//! later `recv` returns [`RecvError::Closed`] (the first one [`RecvError::TruncatedFrame`] when the
//! peer left a frame unfinished); a send to a peer that is gone hands the message back;
//! [`close`](crate::Channel::close), or dropping the last [`ChannelTx`](crate::ChannelTx), shuts
//! down the write direction so that the peer receives what was sent and then `Closed`.
//!
//! Every channel starts in handshake mode: frames above
//! [`CodecConfig::max_handshake_frame`] (4 KiB by default) end the connection with
//! [`DecodeError::HandshakeFrameTooLarge`] until the receiving side calls
//! [`end_handshake`](crate::ChannelRx::end_handshake), as the portal's link does once `Hello` is
//! checked. A receive buffer grows with the bytes that arrived, never to an announced length.
//!
//! ```
//! use harrow_ipc::{unix, Msg};
//! # futures_lite::future::block_on(async {
//! let (a, mut b) = unix::pair().unwrap();
//! b.end_handshake(); // no handshake here: accept large frames right away
//! a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
//! assert_eq!(b.recv().await.unwrap(), Msg::CancelAck { teardown_ms: None });
//! drop(a);
//! assert!(b.recv().await.unwrap_err().is_closed());
//! # });
//! ```

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
use std::os::unix::net::{SocketAddr, UnixListener as StdUnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_io::Async;
use rustix::net::SendFlags;

use crate::channel::BoxFuture;
use crate::codec::{self, CodecConfig, DecodeError, EncodeError, FrameDecoder};
use crate::{Channel, Msg, RecvError, RecvHalf, SendError, SendHalf};

/// Makes a connected pair of channels over a fresh socketpair, with the default [`CodecConfig`].
pub fn pair() -> io::Result<(Channel, Channel)> {
    pair_with(CodecConfig::default())
}

/// Makes a connected pair of channels over a fresh socketpair.
pub fn pair_with(config: CodecConfig) -> io::Result<(Channel, Channel)> {
    let (a, b) = UnixStream::pair()?;
    Ok((from_stream(a, config)?, from_stream(b, config)?))
}

/// Makes a channel of a connected stream (for example one inherited from a parent process).
/// The stream is switched to non-blocking mode.
pub fn from_stream(stream: UnixStream, config: CodecConfig) -> io::Result<Channel> {
    let stream = Arc::new(Async::new(stream)?);
    Ok(Channel::from_halves(
        UnixTx::new(stream.clone(), config),
        UnixRx::new(stream, config),
    ))
}

/// Listens on `path` with the default [`CodecConfig`]. The path must not exist yet.
pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    bind_with(path, CodecConfig::default())
}

/// Listens on `path`; accepted channels use `config`. The path must not exist yet.
pub fn bind_with(path: impl AsRef<Path>, config: CodecConfig) -> io::Result<UnixListener> {
    Ok(UnixListener {
        inner: Async::<StdUnixListener>::bind(path)?,
        config,
    })
}

/// Connects to a [`UnixListener`] at `path`, with the default [`CodecConfig`].
pub async fn connect(path: impl AsRef<Path>) -> io::Result<Channel> {
    connect_with(path, CodecConfig::default()).await
}

/// Connects to a [`UnixListener`] at `path`.
pub async fn connect_with(path: impl AsRef<Path>, config: CodecConfig) -> io::Result<Channel> {
    let stream = Async::<UnixStream>::connect(path).await?;
    let stream = Arc::new(stream);
    Ok(Channel::from_halves(
        UnixTx::new(stream.clone(), config),
        UnixRx::new(stream, config),
    ))
}

/// A Unix-domain socket listener that yields [`Channel`]s. Made by [`bind`].
#[derive(Debug)]
pub struct UnixListener {
    inner: Async<StdUnixListener>,
    config: CodecConfig,
}

impl UnixListener {
    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Channel> {
        let (stream, _addr) = self.inner.accept().await?;
        let stream = Arc::new(stream);
        Ok(Channel::from_halves(
            UnixTx::new(stream.clone(), self.config),
            UnixRx::new(stream, self.config),
        ))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

fn shutdown(stream: &Async<UnixStream>, how: Shutdown) {
    // ENOTCONN once the peer is fully gone: nothing left to shut down.
    let _ = stream.get_ref().shutdown(how);
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// The sending half of a Unix channel.
#[derive(Debug)]
pub struct UnixTx {
    stream: Arc<Async<UnixStream>>,
    config: CodecConfig,
    // Serialises writers so frames never interleave; holds the reused frame buffer.
    writer: async_lock::Mutex<Writer>,
    // Lets the synchronous `close` wait out a frame being written: whoever ends last shuts down.
    flags: Mutex<TxFlags>,
}

#[derive(Debug, Default)]
struct Writer {
    buf: Vec<u8>,
    // How much of `buf` is on the wire; `0 < written < buf.len()` after a cancelled send.
    written: usize,
}

#[derive(Debug, Default)]
struct TxFlags {
    writing: bool,
    close_requested: bool,
}

/// Keeps the buffer from pinning the memory of one huge message forever.
const KEEP_WRITE_BUF: usize = 1 << 20;

impl UnixTx {
    fn new(stream: Arc<Async<UnixStream>>, config: CodecConfig) -> Self {
        UnixTx {
            stream,
            config,
            writer: async_lock::Mutex::new(Writer::default()),
            flags: Mutex::new(TxFlags::default()),
        }
    }

    fn flags(&self) -> MutexGuard<'_, TxFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn flush(&self, w: &mut Writer) -> io::Result<()> {
        while w.written < w.buf.len() {
            let rest = &w.buf[w.written..];
            let n = self
                .stream
                .write_with(|s| {
                    rustix::net::send(s, rest, SendFlags::NOSIGNAL).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            w.written += n;
        }
        Ok(())
    }

    async fn send_frame(&self, msg: Msg) -> Result<(), SendError> {
        if self.flags().close_requested {
            return Err(SendError::Closed(Box::new(msg)));
        }
        let mut w = self.writer.lock().await;
        if w.written > 0 && w.written < w.buf.len() {
            // A cancelled send left half a frame on the wire: finish it or the stream is corrupt.
            if let Err(e) = self.flush(&mut w).await {
                return Err(io_error(e, msg));
            }
        }
        w.buf.clear();
        w.written = 0;
        if w.buf.capacity() > KEEP_WRITE_BUF {
            w.buf = Vec::new();
        }
        if let Err(e) = codec::encode_into(&msg, &self.config, &mut w.buf) {
            return Err(encode_error(e, msg));
        }
        {
            let mut flags = self.flags();
            if flags.close_requested {
                w.buf.clear();
                return Err(SendError::Closed(Box::new(msg)));
            }
            flags.writing = true;
        }
        let _writing = WritingGuard(self);
        match self.flush(&mut w).await {
            Ok(()) => Ok(()),
            Err(e) => Err(io_error(e, msg)),
        }
    }
}

/// How many bytes of frames one batched write gathers at most.
const BATCH_BYTES: usize = 256 * 1024;

impl UnixTx {
    // `msgs` is non-empty wherever a message is popped below; the `CancelAck` stand-in is never
    // handed out.
    async fn send_frames(&self, msgs: &mut VecDeque<Msg>) -> Result<(), SendError> {
        while !msgs.is_empty() {
            if self.flags().close_requested {
                let msg = msgs
                    .pop_front()
                    .unwrap_or(Msg::CancelAck { teardown_ms: None });
                return Err(SendError::Closed(Box::new(msg)));
            }
            let mut w = self.writer.lock().await;
            if w.written > 0 && w.written < w.buf.len() {
                // A cancelled send left half a frame on the wire: finish it first.
                if let Err(e) = self.flush(&mut w).await {
                    let msg = msgs
                        .pop_front()
                        .unwrap_or(Msg::CancelAck { teardown_ms: None });
                    return Err(io_error(e, msg));
                }
            }
            w.buf.clear();
            w.written = 0;
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
                        let msg = msgs
                            .pop_front()
                            .unwrap_or(Msg::CancelAck { teardown_ms: None });
                        return Err(SendError::Closed(Box::new(msg)));
                    }
                    flags.writing = true;
                }
                let _writing = WritingGuard(self);
                if let Err(e) = self.flush(&mut w).await {
                    let msg = msgs
                        .pop_front()
                        .unwrap_or(Msg::CancelAck { teardown_ms: None });
                    return Err(io_error(e, msg));
                }
                msgs.drain(..encoded);
            }
            if w.buf.capacity() > KEEP_WRITE_BUF {
                w.buf = Vec::new();
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

fn io_error(e: io::Error, msg: Msg) -> SendError {
    if is_peer_gone(&e) {
        SendError::Closed(Box::new(msg))
    } else {
        SendError::Io {
            msg: Box::new(msg),
            source: e,
        }
    }
}

/// Marks the end of a frame write (also when the send is cancelled) and performs a `close` that
/// arrived meanwhile.
struct WritingGuard<'a>(&'a UnixTx);

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        let mut flags = self.0.flags();
        flags.writing = false;
        if flags.close_requested {
            shutdown(&self.0.stream, Shutdown::Write);
        }
    }
}

impl SendHalf for UnixTx {
    fn send(&self, msg: Msg) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(self.send_frame(msg))
    }

    fn send_batch<'a>(
        &'a self,
        msgs: &'a mut VecDeque<Msg>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.send_frames(msgs))
    }

    fn close(&self) {
        let mut flags = self.flags();
        flags.close_requested = true;
        if !flags.writing {
            shutdown(&self.stream, Shutdown::Write);
        }
    }
}

impl Drop for UnixTx {
    fn drop(&mut self) {
        shutdown(&self.stream, Shutdown::Write);
    }
}

/// The receiving half of a Unix channel.
#[derive(Debug)]
pub struct UnixRx {
    // The socket in the epoll instance of the thread that reads it, when that thread runs
    // [`park::block_on`](crate::park::block_on); declared first, so it goes before the stream.
    #[cfg(target_os = "linux")]
    registration: Option<crate::park::Registration>,
    stream: Arc<Async<UnixStream>>,
    // All partial-frame state lives here, so a dropped `recv` future loses nothing.
    decoder: FrameDecoder,
    done: bool,
}

impl UnixRx {
    fn new(stream: Arc<Async<UnixStream>>, config: CodecConfig) -> Self {
        UnixRx {
            #[cfg(target_os = "linux")]
            registration: None,
            stream,
            decoder: FrameDecoder::handshaking(config),
            done: false,
        }
    }

    /// Stops reading for good: the stream cannot be resynchronised or the peer is gone.
    fn finish(&mut self) {
        self.done = true;
        // Also makes the peer's later sends fail instead of filling a buffer nobody reads.
        shutdown(&self.stream, Shutdown::Read);
    }

    fn fail(&mut self, e: DecodeError) -> RecvError {
        tracing::warn!(error = %e, "unix channel: refusing the peer's frame, closing the connection");
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
        tracing::debug!(
            expected,
            got,
            "unix channel: peer gone in the middle of a frame"
        );
        RecvError::TruncatedFrame { expected, got }
    }

    async fn recv_frame(&mut self) -> Result<Msg, RecvError> {
        loop {
            if self.done {
                return Err(RecvError::Closed);
            }
            match self.decoder.decode_next() {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(
                    e @ (DecodeError::FrameTooLarge { .. }
                    | DecodeError::HandshakeFrameTooLarge { .. }),
                ) => return Err(self.fail(e)),
                // The bad frame was consumed; the next one can still be read.
                Err(e) => return Err(RecvError::Decode(e)),
            }
            let buf = match self.decoder.read_buf() {
                Ok(buf) => buf,
                Err(e) => return Err(self.fail(e)),
            };
            let read = read_some(
                &self.stream,
                #[cfg(target_os = "linux")]
                &mut self.registration,
                buf,
            )
            .await;
            match read {
                Ok(0) => return Err(self.peer_gone()),
                Ok(n) => self.decoder.commit(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_peer_gone(&e) => return Err(self.peer_gone()),
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }
}

impl RecvHalf for UnixRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(self.recv_frame())
    }

    fn end_handshake(&mut self) {
        self.decoder.end_handshake();
    }
}

impl Drop for UnixRx {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(r) = self.registration.take() {
            r.deregister(self.stream.as_fd());
        }
        shutdown(&self.stream, Shutdown::Read);
    }
}

/// Reads what the socket has (at most `buf.len()` bytes), waiting until it has something.
///
/// On a thread in [`park::block_on`](crate::park::block_on) the socket is registered with that
/// thread's epoll instance (edge-triggered) and readiness comes from there: a read that returns
/// less than `buf` asked for drained the socket, so the next read waits for the next edge
/// instead of trying a read that would only return `EAGAIN`. Elsewhere it waits through
/// async-io.
async fn read_some(
    stream: &Async<UnixStream>,
    #[cfg(target_os = "linux")] registration: &mut Option<crate::park::Registration>,
    buf: &mut [u8],
) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        if registration.as_ref().is_some_and(|r| !r.is_here()) {
            // The reader moved to another thread: its old poller no longer serves it.
            if let Some(r) = registration.take() {
                r.deregister(stream.as_fd());
            }
        }
        if registration.is_none() {
            *registration = crate::park::Registration::here(stream.as_fd());
        }
        if let Some(r) = registration.as_ref() {
            return futures_lite::future::poll_fn(|cx| {
                loop {
                    std::task::ready!(r.poll_ready(cx));
                    match stream.get_ref().read(&mut *buf) {
                        Ok(n) => {
                            if n == buf.len() {
                                r.set_ready();
                            }
                            return std::task::Poll::Ready(Ok(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            // Not a drained socket: let the next read try again.
                            r.set_ready();
                            return std::task::Poll::Ready(Err(e));
                        }
                    }
                }
            })
            .await;
        }
    }
    stream.read_with(|s| (&*s).read(&mut *buf)).await
}
