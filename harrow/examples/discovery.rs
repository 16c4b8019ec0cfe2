//! Discovery: actors find each other by name and talk directly over peer portals.
//!
//! The root starts a thread actor `store` and a process actor `client`. The client looks `store`
//! up by name (it never got a portal to it) and calls it: across processes, over the store's
//! process socket after the tree-secret handshake. Then it cancels `store` directly.
//!
//! `cargo run -p harrow --example discovery`

use std::sync::Arc;
use std::time::Duration;

use harrow::{
    ActorSpec, CallError, Endpoint, FnRegistry, ProcessBackend, RootConfig, ThreadBackend,
    maybe_run_child, run_root, wait_for_actor,
};

const GET: Endpoint<(), i64> = Endpoint::new("store:get");
const ASK_STORE: Endpoint<(), String> = Endpoint::new("client:ask_store");

fn functions() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    f.serve(GET, |()| async move { Ok(42) })
        .expect("a valid path");
    f.serve(ASK_STORE, |()| async move {
        let to_err = |e: harrow::DiscoveryError| CallError::raised("DiscoveryError", e.to_string());
        // Waits (bounded) in case `store` is not registered yet; here it already is.
        let store = wait_for_actor("store", Duration::from_secs(5))
            .await
            .map_err(to_err)?;
        let v = store.call(GET, &()).await?;
        let acked = store.cancel_actor(Duration::from_secs(2)).await;
        Ok(format!(
            "client (pid {}) got {v} from {}; cancelled it: {acked}",
            std::process::id(),
            store.peer()
        ))
    })
    .expect("a valid path");
    Arc::new(f)
}

fn main() -> anyhow::Result<()> {
    maybe_run_child(functions);
    let line = run_root(RootConfig::default(), |n| async move {
        let store = n
            .start_actor(
                "store",
                ThreadBackend::shared(),
                ActorSpec::with_resolver(functions()),
            )
            .await?;
        let client = n
            .start_actor("client", ProcessBackend::shared(), ActorSpec::new())
            .await?;
        let names: Vec<String> = n
            .actor()
            .query_actors()
            .await?
            .into_iter()
            .map(|e| e.id.name)
            .collect();
        println!("registered: {names:?}");
        let line = client.call(ASK_STORE, &()).await?;
        // `store` was cancelled by the client: it left on its own, which is not a failure.
        println!("store ended: {:?}", store.cancel().await);
        Ok(line)
    })?;
    println!("{line}");
    Ok(())
}
