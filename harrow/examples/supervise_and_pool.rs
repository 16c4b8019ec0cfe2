//! A restarting supervisor and an actor pool, on threads.
//!
//! A supervisor keeps a `counter` service running (one-for-one, at most 3 restarts in 10 s):
//! when the service quits, the supervisor starts a fresh actor from the same spec, and the
//! event stream says so. Then a pool of 3 workers maps a function over 20 inputs, results in
//! input order.
//!
//! `cargo run -p harrow --example supervise_and_pool`

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use harrow::{
    ActorPool, ActorSpec, FnRegistry, PoolConfig, Restart, RootConfig, Strategy, SupervisedChild,
    SupervisorEvent, SupervisorSpec, ThreadBackend, Value, run_root,
};

fn functions() -> anyhow::Result<Arc<FnRegistry>> {
    let mut f = FnRegistry::new();
    f.unary("svc:whoami", |_| async move {
        let me = harrow::current_actor().map(|a| a.id().to_string());
        Ok(Value::from(me.unwrap_or_default()))
    })?;
    // The service quits on its own (as a service whose work is done, or that chose to end).
    f.unary("svc:quit", |_| async move {
        if let Some(me) = harrow::current_actor() {
            me.cancel_self(me.id().clone());
        }
        Ok(Value::Null)
    })?;
    f.unary("svc:square", |v: Value| async move {
        let x = v.as_i64().unwrap_or(0);
        Ok(Value::Int(x * x))
    })?;
    Ok(Arc::new(f))
}

fn main() -> anyhow::Result<()> {
    let functions = functions()?;
    run_root(RootConfig::default(), |nursery| async move {
        let spec = ActorSpec::with_resolver(functions);
        let sup = nursery
            .start_supervisor(
                SupervisorSpec::new("services", Strategy::OneForOne)
                    .intensity(3, Duration::from_secs(10))
                    .child(
                        SupervisedChild::new("counter", ThreadBackend::shared(), spec.clone())
                            .restart(Restart::Always),
                    ),
            )
            .await?;
        let mut events = sup.events();
        let first = sup.portal("counter").ok_or("counter is running")?;
        let who = first.run("svc:whoami", Value::Null).await?;
        println!("counter is {}", who.as_str().unwrap_or_default());
        let _ = first.run("svc:quit", Value::Null).await; // it ends while answering
        while let Some(event) = events.next().await {
            println!("supervisor event: {event:?}");
            if matches!(event, SupervisorEvent::Restarted { .. }) {
                break;
            }
        }
        let again = sup.portal("counter").ok_or("counter runs again")?;
        let who = again.run("svc:whoami", Value::Null).await?;
        println!(
            "restarted: counter is now {}",
            who.as_str().unwrap_or_default()
        );
        sup.cancel().await;

        let pool = ActorPool::start(
            &nursery,
            ThreadBackend::shared(),
            spec,
            PoolConfig::new("w", 3),
        )
        .await?;
        let squares: Vec<Value> = pool
            .map("svc:square", (0..20).map(Value::Int), true)
            .map(|(_, r)| r.unwrap_or(Value::Null))
            .collect()
            .await;
        println!("pool results: {squares:?}");
        pool.cancel().await;
        Ok(())
    })?;
    Ok(())
}
