//! Thread actor spawn-to-first-reply latency beside a bare `std::thread` spawn+join, same run.
//!
//! `cargo bench -p harrow-spawn-thread`

use std::sync::Arc;
use std::time::{Duration, Instant};

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::FnRegistry;
use harrow_runtime_core::{ActorSpec, RootConfig, run_root};
use harrow_spawn_thread::ThreadBackend;

const ROUNDS: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // Baseline: a bare thread spawned and joined.
    let mut bare = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        std::thread::Builder::new()
            .name("bare".into())
            .spawn(|| std::hint::black_box(1))?
            .join()
            .map_err(|_| anyhow::anyhow!("bare thread panicked"))?;
        bare.push(t0.elapsed());
    }

    let mut reg = FnRegistry::new();
    reg.unary("bench:ping", |v| async move { Ok(v) })?;
    let reg = Arc::new(reg);
    let backend = ThreadBackend::shared();
    let samples = run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let mut samples = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            let t0 = Instant::now();
            let child = n
                .start_actor(
                    &format!("bench-{i}"),
                    backend.clone(),
                    ActorSpec::with_resolver(reg.clone()),
                )
                .await?;
            child.run("bench:ping", Value::Null).await?;
            samples.push(t0.elapsed());
            child.cancel().await;
        }
        Ok(samples)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    let (b, a) = (median(bare), median(samples));
    println!("thread actor spawn-to-first-reply (median of {ROUNDS})");
    println!("  bare std::thread spawn+join : {b:>10.1?}");
    println!("  ThreadBackend spawn + 1 call: {a:>10.1?}");
    println!(
        "  ratio                       : {:>9.2}x  (target <= 5x)",
        a.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}
