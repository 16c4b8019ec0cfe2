//! The Unix socket transport: [`codec`](crate::codec) frames over a `UnixStream`. For peers in other processes
//! (or anywhere a byte stream is all there is). It is the [`stream`] transport
//! over two descriptors of one socket (the socket and a `dup` of it): one read by the channel's
//! receiving half, one written by its sending half, so that a pending read never holds up a
//! write. The reading copy waits in the epoll instance of a thread in
//! [`park::block_on`](crate::park::block_on), and in async-io's reactor anywhere else.
//!
//! Same contract as [`mem`](crate::mem): when the peer drops its channel or dies every pending and
//! later `recv` returns [`RecvError::Closed`](crate::RecvError::Closed) (the first one [`RecvError::TruncatedFrame`](crate::RecvError::TruncatedFrame) when the
//! peer left a frame unfinished); a send to a peer that is gone hands the message back;
//! [`close`](crate::Channel::close), or dropping the last [`ChannelTx`](crate::ChannelTx), shuts
//! down the write direction so that the peer receives what was sent and then `Closed`.
//!
//! Every channel starts in handshake mode: frames above
//! [`CodecConfig::max_handshake_frame`](crate::codec::CodecConfig::max_handshake_frame) (4 KiB by default) end the connection with
//! [`DecodeError::HandshakeFrameTooLarge`](crate::codec::DecodeError::HandshakeFrameTooLarge) until the receiving side calls
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

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{SocketAddr, UnixListener as StdUnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;
use futures_lite::io::AsyncWrite;
use rustix::net::SendFlags;

use crate::Channel;
use crate::codec::CodecConfig;
use crate::stream;

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
    let write = stream.try_clone()?;
    Ok(stream::channel(
        stream::Reader::new(ReadSide(stream))?,
        WriteSide(Async::new(write)?),
        config,
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
    from_stream(stream.into_inner()?, config)
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
        from_stream(stream.into_inner()?, self.config)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }
}

fn shutdown(stream: &UnixStream, how: Shutdown) {
    // ENOTCONN once the peer is fully gone: nothing left to shut down.
    let _ = stream.shutdown(how);
}

/// The channel's reading copy of the socket. Dropping it (the receiving half is dropped, or
/// stopped reading for good: a frame that cannot be resynchronised, the peer gone) shuts the
/// socket's read direction down, so that the peer's later sends fail instead of filling a buffer
/// nobody reads.
#[derive(Debug)]
struct ReadSide(UnixStream);

impl AsFd for ReadSide {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for &ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        shutdown(&self.0, Shutdown::Read);
    }
}

/// The channel's writing copy of the socket. Writes never raise `SIGPIPE` (`MSG_NOSIGNAL`: a
/// peer that vanished is an error); closing or dropping it shuts the socket's write direction
/// down (the other copy keeps the socket itself open), so the peer reads what was sent, then
/// `Closed`.
#[derive(Debug)]
struct WriteSide(Async<UnixStream>);

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match rustix::net::send(self.0.get_ref(), buf, SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::AGAIN) => {
                    std::task::ready!(self.0.poll_writable(cx))?;
                }
                Err(rustix::io::Errno::INTR) => {}
                other => return Poll::Ready(other.map_err(io::Error::from)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        shutdown(self.0.get_ref(), Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        shutdown(self.0.get_ref(), Shutdown::Write);
    }
}
