//! Routed peer links: actors in different host domains (a child started through a launcher
//! begins one) reach each other through the tree, never over a socket of the other's host.
//! Each scenario runs over the local `sh` launcher (no sshd needed) and over ssh to the
//! testkit's private sshd (skipped, saying so, where there is none). On one machine the
//! domains still differ, so the routed path is the one taken: the scenarios check that the
//! remote actors' processes never listen in the root's runtime directory.

use std::sync::Arc;
use std::time::Duration;

use harrow_process_testchild::ProcessFactory;
use harrow_remote_testchild::{LocalFactory, SshFactory};
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::Context;
use harrow_runtime_core::{
    ActorCtx, ActorEntry, ActorSpec, BoxError, NurseryError, RootConfig, SpawnBackend, Timeouts,
    open_nursery, run_root,
};
use harrow_testkit::conformance::{BackendFactory, Outcome};

const BIN: &str = env!("CARGO_BIN_EXE_harrow-remote-testchild");

/// A bound that only a hang reaches.
const BOUND: Duration = Duration::from_secs(20);

fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

/// Local process children (the same helper binary): the root's host domain.
fn local() -> Arc<dyn SpawnBackend> {
    ProcessFactory::new(BIN).backend()
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

async fn entry(root: &ActorCtx, name: &str) -> ActorEntry {
    root.lookup_actor(name)
        .await
        .expect("the registrar answers")
        .unwrap_or_else(|| panic!("{name} is registered"))
}

/// `name`'s process has no socket in the root's runtime directory: it never listened there.
fn no_socket_here(root: &ActorCtx, e: &ActorEntry) {
    if let Some(dir) = root.runtime_dir() {
        let sock = dir.join(format!("{}.sock", e.pid));
        assert!(
            !sock.exists(),
            "{} (another host domain) listens in the root's directory: {}",
            e.id,
            sock.display()
        );
    }
}

/// Has the remote actor `holder` start and keep a process child named `name` on its host (the
/// context holds it; dropping or cancelling the context ends it).
async fn hold_child(
    holder: &harrow_runtime_core::ChildHandle,
    name: &str,
) -> Result<Context, BoxError> {
    let (ctx, _) = holder.open_context("routes:hold_child", s(name)).await?;
    Ok(ctx)
}

/// routed-local-remote: a local actor (a process child of the root) finds a remote actor and
/// calls it (unary, a context with a bidirectional stream past the credit window); the remote
/// actor finds the local one and calls it back; the root reaches the remote one too. The
/// remote actor is in a host domain of its own and never listens in the root's directory.
fn routed_local_remote<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let r = n.start_actor("R", f.backend(), f.spec()).await?;
        let l = n.start_actor("L", local(), ActorSpec::new()).await?;
        let (re, le, me) = (
            entry(&root, "R").await,
            entry(&root, "L").await,
            entry(&root, &root.id().name).await,
        );
        assert!(!re.domain.is_empty() && !le.domain.is_empty());
        assert_eq!(
            le.domain, me.domain,
            "a local process child shares the root's domain"
        );
        assert_ne!(
            re.domain, me.domain,
            "a remote child begins a domain of its own"
        );
        assert_eq!(re.route, vec![root.id().uid.clone(), r.id().uid.clone()]);
        // Local -> remote.
        let call = map(&[
            ("name", s("R")),
            ("func", s("testfns:add")),
            ("args", args2(40, 2)),
        ]);
        assert_eq!(l.run("testfns:peer_call", call).await?, Value::Int(42));
        let stream = map(&[
            ("name", s("R")),
            ("func", s("testfns:ctx_echo")),
            ("n", Value::Int(150)),
        ]);
        let sum = l.run("testfns:peer_echo_stream", stream).await?;
        assert_eq!(sum, Value::Int((0..150).sum()));
        // Remote -> local.
        let back = map(&[
            ("name", s("L")),
            ("func", s("testfns:echo")),
            ("args", s("hi")),
        ]);
        assert_eq!(r.run("testfns:peer_call", back).await?, s("hi"));
        // The root, on the route, goes down its own link to R.
        let p = root.find_actor("R").await?.expect("R");
        assert_eq!(p.run("testfns:add", args2(1, 2)).await?, Value::Int(3));
        no_socket_here(&root, &re);
        Ok(())
    }));
    Outcome::Passed
}

/// routed-cancel-actor: a local actor cancels a remote actor over a routed peer portal while
/// the root holds 5 contexts into it: each ends with `ContextCancelled` naming the local actor.
fn routed_cancel_actor<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let r = n.start_actor("R", f.backend(), f.spec()).await?;
        let l = n.start_actor("L", local(), ActorSpec::new()).await?;
        let mut held = Vec::new();
        for _ in 0..5 {
            let (ctx, _) = r
                .open_context("testfns:ctx_wait_forever", Value::Null)
                .await?;
            held.push(ctx);
        }
        let acked = l
            .run("testfns:peer_cancel", map(&[("name", s("R"))]))
            .await?;
        assert_eq!(acked, Value::Bool(true));
        for ctx in held {
            let err = ctx.result().await.expect_err("R was cancelled");
            assert!(err.is_cancelled(), "{err}");
            assert_eq!(err.canceller(), Some(l.id()), "{err}");
        }
        Ok(())
    }));
    Outcome::Passed
}

/// routed-two-domains: two remote actors, each with a process child on its host (two host
/// domains besides the root's); one child finds the other and calls it (unary and a stream):
/// up through its parent and the root, down through the other parent, which connects to its
/// own child directly.
fn routed_two_domains<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let r1 = n.start_actor("R1", f.backend(), f.spec()).await?;
        let r2 = n.start_actor("R2", f.backend(), f.spec()).await?;
        let _h1 = hold_child(&r1, "P1").await?;
        let _h2 = hold_child(&r2, "P2").await?;
        let (e1, e2, er1, er2) = (
            entry(&root, "P1").await,
            entry(&root, "P2").await,
            entry(&root, "R1").await,
            entry(&root, "R2").await,
        );
        assert_eq!(e1.domain, er1.domain);
        assert_eq!(e2.domain, er2.domain);
        assert_ne!(e1.domain, e2.domain);
        assert_eq!(e2.route.len(), 3, "{:?}", e2.route);
        // The root reaches P1 (down through R1, which connects to its child directly).
        let p1 = root.find_actor("P1").await?.expect("P1");
        let call = map(&[
            ("name", s("P2")),
            ("func", s("testfns:add")),
            ("args", args2(20, 22)),
        ]);
        assert_eq!(p1.run("testfns:peer_call", call).await?, Value::Int(42));
        let stream = map(&[
            ("name", s("P2")),
            ("func", s("testfns:ctx_echo")),
            ("n", Value::Int(100)),
        ]);
        let sum = p1.run("testfns:peer_echo_stream", stream).await?;
        assert_eq!(sum, Value::Int((0..100).sum()));
        // And the other way, from R2's side.
        let p2 = root.find_actor("P2").await?.expect("P2");
        let back = map(&[
            ("name", s("P1")),
            ("func", s("testfns:echo")),
            ("args", s("back")),
        ]);
        assert_eq!(p2.run("testfns:peer_call", back).await?, s("back"));
        for e in [&e1, &e2, &er1, &er2] {
            no_socket_here(&root, e);
        }
        Ok(())
    }));
    Outcome::Passed
}

/// routed-nested-domains: a remote actor R1 starts a remote child Q of its own (a third host
/// domain, below another); a local actor L, Q, and a process child P2 of another remote actor
/// R2 call each other: up and down through two levels of domains.
fn routed_nested_domains<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let l = n.start_actor("L", local(), ActorSpec::new()).await?;
        let r1 = n.start_actor("R1", f.backend(), f.spec()).await?;
        let r2 = n.start_actor("R2", f.backend(), f.spec()).await?;
        let (_hq, _) = r1.open_context("routes:hold_remote_child", s("Q")).await?;
        let _h2 = hold_child(&r2, "P2").await?;
        let (eq, er1, ep2) = (
            entry(&root, "Q").await,
            entry(&root, "R1").await,
            entry(&root, "P2").await,
        );
        assert_ne!(
            eq.domain, er1.domain,
            "a remote child of a remote actor: a new domain"
        );
        assert_ne!(eq.domain, ep2.domain);
        assert_eq!(eq.route.len(), 3, "{:?}", eq.route);
        // L -> Q: up to the root, down through R1.
        let call = map(&[
            ("name", s("Q")),
            ("func", s("testfns:add")),
            ("args", args2(30, 12)),
        ]);
        assert_eq!(l.run("testfns:peer_call", call).await?, Value::Int(42));
        // Q -> L and Q -> P2, from Q itself (reached by the root down its links).
        let q = root.find_actor("Q").await?.expect("Q");
        let to_l = map(&[
            ("name", s("L")),
            ("func", s("testfns:echo")),
            ("args", s("up")),
        ]);
        assert_eq!(q.run("testfns:peer_call", to_l).await?, s("up"));
        let to_p2 = map(&[
            ("name", s("P2")),
            ("func", s("testfns:ctx_echo")),
            ("n", Value::Int(80)),
        ]);
        let sum = q.run("testfns:peer_echo_stream", to_p2).await?;
        assert_eq!(sum, Value::Int((0..80).sum()));
        no_socket_here(&root, &eq);
        Ok(())
    }));
    Outcome::Passed
}

/// routed-peer-exit-mid-stream: the root streams to an actor two hops away (a process child of
/// a remote actor); its parent ends it with the stream open: the stream fails (never a clean
/// end), every later call on the portal fails with `Closed`, and it is no longer found.
fn routed_peer_exit_mid_stream<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let r = n.start_actor("R", f.backend(), f.spec()).await?;
        let (mut hold, _) = r
            .open_context("routes:hold_child_until_closed", s("P"))
            .await?;
        let release = hold.open_stream().await?;
        let p = root.find_actor("P").await?.expect("P");
        let (mut ctx, _) = p.open_context("testfns:ctx_echo", Value::Null).await?;
        let mut stream = ctx.open_stream().await?;
        stream.send(Value::Int(1)).await?;
        assert_eq!(stream.recv().await?, Some(Value::Int(1)));
        // P's parent ends it with the stream open; the holding call returns once P has ended.
        release.close().await?;
        hold.result().await?;
        let err = match stream.recv().await {
            Ok(Some(v)) => panic!("no item was in flight, got {v:?}"),
            Ok(None) => panic!("an exited peer is not a clean end of stream"),
            Err(e) => e,
        };
        assert!(err.is_closed() || err.is_cancelled(), "{err}");
        let later = p
            .run("testfns:add", args2(1, 2))
            .await
            .expect_err("P is gone");
        assert!(later.is_closed(), "{later}");
        assert!(root.find_actor("P").await?.is_none());
        // R itself is still reachable.
        let pr = root.find_actor("R").await?.expect("R");
        assert_eq!(pr.run("testfns:add", args2(2, 2)).await?, Value::Int(4));
        Ok(())
    }));
    Outcome::Passed
}

/// routed-origin-exits: a local actor holds a stream over a routed link into a remote actor
/// and exits: the remote actor's end of the link goes too (its peer links drop to none), and it
/// goes on serving.
fn routed_origin_exits<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let r = n.start_actor("R", f.backend(), f.spec()).await?;
        let l = n.start_actor("L", local(), ActorSpec::new()).await?;
        let (_held, _) = l.open_context("routes:hold_peer_stream", s("R")).await?;
        // Waits (bounded) until R holds `want` peer links.
        let links = |want: i64, what: &'static str| {
            let r = &r;
            async move {
                let give_up = std::time::Instant::now() + BOUND;
                while r.run("routes:peer_links", Value::Null).await? != Value::Int(want) {
                    assert!(
                        std::time::Instant::now() < give_up,
                        "{what} within {BOUND:?}"
                    );
                    async_io::Timer::after(Duration::from_millis(5)).await;
                }
                Ok::<_, BoxError>(())
            }
        };
        links(1, "R holds L's routed link").await?;
        l.cancel().await;
        // R sees its end of the link close once the tunnel's teardown reached it.
        links(0, "R dropped the link of L, which exited").await?;
        assert_eq!(r.run("testfns:add", args2(2, 5)).await?, Value::Int(7));
        Ok(())
    }));
    Outcome::Passed
}

/// routed-hop-dies: the root streams to a process child of a remote actor, and that remote
/// actor (the hop) is killed outright (SIGKILL): the stream fails (never a clean end, never a
/// hang) and later calls on the portal fail with `Closed`.
fn routed_hop_dies<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let (ready_tx, ready_rx) = async_channel::bounded::<()>(1);
        // The hop lives in a nursery of its own, whose failure (the hop's crash) is expected.
        let hop_side = open_nursery(|inner| async move {
            let r = inner.start_actor("R", f.backend(), f.spec()).await?;
            let hold = hold_child(&r, "P").await?;
            let _ = ready_tx.send(()).await;
            // Ends when R dies.
            let _ = hold.result().await;
            Ok(())
        });
        let tester = async {
            ready_rx.recv().await.expect("the hop side is ready");
            let hop = entry(&root, "R").await;
            // Killed outright, R cannot remove its domain's directory: this test does.
            let r_dir = root
                .find_actor("R")
                .await?
                .expect("R")
                .run("routes:runtime_dir", Value::Null)
                .await?;
            let p = root.find_actor("P").await?.expect("P");
            let (mut ctx, _) = p.open_context("testfns:ctx_echo", Value::Null).await?;
            let mut stream = ctx.open_stream().await?;
            stream.send(Value::Int(7)).await?;
            assert_eq!(stream.recv().await?, Some(Value::Int(7)));
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &hop.pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(killed.success(), "the hop (pid {}) was killed", hop.pid);
            let err = match harrow_runtime_core::move_on_after(BOUND, stream.recv()).await {
                None => panic!("the stream hung after its hop died"),
                Some(Ok(Some(v))) => panic!("no item was in flight, got {v:?}"),
                Some(Ok(None)) => panic!("a dead hop is not a clean end of stream"),
                Some(Err(e)) => e,
            };
            assert!(err.is_closed(), "{err}");
            let later = p
                .run("testfns:add", args2(1, 2))
                .await
                .expect_err("the way to P is gone");
            assert!(later.is_closed(), "{later}");
            let dir = r_dir.as_str().expect("R knows its runtime directory");
            assert!(
                root.runtime_dir()
                    .is_none_or(|d| d.display().to_string() != dir),
                "R's domain has a directory of its own"
            );
            let _ = std::fs::remove_dir_all(dir);
            Ok::<_, BoxError>(())
        };
        let (hop_outcome, tested) = futures_lite::future::zip(hop_side, tester).await;
        tested?;
        assert!(
            hop_outcome.is_err(),
            "the killed hop is a failure of its nursery"
        );
        Ok(())
    }));
    Outcome::Passed
}

/// routed-refusals: a route that cannot be followed fails at once with a typed error naming
/// why, never a hang: a tunnel with no hops left, one asked for as a unary call, a route
/// through a child the hop does not have, and a portal to a remote actor that has ended.
fn routed_refusals<F: BackendFactory + ?Sized>(f: &F) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let root = n.actor().clone();
        let r = n.start_actor("R", f.backend(), f.spec()).await?;
        let re = entry(&root, "R").await;
        let tunnel = |target: &ActorEntry, hops: i64| {
            let target = harrow_runtime_core::ipc::to_value(target).expect("an entry encodes");
            map(&[("target", target), ("hops_left", Value::Int(hops))])
        };
        let expect_refused = |res: Result<(Context, Value), harrow_runtime_core::portal::Error>,
                              what: &str| {
            match res {
                Ok(_) => panic!("{what}: the tunnel was opened"),
                Err(e) => {
                    assert!(e.is_remote(), "{what}: {e}");
                    e.to_string()
                }
            }
        };
        // No hops left.
        let res = r
            .open_context("harrow.discovery:tunnel", tunnel(&re, 0))
            .await;
        let msg = expect_refused(res, "no hops left");
        assert!(msg.contains("hops"), "{msg}");
        // A unary call of the tunnel.
        let err = r
            .run("harrow.discovery:tunnel", tunnel(&re, 3))
            .await
            .expect_err("the tunnel is a context");
        assert!(err.to_string().contains("context"), "{err}");
        // A target in another domain whose route goes through a child R does not have.
        let mut ghost = ActorEntry::new(
            harrow_runtime_core::ipc::ActorId::new("ghost"),
            1,
            "remote",
            Some(r.id().uid.clone()),
        )
        .with_domain("00000000deadbeef");
        ghost.route = vec![
            root.id().uid.clone(),
            r.id().uid.clone(),
            "no-such-child".into(),
        ];
        let res = r
            .open_context("harrow.discovery:tunnel", tunnel(&ghost, 3))
            .await;
        let msg = expect_refused(res, "a missing child");
        assert!(msg.contains("no-such-child"), "{msg}");
        // R ends: an entry kept from before leads nowhere, and says that R is gone.
        r.cancel().await;
        let err = root.portal_to(&re).await.expect_err("R has ended");
        assert!(
            matches!(err, harrow_runtime_core::DiscoveryError::Gone(_)),
            "{err}"
        );
        Ok(())
    }));
    Outcome::Passed
}

macro_rules! routes_suite {
    ($mod:ident, $factory:expr; $($name:ident),* $(,)?) => {
        mod $mod {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let factory = $factory;
                    harrow_testkit::conformance::run(stringify!($name), &factory, super::$name);
                }
            )*
        }
    };
}

routes_suite!(local_launcher, LocalFactory::new(BIN);
    routed_local_remote,
    routed_cancel_actor,
    routed_two_domains,
    routed_nested_domains,
    routed_peer_exit_mid_stream,
    routed_hop_dies,
    routed_origin_exits,
    routed_refusals,
);

routes_suite!(ssh, SshFactory::new(BIN);
    routed_local_remote,
    routed_cancel_actor,
    routed_two_domains,
    routed_nested_domains,
    routed_peer_exit_mid_stream,
    routed_hop_dies,
    routed_origin_exits,
    routed_refusals,
);
