//! The discovery and peer-portal scenarios (see `docs/SCENARIOS.md`, "Discovery and peers"),
//! generic over a [`BackendFactory`] like the rest of the suite and stamped out by
//! [`discovery_suite!`](crate::discovery_suite).
//!
//! Where the backend's actors serve the Rust peer functions ([`BackendFactory::peer_functions`])
//! (or their twins: Python actors) actors find and call each other; otherwise the root finds and calls them
//! over peer portals, which are separate links from the parent's.

use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{
    DiscoveryError, NurseryError, RootConfig, Timeouts, move_on_after, run_root,
};

use crate::conformance::{BackendFactory, Outcome};

fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

fn map(fields: &[(&str, Value)]) -> Value {
    Value::Map(
        fields
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect(),
    )
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn args2(a: i64, b: i64) -> Value {
    Value::List(vec![Value::Int(a), Value::Int(b)])
}

#[track_caller]
fn expect_ok<T>(r: Result<T, NurseryError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("nursery failed: {e}"),
    }
}

/// A bound for waits that only a hang would reach.
const BOUND: Duration = Duration::from_secs(10);

/// discovery-find: an actor is findable by name and uid once started; the root and (where the
/// backend's actors can) a sibling call it over a peer portal; unknown names are `None`.
pub fn discovery_find<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let b = n.start_actor("B", f.backend(), f.spec()).await?;
        let root = n.actor().clone();
        let p = root.find_actor("B").await?.expect("B is registered");
        assert_eq!(p.peer(), b.id());
        assert_eq!(p.run(&f.func("add"), args2(2, 3)).await?, Value::Int(5));
        let by_uid = root.find_actor_by_uid(&b.id().uid).await?.expect("by uid");
        assert_eq!(by_uid.peer(), b.id());
        assert!(root.find_actor("nobody").await?.is_none());
        let names: Vec<String> = root
            .query_actors()
            .await?
            .into_iter()
            .map(|e| e.id.name)
            .collect();
        assert!(names.contains(&"B".to_owned()), "{names:?}");
        assert!(names.contains(&root.id().name), "{names:?}");
        if f.peer_functions() {
            let a = n.start_actor("A", f.backend(), f.spec()).await?;
            let args = map(&[
                ("name", s("B")),
                ("func", s(&f.func("add"))),
                ("args", args2(40, 2)),
            ]);
            assert_eq!(a.run(&f.func("peer_call"), args).await?, Value::Int(42));
            // B can reach A back, and the root through the registrar too.
            let args = map(&[
                ("name", s("A")),
                ("func", s(&f.func("echo"))),
                ("args", s("hi")),
            ]);
            assert_eq!(b.run(&f.func("peer_call"), args).await?, s("hi"));
            // A exits: the links it held end, and B (and the root's peer portal to it) go on.
            a.cancel().await;
            assert_eq!(p.run(&f.func("add"), args2(1, 1)).await?, Value::Int(2));
            assert_eq!(b.run(&f.func("add"), args2(1, 2)).await?, Value::Int(3));
            assert!(root.find_actor("A").await?.is_none());
        }
        Ok(())
    }));
    Outcome::Passed
}

/// discovery-wait-for: `wait_for_actor` waits for an actor that does not exist yet (the waiter
/// is provably waiting before it starts), returns at once for one that exists (whatever the
/// bound, `Duration::MAX` included), and times out with a typed error for one that never comes.
pub fn discovery_wait_for<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let mut wait = Box::pin(root.wait_for_actor("late", BOUND));
        assert!(
            futures_lite::future::poll_once(&mut wait).await.is_none(),
            "nobody is called late yet"
        );
        let late = n.start_actor("late", f.backend(), f.spec()).await?;
        let p = wait.await?;
        assert_eq!(p.peer(), late.id());
        assert_eq!(p.run(&f.func("add"), args2(1, 1)).await?, Value::Int(2));
        // After: it exists, so the wait returns at once.
        let again = root.wait_for_actor("late", BOUND).await?;
        assert_eq!(again.peer(), late.id());
        let err = root
            .wait_for_actor("never", Duration::from_millis(100))
            .await
            .expect_err("nobody is called never");
        assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err}");
        if f.peer_functions() {
            // An actor waiting (relayed through its parent) for one that starts meanwhile.
            let a = n.start_actor("A", f.backend(), f.spec()).await?;
            let args = map(&[
                ("name", s("later")),
                ("func", s(&f.func("add"))),
                ("args", args2(3, 4)),
                ("timeout_ms", Value::Int(10_000)),
            ]);
            let func = f.func("peer_wait_call");
            let call = a.run(&func, args);
            let start = async {
                n.start_actor("later", f.backend(), f.spec())
                    .await
                    .map(|_| ())
            };
            let (v, started) = futures_lite::future::zip(call, start).await;
            started?;
            assert_eq!(v?, Value::Int(7));
            // The longest wait there is, for one that exists: found at once.
            let args = map(&[
                ("name", s("later")),
                ("func", s(&f.func("add"))),
                ("args", args2(1, 2)),
                ("timeout_ms", Value::Int(-1)),
            ]);
            assert_eq!(a.run(&func, args).await?, Value::Int(3));
        }
        Ok(())
    }));
    Outcome::Passed
}

/// peer-rpc-and-streams: a context with a bidirectional stream (credit flow control) over a
/// peer portal, from the root and (where it can) from a sibling.
pub fn peer_rpc_and_streams<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let _b = n.start_actor("B", f.backend(), f.spec()).await?;
        let p = n.actor().find_actor("B").await?.expect("B");
        let (mut ctx, _) = p.open_context(&f.func("ctx_echo"), Value::Null).await?;
        // More than the credit window (64) over the whole exchange.
        let (tx, mut rx) = ctx.open_stream().await?.split();
        let sender = async {
            for i in 0..200 {
                tx.send(Value::Int(i)).await?;
            }
            tx.close().await
        };
        let receiver = async {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await? {
                got.push(v.as_i64().expect("int"));
            }
            Ok::<_, harrow_runtime_core::portal::Error>(got)
        };
        let (sent, got) = futures_lite::future::zip(sender, receiver).await;
        sent?;
        assert_eq!(got?, (0..200).collect::<Vec<i64>>());
        assert_eq!(ctx.result().await?, Value::Int(200));
        if f.peer_functions() {
            let a = n.start_actor("A", f.backend(), f.spec()).await?;
            let args = map(&[
                ("name", s("B")),
                ("func", s(&f.func("ctx_echo"))),
                ("n", Value::Int(100)),
            ]);
            let sum = a.run(&f.func("peer_echo_stream"), args).await?;
            assert_eq!(sum, Value::Int((0..100).sum()));
        }
        Ok(())
    }));
    Outcome::Passed
}

/// peer-cancels-actor: actor A cancels actor B directly over a peer portal while the root holds
/// 5 contexts into B: each ends with `ContextCancelled` naming A. (Where the backend's actors
/// cannot hold portals, the root is A, over its peer portal rather than its parent link.)
pub fn peer_cancels_actor<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let b = n.start_actor("B", f.backend(), f.spec()).await?;
        let mut held = Vec::new();
        for _ in 0..5 {
            let (ctx, _) = b
                .open_context(&f.func("ctx_wait_forever"), Value::Null)
                .await?;
            held.push(ctx);
        }
        let canceller = if f.peer_functions() {
            let a = n.start_actor("A", f.backend(), f.spec()).await?;
            let acked = a
                .run(&f.func("peer_cancel"), map(&[("name", s("B"))]))
                .await?;
            assert_eq!(acked, Value::Bool(true));
            a.id().clone()
        } else {
            let p = n.actor().find_actor("B").await?.expect("B");
            assert!(p.cancel_actor(BOUND).await, "B acks");
            n.actor().id().clone()
        };
        // While B ends and leaves the registry, looking it up is a portal or none, never
        // an error for an actor found ended.
        let uid = b.id().uid.clone();
        let gone = move_on_after(BOUND, async {
            loop {
                let by_name = n.actor().find_actor("B").await;
                let by_uid = n.actor().find_actor_by_uid(&uid).await;
                match (by_name, by_uid) {
                    (Ok(None), Ok(None)) => break,
                    (Ok(_), Ok(_)) => futures_lite::future::yield_now().await,
                    other => panic!("a lookup of an ending actor failed: {other:?}"),
                }
            }
        })
        .await;
        assert!(gone.is_some(), "B left the registry");
        for ctx in held {
            let err = ctx.result().await.expect_err("B was cancelled");
            assert!(err.is_cancelled(), "{err}");
            assert_eq!(err.canceller(), Some(&canceller), "{err}");
        }
        Ok(())
    }));
    Outcome::Passed
}

/// peer-exit-mid-stream: the peer exits while a stream over a peer portal is open: the stream
/// and every later call on that portal fail with a clear error, never a hang or a clean end.
pub fn peer_exit_mid_stream<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let b = n.start_actor("B", f.backend(), f.spec()).await?;
        let p = n.actor().find_actor("B").await?.expect("B");
        let (mut ctx, _) = p.open_context(&f.func("ctx_echo"), Value::Null).await?;
        let mut stream = ctx.open_stream().await?;
        stream.send(Value::Int(1)).await?;
        assert_eq!(stream.recv().await?, Some(Value::Int(1)));
        // B goes away (its parent cancels it) with the stream open.
        b.cancel().await;
        let err = match stream.recv().await {
            Ok(Some(v)) => panic!("no item was in flight, got {v:?}"),
            Ok(None) => panic!("an exited peer is not a clean end of stream"),
            Err(e) => e,
        };
        assert!(err.is_closed() || err.is_cancelled(), "{err}");
        assert!(stream.send(Value::Int(2)).await.is_err());
        let later = p
            .run(&f.func("add"), args2(1, 2))
            .await
            .expect_err("B is gone");
        assert!(later.is_closed(), "{later}");
        Ok(())
    }));
    Outcome::Passed
}

/// lookup-after-exit: once an actor has exited, lookups by name and uid find nothing, it is not
/// listed, a portal held from before fails every call, and asking for a new one is `None`.
pub fn lookup_after_exit<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let b = n.start_actor("B", f.backend(), f.spec()).await?;
        let root = n.actor().clone();
        let p = root.find_actor("B").await?.expect("B");
        let uid = b.id().uid.clone();
        b.cancel().await;
        assert!(root.find_actor("B").await?.is_none());
        assert!(root.find_actor_by_uid(&uid).await?.is_none());
        assert!(root.query_actors().await?.iter().all(|e| e.id.uid != uid));
        let err = p
            .run(&f.func("add"), args2(1, 2))
            .await
            .expect_err("B is gone");
        assert!(err.is_closed(), "{err}");
        let err = root
            .wait_for_actor("B", Duration::from_millis(50))
            .await
            .expect_err("B is gone");
        assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err}");
        Ok(())
    }));
    Outcome::Passed
}

/// name-conflicts: two live actors with one name: by name the earliest registered is found,
/// by uid each; when the first exits the name finds the second. An extra name claimed by both
/// finds the first to claim it. Extra names register too, and
/// a portal to oneself is refused with a clear error.
pub fn name_conflicts<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let t1 = n.start_actor("twin", f.backend(), f.spec()).await?;
        let t2 = n.start_actor("twin", f.backend(), f.spec()).await?;
        assert_ne!(t1.id(), t2.id());
        let p = root.find_actor("twin").await?.expect("twin");
        assert_eq!(p.peer(), t1.id(), "the earliest registered");
        let p2 = root.find_actor_by_uid(&t2.id().uid).await?.expect("by uid");
        assert_eq!(p2.peer(), t2.id());
        let twins = root
            .query_actors()
            .await?
            .into_iter()
            .filter(|e| e.id.name == "twin")
            .count();
        assert_eq!(twins, 2);
        // An extra name goes to whoever claimed it first, not to the earliest registered.
        root.register_names_for(t2.id(), &["claimed"]).await?;
        root.register_names_for(t1.id(), &["claimed"]).await?;
        let p = root.find_actor("claimed").await?.expect("claimed");
        assert_eq!(p.peer(), t2.id(), "the first claimant");
        t1.cancel().await;
        let p = root.find_actor("twin").await?.expect("the other twin");
        assert_eq!(p.peer(), t2.id());
        let err = root
            .find_actor(&root.id().name)
            .await
            .expect_err("no portal to oneself");
        assert!(matches!(err, DiscoveryError::SelfPortal(_)), "{err}");
        if f.peer_functions() {
            t2.run(&f.func("register_alias"), map(&[("alias", s("svc"))]))
                .await?;
            let svc = root.find_actor("svc").await?.expect("svc");
            assert_eq!(svc.peer(), t2.id());
            let msg = t2.run(&f.func("peer_self"), Value::Null).await?;
            let msg = msg.as_str().unwrap_or_default().to_owned();
            assert!(msg.contains("itself"), "{msg}");
        }
        Ok(())
    }));
    Outcome::Passed
}

/// Stamps out one `#[test]` per discovery scenario for a backend factory expression, like
/// [`conformance_suite!`](crate::conformance_suite).
#[macro_export]
macro_rules! discovery_suite {
    ($factory:expr) => {
        $crate::discovery_suite!(@each $factory;
            discovery_find,
            discovery_wait_for,
            peer_rpc_and_streams,
            peer_cancels_actor,
            peer_exit_mid_stream,
            lookup_after_exit,
            name_conflicts
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let factory = $factory;
                $crate::conformance::run(
                    stringify!($name),
                    &*factory,
                    $crate::discovery::$name,
                );
            }
        )*
    };
}
