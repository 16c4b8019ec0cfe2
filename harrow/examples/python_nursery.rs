//! A Python actor that runs its own nursery: it starts a Python child and a Rust child in a
//! child process, calls both, streams through a context, bounds a wait with a deadline, and
//! catches a failing child's error as an `ExceptionGroup`.
//!
//! `cargo run -p harrow --example python_nursery`

use std::path::PathBuf;
use std::sync::Arc;

use harrow::{ActorSpec, FnRegistry, InterpConfig, RootConfig, Value, maybe_run_child, run_root};

/// The Python module, embedded in the binary and written to a temporary directory.
const MODULE: &str = include_str!("py/example_nursery.py");

/// What the process children (this binary re-executed) serve.
fn functions() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    f.unary("rust:whoami", |_| async move {
        Ok(Value::from(format!(
            "a Rust actor in pid {}",
            std::process::id()
        )))
    })
    .expect("a valid path");
    Arc::new(f)
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    // A process child started by the Python actor is this binary re-executed.
    maybe_run_child(functions);
    if let Err(why) = harrow::subint_status() {
        println!("python_nursery: skipped: {why}");
        return Ok(());
    }
    let dir = TempDir(std::env::temp_dir().join(format!("harrow-nursery-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    std::fs::write(dir.0.join("example_nursery.py"), MODULE)?;
    let config = InterpConfig::new("boss")
        .expose("example_nursery")
        .sys_path(&dir.0);

    let out = run_root(RootConfig::default(), |n| async move {
        // A subint backend offering its Python actors every backend of this build.
        let backend = harrow::subint_backend().into_shared();
        let boss = n
            .start_actor("boss", backend, ActorSpec::new().params(config.to_params()))
            .await?;
        Ok(boss.run("example_nursery:boss", Value::Null).await?)
    })?;
    for key in [
        "worker",
        "square",
        "rust",
        "doubled",
        "gave_up_waiting",
        "errors",
    ] {
        println!("{key}: {:?}", out.get(key).unwrap_or(&Value::Null));
    }
    Ok(())
}
