//! A spawn that outlives the nursery's hello timeout is dropped halfway; a cancel-safe backend
//! leaves nothing behind (the resource tracker checks the thread is gone) and the nursery stays
//! usable.

use std::time::Duration;

use harrow::{ActorSpec, RootConfig, Timeouts, run_root};
use harrow_toy_backend::ToyBackend;

#[test]
fn a_spawn_dropped_at_the_hello_timeout_leaves_nothing() {
    harrow_testkit::harness(
        "a_spawn_dropped_at_the_hello_timeout_leaves_nothing",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let mut config = RootConfig::default()
                .handle_sigint(false)
                .timeouts(Timeouts::quick());
            config.link_config.hello_timeout = Duration::from_millis(200);
            // Boots far longer than the hello timeout (and than the tracker's settle): only a
            // spawn that releases its thread when dropped passes the leak check.
            let slow = ToyBackend::new()
                .with_boot_delay(Duration::from_secs(600))
                .into_shared();
            let err = run_root(config, |n| async move {
                let err = n
                    .start_actor("slow-boot", slow, ActorSpec::new())
                    .await
                    .expect_err("the spawn cannot finish within the hello timeout");
                // The nursery is still usable.
                let quick = n
                    .start_actor("quick", ToyBackend::shared(), ActorSpec::new())
                    .await?;
                quick.cancel().await;
                Ok(err)
            })
            .expect("the nursery itself succeeds");
            let text = err.to_string();
            assert!(
                text.contains("slow-boot"),
                "the error names the actor: {text}"
            );
        },
    );
}
