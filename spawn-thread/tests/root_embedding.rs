//! A root embedded in an async program: `spawn_root` runs it on a thread of its own, and its
//! handle is a future any executor can await; dropping the handle cancels the root.

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::FnRegistry;
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, spawn_root};
use harrow_spawn_thread::ThreadBackend;

fn config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

fn functions() -> Arc<FnRegistry> {
    let mut r = FnRegistry::new();
    r.unary("m:double", |v: Value| async move {
        Ok(Value::Int(v.as_i64().unwrap_or(0) * 2))
    })
    .unwrap();
    Arc::new(r)
}

fn bounded(name: &str, f: impl FnOnce()) {
    harrow_testkit::harness(
        name,
        Duration::from_secs(60),
        harrow_testkit::DEFAULT_SETTLE,
        f,
    )
}

#[test]
fn an_embedded_root_is_awaited_from_another_executor() {
    bounded("an_embedded_root_is_awaited_from_another_executor", || {
        // The "application": an executor of its own on this thread, never blocked by harrow.
        let handle = spawn_root(config(), |n| async move {
            let child = n
                .start_actor(
                    "t",
                    ThreadBackend::shared(),
                    ActorSpec::with_resolver(functions()),
                )
                .await?;
            Ok(child.run("m:double", Value::Int(21)).await?)
        })
        .unwrap();
        let other_work = async {
            // The application keeps running while the root works.
            futures_lite::future::yield_now().await;
            7
        };
        let (v, w) = futures_lite::future::block_on(futures_lite::future::zip(handle, other_work));
        assert_eq!(v.unwrap(), Value::Int(42));
        assert_eq!(w, 7);
    });
}

#[test]
fn dropping_the_handle_cancels_the_root_and_its_tree() {
    bounded("dropping_the_handle_cancels_the_root_and_its_tree", || {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (ended_tx, ended_rx) = std::sync::mpsc::channel::<bool>();
        let handle = spawn_root(config(), move |n| async move {
            let _child = n
                .start_actor(
                    "t",
                    ThreadBackend::shared(),
                    ActorSpec::with_resolver(functions()),
                )
                .await?;
            // Reports, when this body is dropped (cancelled), whether it was still running.
            struct OnDrop(std::sync::mpsc::Sender<bool>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    let _ = self.0.send(true);
                }
            }
            let _on_drop = OnDrop(ended_tx);
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        })
        .unwrap();
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the body started");
        drop(handle);
        assert!(
            ended_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the body was cancelled"),
        );
        // The root's thread tears the child down and ends: the harness's leak check (threads)
        // fails this test if anything stays behind.
    });
}
