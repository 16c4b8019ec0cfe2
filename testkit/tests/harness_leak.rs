//! `harness` passes a clean body (sync and async, with the watchdog's own thread not counted), and
//! fails a leaking one with a message naming the leak.
//! The whole test is one isolated section (a process of its own under `cargo test` too), inside
//! which several harnessed bodies run one after the other.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

use harrow_testkit::{harness, harness_async, harness_here, isolated};

const BOUND: Duration = harrow_testkit::DEFAULT_BOUND;

#[test]
fn harness_passes_clean_bodies_and_names_leaks() -> anyhow::Result<()> {
    isolated(BOUND * 4, body)
}

fn body() -> anyhow::Result<()> {
    let v = harness_here("clean_sync", BOUND, Duration::from_secs(30), || {
        std::thread::spawn(|| 21 * 2).join().expect("joined")
    });
    assert_eq!(v, 42);

    // Inside an isolated section, `harness` runs here (it does not re-run the test).
    harness("clean_sync_unit", BOUND, Duration::from_secs(30), || {
        assert_eq!(std::thread::spawn(|| 1).join().expect("joined"), 1);
    });

    harness_async("clean_async", BOUND, Duration::from_secs(30), async {
        async_io::Timer::after(Duration::from_millis(1)).await;
        Ok::<_, anyhow::Error>(())
    })?;

    let (release, released) = mpsc::channel::<()>();
    let (started, has_started) = mpsc::channel::<()>();
    let mut worker = None;
    let failed = catch_unwind(AssertUnwindSafe(|| {
        harness("leaky", BOUND, Duration::from_millis(100), || {
            worker = Some(
                std::thread::Builder::new()
                    .name("harness-leak".into())
                    .spawn(move || {
                        let _ = started.send(());
                        let _ = released.recv();
                    }),
            );
            has_started
                .recv_timeout(Duration::from_secs(60))
                .expect("worker started");
        })
    }))
    .expect_err("the harness must fail a leaking body");
    let message = failed
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "<non-string panic>".to_owned());
    assert!(message.contains("thread \"harness-leak\""), "{message}");
    assert!(!message.contains("harrow-watchdog"), "{message}");

    drop(release);
    worker.expect("spawned")?.join().expect("worker panicked");
    Ok(())
}
