//! A registered counter that rises is reported with its before and after values; one that falls
//! back, or below its start, passes.
//! Alone in its file: the tracker must be the only test in its process.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use harrow_testkit::{ResourceTracker, register_counter, run_bounded};

static LIVE_WIDGETS: AtomicI64 = AtomicI64::new(3);

#[test]
fn risen_counter_is_reported_with_before_and_after() -> anyhow::Result<()> {
    register_counter("live widgets", || LIVE_WIDGETS.load(Ordering::SeqCst));
    run_bounded(
        "risen_counter_is_reported",
        harrow_testkit::DEFAULT_BOUND,
        || {
            let tracker = ResourceTracker::start()?;
            assert_eq!(tracker.start_snapshot().counter("live widgets"), Some(3));
            LIVE_WIDGETS.fetch_add(2, Ordering::SeqCst);

            let err = tracker
                .check(Duration::from_millis(100))
                .expect_err("the counter rose");
            let report = err.leak_report().expect("a leak report");
            assert_eq!(report.counters.len(), 1, "{report}");
            let c = &report.counters[0];
            assert_eq!((c.name, c.before, c.after), ("live widgets", 3, 5));
            assert!(
                err.to_string()
                    .contains("counter \"live widgets\": 3 at start, 5 now"),
                "{err}"
            );

            LIVE_WIDGETS.fetch_sub(3, Ordering::SeqCst); // below the start: freed, not leaked
            tracker.check(Duration::from_secs(30))?;
            Ok(())
        },
    )
}
