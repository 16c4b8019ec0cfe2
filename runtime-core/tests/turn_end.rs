//! What a task sends over a socket leaves when that task's poll ends, even if the task then
//! starves its thread.
//!
//! A link over a byte transport, on a thread in `harrow_ipc::park::block_on`, holds the messages
//! its tasks send and writes them at the end of the executor's turn. An actor's executor loop
//! (`harrow_runtime_core::park::run_tasks`) ends the turn after every task poll, so a context
//! that says `started`, yields once and then blocks its thread (a long computation that never
//! yields, a blocking call) has still sent `started`. Under `Executor::run` alone the turn would
//! last until the blocked task gave the thread back, and the caller would not see `started`.

use std::sync::Arc;
use std::time::Duration;

use harrow_ipc::{ActorId, Value};
use harrow_portal::{Executor, FnRegistry, Link, LinkConfig, LocalInfo, Resolver};

/// Far more than any wait here needs; a failure is a wait that ran out.
const BOUND: Duration = Duration::from_secs(20);

fn local(name: &str) -> LocalInfo {
    LocalInfo {
        id: ActorId::new(name),
        backend: "test".into(),
    }
}

fn config() -> LinkConfig {
    LinkConfig::default().heartbeat(None, None)
}

#[test]
fn started_leaves_before_the_task_blocks_its_thread() {
    let (a, b) = harrow_ipc::unix::pair().expect("socketpair");
    // The callee blocks its thread until this is released (or BOUND passes).
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);

    let callee = std::thread::spawn(move || {
        let exec: Executor = Arc::new(async_executor::Executor::new());
        let mut reg = FnRegistry::new();
        reg.context("t:starve", move |ctx, _| {
            let release_rx = release_rx.clone();
            async move {
                ctx.started(Value::from("started")).await?;
                futures_lite::future::yield_now().await;
                // Starve the executor: nothing else runs on this thread until released.
                let released = release_rx
                    .lock()
                    .expect("release lock")
                    .recv_timeout(BOUND)
                    .is_ok();
                Ok(Value::Bool(released))
            }
        })
        .expect("path");
        let resolver: Arc<dyn Resolver> = Arc::new(reg);
        let run = harrow_runtime_core::park::run_tasks(&exec, async {
            let link = Link::establish(b, local("callee"), Some(resolver), &exec, config())
                .await
                .expect("establish");
            futures_lite::future::or(
                async {
                    let _ = stop_rx.recv().await;
                },
                async {
                    async_io::Timer::after(BOUND * 3).await;
                },
            )
            .await;
            drop(link);
        });
        harrow_ipc::park::block_on(run);
    });

    let exec: Executor = Arc::new(async_executor::Executor::new());
    let outcome = harrow_ipc::park::block_on(exec.run(async {
        let link = Link::establish(a, local("caller"), None, &exec, config())
            .await
            .expect("establish");
        let portal = link.portal();
        let opened = futures_lite::future::or(
            async { Some(portal.open_context("t:starve", Value::Null).await) },
            async {
                async_io::Timer::after(BOUND / 2).await;
                None
            },
        )
        .await;
        // Release the callee whatever happened, so that the thread ends.
        let _ = release_tx.send(());
        let Some(opened) = opened else {
            return Err(
                "`started` did not arrive while the callee's thread was blocked".to_string(),
            );
        };
        let (ctx, first) = opened.map_err(|e| format!("open_context: {e}"))?;
        assert_eq!(first, Value::from("started"));
        let result = ctx.result().await.map_err(|e| format!("result: {e}"))?;
        // The callee was still blocked when `started` arrived: it was released, not timed out.
        assert_eq!(result, Value::Bool(true));
        drop(link);
        Ok(())
    }));
    let _ = stop_tx.send_blocking(());
    callee.join().expect("callee thread");
    outcome.expect("started arrives while the sender's thread is blocked");
}
