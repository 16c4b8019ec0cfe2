//! Python in subinterpreter actors: the same CPU-bound function in two actors at once (each
//! subinterpreter has its own GIL, so they run in parallel), a generator streamed to Rust, and a
//! Python exception arriving as a remote error with its traceback.
//!
//! `cargo run -p harrow --example python_subint`

use std::path::PathBuf;
use std::time::Instant;

use harrow::{ActorSpec, InterpConfig, RootConfig, SubintBackend, Value, run_root};

/// The Python module, embedded in the binary and written to a temporary directory.
const MODULE: &str = include_str!("py/example_tasks.py");

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    if let Err(why) = harrow::subint_status() {
        println!("python_subint: skipped: {why}");
        return Ok(());
    }
    let dir = TempDir(std::env::temp_dir().join(format!("harrow-example-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    std::fs::write(dir.0.join("example_tasks.py"), MODULE)?;
    let spec = |name: &str| {
        let config = InterpConfig::new(name)
            .expose("example_tasks")
            .sys_path(&dir.0);
        ActorSpec::new().params(config.to_params())
    };

    run_root(RootConfig::default(), |n| async move {
        let a = n
            .start_actor("py-a", SubintBackend::shared(), spec("py-a"))
            .await?;
        let b = n
            .start_actor("py-b", SubintBackend::shared(), spec("py-b"))
            .await?;
        println!(
            "py-a runs {:?}",
            a.run("example_tasks:whoami", Value::Null).await?
        );

        // The same CPU-bound call on both actors at once.
        let job = Value::Int(2_000_000);
        let t0 = Instant::now();
        let (ra, rb) = futures_lite::future::zip(
            a.run("example_tasks:sum_squares", job.clone()),
            b.run("example_tasks:sum_squares", job),
        )
        .await;
        println!(
            "sum_squares(2e6) on 2 actors in parallel: {:?} and {:?} in {:.0?}",
            ra?,
            rb?,
            t0.elapsed()
        );

        // A generator, streamed: open a context, read its stream to the end.
        let (mut ctx, _) = a.open_context("example_tasks:count", Value::Int(5)).await?;
        let mut stream = ctx.open_stream().await?;
        let mut items = Vec::new();
        while let Some(v) = stream.recv().await? {
            items.push(v);
        }
        stream.close().await?;
        ctx.result().await?;
        println!("count(5) streamed {items:?}");

        // A Python exception comes back as a remote error.
        let err = b
            .run(
                "example_tasks:divide",
                Value::List(vec![Value::Int(1), Value::Int(0)]),
            )
            .await
            .expect_err("1 / 0 raises");
        if let Some(remote) = err.remote_error() {
            println!("remote error {}: {}", remote.type_name, remote.message);
            if let Some(line) = remote.traceback.lines().rev().find(|l| l.contains("File ")) {
                println!(
                    "  raised at{}",
                    line.trim_start_matches(' ')
                        .trim_start_matches("File")
                        .trim_end()
                );
            }
        }
        Ok(())
    })?;
    Ok(())
}
