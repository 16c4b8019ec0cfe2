//! Deadline wrappers add a constant to the size of the future they wrap, not a multiple of it:
//! nesting them (a deadline inside a deadline, around a nursery) must not grow futures
//! geometrically, which overflowed test-thread stacks in debug builds.

use std::mem::size_of_val;
use std::time::Duration;

use futures_lite::future::block_on;
use harrow_runtime_core::{DeadlineExceeded, fail_after, move_on_after, open_nursery};

/// What one deadline may add: its bound, its timer and padding (about 80 bytes on x86_64).
const PER_DEADLINE: usize = 128;

const D: Duration = Duration::from_secs(30);

/// A future with a large state (a buffer held across an await point).
async fn big() -> usize {
    let buf = [7u8; 4096];
    futures_lite::future::yield_now().await;
    buf.iter().map(|b| *b as usize).sum()
}

#[test]
fn move_on_after_adds_a_constant() {
    let fut = big();
    let base = size_of_val(&fut);
    assert!(base >= 4096);
    let once = move_on_after(D, big());
    assert!(
        size_of_val(&once) <= base + PER_DEADLINE,
        "one deadline: {} -> {}",
        base,
        size_of_val(&once)
    );
    let twice = move_on_after(D, move_on_after(D, big()));
    assert!(
        size_of_val(&twice) <= base + 2 * PER_DEADLINE,
        "two deadlines: {} -> {}",
        base,
        size_of_val(&twice)
    );
    assert_eq!(block_on(twice), Some(Some(7 * 4096)));
    drop((fut, once));
}

#[test]
fn fail_after_adds_a_constant() {
    let base = size_of_val(&big());
    let once = fail_after(D, big());
    assert!(size_of_val(&once) <= base + PER_DEADLINE);
    let twice = fail_after(D, move_on_after(D, big()));
    assert!(size_of_val(&twice) <= base + 2 * PER_DEADLINE);
    assert_eq!(block_on(twice), Ok(Some(7 * 4096)));
}

#[test]
fn deadlines_around_a_nursery_add_a_constant() {
    let nursery = || open_nursery(|_n| async { Ok(()) });
    let base = size_of_val(&nursery());
    let twice = move_on_after(D, fail_after(D, nursery()));
    assert!(
        size_of_val(&twice) <= base + 2 * PER_DEADLINE,
        "{base} -> {}",
        size_of_val(&twice)
    );
}

#[test]
fn the_inner_deadline_wins_when_shorter() {
    let short = Duration::from_millis(20);
    let r = block_on(move_on_after(
        D,
        move_on_after(short, std::future::pending::<()>()),
    ));
    assert_eq!(r, Some(None));
    let r = block_on(move_on_after(
        short,
        fail_after(D, std::future::pending::<()>()),
    ));
    assert_eq!(r, None);
    let r = block_on(fail_after(short, std::future::pending::<()>()));
    assert_eq!(r, Err(DeadlineExceeded(short)));
}

#[test]
fn a_ready_future_beats_a_passed_deadline() {
    // Polled before the timer: a future that is ready at the first poll wins even with a zero
    // bound.
    assert_eq!(
        block_on(move_on_after(Duration::ZERO, async { 5 })),
        Some(5)
    );
    assert_eq!(block_on(fail_after(Duration::ZERO, async { 5 })), Ok(5));
}

#[test]
fn the_deadline_counts_from_the_first_poll() {
    let bound = Duration::from_secs(1);
    let wrapped = move_on_after(bound, async {
        futures_lite::future::yield_now().await;
        1
    });
    // Created long before it is polled: the time before the first poll does not count.
    std::thread::sleep(bound + Duration::from_millis(100));
    assert_eq!(block_on(wrapped), Some(1));
}
