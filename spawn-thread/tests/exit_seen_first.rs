//! A child's last answers must reach its parent even when the parent sees the child's exit
//! before its link's reader has routed them.
//!
//! Over a socket the two arrive by different paths (the channel's bytes, the process's exit),
//! and either can be seen first. Here the race is made certain rather than likely: a backend
//! wraps the thread backend and holds every call's failure (a `Msg::Error` for a call) the
//! child sends until the parent has seen the child end. A parent that closed the link as soon
//! as the child ended lost those answers ("the link was closed locally"); it must read the
//! channel to its end first.

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::ipc::{ActorId, BoxFuture, ChannelRx, Msg, RecvError, RecvHalf};
use harrow_runtime_core::{
    ActorSpec, CancelToken, Capabilities, Child, Exit, SpawnBackend, SpawnError, SpawnSpec,
    move_on_after,
};
use harrow_spawn_thread::ThreadBackend;
use harrow_testkit::conformance::{self, BackendFactory, Outcome};
use harrow_testkit::testfns;

/// The longest an answer is held: far beyond what the scenario takes, so that a parent that
/// never waits for the answer cannot get it by the hold running out first.
const HOLD_BOUND: Duration = Duration::from_secs(30);

/// The thread backend, whose children's call failures reach the parent only once the parent
/// has seen the child end.
#[derive(Debug)]
struct ExitSeenFirst {
    inner: Arc<dyn SpawnBackend>,
}

impl SpawnBackend for ExitSeenFirst {
    fn name(&self) -> &'static str {
        "thread-exit-seen-first"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            let inner = self.inner.spawn(spec).await?;
            Ok(Box::new(HeldChild {
                inner,
                ended: CancelToken::new(),
            }) as Box<dyn Child>)
        })
    }
}

#[derive(Debug)]
struct HeldChild {
    inner: Box<dyn Child>,
    /// Cancelled once the parent has seen the child end.
    ended: CancelToken,
}

impl HeldChild {
    fn saw(&self, exit: &Exit) {
        if !matches!(exit, Exit::Running) {
            self.ended.cancel();
        }
    }
}

impl Child for HeldChild {
    fn id(&self) -> &ActorId {
        self.inner.id()
    }
    fn take_channel(&mut self) -> Option<harrow_runtime_core::ipc::Channel> {
        let (tx, rx) = self.inner.take_channel()?.split();
        let held = HoldAnswers {
            inner: rx,
            ended: self.ended.clone(),
        };
        Some(harrow_runtime_core::ipc::Channel::new(
            tx,
            ChannelRx::new(held),
        ))
    }
    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.hard_kill()
    }
    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let exit = self.inner.join(bound).await;
            self.saw(&exit);
            exit
        })
    }
}

#[derive(Debug)]
struct HoldAnswers {
    inner: ChannelRx,
    ended: CancelToken,
}

impl RecvHalf for HoldAnswers {
    fn recv(&mut self) -> BoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(async move {
            let msg = self.inner.recv().await?;
            if matches!(msg, Msg::Error { cid: Some(_), .. }) {
                let _ = move_on_after(HOLD_BOUND, self.ended.cancelled()).await;
            }
            Ok(msg)
        })
    }
    fn end_handshake(&mut self) {
        self.inner.end_handshake()
    }
}

struct Factory;

impl BackendFactory for Factory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        Arc::new(ExitSeenFirst {
            inner: ThreadBackend::shared(),
        })
    }
    fn spec(&self) -> ActorSpec {
        ActorSpec::with_resolver(testfns::registry(Arc::new(Factory)))
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
    fn release_stuck(&self) {
        testfns::release_stuck();
    }
}

/// The middle actor acks the cancel at once (it has a stuck child to tear down), answers the
/// root's call once that teardown ended, and exits: its answer is the last thing it sends, and
/// the root sees its exit first.
#[test]
fn the_answer_a_child_sent_before_it_ended_arrives_when_its_exit_is_seen_first() {
    assert_eq!(conformance::subtree_budget(&Factory), Outcome::Passed);
}
