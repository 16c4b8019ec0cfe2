//! Child helper for the watchdog's tests: arms a 1 s watchdog, then hangs forever.
//!
//! A thread named `stuck-worker` blocks on a channel nobody sends on, and the main thread blocks
//! joining it, so the dump must show both. A dump section named `fixture section` is registered.
//! It never exits by itself: only the watchdog's abort ends it.

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    harrow_testkit::register_dump_section("fixture section", || "fixture section says hi".into());
    let _guard = harrow_testkit::Watchdog::arm("hang_fixture::stuck", Duration::from_secs(1))?;
    let (_keep_open, never) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("stuck-worker".into())
        .spawn(move || never.recv())?;
    eprintln!("hang_fixture: hanging now");
    let _ = worker.join();
    Ok(())
}
