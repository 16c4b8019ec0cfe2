//! The teardown ladder: a well-behaved child exits on the graceful cancel; a child stuck in a
//! loop that never yields is hard-killed (a thread is detached and reported leaked), within
//! `cancel_ack + graceful_exit + hard_kill`.
//!
//! `cargo run -p harrow --example cancel_and_hard_kill`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harrow::{ActorSpec, FnRegistry, RootConfig, ThreadBackend, Timeouts, Value, run_root};

static STOP_SPINNING: AtomicBool = AtomicBool::new(false);

fn main() -> anyhow::Result<()> {
    let mut f = FnRegistry::new();
    f.unary("work:nap", |_| async move {
        // Cooperative: cancellation lands at the next await.
        async_io_sleep(Duration::from_secs(3600)).await;
        Ok(Value::Null)
    })?;
    f.unary("work:spin", |_| async move {
        // Never yields: only the hard kill can deal with it.
        while !STOP_SPINNING.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        Ok(Value::Null)
    })?;
    let f = Arc::new(f);
    let timeouts = Timeouts {
        cancel_ack: Duration::from_millis(200),
        graceful_exit: Duration::from_millis(300),
        hard_kill: Duration::from_millis(300),
    };
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| async move {
        for (name, func) in [("napper", "work:nap"), ("spinner", "work:spin")] {
            let child = n
                .start_actor(
                    name,
                    ThreadBackend::shared(),
                    ActorSpec::with_resolver(f.clone()),
                )
                .await?;
            // Start the call, let it run a moment, then tear the child down.
            let _ = harrow::move_on_after(Duration::from_millis(100), child.run(func, Value::Null))
                .await;
            let t0 = Instant::now();
            let outcome = child.cancel().await;
            println!("{name}: {outcome:?} after {:.0?}", t0.elapsed());
        }
        Ok(())
    });
    STOP_SPINNING.store(true, Ordering::Relaxed);
    match result {
        Ok(()) => println!("clean"),
        Err(e) => {
            for leak in e.leaks() {
                println!("reported leak: {} on {}", leak.actor(), leak.backend());
            }
        }
    }
    Ok(())
}

async fn async_io_sleep(d: Duration) {
    harrow::move_on_after(d, std::future::pending::<()>()).await;
}
