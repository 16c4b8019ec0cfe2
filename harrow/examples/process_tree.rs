//! A tree of processes: the root starts two process children; one of them starts a process
//! child of its own from inside a function it serves (nested nursery). Every process is this
//! same binary re-executed, so `maybe_run_child` comes first in `main`.
//!
//! `cargo run -p harrow --example process_tree`

use std::sync::Arc;

use harrow::{
    ActorSpec, CallError, FnRegistry, ProcessBackend, RootConfig, Value, maybe_run_child,
    open_nursery, run_root,
};

/// What every process of the tree serves (the root too could, but it only calls).
fn functions() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    f.unary("tree:whoami", |_| async move {
        let me = harrow::current_actor()
            .map(|a| a.id().name.clone())
            .unwrap_or_default();
        Ok(Value::from(format!("{me} is pid {}", std::process::id())))
    })
    .expect("a valid path");
    f.unary("tree:spawn_child", |name: Value| async move {
        let name = name.as_str().unwrap_or("grandchild").to_owned();
        // A nursery inside this actor: its process child is this actor's child.
        let reply = open_nursery(|n| async move {
            let child = n
                .start_actor(&name, ProcessBackend::shared(), ActorSpec::new())
                .await?;
            Ok(child.run("tree:whoami", Value::Null).await?)
        })
        .await
        .map_err(|e| CallError::raised("NurseryError", e.to_string()))?;
        let me = std::process::id();
        Ok(Value::List(vec![
            Value::from(format!("pid {me} started a child")),
            reply,
        ]))
    })
    .expect("a valid path");
    Arc::new(f)
}

fn main() -> anyhow::Result<()> {
    // In a child process: serve `functions()` until cancelled, then exit. In the root: return.
    maybe_run_child(functions);

    println!("root is pid {}", std::process::id());
    run_root(RootConfig::default(), |n| async move {
        let a = n
            .start_actor("a", ProcessBackend::shared(), ActorSpec::new())
            .await?;
        let b = n
            .start_actor("b", ProcessBackend::shared(), ActorSpec::new())
            .await?;
        println!(
            "{}",
            a.run("tree:whoami", Value::Null)
                .await?
                .as_str()
                .unwrap_or("?")
        );
        println!(
            "{}",
            b.run("tree:whoami", Value::Null)
                .await?
                .as_str()
                .unwrap_or("?")
        );
        let nested = a.run("tree:spawn_child", Value::from("a1")).await?;
        for line in nested.as_list().unwrap_or(&[]) {
            println!("a: {}", line.as_str().unwrap_or("?"));
        }
        // The nursery cancels a and b when this body returns, and reaps them.
        Ok(())
    })?;
    println!("every process of the tree has exited");
    Ok(())
}
