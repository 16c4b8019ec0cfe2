//! The tracker names a leaked thread, and passes once it has ended.
//! Alone in its file: the tracker must be the only test in its process.

use std::sync::mpsc;
use std::time::Duration;

use harrow_testkit::{ResourceTracker, run_bounded};

#[test]
fn leaked_thread_is_named_then_passes_once_joined() -> anyhow::Result<()> {
    run_bounded(
        "leaked_thread_is_named",
        harrow_testkit::DEFAULT_BOUND,
        || {
            let tracker = ResourceTracker::start()?;
            let (release, released) = mpsc::channel::<()>();
            let (started, has_started) = mpsc::channel::<()>();
            let worker = std::thread::Builder::new()
                .name("leaky-worker".into())
                .spawn(move || {
                    // std names the thread before this closure runs, so once this is received the
                    // kernel's comm is "leaky-worker".
                    let _ = started.send(());
                    let _ = released.recv();
                })?;
            has_started.recv_timeout(Duration::from_secs(60))?;

            let err = tracker
                .check(Duration::from_millis(100))
                .expect_err("the thread is leaked");
            let report = err.leak_report().expect("a leak report");
            assert_eq!(report.threads.len(), 1, "{report}");
            assert_eq!(report.threads[0].name, "leaky-worker");
            assert!(
                report.fds.is_empty() && report.children.is_empty(),
                "{report}"
            );
            assert!(
                err.to_string().contains("thread \"leaky-worker\" (tid "),
                "{err}"
            );

            drop(release);
            worker.join().expect("worker panicked");
            tracker.check(Duration::from_secs(30))?;
            Ok(())
        },
    )
}
