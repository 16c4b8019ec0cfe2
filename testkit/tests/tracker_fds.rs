//! The tracker names a leaked fd with its target, and passes once it is closed.
//! Alone in its file: the tracker must be the only test in its process.

use std::time::Duration;

use harrow_testkit::{ResourceTracker, run_bounded};

#[test]
fn leaked_fd_is_named_with_its_target() -> anyhow::Result<()> {
    run_bounded("leaked_fd_is_named", harrow_testkit::DEFAULT_BOUND, || {
        let tracker = ResourceTracker::start()?;
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let file = std::fs::File::open(manifest)?;

        let err = tracker
            .check(Duration::from_millis(100))
            .expect_err("the fd is leaked");
        let report = err.leak_report().expect("a leak report");
        assert_eq!(report.fds.len(), 1, "{report}");
        assert!(
            report.fds[0].target.ends_with("testkit/Cargo.toml"),
            "{report}"
        );
        assert!(
            report.threads.is_empty() && report.children.is_empty(),
            "{report}"
        );
        assert!(err.to_string().contains("testkit/Cargo.toml"), "{err}");

        drop(file);
        tracker.check(Duration::from_secs(30))?;
        Ok(())
    })
}
