//! The decoder sizes nothing from a length it has not checked: a huge announced frame, or a huge
//! string length inside a small frame, allocates only small buffers before being rejected.
//!
//! A counting global allocator records the largest single allocation made by the test thread.
// The allocator shim is the only unsafe code, and it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use harrow_ipc::codec::{CodecConfig, DecodeError, FrameDecoder, decode_frame};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-locals may already be gone while a thread shuts down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `f` made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let result = f();
    ARMED.with(|a| a.set(false));
    (result, LARGEST.with(Cell::get))
}

const SMALL: usize = 256 << 10;

#[test]
fn an_oversized_length_prefix_allocates_nothing_big() {
    let prefix = u32::MAX.to_le_bytes();
    let (result, largest) = largest_allocation(|| decode_frame(&prefix));
    assert!(
        matches!(result, Err(DecodeError::FrameTooLarge { .. })),
        "{result:?}"
    );
    assert!(largest < SMALL, "allocated {largest} bytes");

    let (result, largest) = largest_allocation(|| {
        let mut decoder = FrameDecoder::new(CodecConfig::default());
        decoder.extend(&prefix);
        let next = decoder.decode_next();
        let buf = decoder.read_buf().map(|b| b.len());
        (next, buf)
    });
    assert!(matches!(result.0, Err(DecodeError::FrameTooLarge { .. })));
    assert!(matches!(result.1, Err(DecodeError::FrameTooLarge { .. })));
    assert!(largest < SMALL, "allocated {largest} bytes");
}

#[test]
fn a_lying_string_length_in_a_small_frame_allocates_nothing_big() {
    // CancelActor (10) whose reason claims 60 MiB (varint: 0xfc then a u32), in a 7-byte body.
    let mut body = vec![10, 0xfc];
    body.extend_from_slice(&(60u32 << 20).to_le_bytes());
    body.push(b'x');
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let (result, largest) = largest_allocation(|| decode_frame(&frame));
    assert!(
        matches!(result, Err(DecodeError::Malformed(_))),
        "{result:?}"
    );
    assert!(largest < SMALL, "allocated {largest} bytes");
}

#[test]
fn a_lying_length_in_a_bigger_frame_allocates_at_most_a_small_multiple_of_it() {
    // The same lie in a 5000-byte body: the cap scales with the body, not with the lie.
    let mut body = vec![10, 0xfc];
    body.extend_from_slice(&(60u32 << 20).to_le_bytes());
    body.resize(5000, b'x');
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let (result, largest) = largest_allocation(|| decode_frame(&frame));
    assert!(
        matches!(result, Err(DecodeError::Malformed(_))),
        "{result:?}"
    );
    assert!(largest <= 1 << 20, "allocated {largest} bytes");
}
