//! The README's quick start: a thread actor and a process actor serving one typed endpoint.
//!
//! `cargo run -p harrow --example quick_start`

use std::sync::Arc;

use harrow::{
    ActorSpec, Endpoint, FnRegistry, ProcessBackend, RootConfig, ThreadBackend, run_root,
};

/// Declared once, used by the serving and the calling side: a mismatch does not compile.
const DOUBLE: Endpoint<i64, i64> = Endpoint::new("math:double");

fn functions() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    f.serve(DOUBLE, |n| async move { Ok(n * 2) })
        .expect("a valid path");
    Arc::new(f)
}

fn main() -> anyhow::Result<()> {
    harrow::maybe_run_child(functions); // in a process child: serve, then exit

    let (a, b) = run_root(RootConfig::default(), |nursery| async move {
        let t = nursery
            .start_actor(
                "t",
                ThreadBackend::shared(),
                ActorSpec::with_resolver(functions()),
            )
            .await?;
        let p = nursery
            .start_actor("p", ProcessBackend::shared(), ActorSpec::new())
            .await?;
        // Both children are cancelled and awaited when this body returns.
        Ok((t.call(DOUBLE, &21).await?, p.call(DOUBLE, &4).await?))
    })?;
    println!("{a} {b}");
    Ok(())
}
