//! A typed endpoint, a one-way stream, a typed context with a bidirectional stream, and a
//! remote error.
//!
//! `cargo run -p harrow --example rpc_and_streams`

use std::sync::Arc;

use harrow::{
    ActorSpec, CallError, ContextEndpoint, Endpoint, FnRegistry, RootConfig, StreamEndpoint,
    ThreadBackend, run_root,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[derive(Serialize, Deserialize, Debug)]
struct Quote {
    item: String,
    total_cents: u64,
}

/// Declared once for both sides: serde types in and out, `Value` on the wire.
const QUOTE: Endpoint<Order, Quote> = Endpoint::new("shop:quote");

/// A one-way stream declared once: no arguments, item names.
const CATALOGUE: StreamEndpoint<(), String> = StreamEndpoint::new("shop:catalogue");

/// A context declared once: no arguments, a greeting when started, numbers up the stream,
/// running totals down, the final total as its result.
const RUNNING_TOTAL: ContextEndpoint<(), String, i64, i64, i64> =
    ContextEndpoint::new("shop:running_total");

fn functions() -> anyhow::Result<Arc<FnRegistry>> {
    let mut f = FnRegistry::new();
    f.serve(QUOTE, |order: Order| async move {
        if order.quantity == 0 {
            return Err(CallError::raised("ValueError", "quantity must be positive"));
        }
        Ok(Quote {
            total_cents: 250 * u64::from(order.quantity),
            item: order.item,
        })
    })?;
    // A one-way stream: a Rust `Stream` of items, sent as they come.
    f.serve_stream(CATALOGUE, |()| {
        futures_lite::stream::iter(["apple", "pear", "plum"].map(|item| Ok(item.to_owned())))
    })?;
    // A context: `started` gives the caller a first value, then both sides stream.
    f.serve_context(RUNNING_TOTAL, |ctx, ()| async move {
        ctx.started(&"ready".to_string()).await?;
        let mut stream = ctx.open_stream().await?;
        let mut total = 0;
        while let Some(n) = stream.recv().await? {
            total += n;
            stream.send(&total).await?;
        }
        stream.close().await?;
        Ok(total)
    })?;
    Ok(Arc::new(f))
}

fn main() -> anyhow::Result<()> {
    let functions = functions()?;
    run_root(RootConfig::default(), |n| async move {
        let shop = n
            .start_actor(
                "shop",
                ThreadBackend::shared(),
                ActorSpec::with_resolver(functions),
            )
            .await?;

        let mut catalogue = shop.stream_from(CATALOGUE, &()).await?;
        while let Some(item) = catalogue.recv().await? {
            println!("in the catalogue: {item}");
        }

        let quote = shop
            .call(
                QUOTE,
                &Order {
                    item: "apple".into(),
                    quantity: 4,
                },
            )
            .await?;
        println!("quote: {quote:?}");

        let err = shop
            .call(
                QUOTE,
                &Order {
                    item: "pear".into(),
                    quantity: 0,
                },
            )
            .await
            .expect_err("zero is refused");
        let remote = err.remote_error().expect("raised remotely");
        println!(
            "remote error: {}: {} (from {})",
            remote.type_name, remote.message, remote.source
        );

        let (mut ctx, greeting) = shop.open(RUNNING_TOTAL, &()).await?;
        println!("context started: {greeting}");
        let mut stream = ctx.open_stream().await?;
        for x in [5, 10, 20] {
            stream.send(&x).await?;
            println!("running total: {:?}", stream.recv().await?);
        }
        stream.close().await?;
        while stream.recv().await?.is_some() {}
        println!("final result: {:?}", ctx.result().await?);
        Ok(())
    })?;
    Ok(())
}
