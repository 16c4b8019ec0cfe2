//! The tracker names a child process that is still running, then the same child as a zombie once
//! it is killed but not waited for, and passes once it has been waited for.
//! Alone in its file: the tracker must be the only test in its process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harrow_testkit::{ResourceTracker, run_bounded};

#[test]
fn child_is_named_then_seen_as_zombie_then_passes_once_reaped() -> anyhow::Result<()> {
    run_bounded("child_is_named", harrow_testkit::DEFAULT_BOUND, || {
        let tracker = ResourceTracker::start()?;
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();

        // The child may still be the forked test binary until it execs `sleep`: wait for the exec.
        let deadline = Instant::now() + Duration::from_secs(60);
        let report = loop {
            let err = tracker
                .check(Duration::from_millis(50))
                .expect_err("the child is leaked");
            let report = err.leak_report().expect("a leak report").clone();
            if report.children.iter().any(|c| c.comm == "sleep") || Instant::now() > deadline {
                break report;
            }
        };
        assert_eq!(report.children.len(), 1, "{report}");
        let leaked = &report.children[0];
        assert_eq!(
            (leaked.pid, leaked.comm.as_str()),
            (pid, "sleep"),
            "{report}"
        );
        assert!(!leaked.is_zombie(), "{report}");
        assert!(
            report
                .to_string()
                .contains(&format!("child process {pid} \"sleep\"")),
            "{report}"
        );

        child.kill()?;
        // Killed but not waited for: the child turns into a zombie, and the report says so.
        let deadline = Instant::now() + Duration::from_secs(60);
        let report = loop {
            let err = tracker
                .check(Duration::from_millis(50))
                .expect_err("the zombie is leaked");
            let report = err.leak_report().expect("a leak report").clone();
            if report.children.iter().any(|c| c.is_zombie()) || Instant::now() > deadline {
                break report;
            }
        };
        assert!(
            report
                .children
                .iter()
                .any(|c| c.pid == pid && c.is_zombie()),
            "{report}"
        );
        assert!(report.to_string().contains("zombie"), "{report}");

        child.wait()?;
        tracker.check(Duration::from_secs(30))?;
        Ok(())
    })
}
