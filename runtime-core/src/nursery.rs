//! [`ActorNursery`]: starting children, supervising them one-cancels-all, and the bounded
//! teardown ladder.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use harrow_ipc::{ActorId, Value};
use harrow_portal::{CancelRequest, Link, LinkEnd, LocalInfo, Portal};

use crate::actor::{ActorCtx, current_actor};
use crate::backend::{Child, Exit, SpawnBackend, SpawnError, Timeouts};
use crate::error::{BoxError, ChildFailure, Error, NurseryError, Result};
use crate::scope::{CancelToken, CancelWatch, WaitGroup, move_on_after};
use crate::spec::{ActorSpec, SpawnSpec};

/// How one child ended, as recorded by its supervisor: the runtime's one lifecycle enum,
/// [`Exit`] (an outcome is never `Running`). This name is kept for source compatibility.
pub type ChildOutcome = Exit;

/// How many child records a nursery keeps before it forgets those that ended.
const KEEP_CHILD_RECORDS: usize = 1024;

/// One child's record, shared by its supervisor and handles.
struct ChildSlot {
    id: ActorId,
    backend: String,
    teardown: CancelToken,
    finished: CancelToken,
    outcome: Mutex<Option<Exit>>,
    /// Set once `outcome` is (before `finished`, which also waits for the run's result).
    outcome_known: CancelToken,
    result: Mutex<Option<std::result::Result<Value, harrow_portal::Error>>>,
    result_ready: CancelToken,
    /// Started by [`ActorNursery::run_in_actor`]: its one call's task records `result`.
    run: bool,
    /// A contained child (started by a supervisor or a pool): its crash is recorded here for its
    /// supervisor instead of failing the nursery.
    contained: bool,
    crash: Mutex<Option<String>>,
}

/// A started child: a [`Portal`] to it plus its identity and, for [`ActorNursery::run_in_actor`],
/// its one call's result.
#[derive(Clone)]
pub struct ChildHandle {
    portal: Portal,
    slot: Arc<ChildSlot>,
}

impl fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("id", &self.slot.id)
            .field("backend", &self.slot.backend)
            .finish()
    }
}

impl std::ops::Deref for ChildHandle {
    type Target = Portal;
    fn deref(&self) -> &Portal {
        &self.portal
    }
}

impl ChildHandle {
    /// The child's identity.
    pub fn id(&self) -> &ActorId {
        &self.slot.id
    }

    /// The child's backend name.
    pub fn backend(&self) -> &str {
        &self.slot.backend
    }

    /// The portal to the child.
    pub fn portal(&self) -> &Portal {
        &self.portal
    }

    /// For a child started with [`ActorNursery::run_in_actor`]: waits for its call's result.
    ///
    /// A child cancelled before its call returned ([`cancel`](Self::cancel), or its nursery's
    /// teardown) has the call's answer to that cancel: a cancellation, or the failure the call
    /// had or raised while cleaning up (which also fails the nursery). A child that was killed
    /// or went away without answering has `Error::Closed`.
    pub async fn result(&self) -> std::result::Result<Value, harrow_portal::Error> {
        if !self.slot.run {
            return Err(harrow_portal::Error::Protocol(format!(
                "actor {} was started with start_actor, not run_in_actor: it has no result",
                self.slot.id
            )));
        }
        self.slot.result_ready.cancelled().await;
        self.slot
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| Err(harrow_portal::Error::Closed("no result recorded".into())))
    }

    /// Tears this child down with the ladder and waits (bounded) for its outcome.
    pub async fn cancel(&self) -> Exit {
        self.slot.teardown.cancel();
        self.slot.finished.cancelled().await;
        self.outcome()
            .unwrap_or_else(|| Exit::Failed("no outcome recorded".into()))
    }

    /// Waits until the child has ended (its supervisor recorded its outcome).
    pub async fn ended(&self) {
        self.slot.finished.cancelled().await;
    }

    /// Whether the child has ended.
    pub fn has_ended(&self) -> bool {
        self.slot.finished.is_cancelled()
    }

    /// Asks for this child's teardown without waiting for it.
    pub(crate) fn request_teardown(&self) {
        self.slot.teardown.cancel();
    }

    /// For a child started by a supervisor or a pool: why it crashed (its channel ended without
    /// being asked to and it did not exit cleanly), once it has ended so.
    pub fn crash(&self) -> Option<String> {
        self.slot
            .crash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How the child ended, once it has.
    pub fn outcome(&self) -> Option<Exit> {
        self.slot
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A supervisor of child actors. Cheap to clone; every clone is the same nursery.
///
/// Obtained from [`open_nursery`] or [`run_root`](crate::run_root). The nursery does not return
/// until every child has exited or been reported leaked. An error in the body or in any child
/// cancels all the others (one-cancels-all); errors are collected and returned together.
#[derive(Clone)]
pub struct ActorNursery {
    inner: Arc<NurseryInner>,
}

struct NurseryInner {
    actor: ActorCtx,
    /// One-cancels-all: set on the first failure or when teardown starts.
    cancel: CancelToken,
    /// No new children once set.
    closed: CancelToken,
    state: Mutex<NurseryState>,
    supervisors: WaitGroup,
    pending_results: WaitGroup,
}

#[derive(Default)]
struct NurseryState {
    children: Vec<Arc<ChildSlot>>,
    failures: Vec<ChildFailure>,
    body: Option<BoxError>,
    interrupted: bool,
    /// The served call this nursery belongs to was cancelled, by whom.
    cancelled_by: Option<ActorId>,
}

impl fmt::Debug for ActorNursery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorNursery")
            .field("actor", self.inner.actor.id())
            .finish_non_exhaustive()
    }
}

impl ActorNursery {
    pub(crate) fn new_root(actor: ActorCtx) -> Self {
        Self::new(actor)
    }

    fn new(actor: ActorCtx) -> Self {
        ActorNursery {
            inner: Arc::new(NurseryInner {
                actor,
                cancel: CancelToken::new(),
                closed: CancelToken::new(),
                state: Mutex::new(NurseryState::default()),
                supervisors: WaitGroup::default(),
                pending_results: WaitGroup::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NurseryState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor this nursery belongs to.
    pub fn actor(&self) -> &ActorCtx {
        &self.inner.actor
    }

    /// Starts a child actor named `name` on `backend`; it lives until cancelled (by
    /// [`ChildHandle::cancel`], [`cancel`](Self::cancel), a failure elsewhere, or the end of the
    /// nursery). Returns once the child said `Hello`; a child that fails to come up is a
    /// [`SpawnError`] and leaves the nursery usable. An in-process backend may say its child's
    /// `Hello` for it as it makes the child's thread
    /// ([`ActorInit::introduce_in_process`](crate::ActorInit::introduce_in_process); the thread
    /// backend does): then this returns without waiting for that thread to run, and the first
    /// calls wait in the channel until it does.
    ///
    /// A name is non-empty, without `/` or NUL, and at most [`MAX_ACTOR_NAME`] bytes; another is
    /// refused with [`SpawnError::BadSpec`] on every backend.
    pub async fn start_actor(
        &self,
        name: &str,
        backend: Arc<dyn SpawnBackend>,
        spec: ActorSpec,
    ) -> Result<ChildHandle> {
        self.start(name, backend, spec, false, false).await
    }

    /// Starts a child whose crash does not fail this nursery: it is recorded for whoever
    /// supervises the child (a [`Supervisor`](crate::Supervisor), an
    /// [`ActorPool`](crate::ActorPool)), which reads it with [`ChildHandle::crash`]. A leak is
    /// still a failure of the nursery: nothing is left running unreported.
    pub(crate) async fn start_contained(
        &self,
        name: &str,
        backend: Arc<dyn SpawnBackend>,
        spec: ActorSpec,
    ) -> Result<ChildHandle> {
        self.start(name, backend, spec, false, true).await
    }

    /// Records `failure` as this nursery's and cancels everything else (one-cancels-all): how a
    /// supervisor that gave up escalates.
    pub(crate) fn escalate(&self, failure: ChildFailure) {
        self.fail(failure);
    }

    /// Set once this nursery is tearing down (a failure, its body's end, a cancel).
    pub(crate) fn teardown_token(&self) -> &CancelToken {
        &self.inner.cancel
    }

    /// Cancelled once this nursery tears down: at its first failure (one-cancels-all), when it
    /// is cancelled or interrupted, or when its body has ended.
    ///
    /// The body is dropped at the nursery task's next poll after that; a body run elsewhere
    /// (on another thread, as a Python `with` block is) can look at this to stop at once,
    /// instead of seeing the ends of the calls the teardown brings about.
    pub fn tearing_down(&self) -> CancelWatch {
        self.inner.cancel.watch()
    }

    /// Keeps the nursery from finishing until the guard drops (a supervisor's or pool's task).
    pub(crate) fn hold(&self) -> crate::scope::WaitGroupGuard {
        self.inner.supervisors.add()
    }

    /// Starts a child actor that runs one call, `func(args)`; its result comes through
    /// [`ChildHandle::result`]. A failing call cancels the rest of the nursery and is returned
    /// with the nursery's errors. The child is cancelled once its call has returned.
    pub async fn run_in_actor(
        &self,
        name: &str,
        backend: Arc<dyn SpawnBackend>,
        func: &str,
        args: Value,
        spec: ActorSpec,
    ) -> Result<ChildHandle> {
        harrow_ipc::FnPath::parse(func).map_err(harrow_portal::Error::from)?;
        let handle = self.start(name, backend, spec, true, false).await?;
        let portal = handle.portal.clone();
        let slot = handle.slot.clone();
        let nursery = self.clone();
        let func = func.to_owned();
        let pending = self.inner.pending_results.add();
        let task = self.inner.actor.executor().spawn(async move {
            let _pending = pending;
            // Awaited to its end even when the child is torn down: the teardown's cancel makes
            // the child answer the call after its cleanup ran (Cancelled, or the failure it had
            // or raised meanwhile), and the supervisor closes the link once the child is gone,
            // which ends a call still waiting (a killed or leaked child's).
            let result = portal.run(&func, args).await;
            if let Err(e) = &result {
                // Consequences of our own teardown (a call cancelled because we cancelled the
                // child) are not failures; anything the child raised is, even if it arrives
                // after the teardown started (the child answers a cancel with the failure it
                // had, or raised while cleaning up), so that simultaneous failures are all
                // reported. A cancel nobody here asked for is a failure too; one this actor
                // asked for (through the child's portal, say) is not.
                let tearing_down = slot.teardown.is_cancelled()
                    || nursery.inner.cancel.is_cancelled()
                    || nursery.inner.actor.self_cancel_token().is_cancelled();
                let ours = e.canceller() == Some(nursery.inner.actor.id());
                let consequence = if e.is_closed() {
                    // The link closed with the call unanswered: how the child ended says why.
                    // One that exited cleanly left mid-call on its own, which nothing else
                    // reports, teardown or not (a child stopped by a cancel answers the call
                    // first); a crash, a kill or a leak is its supervisor's to report, once.
                    slot.outcome_known.cancelled().await;
                    let outcome = slot
                        .outcome
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    outcome != Some(Exit::Exited)
                } else {
                    e.is_cancelled() && (tearing_down || ours)
                };
                if !consequence {
                    nursery.fail(ChildFailure::remote(
                        slot.id.clone(),
                        slot.backend.clone(),
                        e.clone(),
                    ));
                }
            }
            *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            slot.result_ready.cancel();
            // Its one job is done: the child is torn down now.
            slot.teardown.cancel();
        });
        task.detach();
        Ok(handle)
    }

    async fn start(
        &self,
        name: &str,
        backend: Arc<dyn SpawnBackend>,
        spec: ActorSpec,
        is_run: bool,
        contained: bool,
    ) -> Result<ChildHandle> {
        // A spawn may complete without waiting for anything (a thread child's `Hello` is said
        // for it), so it yields once: a loop of spawns must not keep the task that would tear
        // this nursery down (SIGINT, a failure elsewhere) from running.
        futures_lite::future::yield_now().await;
        if self.inner.closed.is_cancelled() {
            return Err(Error::NurseryClosed);
        }
        let actor = &self.inner.actor;
        let id = ActorId::new(name);
        if name.is_empty() || name.contains('\0') || name.contains('/') {
            return Err(SpawnError::BadSpec {
                actor: id,
                reason: format!("actor name {name:?} must be non-empty, without '/' or NUL"),
            }
            .into());
        }
        if name.len() > MAX_ACTOR_NAME {
            // The same on every backend (a process child's would not fit its environment).
            let shown = (0..=40)
                .rev()
                .find(|&i| name.is_char_boundary(i))
                .unwrap_or(0);
            return Err(SpawnError::BadSpec {
                actor: ActorId::new(&name[..shown]),
                reason: format!(
                    "actor name of {} bytes is longer than the {MAX_ACTOR_NAME} allowed",
                    name.len()
                ),
            }
            .into());
        }
        let mut spec = spec;
        spec.timeouts = Some(spec.timeouts.unwrap_or_else(|| actor.timeouts()));
        let mut spawn_spec = SpawnSpec::new(id.clone(), actor.id().clone()).with_actor(spec);
        // A child in this address space takes the tree's discovery data from its spec; so does
        // one whose backend hands it over at its start.
        let caps = backend.capabilities();
        let given = if caps.in_process {
            crate::discovery::TreeGiven::InProcess
        } else if caps.tree_at_spawn && !caps.other_host {
            crate::discovery::TreeGiven::AtSpawn
        } else {
            crate::discovery::TreeGiven::No
        };
        if given != crate::discovery::TreeGiven::No {
            spawn_spec.tree = actor.discovery().tree();
        }
        if let (crate::discovery::TreeGiven::AtSpawn, Some(tree)) = (given, &spawn_spec.tree) {
            // The child listens in the runtime directory before its `Hello`.
            crate::discovery::listen_for_a_child(actor, tree);
        }
        let tree_given = if spawn_spec.tree.is_some() {
            given
        } else {
            crate::discovery::TreeGiven::No
        };
        let link_config = backend.link_config(&actor.link_config());
        let come_up = link_config.hello_timeout;
        let backend_name = backend.name().to_owned();
        tracing::debug!(child = %id, backend = %backend_name, "spawning");

        let spawned = unpanicked(|| backend.spawn(spawn_spec));
        let mut child = match move_on_after(come_up, spawned).await {
            Some(Ok(Ok(child))) => child,
            Some(Ok(Err(e))) => return Err(e.into()),
            Some(Err(panic)) => {
                return Err(SpawnError::Failed {
                    actor: id,
                    reason: format!("backend {backend_name}'s spawn {panic}"),
                }
                .into());
            }
            None => {
                return Err(SpawnError::Failed {
                    actor: id,
                    reason: format!("backend {backend_name} did not start it within {come_up:?}"),
                }
                .into());
            }
        };
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.take_channel()));
        let channel = match taken {
            Ok(Some(channel)) => channel,
            Ok(None) => {
                let reason = "backend returned a child without a channel".to_owned();
                let ended = abandon(child, actor.timeouts()).await;
                let reason = format!("{reason}{}", ended_text(&ended));
                return Err(SpawnError::Failed { actor: id, reason }.into());
            }
            Err(panic) => {
                let reason = format!(
                    "backend {backend_name}'s take_channel {}",
                    crate::thread::panic_message(&*panic)
                );
                let ended = abandon(child, actor.timeouts()).await;
                let reason = format!("{reason}{}", ended_text(&ended));
                return Err(SpawnError::Failed { actor: id, reason }.into());
            }
        };
        let local = LocalInfo {
            id: actor.id().clone(),
            backend: actor.backend().to_owned(),
        };
        let established = Link::establish_with_reader(
            channel,
            local,
            actor.resolver(),
            actor.executor(),
            link_config,
        )
        .await
        .map(|(link, reader)| {
            actor.run_reader(reader);
            link
        });
        let link = match established {
            Ok(link) => link,
            Err(e) => {
                let ended = abandon_after_handshake(child, actor.timeouts()).await;
                return Err(SpawnError::Handshake {
                    actor: id,
                    reason: format!("{e}{}", ended_text(&ended)),
                }
                .into());
            }
        };
        if link.peer().id != id {
            let reason = format!("it introduced itself as {}", link.peer().id);
            link.close();
            let ended = abandon_after_handshake(child, actor.timeouts()).await;
            let reason = format!("{reason}{}", ended_text(&ended));
            return Err(SpawnError::Handshake { actor: id, reason }.into());
        }
        // Discovery: the child gets the tree's secret and is findable once this returns.
        crate::discovery::child_up(actor, &link, caps.other_host, tree_given).await;
        let slot = Arc::new(ChildSlot {
            id: id.clone(),
            backend: backend_name,
            teardown: CancelToken::new(),
            finished: CancelToken::new(),
            outcome_known: CancelToken::new(),
            outcome: Mutex::new(None),
            result: Mutex::new(None),
            result_ready: CancelToken::new(),
            run: is_run,
            contained,
            crash: Mutex::new(None),
        });
        let portal = link.portal();
        {
            let mut st = self.state();
            // A long-lived nursery forgets ended children past a bound, so memory stays flat.
            if st.children.len() >= KEEP_CHILD_RECORDS {
                st.children.retain(|c| !c.finished.is_cancelled());
            }
            st.children.push(slot.clone());
        }
        // A nursery that started tearing down while we were spawning tears this one down too.
        if self.inner.cancel.is_cancelled() {
            slot.teardown.cancel();
        }
        let guard = self.inner.supervisors.add();
        let actor_guard = actor.track();
        let nursery = self.clone();
        let sup_slot = slot.clone();
        actor
            .executor()
            .spawn(async move {
                nursery.supervise(child, link, sup_slot).await;
                drop(guard);
                drop(actor_guard);
            })
            .detach();
        Ok(ChildHandle { portal, slot })
    }

    /// Supervises one child until it must go, then runs the ladder.
    async fn supervise(&self, mut child: Box<dyn Child>, link: Link, slot: Arc<ChildSlot>) {
        let escalate = self.inner.actor.escalation().clone();
        enum Why {
            Teardown,
            LinkEnded(LinkEnd),
        }
        // The link's end is looked at first: a child that went away on its own before this
        // supervisor saw a teardown is a crash even when the teardown was asked for meanwhile
        // (its death ended the call that let the nursery's body return, say), and is reported
        // as one, never taken for the cancel.
        let why = async { Why::LinkEnded(link.closed().await) }
            .or(async {
                slot.teardown.cancelled().await;
                Why::Teardown
            })
            .or(async {
                self.inner.cancel.cancelled().await;
                Why::Teardown
            })
            .or(async {
                escalate.cancelled().await;
                Why::Teardown
            })
            .await;
        let timeouts = self.inner.actor.timeouts();
        let outcome = match why {
            // The child answers the cancel only after its calls ended, with what they ended
            // with: a failure raised before or during that cleanup arrives before its ack.
            Why::Teardown => {
                let outcome = ladder(&mut *child, &link, timeouts, &escalate).await;
                self.failed_in_teardown(&slot, &outcome);
                outcome
            }
            Why::LinkEnded(LinkEnd::CancelRequested { canceller, reason }) => {
                // The child asked *us* to cancel (it sent CancelActor up its link).
                tracing::debug!(child = %slot.id, %canceller, %reason, "child asked its parent to cancel");
                self.inner.actor.cancel_self(canceller.clone());
                // That link is done: closing it tells the child, which then exits as an orphan
                // would, without waiting for a CancelActor of its own. Our calls into it end
                // as cancelled by it (this actor is), not as a closed link's failures.
                link.close_cancelled(&canceller);
                let outcome = ladder(&mut *child, &link, timeouts, &escalate).await;
                self.failed_in_teardown(&slot, &outcome);
                outcome
            }
            Why::LinkEnded(end) => {
                // The child went away without being asked to: did it exit cleanly?
                let outcome = ladder(&mut *child, &link, timeouts, &escalate).await;
                if outcome != Exit::Exited {
                    self.crashed(&slot, format!("its channel ended ({end}) and it {outcome}"));
                } else {
                    tracing::debug!(child = %slot.id, ?end, "child left on its own");
                }
                outcome
            }
        };
        // One bound for both waits below, the same as the second alone had before the first
        // was added: a child's teardown takes no longer than it did.
        let flush_until = harrow_ipc::wait::instant_after(link_flush_bound(&self.inner.actor));
        if !matches!(outcome, Exit::Running | Exit::Leaked(_)) {
            // The child is gone, but what it sent before it went may still be in the channel
            // (its last answers: a context's error sent as it tore down, say), and its exit can
            // be seen before the reader has routed them. Its going ends the channel, so let
            // the reader take everything up to that end (bounded) before closing our side:
            // closing first would fail those calls with "closed locally" and lose the answers.
            let _ = move_on_after(
                flush_until.saturating_duration_since(Instant::now()),
                link.closed(),
            )
            .await;
        }
        link.close();
        // Let the link's I/O tasks end (the writer flushes for a bounded time), so that nothing
        // of this child (its channel's fd included) outlives its supervisor.
        let _ = move_on_after(
            flush_until.saturating_duration_since(Instant::now()),
            link.io_stopped(),
        )
        .await;
        match &outcome {
            Exit::Leaked(what) => {
                tracing::warn!(child = %slot.id, backend = %slot.backend, %what, "child leaked");
                self.fail(ChildFailure::leaked(
                    slot.id.clone(),
                    slot.backend.clone(),
                    what.clone(),
                ));
            }
            Exit::Failed(why) if !self.inner.cancel.is_cancelled() => {
                tracing::warn!(child = %slot.id, %why, "child failed");
            }
            _ => tracing::debug!(child = %slot.id, ?outcome, "child ended"),
        }
        *slot.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        slot.outcome_known.cancel();
        if slot.run {
            // The link is closed, so the run's call has ended: its task records the answer at
            // its next poll (bounded, in case that task is gone).
            let _ = move_on_after(
                link_flush_bound(&self.inner.actor),
                slot.result_ready.cancelled(),
            )
            .await;
        }
        if !slot.result_ready.is_cancelled() {
            *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(
                harrow_portal::Error::Closed(format!("actor {} ended", slot.id)),
            ));
            slot.result_ready.cancel();
        }
        // Discovery: it (and whatever it started) is no longer findable.
        crate::discovery::child_gone(&self.inner.actor, &slot.id).await;
        slot.finished.cancel();
    }

    /// A child torn down by the ladder that ended with a failure of its own (an exit status
    /// that is not the clean exit a cancel ends with, a panic, `os._exit` while cleaning up;
    /// never the hard kill, which is `Killed`): a crash like any other, reported, not taken for
    /// the teardown. A contained child's goes to its supervisor or pool.
    fn failed_in_teardown(&self, slot: &ChildSlot, outcome: &Exit) {
        let Exit::Failed(_) = outcome else {
            return;
        };
        self.crashed(slot, format!("while it was being torn down, it {outcome}"));
    }

    /// A child crashed (`why`): a contained child's crash is recorded for its supervisor or
    /// pool; any other's is this nursery's failure.
    fn crashed(&self, slot: &ChildSlot, why: String) {
        if slot.contained {
            tracing::debug!(child = %slot.id, %why, "contained child crashed");
            *slot.crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        } else {
            self.fail(ChildFailure::crashed(
                slot.id.clone(),
                slot.backend.clone(),
                why,
            ));
        }
    }

    /// Records a failure and cancels everything else (one-cancels-all).
    fn fail(&self, failure: ChildFailure) {
        tracing::debug!(%failure, "nursery failure; cancelling the rest");
        self.state().failures.push(failure);
        self.inner.cancel.cancel();
    }

    /// Tears down every current child (gracefully, then by force) and waits for them all.
    /// The nursery stays usable for new children.
    pub async fn cancel(&self) {
        let slots: Vec<_> = self.state().children.clone();
        for s in &slots {
            s.teardown.cancel();
        }
        for s in &slots {
            s.finished.cancelled().await;
        }
    }

    /// The children started so far, with their outcome once ended (a nursery that started more
    /// than 1024 forgets some of those that ended).
    pub fn children(&self) -> Vec<(ActorId, String, Option<Exit>)> {
        self.state()
            .children
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    s.backend.clone(),
                    s.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect()
    }

    /// Starts the teardown of the whole nursery (body included), as a failure would.
    pub(crate) fn cancel_all(&self) {
        self.inner.cancel.cancel();
    }

    /// Marks the nursery as interrupted (SIGINT) and starts its teardown.
    pub(crate) fn interrupt(&self) {
        self.state().interrupted = true;
        self.inner.cancel.cancel();
    }

    /// Ends the nursery: waits for `run_in_actor` results (unless cancelled), then tears every
    /// child down and waits for all of them.
    async fn finish(&self) {
        async {
            self.inner.pending_results.wait().await;
        }
        .or(self.inner.cancel.cancelled())
        .await;
        self.inner.closed.cancel();
        self.inner.cancel.cancel();
        self.inner.supervisors.wait().await;
        // Every child's link is closed now, so each `run_in_actor` call has its outcome: wait
        // for them to be recorded (a failure that arrived just before the teardown included).
        self.inner.pending_results.wait().await;
    }

    fn take_error(&self) -> Option<NurseryError> {
        let mut st = self.state();
        let mut err = NurseryError::new(Some(self.inner.actor.id().clone()));
        err.body = st.body.take();
        err.failures = std::mem::take(&mut st.failures);
        // A body that failed with a child's failure (`handle.result().await?` on a
        // `run_in_actor` child) passed on what is already one of the failures: once is enough.
        if let Some(body) = &err.body
            && let Some(remote) = portal_error(body).and_then(harrow_portal::Error::remote_error)
            && err
                .failures
                .iter()
                .any(|f| f.remote_error() == Some(remote))
        {
            err.body = None;
        }
        err.interrupted = st.interrupted;
        err.cancelled_by = st.cancelled_by.take().map(Box::new);
        (!err.is_empty()).then_some(err)
    }
}

/// If an open nursery's future is dropped (its caller was cancelled), its teardown still runs:
/// handed to the actor's executor and tracked, so the actor does not exit before it ends.
struct TeardownOnDrop(Option<ActorNursery>);

impl Drop for TeardownOnDrop {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.inner.cancel.cancel();
            let guard = n.inner.actor.track();
            let exec = n.inner.actor.executor().clone();
            exec.spawn(async move {
                n.finish().await;
                drop(guard);
            })
            .detach();
        }
    }
}

/// Opens a nursery in the current actor, runs `body` with it, and returns only after every child
/// has exited (or been reported leaked).
///
/// The body gets a clone of the nursery. When it returns, the nursery waits for the results of
/// `run_in_actor` children, then cancels the children still running (actors started with
/// `start_actor` live until then). The first failure (body error, failing call, crashed child)
/// cancels the body and every other child; all failures come back together in a
/// [`NurseryError`]. A body error that a cancel itself caused (a call ended as cancelled or
/// closed, a child refused, once the teardown had started or the call holding the nursery was
/// cancelled) is not one of them: the failure that started the teardown is, or the cancel.
pub async fn open_nursery<T, F, Fut>(body: F) -> std::result::Result<T, NurseryError>
where
    F: FnOnce(ActorNursery) -> Fut,
    Fut: Future<Output = std::result::Result<T, BoxError>>,
{
    let Some(actor) = current_actor() else {
        let mut err = NurseryError::new(None);
        err.body = Some(Box::new(Error::NoActor));
        return Err(err);
    };
    run_nursery(ActorNursery::new(actor), body).await
}

pub(crate) async fn run_nursery<T, F, Fut>(
    nursery: ActorNursery,
    body: F,
) -> std::result::Result<T, NurseryError>
where
    F: FnOnce(ActorNursery) -> Fut,
    Fut: Future<Output = std::result::Result<T, BoxError>>,
{
    let mut guard = TeardownOnDrop(Some(nursery.clone()));
    // Inside a served call, the nursery follows that call's cancellation: the body is dropped,
    // the children are torn down (the call's cleanup time is extended by the ladder's bound),
    // and what they raised meanwhile is still reported, with the cancel.
    let call = harrow_portal::current_call();
    if let Some(call) = &call {
        call.reserve_cleanup(teardown_bound(&nursery.inner.actor.timeouts()));
    }
    let call_cancelled = async {
        match &call {
            Some(call) => call.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let body_fut = body(nursery.clone());
    enum Ended<T> {
        Body(T),
        Cancelled,
        CallCancelled(ActorId),
    }
    let outcome = async { Ended::Body(body_fut.await) }
        .or(async {
            nursery.inner.cancel.cancelled().await;
            Ended::Cancelled
        })
        .or(async { Ended::CallCancelled(call_cancelled.await) })
        .await;
    // The body is looked at first. When it ended with an error that a cancel brings about (a
    // call cancelled or closed, no new child) and that cancel has come, the body did not fail:
    // it was cancelled, by the call that holds the nursery (whose cancel also ends the body's
    // waits on that call's own stream) or by the nursery's teardown (whose failure is reported;
    // as for a child's call in `run_in_actor`, its consequences are not).
    let outcome = match outcome {
        Ended::Body(Err(e)) if teardown_consequence(&e) => {
            if let Some(by) = call.as_ref().and_then(|c| c.cancelled_by()) {
                tracing::debug!(error = %e, "the nursery body ended with its call's cancel");
                Ended::CallCancelled(by)
            } else if let Some(by) = nursery.inner.actor.self_canceller() {
                // The whole actor is cancelling itself (a child asked it to, say, and its
                // calls into that child ended so): the call that holds the nursery is about
                // to be cancelled by the same canceller.
                tracing::debug!(error = %e, %by, "the nursery body ended with its actor's cancel");
                Ended::CallCancelled(by)
            } else if nursery.inner.cancel.is_cancelled() {
                tracing::debug!(error = %e, "the nursery body ended with its teardown");
                Ended::Cancelled
            } else {
                Ended::Body(Err(e))
            }
        }
        other => other,
    };
    let value = match outcome {
        Ended::Body(Ok(v)) => Some(v),
        Ended::Body(Err(e)) => {
            tracing::debug!(error = %e, "nursery body failed; cancelling children");
            nursery.state().body = Some(e);
            nursery.inner.cancel.cancel();
            None
        }
        Ended::Cancelled => None,
        Ended::CallCancelled(canceller) => {
            tracing::debug!(%canceller, "the call holding this nursery was cancelled; tearing down");
            nursery.state().cancelled_by = Some(canceller);
            nursery.inner.cancel.cancel();
            None
        }
    };
    nursery.finish().await;
    guard.0 = None;
    match (nursery.take_error(), value) {
        (None, Some(v)) => Ok(v),
        (Some(e), _) => Err(e),
        (None, None) => {
            let mut err = NurseryError::new(Some(nursery.inner.actor.id().clone()));
            err.body = Some("nursery body was cancelled".into());
            Err(err)
        }
    }
}

/// Whether a body's error is one a nursery's teardown causes: a call cancelled or a channel
/// closed (the teardown cancels the children and closes their links), or no new child.
fn teardown_consequence(e: &BoxError) -> bool {
    if let Some(Error::NurseryClosed) = e.downcast_ref::<Error>() {
        return true;
    }
    portal_error(e).is_some_and(|p| p.is_cancelled() || p.is_closed())
}

/// The portal error a body's error is, if it is one (directly or as this crate's `Portal`).
fn portal_error(e: &BoxError) -> Option<&harrow_portal::Error> {
    match e.downcast_ref::<Error>() {
        Some(Error::Portal(p)) => Some(p),
        _ => e.downcast_ref::<harrow_portal::Error>(),
    }
}

/// How long a child whose handshake failed may take to end by itself before it is killed: one
/// that closed its channel is usually on its way out (a panic, a bootstrap that failed), and its
/// exit says why, where a kill would say only that it was killed.
const HANDSHAKE_EXIT_GRACE: Duration = Duration::from_millis(500);

/// [`abandon`] for a child whose handshake failed: it first gets
/// [`HANDSHAKE_EXIT_GRACE`] (at most its `graceful_exit`) to end by itself.
async fn abandon_after_handshake(mut child: Box<dyn Child>, t: Timeouts) -> Exit {
    match join(&mut *child, t.graceful_exit.min(HANDSHAKE_EXIT_GRACE)).await {
        Exit::Running => abandon(child, t).await,
        ended => ended,
    }
}

/// Gives up on a child that never came up: hard kill and a bounded join; how it ended (what a
/// child still running is leaked as).
async fn abandon(mut child: Box<dyn Child>, t: Timeouts) -> Exit {
    let killed = hard_kill(&mut *child, t.hard_kill).await;
    match join(&mut *child, t.hard_kill).await {
        Exit::Running | Exit::Leaked(_) => {
            let mut what = describe(&*child);
            if let Some(Err(e)) = killed {
                what = format!("{what}; its hard kill failed: {e}");
            }
            tracing::warn!(child = %what, "child that failed to come up is leaked");
            Exit::Leaked(what)
        }
        ended => ended,
    }
}

/// What a spawn error adds about how the child that never came up ended: nothing when it just
/// exited (the error says why), else its failure, or that it was leaked.
fn ended_text(ended: &Exit) -> String {
    match ended {
        Exit::Exited => String::new(),
        Exit::Leaked(what) => format!(" (it could not be stopped and was leaked: {what})"),
        other => format!(" (the child {other})"),
    }
}

/// The least a backend's `Child::join` may run past its bound before the runtime stops waiting
/// for it: a join may overrun a little (draining a child's output after it ended, say), but a
/// backend that ignores the bound must not hang its parent.
const JOIN_GRACE: Duration = Duration::from_secs(2);

/// Runs the future a backend method makes, with a panic (in the method or in its future) as
/// `Err(message)`.
async fn unpanicked<'a, T>(
    make: impl FnOnce() -> crate::backend::BoxFuture<'a, T>,
) -> Result<T, String> {
    let panicked = |panic: Box<dyn std::any::Any + Send>| crate::thread::panic_message(&*panic);
    let fut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).map_err(panicked)?;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(panicked)
}

/// `child.join(bound)`, never longer than `bound` plus the larger of `bound` and
/// [`JOIN_GRACE`] (a join that overruns that is taken as `Running`), and a panicking join is
/// the child's failure.
async fn join(child: &mut dyn Child, bound: Duration) -> Exit {
    let joined = unpanicked(|| child.join(bound));
    let cap = bound.saturating_add(bound.max(JOIN_GRACE));
    match move_on_after(cap, joined).await {
        Some(Ok(exit)) => exit,
        Some(Err(panic)) => Exit::Failed(format!("the backend's join {panic}")),
        None => {
            tracing::warn!(child = %child.id(), ?bound, "the backend's join overran its bound");
            Exit::Running
        }
    }
}

/// `child.hard_kill()`, bounded by `bound`; a panic is its error.
async fn hard_kill(child: &mut dyn Child, bound: Duration) -> Option<Result<(), String>> {
    match move_on_after(bound, unpanicked(|| child.hard_kill())).await? {
        Ok(r) => Some(r),
        Err(panic) => Some(Err(format!("the backend's hard kill {panic}"))),
    }
}

/// `child.describe()`, or what is known when it panics.
fn describe(child: &dyn Child) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.describe())).unwrap_or_else(
        |panic| {
            format!(
                "{} (the backend's describe {})",
                child.id(),
                crate::thread::panic_message(&*panic)
            )
        },
    )
}

/// The teardown ladder for one child; every step is bounded (`docs/ARCHITECTURE.md`).
async fn ladder(child: &mut dyn Child, link: &Link, t: Timeouts, escalate: &CancelToken) -> Exit {
    let escalated = || escalate.is_cancelled();
    // 1. CancelActor, unless the channel is already gone. The ack comes once the child's calls
    // ended; a child still tearing down its own children says for how long.
    let mut subtree = Duration::ZERO;
    let mut late_ack = None;
    if !escalated()
        && !link.is_closed()
        && let Some(request) = link.portal().request_cancel_actor()
    {
        let acked = async { Some(request.ack(t.cancel_ack).await) }
            .or(async {
                escalate.cancelled().await;
                None
            })
            .await;
        tracing::debug!(child = %child.id(), ?acked, "cancel requested");
        match acked {
            Some(Some(Some(teardown))) => subtree = subtree_budget(teardown, &t),
            Some(Some(None)) | None => {}
            // Not acked within the bound: an ack that comes while we wait for the exit
            // still counts.
            Some(None) => late_ack = Some(request),
        }
    }
    // 2. Wait for it to exit (and for its subtree, if it said it is tearing one down).
    if !escalated() {
        let exit = async { Some(graceful_join(child, late_ack.as_ref(), t, subtree).await) }
            .or(async {
                escalate.cancelled().await;
                None
            })
            .await;
        match exit {
            // A child that says it cannot be stopped still gets the hard kill.
            Some(Exit::Running | Exit::Leaked(_)) | None => {}
            Some(ended) => return ended,
        }
    }
    // 3. Hard kill. Dropping the channel first means a child that still yields (but never heard
    // or never obeyed the cancel) sees its parent gone and exits as an orphan would.
    tracing::debug!(child = %child.id(), "hard kill");
    link.close();
    let killed = hard_kill(child, t.hard_kill).await;
    if let Some(Err(e)) = &killed {
        tracing::warn!(child = %child.id(), error = %e, "hard kill failed");
    }
    // 4. Bounded join; a child still running is leaked.
    match join(child, t.hard_kill).await {
        Exit::Running => Exit::Leaked(describe(child)),
        ended => ended,
    }
}

/// The ladder's step 2: joins `child` for `graceful_exit` plus `subtree`. With `late_ack` (the
/// ack did not come within its bound), an ack that arrives during the join still extends it by
/// what it says the child's subtree needs, counted from the join's start: a child that was only
/// slow to ack is given the same time as one that acked in time, and no more.
async fn graceful_join(
    child: &mut dyn Child,
    late_ack: Option<&CancelRequest>,
    t: Timeouts,
    subtree: Duration,
) -> Exit {
    let base = t.graceful_exit.saturating_add(subtree);
    let Some(request) = late_ack else {
        return join(child, base).await;
    };
    let start = Instant::now();
    enum First {
        Exit(Exit),
        Ack(Option<Option<Duration>>),
    }
    let first = async { First::Exit(join(child, base).await) }
        .or(async { First::Ack(request.ack(base).await) })
        .await;
    let more = match first {
        First::Exit(exit) => return exit,
        First::Ack(Some(Some(teardown))) => subtree_budget(teardown, &t),
        First::Ack(_) => Duration::ZERO,
    };
    tracing::debug!(child = %child.id(), ?more, "late cancel ack");
    join(child, (base + more).saturating_sub(start.elapsed())).await
}

/// How long the ladder waits for a child's subtree that the child's ack said still needs
/// `teardown`: that, capped.
fn subtree_budget(teardown: Duration, t: &Timeouts) -> Duration {
    teardown.min(t.ladder_bound().saturating_mul(MAX_SUBTREE_LADDERS))
}

/// The most a child may say (in its `CancelAck`) that its own subtree's teardown still takes,
/// in ladders of ours: a child cannot make its parent wait without bound.
const MAX_SUBTREE_LADDERS: u32 = 8;

/// The longest actor name `start_actor` takes, in bytes.
pub const MAX_ACTOR_NAME: usize = 1024;

/// How long a full teardown of one child can take, plus a margin: a bound for callers.
pub fn teardown_bound(t: &Timeouts) -> Duration {
    t.ladder_bound().saturating_add(Duration::from_millis(500))
}

/// How long a closed link's writer may flush before its supervisor stops waiting for it.
fn link_flush_bound(actor: &ActorCtx) -> Duration {
    actor
        .link_config()
        .close_flush_timeout
        .saturating_add(Duration::from_millis(100))
}
