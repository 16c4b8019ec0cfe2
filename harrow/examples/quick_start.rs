//! The README's quick start: a thread actor and a process actor serving one typed endpoint, and
//! a typed context with a stream.
//!
//! `cargo run -p harrow --example quick_start`

use std::sync::Arc;

use harrow::{
    ActorSpec, ContextEndpoint, Endpoint, FnRegistry, ProcessBackend, RootConfig, ThreadBackend,
    run_root,
};

/// Declared once, used by the serving and the calling side: a mismatch does not compile.
const DOUBLE: Endpoint<i64, i64> = Endpoint::new("math:double");

/// A context, declared once with its types: arguments, started value, items up and down its
/// stream, result.
const SUMS: ContextEndpoint<String, String, i64, i64, u32> = ContextEndpoint::new("math:sums");

fn functions() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    f.serve(DOUBLE, |n| async move { Ok(n * 2) })
        .expect("a valid path");
    f.serve_context(SUMS, |ctx, label| async move {
        ctx.started(&format!("{label}:")).await?;
        let mut stream = ctx.open_stream().await?;
        let (mut sum, mut n) = (0, 0);
        while let Some(x) = stream.recv().await? {
            (sum, n) = (sum + x, n + 1);
            stream.send(&sum).await?;
        }
        Ok(n)
    })
    .expect("a valid path");
    Arc::new(f)
}

fn main() -> anyhow::Result<()> {
    harrow::maybe_run_child(functions); // in a process child: serve, then exit

    let (a, b, sums) = run_root(RootConfig::default(), |nursery| async move {
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
        let (mut ctx, label) = p.open(SUMS, &"sums".to_string()).await?;
        let mut stream = ctx.open_stream().await?;
        for x in [1, 2, 3] {
            stream.send(&x).await?;
        }
        stream.close().await?;
        let mut sums = vec![];
        while let Some(sum) = stream.recv().await? {
            sums.push(sum);
        }
        let sums = format!("{label} {sums:?} ({} items)", ctx.result().await?);
        // Both children are cancelled and awaited when this body returns.
        Ok((t.call(DOUBLE, &21).await?, p.call(DOUBLE, &4).await?, sums))
    })?;
    println!("{a} {b}");
    println!("{sums}");
    Ok(())
}
