//! A peer cannot make a byte channel allocate what it merely announces: with a 64 MiB length
//! prefix, the receiver's memory follows the bytes that actually arrived.
//!
//! A counting global allocator tracks the bytes live in the whole process, so this binary holds a
//! single test (plain `cargo test` runs a binary's tests on parallel threads).
// The allocator shim is the only unsafe code, and it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_lite::future;
use harrow_ipc::codec::{self, CodecConfig, DecodeError};
use harrow_ipc::{Channel, RecvError, unix};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping only touches atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as both blocks live at once, as a moving realloc has them.
        grew(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most bytes live at once during it, above what was live before.
fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = f();
    (result, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

fn bounded<T>(fut: impl Future<Output = T>) -> T {
    async_io::block_on(future::or(fut, async {
        async_io::Timer::after(Duration::from_secs(30)).await;
        panic!("timed out after 30 s")
    }))
}

/// Makes a byte-stream channel and the raw stream of its peer.
type MakeTransport = fn() -> (Channel, UnixStream);

/// Every byte-stream transport gets the same checks: add its maker here.
fn byte_transports() -> Vec<(&'static str, MakeTransport)> {
    fn unix_socket() -> (Channel, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (
            unix::from_stream(ours, CodecConfig::default()).unwrap(),
            theirs,
        )
    }
    vec![("unix", unix_socket)]
}

const SENT_BODY: usize = 1 << 20;

#[test]
fn an_announced_64_mib_frame_costs_only_what_arrived() {
    let header = (codec::DEFAULT_MAX_FRAME as u32).to_le_bytes();
    for (name, make) in byte_transports() {
        // After the handshake: the peer announces 64 MiB, sends 1 MiB of it and goes away.
        let (mut ch, mut raw) = make();
        ch.end_handshake();
        // Made here, before the count starts: only the receiver's memory is measured (the
        // writer allocating its megabyte while the count ran made the peak depend on timing).
        let body = vec![0u8; SENT_BODY];
        let writer = std::thread::spawn(move || {
            raw.write_all(&header)?;
            raw.write_all(&body)?;
            // Handed back, not freed here: freeing it inside the count would hide as much.
            std::io::Result::Ok(body)
        });
        let (err, peak) = peak_growth(|| bounded(ch.recv()).unwrap_err());
        drop(writer.join().unwrap().unwrap());
        let got = codec::LENGTH_PREFIX + SENT_BODY;
        assert!(
            matches!(err, RecvError::TruncatedFrame { expected, got: g }
                if expected == codec::LENGTH_PREFIX + codec::DEFAULT_MAX_FRAME && g == got),
            "{name}: {err:?}"
        );
        assert!(
            peak <= 4 * got,
            "{name}: {peak} bytes live at the peak for {got} bytes received"
        );

        // Before the handshake: refused at the header, before any buffer grows.
        let (ch, mut raw) = make();
        raw.write_all(&header).unwrap();
        let (err, peak) = peak_growth(|| bounded(ch.recv()).unwrap_err());
        assert!(
            matches!(
                err,
                RecvError::Decode(DecodeError::HandshakeFrameTooLarge { .. })
            ),
            "{name}: {err:?}"
        );
        assert!(
            peak <= 64 << 10,
            "{name}: {peak} bytes live at the peak before the handshake"
        );
    }
}
