//! The shared-memory transport: [`codec`](crate::codec) frames through two rings in a memory
//! segment that two processes on one host both map, with a Unix socket beside it for wake-ups
//! and hang-ups. For a parent and the child processes it starts (the process backends use it).
//!
//! Why: over a socket every message costs a `send` on one side and a `recv` on the other, plus
//! the readiness check of a spinning reader (an `epoll_wait` per look), about 4 µs of system
//! calls per round trip on the machines harrow is measured on. Through a ring a message is a
//! copy in and a copy out, and a reader that spins for its reply sees it with a load.
//!
//! # How it works
//!
//! - **The segment** is a `memfd` of [`SEGMENT_BYTES`]: a header, and one ring of
//!   [`RING_BYTES`] per direction. Its maker seals its size before handing it over, so a peer
//!   cannot shrink it under the other's mapping (which would turn the other's next access into
//!   a `SIGBUS`). [`Segment::new`] makes one; the peer adopts it with [`Segment::from_fd`],
//!   which checks the seals and the size.
//! - **A ring** is written by one side and read by the other: the writer publishes how many
//!   bytes it has written in all (`head`), the reader how many it has consumed (`tail`). Each
//!   side keeps its own count privately and only publishes it, so a peer that scribbles on the
//!   segment cannot make this side read or write outside a ring: a published position more than
//!   a ring's length away from this side's own is a protocol error. Bytes are copied out of the
//!   ring before they are decoded, so a peer that changes them afterwards changes nothing.
//! - **Wake-ups.** A thread in [`park::block_on`](crate::park::block_on) looks at the rings of
//!   the channels read on it while it spins (a load each), and before it sleeps it *arms* them:
//!   a flag in the segment asking the writer to send one byte ([`DOORBELL`]) on the socket with
//!   its next write. The byte wakes the thread's `epoll_wait` like any socket data. The flag and
//!   the ring's position are each written and then checked against the other's with a full
//!   fence on both sides, so a write either is seen by the check before the sleep or rings the
//!   bell. A parker that does not sleep for a millisecond takes its sockets' edges anyway (a
//!   peer's end arrives there). An edge that finds bytes in the ring may leave its bell on the
//!   socket: an edge-triggered wait reports every later byte whether or not earlier ones were
//!   read, so the socket is drained only once a few bells may be queued (a bounded share of its
//!   send buffer, so the peer's next bell always fits), when an edge finds the ring empty, or
//!   at the peer's end. A reader anywhere else (no parker: a plain executor, a test)
//!   arms its ring before every wait and waits for the socket in async-io's reactor.
//! - **A full ring.** The writer raises a flag and waits; the reader rings the writer's bell
//!   when it has made room (and, should that byte not come, the writer looks again after a
//!   short timer, doubling up to 10 ms).
//! - **Ends.** Closing the sending half shuts the socket's write direction down after the last
//!   byte is in the ring: the peer reads the ring dry, then sees the end. A process that dies
//!   closes its socket the same way. Dropping the receiving half marks the ring closed in the
//!   segment and shuts the socket's read direction down, so the peer's later sends fail.
//!   A byte on the socket that is not a [`DOORBELL`] means the peer does not speak this
//!   transport (a program that writes frames on the socket itself): an error, not a hang.
//!
//! Same contract as [`unix`](crate::unix): the peer's channel dropped or its process dead turns
//! every pending and later `recv` into [`RecvError::Closed`](crate::RecvError::Closed) once the
//! ring is read dry (the first one [`RecvError::TruncatedFrame`](crate::RecvError::TruncatedFrame)
//! when a frame was left unfinished), and every channel starts in handshake mode.
//!
//! ```
//! use harrow_ipc::{shm, Msg};
//! # futures_lite::future::block_on(async {
//! let (a, mut b) = shm::pair().unwrap();
//! b.end_handshake(); // no handshake here: accept large frames right away
//! a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
//! assert_eq!(b.recv().await.unwrap(), Msg::CancelAck { teardown_ms: None });
//! drop(a);
//! assert!(b.recv().await.unwrap_err().is_closed());
//! # });
//! ```

// The mapping of the segment and the copies in and out of it. Every access goes through the
// `Mapping` below, which only hands out atomics and raw pointers into the range it mapped.
#![allow(unsafe_code)]

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::io::{AsyncRead, AsyncWrite};
use rustix::net::{RecvFlags, SendFlags};

use crate::Channel;
use crate::codec::CodecConfig;
use crate::stream;

/// The bytes of one direction's ring.
pub const RING_BYTES: usize = 64 * 1024;

/// Where the rings start in the segment (a page: the header before them).
const DATA_OFFSET: usize = 4096;

/// The size of a segment: its header and two rings.
pub const SEGMENT_BYTES: usize = DATA_OFFSET + 2 * RING_BYTES;

/// The one byte the socket carries: "look at the ring again".
pub const DOORBELL: u8 = 0xdb;

/// Set to `0`, this variable keeps harrow's links between processes (a process child's channel
/// to its parent, a peer link to another process) on their socket alone, without shared memory.
pub const ENV: &str = "HARROW_PROCESS_SHM";

/// Whether links between processes go through shared memory: unless [`ENV`] is `0`.
pub fn enabled_by_env() -> bool {
    crate::env_switch(ENV)
}

/// The first eight bytes of a segment.
const MAGIC: u64 = u64::from_le_bytes(*b"harrowsm");

/// The layout's version, after the magic.
const VERSION: u32 = 1;

/// Where each direction's header starts (direction 0 is written by [`Side::First`]).
const DIR_OFFSET: [usize; 2] = [64, 384];

// Fields of a direction's header, each on a cache line of its own where both sides write often.
/// Bytes written in all (the writer's).
const HEAD: usize = 0;
/// The CPU the writer ran on when it last published (`u32::MAX`: unknown), beside `HEAD`.
const WRITER_CPU: usize = 8;
/// Bytes consumed in all (the reader's).
const TAIL: usize = 64;
/// Set by a reader about to sleep: the writer rings the bell with its next write (and clears it).
const ARMED: usize = 128;
/// The token a reader with no parker arms its ring with (see [`Endpoint::arm`]).
const NO_PARKER: u32 = 1;
/// Set by a writer that found the ring full: the reader rings the bell once it made room.
const WRITER_WAITS: usize = 192;
/// Set by a reader that stopped reading for good.
const READER_CLOSED: usize = 256;

/// The longest a writer waits for room before it looks again without a bell.
const MAX_WRITE_BACKOFF: Duration = Duration::from_millis(10);
/// The first such wait.
const FIRST_WRITE_BACKOFF: Duration = Duration::from_micros(50);

/// Which half of a segment a side writes: the maker of the segment takes `First`, the process
/// it hands the segment to `Second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Writes ring 0, reads ring 1.
    First,
    /// Writes ring 1, reads ring 0.
    Second,
}

/// A shared-memory segment for one channel (a sealed `memfd`), to be mapped by both sides.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
}

impl Segment {
    /// Makes a segment: a `memfd` of [`SEGMENT_BYTES`] with its header written, its size sealed.
    /// The descriptor is close-on-exec; hand it to a child explicitly.
    pub fn new() -> io::Result<Segment> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "harrow-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, SEGMENT_BYTES as u64)?;
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&MAGIC.to_le_bytes());
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(RING_BYTES as u32).to_le_bytes());
        let written = rustix::io::pwrite(&fd, &header, 0)?;
        if written != header.len() {
            return Err(io::Error::other("short write of the segment's header"));
        }
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Ok(Segment { fd })
    }

    /// Adopts a segment made by [`Segment::new`] (in another process): checks that it is a
    /// sealed `memfd` of the right size. The header is checked when a channel maps it.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Segment> {
        use rustix::fs::SealFlags;
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a sealed shared-memory segment: {e}"),
            )
        })?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(bad_segment("its size is not sealed"));
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size != SEGMENT_BYTES as i64 {
            return Err(bad_segment(&format!(
                "{size} bytes instead of {SEGMENT_BYTES}"
            )));
        }
        Ok(Segment { fd })
    }

    /// Another descriptor of the same segment.
    pub fn try_clone(&self) -> io::Result<Segment> {
        Ok(Segment {
            fd: self.fd.try_clone()?,
        })
    }

    /// The segment's descriptor (to hand to a child).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How many bells an edge may leave on `sock` unread: a small share of its send buffer, at most
/// 16, and none where the size is unknown. A bell the peer cannot send because its buffer is
/// full would be a lost wake-up. Each one-byte send takes about 770 bytes of the sender's
/// buffer (278 fill Linux's default 208 KiB), and the peer's buffer is taken to be as large as
/// this side's (both ends of a harrow socket are made alike), so the at most twice this many
/// bells ever queued fit in it many times over.
fn bells_kept(sock: &UnixStream) -> u32 {
    match rustix::net::sockopt::socket_send_buffer_size(sock) {
        Ok(bytes) => u32::try_from(bytes / 8192).unwrap_or(u32::MAX).min(16),
        Err(_) => 0,
    }
}

fn bad_segment(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a harrow shared-memory segment: {why}"),
    )
}

fn bad_peer(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer broke the shared-memory protocol: {why}"),
    )
}

/// Makes a connected pair of channels over a fresh segment and socketpair, with the default
/// [`CodecConfig`].
pub fn pair() -> io::Result<(Channel, Channel)> {
    pair_with(CodecConfig::default())
}

/// Makes a connected pair of channels over a fresh segment and socketpair.
pub fn pair_with(config: CodecConfig) -> io::Result<(Channel, Channel)> {
    let segment = Segment::new()?;
    let (a, b) = UnixStream::pair()?;
    Ok((
        channel(a, segment.try_clone()?, Side::First, config)?,
        channel(b, segment, Side::Second, config)?,
    ))
}

/// Makes a channel of `segment` and the connected socket beside it (switched to non-blocking
/// mode). The two ends of one channel take the two [`Side`]s.
pub fn channel(
    stream: UnixStream,
    segment: Segment,
    side: Side,
    config: CodecConfig,
) -> io::Result<Channel> {
    let ep = Arc::new(Endpoint::new(stream, &segment, side)?);
    let read_copy = ep.sock.try_clone()?;
    Ok(stream::channel_writing_now(
        ShmReader {
            #[cfg(target_os = "linux")]
            registration: None,
            io: Arc::new(Async::new(read_copy)?),
            waiting: None,
            ep: ep.clone(),
        },
        ShmWriter {
            ep,
            timer: None,
            backoff: FIRST_WRITE_BACKOFF,
        },
        config,
        // A ring write is a copy, not a system call; while the peer still reads what came
        // before, the writer's batches serve a burst better than a write per message.
        |w| w.ep.peer_caught_up(),
    ))
}

/// A blocking writer of raw bytes into one side's outgoing ring, for programs that play a
/// broken peer (a test child that sends garbage or another protocol version must put it where
/// a harrow peer reads). Waits for room, bounded by `wait` per write.
pub fn raw_writer(
    stream: UnixStream,
    segment: Segment,
    side: Side,
    wait: Duration,
) -> io::Result<RawWriter> {
    Ok(RawWriter {
        ep: Endpoint::new(stream, &segment, side)?,
        wait,
    })
}

/// See [`raw_writer`].
#[derive(Debug)]
pub struct RawWriter {
    ep: Endpoint,
    wait: Duration,
}

impl io::Write for RawWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let started = std::time::Instant::now();
        loop {
            if !self.ep.peer_reads() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = self.ep.write_ring(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let left = self.wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.ep.writer_waits();
            if self.ep.has_room() {
                continue;
            }
            let mut fds = [rustix::event::PollFd::new(
                &self.ep.sock,
                rustix::event::PollFlags::IN,
            )];
            let left = left.min(MAX_WRITE_BACKOFF);
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            self.ep.drain(true);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The segment as mapped in this process: atomics and raw pointers into it, nothing else.
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through atomics or raw
// copies made by one side's reading or writing half at a time (see `Endpoint`).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: BorrowedFd<'_>) -> io::Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a new shared mapping chosen by the kernel (no address given), of a segment
        // whose size is sealed at `SEGMENT_BYTES` (checked by `Segment::from_fd`, made so by
        // `Segment::new`), so every offset below `SEGMENT_BYTES` stays mapped until `munmap`.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                SEGMENT_BYTES,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { base })
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= DATA_OFFSET);
        // SAFETY: `offset` is one of the header's fixed, 8-byte aligned offsets (the mapping is
        // page aligned), inside the mapping; an atomic may be shared with other processes.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= DATA_OFFSET);
        // SAFETY: as in `u64_at`.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    fn header_ok(&self) -> bool {
        self.u64_at(0).load(Ordering::Acquire) == MAGIC
            && self.u32_at(8).load(Ordering::Acquire) == VERSION
            && self.u32_at(12).load(Ordering::Acquire) == RING_BYTES as u32
    }

    /// Copies `dst.len()` bytes out of ring `dir` from position `at` (wrapping).
    fn copy_out(&self, dir: usize, at: u64, dst: &mut [u8]) {
        let start = (at % RING_BYTES as u64) as usize;
        let first = dst.len().min(RING_BYTES - start);
        // SAFETY: ring `dir` is `RING_BYTES` long at `DATA_OFFSET + dir * RING_BYTES`, inside the
        // mapping; `start + first <= RING_BYTES` and the rest (`dst.len() - first <= start`,
        // since `dst.len() <= RING_BYTES`) is copied from the ring's start. `dst` is private
        // memory; the shared bytes are only read through raw pointers, never referenced.
        unsafe {
            let ring = self.base.as_ptr().add(DATA_OFFSET + dir * RING_BYTES);
            std::ptr::copy_nonoverlapping(ring.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(ring, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    /// Copies `src` into ring `dir` at position `at` (wrapping).
    fn copy_in(&self, dir: usize, at: u64, src: &[u8]) {
        let start = (at % RING_BYTES as u64) as usize;
        let first = src.len().min(RING_BYTES - start);
        // SAFETY: as in `copy_out`, with the copies the other way.
        unsafe {
            let ring = self.base.as_ptr().add(DATA_OFFSET + dir * RING_BYTES);
            std::ptr::copy_nonoverlapping(src.as_ptr(), ring.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), ring, src.len() - first);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range mapped in `map`, unmapped once: no atomic or pointer into it
        // outlives the `Mapping` (they borrow it).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), SEGMENT_BYTES) };
    }
}

/// One side of a channel: the mapping, its own positions in the two rings, and the socket.
struct Endpoint {
    map: Mapping,
    /// The ring this side writes (its header's offset: `DIR_OFFSET[out]`).
    out: usize,
    /// The ring this side reads.
    inn: usize,
    /// The socket beside the segment (non-blocking): bells are sent and drained here.
    sock: UnixStream,
    /// Bytes consumed from the incoming ring in all: this side's own count (the segment's copy
    /// is only published to the writer).
    tail: AtomicU64,
    /// Bytes written into the outgoing ring in all.
    head: AtomicU64,
    /// The socket's end of stream was read: the peer closed its sending half, or is gone.
    eof: AtomicBool,
    /// The peer broke the protocol: no more reading.
    bad: AtomicBool,
    /// A writer waiting for room in the outgoing ring.
    writer_waker: Mutex<Option<Waker>>,
    /// How many bells the peer may have sent since the socket was last drained: one at most per
    /// [`arm`](Endpoint::arm) and per [`writer_waits`](Endpoint::writer_waits), since the peer
    /// takes the flag down as it rings. Bounds the bells an edge may leave queued.
    bells_owed: AtomicU32,
    /// Edges may leave their bells queued while fewer than this many are owed (see
    /// [`on_edge`](crate::park::Watch::on_edge)); from the socket's send buffer.
    bells_kept: u32,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("shm::Endpoint")
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(stream: UnixStream, segment: &Segment, side: Side) -> io::Result<Endpoint> {
        let map = Mapping::map(segment.as_fd())?;
        if !map.header_ok() {
            return Err(bad_segment("wrong header (another version of harrow?)"));
        }
        stream.set_nonblocking(true)?;
        let bells_kept = bells_kept(&stream);
        let (out, inn) = match side {
            Side::First => (0, 1),
            Side::Second => (1, 0),
        };
        Ok(Endpoint {
            map,
            out,
            inn,
            sock: stream,
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            eof: AtomicBool::new(false),
            bad: AtomicBool::new(false),
            writer_waker: Mutex::new(None),
            bells_owed: AtomicU32::new(0),
            bells_kept,
        })
    }

    fn field64(&self, dir: usize, field: usize) -> &AtomicU64 {
        self.map.u64_at(DIR_OFFSET[dir] + field)
    }

    fn field32(&self, dir: usize, field: usize) -> &AtomicU32 {
        self.map.u32_at(DIR_OFFSET[dir] + field)
    }

    /// Bytes waiting in the incoming ring; an error when the peer published a position no
    /// writer could have reached.
    fn incoming(&self) -> io::Result<usize> {
        let head = self.field64(self.inn, HEAD).load(Ordering::Acquire);
        let waiting = head.wrapping_sub(self.tail.load(Ordering::Relaxed));
        if waiting > RING_BYTES as u64 {
            self.bad.store(true, Ordering::Release);
            return Err(bad_peer("its ring position is out of range"));
        }
        Ok(waiting as usize)
    }

    /// Whether the incoming ring has bytes (a load: no system call).
    fn has_data(&self) -> bool {
        self.field64(self.inn, HEAD).load(Ordering::Acquire) != self.tail.load(Ordering::Relaxed)
    }

    /// Copies what the incoming ring holds into `buf` (as much as fits); rings the writer's
    /// bell if it waits for room.
    fn read_ring(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bad.load(Ordering::Acquire) {
            return Err(bad_peer("see the first error"));
        }
        let n = self.incoming()?.min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let tail = self.tail.load(Ordering::Relaxed);
        self.map.copy_out(self.inn, tail, &mut buf[..n]);
        let tail = tail.wrapping_add(n as u64);
        self.tail.store(tail, Ordering::Relaxed);
        self.field64(self.inn, TAIL).store(tail, Ordering::Release);
        // Pairs with the writer's fence between raising its flag and looking for room.
        self.ring_if_asked(self.field32(self.inn, WRITER_WAITS));
        Ok(n)
    }

    /// Room in the outgoing ring; an error when the peer published a position out of range.
    fn room(&self) -> io::Result<usize> {
        let tail = self.field64(self.out, TAIL).load(Ordering::Acquire);
        let used = self.head.load(Ordering::Relaxed).wrapping_sub(tail);
        if used > RING_BYTES as u64 {
            return Err(bad_peer("its ring position is out of range"));
        }
        Ok(RING_BYTES - used as usize)
    }

    fn has_room(&self) -> bool {
        self.room().map_or(true, |r| r > 0)
    }

    /// Copies as much of `buf` as fits into the outgoing ring and publishes it; rings the
    /// peer's bell if it sleeps.
    fn write_ring(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room()?.min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let head = self.head.load(Ordering::Relaxed);
        self.map.copy_in(self.out, head, &buf[..n]);
        let head = head.wrapping_add(n as u64);
        self.head.store(head, Ordering::Relaxed);
        let cpu = crate::park::spin::this_cpu().map_or(u32::MAX, |c| c as u32);
        self.field32(self.out, WRITER_CPU)
            .store(cpu, Ordering::Relaxed);
        self.field64(self.out, HEAD).store(head, Ordering::Release);
        // Pairs with the reader's fence between arming and its last look at the ring.
        self.ring_if_asked(self.field32(self.out, ARMED));
        Ok(n)
    }

    /// Whether the peer has read everything written to it so far.
    fn peer_caught_up(&self) -> bool {
        self.field64(self.out, TAIL).load(Ordering::Acquire) == self.head.load(Ordering::Relaxed)
    }

    /// Raises the "writer waits for room" flag; the caller looks for room once more after it.
    fn writer_waits(&self) {
        self.bells_owed.fetch_add(1, Ordering::Relaxed);
        self.field32(self.out, WRITER_WAITS)
            .store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Whether the peer still reads the outgoing ring.
    fn peer_reads(&self) -> bool {
        self.field32(self.out, READER_CLOSED)
            .load(Ordering::Acquire)
            == 0
    }

    /// After publishing a count: a full fence (the other side raised `flag`, then fenced, then
    /// looked at the count), then, if `flag` is up, takes it down and rings the bell once.
    fn ring_if_asked(&self, flag: &AtomicU32) {
        fence(Ordering::SeqCst);
        if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::AcqRel) != 0 {
            self.ring_bell();
        }
    }

    /// Sends one bell byte; never blocks. A full socket already holds bells the peer will see;
    /// a peer that is gone shows as the socket's end on this side.
    fn ring_bell(&self) {
        let _ = rustix::net::send(
            &self.sock,
            &[DOORBELL],
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        );
    }

    /// Asks the peer to ring the bell with its next write; the caller looks at the ring again
    /// afterwards. `token` (not 0) names who asks: the peer rings for any value but 0.
    fn arm(&self, token: u32) {
        self.bells_owed.fetch_add(1, Ordering::Relaxed);
        self.field32(self.inn, ARMED)
            .store(token, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Takes back the request `token` made, if it still stands: one made since by another
    /// thread's parker (the reader moved there) stays.
    fn disarm(&self, token: u32) {
        let _ = self.field32(self.inn, ARMED).compare_exchange(
            token,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Takes the bells queued on the socket (noting its end, or a byte that is not a bell) and
    /// wakes a writer waiting for room. `to_the_end`: read until the socket says it is empty (or
    /// ended); without it a read shorter than its buffer is taken as empty, which saves a read
    /// per bell where an edge-triggered wait announces every later byte, but only while the
    /// peer has not hung up (its last bytes and its end may come in one edge).
    fn drain(&self, to_the_end: bool) {
        // Bells owed from here on are read by this drain or counted towards the next.
        self.bells_owed.store(0, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        loop {
            match rustix::net::recv(&self.sock, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.eof.store(true, Ordering::Release);
                    break;
                }
                Ok((n, _)) => {
                    if buf[..n].iter().any(|b| *b != DOORBELL) {
                        self.bad.store(true, Ordering::Release);
                        break;
                    }
                    if n < buf.len() && !to_the_end {
                        break;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                // Reset or the like: the peer is gone.
                Err(_) => {
                    self.eof.store(true, Ordering::Release);
                    break;
                }
            }
        }
        self.wake_writer();
    }

    /// Wakes a writer waiting for room (a bell may say the peer made some).
    fn wake_writer(&self) {
        let waker = self
            .writer_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The socket had an edge. Its bells are drained unless the edge brought data to read
    /// and few bells can be queued: an edge-triggered wait reports every later byte whether
    /// or not the earlier ones were read, so a bell left on the socket hides no later one, and
    /// a round trip saves a `recv` on each side. An edge with nothing in the ring drains (a
    /// byte that is not a bell shows there), and so does one that says the peer hung up.
    fn on_edge(&self, hung_up: bool) {
        if !hung_up && self.bells_owed.load(Ordering::Relaxed) < self.bells_kept && self.has_data()
        {
            self.wake_writer();
            return;
        }
        self.drain(hung_up);
    }

    /// After the ring was found empty: the end of the stream (`Some(Ok(0))` once the ring is
    /// read dry after the peer's end), a protocol error, or `None` (wait for more).
    fn end(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if self.bad.load(Ordering::Acquire) {
            return Some(Err(bad_peer(
                "it wrote on the socket itself (it does not speak the shared-memory transport)",
            )));
        }
        if self.eof.load(Ordering::Acquire) {
            // What it wrote before its end is in the ring by now.
            return Some(self.read_ring(buf));
        }
        None
    }

    /// Whether the socket says the peer is gone (a zero-timeout `poll`).
    fn peer_hung_up(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.sock, PollFlags::empty())];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(_) => fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }
}

#[cfg(target_os = "linux")]
impl crate::park::Watch for Endpoint {
    fn has_data(&self) -> bool {
        Endpoint::has_data(self)
    }

    fn arm(&self, token: u32) {
        Endpoint::arm(self, token);
    }

    fn disarm(&self, token: u32) {
        Endpoint::disarm(self, token);
    }

    fn on_edge(&self, hung_up: bool) {
        Endpoint::on_edge(self, hung_up);
    }

    fn writer_cpu(&self) -> Option<usize> {
        let cpu = self.field32(self.inn, WRITER_CPU).load(Ordering::Relaxed);
        (cpu != u32::MAX).then_some(cpu as usize)
    }
}

/// The channel's receiving side: reads the incoming ring.
struct ShmReader {
    // Declared before `io`: removed from the epoll instance while the descriptor is open.
    #[cfg(target_os = "linux")]
    registration: Option<crate::park::Registration>,
    /// A copy of the socket, for waiting on it in async-io's reactor (no parker on the thread).
    io: Arc<Async<UnixStream>>,
    waiting: Option<async_io::ReadableOwned<UnixStream>>,
    ep: Arc<Endpoint>,
}

impl AsyncRead for ShmReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        #[cfg(target_os = "linux")]
        {
            let fd = this.io.as_fd();
            let ep = &this.ep;
            let registered =
                crate::park::Registration::on_this_thread(&mut this.registration, fd, || {
                    let watch: Arc<dyn crate::park::Watch> = ep.clone();
                    crate::park::Registration::here_watched(fd, watch)
                });
            if let Some(r) = registered {
                // The parker looks at the ring while it spins, arms it before it sleeps, and
                // drains the socket's bells and end on its edges.
                loop {
                    let n = this.ep.read_ring(buf)?;
                    if n > 0 {
                        return Poll::Ready(Ok(n));
                    }
                    if let Some(end) = this.ep.end(buf) {
                        return Poll::Ready(end);
                    }
                    std::task::ready!(r.poll_ready(cx));
                }
            }
        }
        // No parker on this thread: arm the ring, then wait for the socket here. A wait is
        // only ever begun, or resumed, right after arming: the writer clears the flag when it
        // rings, so a wait kept from before (its bell already taken) would wait for a bell
        // nobody rings.
        loop {
            let n = this.ep.read_ring(buf)?;
            if n > 0 {
                this.waiting = None;
                return Poll::Ready(Ok(n));
            }
            if let Some(end) = this.ep.end(buf) {
                this.waiting = None;
                return Poll::Ready(end);
            }
            if let Some(waiting) = this.waiting.as_mut() {
                std::task::ready!(Pin::new(waiting).poll(cx))?;
                this.waiting = None;
                this.ep.drain(true);
                continue;
            }
            this.ep.arm(NO_PARKER);
            let n = this.ep.read_ring(buf)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // Bells queued so far are for bytes the read above saw, or will see below: take
            // them, so that the wait ends at the next one.
            this.ep.drain(true);
            this.waiting = Some(this.io.clone().readable_owned());
        }
    }
}

impl Drop for ShmReader {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(r) = self.registration.take() {
            r.deregister(self.io.as_fd());
        }
        // The peer's later writes fail instead of filling a ring nobody reads.
        self.ep
            .field32(self.ep.inn, READER_CLOSED)
            .store(1, Ordering::Release);
        let _ = self.ep.sock.shutdown(Shutdown::Read);
    }
}

/// The channel's sending side: writes the outgoing ring.
struct ShmWriter {
    ep: Arc<Endpoint>,
    /// The look again after a wait for room, should no bell come.
    timer: Option<Timer>,
    backoff: Duration,
}

impl AsyncWrite for ShmWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.ep.peer_reads() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = this.ep.write_ring(buf)?;
            if n > 0 || buf.is_empty() {
                this.timer = None;
                this.backoff = FIRST_WRITE_BACKOFF;
                return Poll::Ready(Ok(n));
            }
            // Full. A reader that is gone never makes room.
            if this.ep.peer_hung_up() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            *this
                .ep
                .writer_waker
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            this.ep.writer_waits();
            if this.ep.has_room() {
                continue;
            }
            // Woken by the bell the reader rings once it made room, or by the timer.
            let backoff = &mut this.backoff;
            let timer = this.timer.get_or_insert_with(|| {
                let t = Timer::after(*backoff);
                *backoff = (*backoff * 2).min(MAX_WRITE_BACKOFF);
                t
            });
            if Pin::new(timer).poll(cx).is_ready() {
                this.timer = None;
                continue;
            }
            return Poll::Pending;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Everything written is in the ring: the peer reads it, then the end.
        let _ = self.ep.sock.shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShmWriter {
    fn drop(&mut self) {
        let _ = self.ep.sock.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_sides() -> (Endpoint, Endpoint) {
        let segment = Segment::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        (
            Endpoint::new(a, &segment, Side::First).unwrap(),
            Endpoint::new(b, &segment, Side::Second).unwrap(),
        )
    }

    #[test]
    fn bytes_wrap_around_the_ring_in_order() {
        let (a, b) = two_sides();
        let mut out = vec![0u8; RING_BYTES];
        let mut next = 0u8;
        let mut expect = 0u8;
        // Chunks that do not divide the ring, so that copies split at its end.
        for _ in 0..50 {
            let chunk: Vec<u8> = (0..7001)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            assert_eq!(a.write_ring(&chunk).unwrap(), chunk.len());
            let n = b.read_ring(&mut out).unwrap();
            assert_eq!(n, chunk.len());
            for byte in &out[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(*byte, expect);
            }
        }
        assert!(!b.has_data());
    }

    #[test]
    fn a_full_ring_takes_no_more_until_read() {
        let (a, b) = two_sides();
        let big = vec![7u8; RING_BYTES + 100];
        assert_eq!(a.write_ring(&big).unwrap(), RING_BYTES);
        assert_eq!(a.write_ring(&big).unwrap(), 0);
        assert!(!a.has_room());
        let mut out = vec![0u8; 100];
        assert_eq!(b.read_ring(&mut out).unwrap(), 100);
        assert_eq!(a.write_ring(&big).unwrap(), 100);
    }

    #[test]
    fn a_ring_position_out_of_range_is_an_error_not_a_read_outside_the_ring() {
        let (reader, peer) = two_sides();
        // The peer claims to have written more than a ring holds.
        peer.field64(peer.out, HEAD)
            .store(RING_BYTES as u64 + 1, Ordering::Release);
        let mut buf = vec![0u8; 2 * RING_BYTES];
        let err = reader.read_ring(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("out of range"), "{err}");
        // Once broken, always broken: no later read trusts the segment.
        peer.field64(peer.out, HEAD).store(0, Ordering::Release);
        assert!(reader.read_ring(&mut buf).is_err());

        // A reader that claims to have consumed more than was written.
        let (writer, peer) = two_sides();
        writer.write_ring(&[1, 2, 3]).unwrap();
        peer.field64(peer.inn, TAIL).store(10, Ordering::Release);
        let err = writer.write_ring(&[4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_armed_reader_gets_one_bell_and_a_disarmed_one_none() {
        let (writer, reader) = two_sides();
        reader.arm(NO_PARKER);
        writer.write_ring(&[1]).unwrap();
        writer.write_ring(&[2]).unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = rustix::net::recv(&reader.sock, &mut buf, RecvFlags::DONTWAIT).unwrap();
        assert_eq!(&buf[..n], &[DOORBELL], "one bell for two writes");
        reader.disarm(NO_PARKER);
        writer.write_ring(&[3]).unwrap();
        assert_eq!(
            rustix::net::recv(&reader.sock, &mut buf, RecvFlags::DONTWAIT).unwrap_err(),
            rustix::io::Errno::AGAIN
        );
    }

    #[test]
    fn a_disarm_takes_back_only_its_own_request() {
        let (writer, reader) = two_sides();
        // Armed by one parker, then by another's (the reader moved to its thread): the first
        // one's late disarm must not take back the second's request, or that thread sleeps
        // with no bell coming.
        reader.arm(7);
        reader.arm(8);
        reader.disarm(7);
        writer.write_ring(&[1]).unwrap();
        assert_eq!(queued_bells(&reader), 1, "the second parker's bell");
        reader.arm(8);
        reader.disarm(8);
        writer.write_ring(&[2]).unwrap();
        assert_eq!(queued_bells(&reader), 0, "its own request, taken back");
    }

    /// The bells queued on `ep`'s socket, taken.
    fn queued_bells(ep: &Endpoint) -> usize {
        let mut buf = [0u8; 4096];
        match rustix::net::recv(&ep.sock, &mut buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => {
                assert!(buf[..n].iter().all(|b| *b == DOORBELL));
                n
            }
            Err(rustix::io::Errno::AGAIN) => 0,
            Err(e) => panic!("recv: {e}"),
        }
    }

    #[test]
    fn edges_with_data_leave_their_bells_but_never_more_than_the_share_kept() {
        let (writer, reader) = two_sides();
        assert!(
            reader.bells_kept >= 2,
            "a default send buffer keeps bells: {}",
            reader.bells_kept
        );
        let mut most = 0;
        for i in 0..200u32 {
            // The reader sleeps, the writer rings, the edge wakes the reader, which reads.
            reader.arm(NO_PARKER);
            writer.write_ring(&i.to_le_bytes()).unwrap();
            reader.on_edge(false);
            reader.disarm(NO_PARKER);
            let mut buf = [0u8; 4];
            assert_eq!(reader.read_ring(&mut buf).unwrap(), 4);
            assert_eq!(u32::from_le_bytes(buf), i);
            let mut peek = [0u8; 64];
            let queued = match rustix::net::recv(
                &reader.sock,
                &mut peek,
                RecvFlags::DONTWAIT | RecvFlags::PEEK,
            ) {
                Ok((n, _)) => n,
                Err(rustix::io::Errno::AGAIN) => 0,
                Err(e) => panic!("recv: {e}"),
            };
            most = most.max(queued);
        }
        assert!(most >= 1, "no edge left its bell");
        assert!(
            most <= 2 * reader.bells_kept as usize,
            "{most} bells queued, {} kept at most",
            reader.bells_kept
        );
    }

    #[test]
    fn an_edge_with_an_empty_ring_drains_and_sees_a_byte_that_is_not_a_bell() {
        let (writer, reader) = two_sides();
        reader.arm(NO_PARKER);
        writer.write_ring(&[1]).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(reader.read_ring(&mut buf).unwrap(), 1);
        // The bell came for bytes already read: the edge takes it.
        reader.on_edge(false);
        assert_eq!(queued_bells(&reader), 0);
        // A peer that writes on the socket itself, with data in the ring or not, is found out.
        reader.arm(NO_PARKER);
        writer.write_ring(&[2]).unwrap();
        rustix::net::send(&writer.sock, b"x", SendFlags::empty()).unwrap();
        reader.on_edge(false);
        assert_eq!(reader.read_ring(&mut buf).unwrap(), 1);
        reader.on_edge(false);
        assert!(
            reader.bad.load(Ordering::Acquire),
            "a stray byte went unseen"
        );
    }

    #[test]
    fn a_hang_up_edge_drains_to_the_end_even_with_data_in_the_ring() {
        let (writer, reader) = two_sides();
        reader.arm(NO_PARKER);
        writer.write_ring(&[1]).unwrap();
        writer.sock.shutdown(Shutdown::Write).unwrap();
        reader.on_edge(true);
        assert!(reader.eof.load(Ordering::Acquire));
        let mut buf = [0u8; 1];
        assert_eq!(
            reader.read_ring(&mut buf).unwrap(),
            1,
            "the last byte is still read"
        );
    }

    #[test]
    fn a_small_send_buffer_keeps_no_bells() {
        let (a, _b) = UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 1024).unwrap();
        assert_eq!(bells_kept(&a), 0);
        let (c, _d) = UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&c, 1 << 20).unwrap();
        assert!(bells_kept(&c) <= 16);
    }
}
