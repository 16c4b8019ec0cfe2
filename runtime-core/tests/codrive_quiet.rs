//! The co-driving watchdog costs nothing until a helper turns busy: started (as checking that
//! Python works starts it) in a process that never co-drives, it sleeps without a timer.
//! (A test binary of its own: no other test here turns a helper busy.)

use std::time::{Duration, Instant};

use harrow_runtime_core::codrive::{warm_up, watchdog_ticks_and_deep};

#[test]
fn the_watchdog_sleeps_until_a_helper_first_turns_busy() {
    warm_up();
    // Wait (bounded) for the thread to reach its sleep.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ticks, deep) = watchdog_ticks_and_deep();
        if deep {
            assert_eq!(
                ticks, 0,
                "the watchdog ticked before any helper turned busy"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watchdog did not reach its sleep within 10 s ({ticks} ticks)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
