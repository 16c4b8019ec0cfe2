//! Discovery from Python actors (subint only): a Python actor finds its siblings by name, waits
//! for one that does not exist yet, calls and streams to it over a peer portal, cancels it
//! directly, and sees it gone after it exited (`tests/pyfns/harrow_testfns/discover.py`). The
//! discovery scenarios of the conformance suite run with Python actors calling peers too
//! (`tests/conformance.rs`). Each test runs under the hang watchdog and the resource tracker
//! (the live-interpreter count included), like the conformance suite.

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use harrow_ipc::Value;
use harrow_runtime_core::{ActorSpec, NurseryError, RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_spawn_subint::{InterpConfig, SubintBackend};
use harrow_testkit::conformance::{BackendFactory, Outcome};

const MODULE: &str = "harrow_testfns.discover";

struct Factory;

impl BackendFactory for Factory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        SubintBackend::shared()
    }
    fn spec(&self) -> ActorSpec {
        let config = InterpConfig::new("discover")
            .expose(MODULE)
            .expose("harrow_testfns.conformance")
            .sys_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfns"));
        ActorSpec::new().params(config.to_params())
    }
    fn func(&self, name: &str) -> String {
        format!("{MODULE}:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        "ValueError"
    }
    fn warm_up(&self) {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            harrow_testkit::tracker::register_counter("live subinterpreters", || {
                harrow_spawn_subint::live_interpreters() as i64
            });
            harrow_testkit::tracker::register_warm_up(|| {
                if let Err(e) = harrow_spawn_subint::warm_up() {
                    panic!("subint warm-up: {e}");
                }
            });
            harrow_testkit::register_dump_section(
                "python stacks (subinterpreters)",
                harrow_spawn_subint::python_stacks,
            );
        });
    }
}

fn root_config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

#[track_caller]
fn expect_ok<T>(r: Result<T, NurseryError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("the root failed: {e}"),
    }
}

fn f(name: &str) -> String {
    Factory.func(name)
}

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("no {k:?} in {v:?}"))
}

fn map(fields: &[(&str, Value)]) -> Value {
    Value::Map(
        fields
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect(),
    )
}

fn list(v: &Value) -> &[Value] {
    match v {
        Value::List(items) => items,
        other => panic!("not a list: {other:?}"),
    }
}

/// A Python actor finds a sibling by name and uid, calls it (with keyword arguments too),
/// streams through a context on it, and sees the tree as the registrar does.
fn find_sibling_and_call(_: &Factory) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let a = n
            .start_actor("A", Factory.backend(), Factory.spec())
            .await?;
        let b = n
            .start_actor("B", Factory.backend(), Factory.spec())
            .await?;
        let args = map(&[("name", "B".into()), ("uid", b.id().uid.as_str().into())]);
        let v = a.run(&f("find_call"), args).await?;
        assert_eq!(get(&v, "is_portal"), &Value::Bool(true), "{v:?}");
        assert_eq!(get(&v, "name").as_str(), Some("B"), "{v:?}");
        assert_eq!(get(&v, "uid").as_str(), Some(b.id().uid.as_str()), "{v:?}");
        assert_eq!(get(&v, "backend").as_str(), Some("subint"), "{v:?}");
        assert_eq!(get(&v, "value"), &Value::Int(5), "{v:?}");
        assert_eq!(get(&v, "kwargs_value").as_str(), Some("kw"), "{v:?}");
        // B serves A's call over the peer link with the whole actor API: it finds A back.
        assert_eq!(
            list(get(&v, "peer_served")),
            ["B".into(), "A".into()],
            "{v:?}"
        );
        assert_eq!(get(&v, "by_uid").as_str(), Some("B"), "{v:?}");
        let pid = i64::from(std::process::id());
        assert_eq!(
            list(get(&v, "lookup")),
            [
                "B".into(),
                b.id().uid.as_str().into(),
                "subint".into(),
                Value::Int(pid)
            ],
            "{v:?}"
        );
        assert_eq!(get(&v, "me").as_str(), Some(a.id().uid.as_str()), "{v:?}");
        assert_eq!(get(&v, "nobody"), &Value::Bool(true), "{v:?}");
        // The whole tree, in registration order: the root, then A and B (children of it).
        let root = n.actor().id().clone();
        let actors: Vec<Vec<Value>> = list(get(&v, "actors"))
            .iter()
            .map(|a| list(a).to_vec())
            .collect();
        let child = |name: &str| vec![name.into(), "subint".into(), root.uid.as_str().into()];
        assert_eq!(
            actors,
            [
                vec![root.name.as_str().into(), "root".into(), Value::Null],
                child("A"),
                child("B")
            ],
            "{v:?}"
        );
        // A context with a stream over the peer link, past the credit window.
        let v = a
            .run(
                &f("stream_to"),
                map(&[("name", "B".into()), ("n", Value::Int(100))]),
            )
            .await?;
        let got: Vec<i64> = list(&list(&v)[0])
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(list(&v)[1], Value::Int(100));
        // A Python grandchild of the root (its lookups relayed by A) finds B and calls it.
        let v = a.run(&f("grandchild_finds"), "B".into()).await?;
        assert_eq!(
            list(&v),
            [Value::Int(42), n.actor().id().uid.as_str().into()],
            "{v:?}"
        );
        Ok(())
    }));
    Outcome::Passed
}

/// `wait_for_actor` from Python: waiting (provably begun: the waiter found nobody, then marked
/// that it waits) for a sibling that starts afterwards; a wait that times out raises
/// `TimeoutError`; a deadline interrupts a wait.
fn wait_for_before_start(_: &Factory) -> Outcome {
    let dir = std::env::temp_dir().join(format!("harrow-pydisc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let marker = dir.join("waiting");
    let _ = std::fs::remove_file(&marker);
    let marker_s = marker.to_string_lossy().into_owned();
    expect_ok(run_root(root_config(), |n| async move {
        let a = n
            .start_actor("A", Factory.backend(), Factory.spec())
            .await?;
        let args = map(&[
            ("name", "late".into()),
            ("marker", marker_s.as_str().into()),
            ("timeout", Value::Int(20)),
        ]);
        let func = f("wait_call");
        let mut waiting = Box::pin(a.run(&func, args));
        let give_up = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            assert!(Instant::now() < give_up, "the wait never began");
            assert!(
                futures_lite::future::poll_once(&mut waiting)
                    .await
                    .is_none(),
                "the wait ended before anybody was called late"
            );
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
        let _late = n
            .start_actor("late", Factory.backend(), Factory.spec())
            .await?;
        let v = waiting.await?;
        assert_eq!(
            list(&v),
            [Value::Bool(true), Value::Int(7), "late".into()],
            "{v:?}"
        );
        let v = a.run(&f("wait_never"), Value::Null).await?;
        let timed_out = list(&list(&v)[0]).to_vec();
        assert_eq!(timed_out[0].as_str(), Some("TimeoutError"), "{v:?}");
        let msg = timed_out[1].as_str().unwrap_or_default();
        assert!(msg.contains("never"), "{v:?}");
        assert_eq!(
            list(&v)[1],
            Value::Bool(true),
            "move_on_after caught it: {v:?}"
        );
        Ok(())
    }));
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::Passed
}

/// A Python actor cancels a sibling directly while the root holds contexts into it: each ends
/// with a cancellation naming the Python actor; later calls on the peer portal fail.
fn python_cancels_peer(_: &Factory) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let a = n
            .start_actor("A", Factory.backend(), Factory.spec())
            .await?;
        let b = n
            .start_actor("B", Factory.backend(), Factory.spec())
            .await?;
        let mut held = Vec::new();
        for _ in 0..3 {
            let (ctx, _) = b
                .open_context("harrow_testfns.conformance:ctx_wait_forever", Value::Null)
                .await?;
            held.push(ctx);
        }
        let v = a
            .run(&f("cancel_peer"), map(&[("name", "B".into())]))
            .await?;
        assert_eq!(list(&v)[0], Value::Bool(true), "{v:?}");
        // A later call fails either way: refused as cancelled by A while B tears down, or
        // with the link gone once it has.
        let later = list(&v)[1].as_str().unwrap_or_default().to_string();
        assert!(
            later == "HarrowError" || later == format!("Cancelled by {}", a.id().name),
            "{v:?}"
        );
        for ctx in held {
            let err = ctx.result().await.expect_err("B was cancelled");
            assert!(err.is_cancelled(), "{err}");
            assert_eq!(err.canceller(), Some(a.id()), "{err}");
        }
        Ok(())
    }));
    Outcome::Passed
}

/// Once a sibling has exited, a Python actor's lookups by name and uid find nothing, it is not
/// listed, a wait for it times out, and the portal held from before fails every call.
fn lookups_after_exit(_: &Factory) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let a = n
            .start_actor("A", Factory.backend(), Factory.spec())
            .await?;
        let b = n
            .start_actor("B", Factory.backend(), Factory.spec())
            .await?;
        let uid = a.run(&f("hold"), "B".into()).await?;
        assert_eq!(uid.as_str(), Some(b.id().uid.as_str()));
        // After cancel() returns, B is unregistered.
        b.cancel().await;
        let v = a
            .run(&f("after_exit"), map(&[("name", "B".into()), ("uid", uid)]))
            .await?;
        for k in ["find", "by_uid", "lookup"] {
            assert_eq!(get(&v, k), &Value::Bool(true), "{k}: {v:?}");
        }
        assert_eq!(get(&v, "listed"), &Value::Bool(false), "{v:?}");
        assert_eq!(get(&v, "held").as_str(), Some("HarrowError"), "{v:?}");
        assert_eq!(get(&v, "wait").as_str(), Some("TimeoutError"), "{v:?}");
        Ok(())
    }));
    Outcome::Passed
}

/// Extra names from Python, and clear errors for bad input and a portal to oneself.
fn names_and_misuse(_: &Factory) -> Outcome {
    expect_ok(run_root(root_config(), |n| async move {
        let a = n
            .start_actor("A", Factory.backend(), Factory.spec())
            .await?;
        let uid = a.run(&f("alias_and_find"), "svc".into()).await?;
        assert_eq!(uid.as_str(), Some(a.id().uid.as_str()));
        let svc = n.actor().find_actor("svc").await?.expect("svc");
        assert_eq!(svc.peer(), a.id());
        let v = a.run(&f("misuse"), Value::Null).await?;
        let errs: Vec<(String, String)> = list(&v)
            .iter()
            .map(|e| {
                let e = list(e);
                (
                    e[0].as_str().unwrap_or_default().to_owned(),
                    e[1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let types: Vec<&str> = errs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "TypeError",
                "ValueError",
                "ValueError",
                "TypeError",
                "ValueError",
                "ValueError",
                "HarrowError",
                "HarrowError"
            ],
            "{errs:?}"
        );
        assert!(errs[4].1.contains("too long"), "{errs:?}");
        assert!(errs[6].1.contains("itself"), "{errs:?}");
        Ok(())
    }));
    Outcome::Passed
}

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                conformance::run(stringify!($name), &Factory, super::$name);
            }
        )*
    };
}

mod discovery {
    tests!(
        find_sibling_and_call,
        wait_for_before_start,
        python_cancels_peer,
        lookups_after_exit,
        names_and_misuse,
    );
    use super::Factory;
    use harrow_testkit::conformance;
}
