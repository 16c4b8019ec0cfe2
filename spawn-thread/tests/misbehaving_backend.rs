//! A backend whose `Child` misbehaves (a `join` that ignores its bound, methods that panic)
//! cannot hang its parent nor lose what happened: the runtime bounds every backend call and
//! reports a panic as the child's failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harrow_runtime_core::ipc::{ActorId, Channel, Value};
use harrow_runtime_core::portal::FnRegistry;
use harrow_runtime_core::{
    ActorSpec, BoxFuture, Capabilities, Child, ChildOutcome, Exit, RootConfig, SpawnBackend,
    SpawnError, SpawnSpec, Timeouts, run_root,
};
use harrow_spawn_thread::ThreadBackend;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Twist {
    /// `join` never returns, whatever its bound.
    JoinHangs,
    /// `join` panics.
    JoinPanics,
    /// `spawn` panics.
    SpawnPanics,
    /// `take_channel` gives nothing (and `describe` panics, should it be asked).
    NoChannel,
}

#[derive(Debug)]
struct Twisted {
    inner: Arc<dyn SpawnBackend>,
    twist: Twist,
}

#[derive(Debug)]
struct TwistedChild {
    inner: Box<dyn Child>,
    twist: Twist,
}

impl SpawnBackend for Twisted {
    fn name(&self) -> &'static str {
        "twisted"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            assert!(self.twist != Twist::SpawnPanics, "twisted spawn");
            let inner = self.inner.spawn(spec).await?;
            Ok(Box::new(TwistedChild {
                inner,
                twist: self.twist,
            }) as Box<dyn Child>)
        })
    }
}

impl Child for TwistedChild {
    fn id(&self) -> &ActorId {
        self.inner.id()
    }
    fn take_channel(&mut self) -> Option<Channel> {
        let channel = self.inner.take_channel();
        if self.twist == Twist::NoChannel {
            return None; // dropped: the child sees its parent gone and ends
        }
        channel
    }
    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.hard_kill()
    }
    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        match self.twist {
            Twist::JoinHangs => Box::pin(std::future::pending()),
            Twist::JoinPanics => panic!("twisted join"),
            _ => self.inner.join(bound),
        }
    }
    fn describe(&self) -> String {
        assert!(self.twist != Twist::NoChannel, "twisted describe");
        self.inner.describe()
    }
}

fn backend(twist: Twist) -> Arc<dyn SpawnBackend> {
    Arc::new(Twisted {
        inner: ThreadBackend::shared(),
        twist,
    })
}

fn config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

#[test]
fn a_join_that_ignores_its_bound_is_cut_short_and_the_child_reported_leaked() {
    harrow_testkit::run_bounded("join hangs", Duration::from_secs(60), || {
        let started = Instant::now();
        let mut seen = None;
        let result = run_root(config(), |n| {
            let seen = &mut seen;
            async move {
                let child = n
                    .start_actor("hangs", backend(Twist::JoinHangs), ActorSpec::new())
                    .await?;
                *seen = Some(child.cancel().await);
                Ok(())
            }
        });
        // The child itself exits at once; only its backend's join never says so: it is taken
        // as a child still running, and reported leaked (which fails the nursery, by name).
        assert!(
            matches!(&seen, Some(ChildOutcome::Leaked(_))),
            "the cancel's outcome: {seen:?}"
        );
        let err = result.expect_err("a leak fails the nursery");
        assert!(
            err.failures().len() == 1 && err.failures()[0].is_leak(),
            "{err}"
        );
        assert_eq!(err.failures()[0].actor().name, "hangs");
        // Each of the ladder's two joins is cut at its bound plus at most 2 s or the bound.
        let bound = Timeouts::quick().ladder_bound() * 2 + Duration::from_secs(10);
        assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    });
}

#[test]
fn a_panicking_join_is_the_childs_failure() {
    harrow_testkit::run_bounded("join panics", Duration::from_secs(60), || {
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let seen = outcome.clone();
        // A child that failed as it was torn down fails its nursery too.
        let err = run_root(config(), |n| async move {
            let child = n
                .start_actor("panics", backend(Twist::JoinPanics), ActorSpec::new())
                .await?;
            *seen.lock().unwrap() = Some(child.cancel().await);
            Ok(())
        })
        .expect_err("the child's failure is the nursery's");
        assert!(
            err.to_string().contains("join panicked: twisted join"),
            "{err}"
        );
        // The nursery's failure cancels the body, which may be before `cancel` returned.
        match outcome.lock().unwrap().take() {
            Some(ChildOutcome::Failed(why)) => {
                assert!(why.contains("join panicked: twisted join"), "{why}")
            }
            None => {}
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_panicking_spawn_or_a_missing_channel_is_a_spawn_error() {
    harrow_testkit::run_bounded("spawn panics", Duration::from_secs(60), || {
        for (twist, says) in [
            (Twist::SpawnPanics, "spawn panicked: twisted spawn"),
            (Twist::NoChannel, "without a channel"),
        ] {
            let err = run_root(config(), |n| async move {
                let r = n.start_actor("bad", backend(twist), ActorSpec::new()).await;
                Ok(r.map(|_| ()).map_err(|e| e.to_string()))
            })
            .expect("a failed spawn is the body's to handle")
            .expect_err("the spawn fails");
            assert!(err.contains(says), "{twist:?}: {err}");
        }
    });
}

#[test]
fn a_stack_too_small_for_an_actor_is_raised_to_the_minimum() {
    // A one-byte stack used to overflow at once and abort the whole process.
    harrow_testkit::run_bounded("tiny stack", Duration::from_secs(60), || {
        let backend: Arc<dyn SpawnBackend> = Arc::new(ThreadBackend::new().with_stack_size(1));
        let got = run_root(config(), |n| async move {
            let mut reg = FnRegistry::new();
            reg.unary("t:echo", |v| async move { Ok(v) })?;
            let child = n
                .start_actor("tiny", backend, ActorSpec::with_resolver(Arc::new(reg)))
                .await?;
            Ok(child.run("t:echo", Value::Int(7)).await?)
        })
        .expect("the actor runs");
        assert_eq!(got, Value::Int(7));
    });
}
