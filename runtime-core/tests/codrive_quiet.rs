//! The co-driving watchdog costs nothing until a helper turns busy: started (as checking that
//! Python works starts it) in a process that never co-drives, it sleeps without a timer.
//! (A test binary of its own: no other test here turns a helper busy.)

use std::time::Duration;

use harrow_runtime_core::codrive::{warm_up, watchdog_ticks_once_asleep};

#[test]
fn the_watchdog_sleeps_until_a_helper_first_turns_busy() {
    warm_up();
    let ticks = watchdog_ticks_once_asleep(Duration::from_secs(10))
        .expect("the watchdog did not go to sleep within 10 s");
    assert_eq!(
        ticks, 0,
        "the watchdog ticked before any helper turned busy"
    );
}
