//! The smallest harrow program: a root, a nursery, one child actor on its own thread, one call.
//!
//! `cargo run -p harrow --example hello_nursery`

use std::sync::Arc;

use harrow::{ActorSpec, FnRegistry, RootConfig, ThreadBackend, Value, run_root};

fn main() -> anyhow::Result<()> {
    let mut functions = FnRegistry::new();
    functions.unary("greet:hello", |name: Value| async move {
        let name = name.as_str().unwrap_or("world").to_owned();
        Ok(Value::from(format!(
            "hello, {name}, from {:?}",
            std::thread::current().name()
        )))
    })?;
    let functions = Arc::new(functions);

    let greeting = run_root(RootConfig::default(), |nursery| async move {
        let child = nursery
            .start_actor(
                "greeter",
                ThreadBackend::shared(),
                ActorSpec::with_resolver(functions),
            )
            .await?;
        let greeting = child.run("greet:hello", Value::from("harrow")).await?;
        // The nursery cancels `greeter` when this body returns, and waits for it to exit.
        Ok(greeting)
    })?;
    println!("{}", greeting.as_str().unwrap_or_default());
    Ok(())
}
