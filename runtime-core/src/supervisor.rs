//! Supervision that restarts: a [`Supervisor`] keeps a group of children running in a nursery,
//! restarting them by a [`Strategy`] and per-child [`Restart`] policies, within a restart
//! intensity; past it, it gives up and fails its nursery with the last errors.
//!
//! A supervisor lives *above* a nursery: its children are children of that nursery (torn down by
//! the same ladder, leaks reported the same way), but a child that crashes or exits is reported to
//! the supervisor instead of cancelling its siblings. Only a supervisor that gives up escalates,
//! as one failure of the nursery (one-cancels-all from there on).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, Stream};
use harrow_ipc::ActorId;
use harrow_portal::Portal;

use crate::backend::SpawnBackend;
use crate::error::{ChildFailure, Result};
use crate::nursery::{ActorNursery, ChildHandle, ChildOutcome};
use crate::scope::CancelToken;
use crate::spec::ActorSpec;

/// Which children a supervisor restarts when one of them must be restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// Only the child that ended.
    OneForOne,
    /// Every child: the others are torn down (in reverse start order) and all start again.
    OneForAll,
    /// The child that ended and those started after it (they may depend on it).
    RestForOne,
}

/// When one child is restarted after it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Restart {
    /// Always, whether it failed or exited normally (a service that must keep running).
    Always,
    /// Only after a failure (a crash, a spawn that failed); a normal exit ends it for good.
    OnFailure,
    /// Never: once it ended it stays ended.
    Never,
}

/// One child of a supervisor: its name, backend, spec and restart policy. A restart starts a
/// fresh actor from the same backend and spec.
#[derive(Clone)]
pub struct SupervisedChild {
    name: String,
    backend: Arc<dyn SpawnBackend>,
    spec: ActorSpec,
    restart: Restart,
}

impl fmt::Debug for SupervisedChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisedChild")
            .field("name", &self.name)
            .field("backend", &self.backend.name())
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

impl SupervisedChild {
    /// A child named `name` on `backend`, restarted [`Restart::Always`].
    pub fn new(name: impl Into<String>, backend: Arc<dyn SpawnBackend>, spec: ActorSpec) -> Self {
        SupervisedChild {
            name: name.into(),
            backend,
            spec,
            restart: Restart::Always,
        }
    }

    /// Sets the restart policy.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Called with each child's name and handle every time it starts (first start and restarts):
/// the place to (re-)register a restarted child with a discovery service.
pub type OnStarted = Arc<dyn Fn(&str, &ChildHandle) + Send + Sync>;

/// What a supervisor runs: a strategy, a restart intensity and its children, in start order.
#[derive(Clone)]
pub struct SupervisorSpec {
    name: String,
    strategy: Strategy,
    max_restarts: u32,
    within: Duration,
    children: Vec<SupervisedChild>,
    on_started: Option<OnStarted>,
}

impl fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("max_restarts", &self.max_restarts)
            .field("within", &self.within)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

impl SupervisorSpec {
    /// A supervisor named `name` with `strategy`, no children yet, and the default intensity:
    /// at most 3 restarts in 5 s.
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        SupervisorSpec {
            name: name.into(),
            strategy,
            max_restarts: 3,
            within: Duration::from_secs(5),
            children: Vec::new(),
            on_started: None,
        }
    }

    /// At most `max_restarts` restarts within any window of `within`; one more and the
    /// supervisor gives up. (`0` gives up at the first restart it would make.)
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.within = within;
        self
    }

    /// Adds a child (children start in the order they are added). Each child's name must be
    /// its own: a supervisor with two children of one name does not start.
    pub fn child(mut self, child: SupervisedChild) -> Self {
        self.children.push(child);
        self
    }

    /// Calls `f` every time a child starts (see [`OnStarted`]).
    pub fn on_started(mut self, f: impl Fn(&str, &ChildHandle) + Send + Sync + 'static) -> Self {
        self.on_started = Some(Arc::new(f));
        self
    }
}

/// A lifecycle event of a supervisor's children, as [`Supervisor::events`] streams them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child started for the first time.
    Started {
        /// The child's name in the spec.
        child: String,
        /// The actor now running it.
        id: ActorId,
    },
    /// A child ended with a failure (a crash, or a restart whose spawn failed).
    Failed {
        /// The child's name in the spec.
        child: String,
        /// The actor that ended.
        id: Option<ActorId>,
        /// What went wrong.
        error: String,
    },
    /// A child ended on its own without a failure.
    Exited {
        /// The child's name in the spec.
        child: String,
        /// The actor that ended.
        id: ActorId,
    },
    /// A child was started again (a fresh actor, same backend and spec).
    Restarted {
        /// The child's name in the spec.
        child: String,
        /// The new actor.
        id: ActorId,
        /// Restarts of the whole supervisor so far.
        restarts: u32,
    },
    /// Restarts exceeded the intensity: every child was torn down and the nursery failed.
    GaveUp {
        /// Restarts counted in the window.
        restarts: u32,
        /// The window.
        within: Duration,
        /// The last errors, oldest first.
        errors: Vec<String>,
    },
    /// The supervisor ended: cancelled, its nursery tore down, or no child is left to run.
    Stopped,
}

/// How a supervisor ended, as [`Supervisor::wait`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEnd {
    /// Every child ended for good (none of them is to be restarted).
    Completed {
        /// How the children that ended for good by failing failed (their last run crashed,
        /// failed or leaked, and their policy is [`Restart::Never`]), in the order they ended;
        /// empty when every child exited cleanly.
        failed: Vec<String>,
    },
    /// It was cancelled ([`Supervisor::cancel`]) or its nursery tore down.
    Cancelled {
        /// The failures of the children that had ended for good by failing before (as in
        /// [`Completed`](Self::Completed)) and of those found crashed, or that failed, as they
        /// were stopped (a crash that raced the stop is never taken for it), in that order;
        /// empty when none failed.
        failed: Vec<String>,
    },
    /// It gave up (and failed its nursery) with these last errors.
    GaveUp(Vec<String>),
}

/// How many past events a new [`Supervisor::events`] subscriber is replayed.
const KEEP_EVENTS: usize = 256;
/// How many last errors a supervisor that gives up reports.
const KEEP_ERRORS: usize = 8;

/// A running supervisor. Cheap to clone; every clone is the same supervisor.
///
/// Started by [`ActorNursery::start_supervisor`]; it runs until [`cancel`](Self::cancel)led, its
/// nursery tears down, it gives up, or no child is left to run.
///
/// ```
/// use std::time::Duration;
/// use harrow_runtime_core::{Strategy, SupervisorSpec};
/// let spec = SupervisorSpec::new("services", Strategy::OneForOne)
///     .intensity(5, Duration::from_secs(10));
/// // nursery.start_supervisor(spec.child(SupervisedChild::new("db", backend, actor_spec))).await?
/// # let _ = spec;
/// ```
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<SupInner>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("id", &self.inner.id)
            .field("strategy", &self.inner.spec.strategy)
            .finish_non_exhaustive()
    }
}

struct SupInner {
    id: ActorId,
    spec: SupervisorSpec,
    /// Set to stop restarting (a cancel, or the nursery tearing down).
    stop: CancelToken,
    /// Set once the supervising task has returned.
    done: CancelToken,
    state: Mutex<SupState>,
}

struct SupState {
    /// The current incarnation of each child, by spec index (None: ended for good).
    current: Vec<Option<ChildHandle>>,
    history: VecDeque<SupervisorEvent>,
    subscribers: Vec<async_channel::Sender<SupervisorEvent>>,
    end: Option<SupervisorEnd>,
    restarts: u32,
}

impl Supervisor {
    fn state(&self) -> std::sync::MutexGuard<'_, SupState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor's identity (the actor a give-up failure names).
    pub fn id(&self) -> &ActorId {
        &self.inner.id
    }

    /// The current incarnation of child `name`, if it is running.
    pub fn child(&self, name: &str) -> Option<ChildHandle> {
        let idx = self
            .inner
            .spec
            .children
            .iter()
            .position(|c| c.name == name)?;
        self.state().current[idx].clone()
    }

    /// A portal to the current incarnation of child `name`. A portal to an earlier incarnation
    /// fails its calls with a closed-channel error once that incarnation ended.
    pub fn portal(&self, name: &str) -> Option<Portal> {
        self.child(name).map(|h| h.portal().clone())
    }

    /// Restarts made so far.
    pub fn restarts(&self) -> u32 {
        self.state().restarts
    }

    /// The lifecycle events: the last 256 so far, then each new one as it happens. The stream
    /// ends after [`SupervisorEvent::Stopped`].
    pub fn events(&self) -> SupervisorEvents {
        let (tx, rx) = async_channel::unbounded();
        let mut st = self.state();
        for e in &st.history {
            let _ = tx.try_send(e.clone());
        }
        if st.end.is_none() {
            st.subscribers.push(tx);
        }
        SupervisorEvents { rx: Box::pin(rx) }
    }

    /// Stops restarting, then tears every child down (in reverse start order) and waits for the
    /// supervisor to end: bounded by the ladder of each child.
    pub async fn cancel(&self) -> SupervisorEnd {
        self.inner.stop.cancel();
        self.wait().await
    }

    /// Waits until the supervisor has ended and says how.
    pub async fn wait(&self) -> SupervisorEnd {
        self.inner.done.cancelled().await;
        self.state()
            .end
            .clone()
            .unwrap_or(SupervisorEnd::Cancelled { failed: Vec::new() })
    }

    fn emit(&self, event: SupervisorEvent) {
        tracing::debug!(supervisor = %self.inner.id, ?event, "supervisor event");
        let mut st = self.state();
        if st.history.len() >= KEEP_EVENTS {
            st.history.pop_front();
        }
        st.history.push_back(event.clone());
        st.subscribers
            .retain(|tx| tx.try_send(event.clone()).is_ok());
    }

    /// Tears down the given children, last started first, and waits for each. A child that
    /// had crashed on its own before (its notice not yet taken) is reported `Failed`, never
    /// taken for the stop; the errors of those are returned.
    async fn stop_children(&self, idxs: impl DoubleEndedIterator<Item = usize>) -> Vec<String> {
        let mut crashed = Vec::new();
        for i in idxs.rev() {
            let h = self.state().current[i].take();
            if let Some(h) = h {
                h.cancel().await;
                if h.crash().is_some()
                    && let Err(error) = ending(&h)
                {
                    self.emit(SupervisorEvent::Failed {
                        child: self.inner.spec.children[i].name.clone(),
                        id: Some(h.id().clone()),
                        error: error.clone(),
                    });
                    crashed.push(error);
                }
            }
        }
        crashed
    }
}

/// The stream of a supervisor's lifecycle events (see [`Supervisor::events`]).
#[derive(Debug)]
pub struct SupervisorEvents {
    rx: Pin<Box<async_channel::Receiver<SupervisorEvent>>>,
}

impl SupervisorEvents {
    /// The next event, or `None` once the supervisor has stopped and every event was read.
    pub async fn next(&mut self) -> Option<SupervisorEvent> {
        self.rx.recv().await.ok()
    }
}

impl Stream for SupervisorEvents {
    type Item = SupervisorEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.as_mut().poll_next(cx)
    }
}

impl ActorNursery {
    /// Starts a supervisor in this nursery: its children start now (in order; a child that
    /// cannot start is an error and the ones already started are torn down), then it restarts
    /// them by its spec. If it gives up, this nursery fails with a
    /// [`ChildFailure`] for which [`is_gave_up`](ChildFailure::is_gave_up) holds.
    pub async fn start_supervisor(&self, spec: SupervisorSpec) -> Result<Supervisor> {
        // A child is named in `child`, `portal` and the events: two of one name could not
        // be told apart.
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = spec.children.iter().find(|c| !names.insert(&c.name)) {
            return Err(crate::SpawnError::BadSpec {
                actor: ActorId::new(&spec.name),
                reason: format!(
                    "two children of supervisor {} are named {:?}: a child is known by its name",
                    spec.name, twice.name
                ),
            }
            .into());
        }
        let sup = Supervisor {
            inner: Arc::new(SupInner {
                id: ActorId::new(&spec.name),
                spec: spec.clone(),
                stop: CancelToken::new(),
                done: CancelToken::new(),
                state: Mutex::new(SupState {
                    current: vec![None; spec.children.len()],
                    history: VecDeque::new(),
                    subscribers: Vec::new(),
                    end: None,
                    restarts: 0,
                }),
            }),
        };
        let (ended_tx, ended_rx) = async_channel::unbounded();
        for i in 0..spec.children.len() {
            match start_child(self, &sup, i, &ended_tx).await {
                Ok(h) => sup.emit(SupervisorEvent::Started {
                    child: spec.children[i].name.clone(),
                    id: h.id().clone(),
                }),
                Err(e) => {
                    let _ = sup.stop_children(0..i).await;
                    sup.inner.done.cancel();
                    return Err(e);
                }
            }
        }
        let hold = self.hold();
        let guard = self.actor().track();
        let nursery = self.clone();
        let task_sup = sup.clone();
        self.actor()
            .executor()
            .spawn(async move {
                let end = supervise(&nursery, &task_sup, ended_tx, ended_rx).await;
                // Stopped is in the history before the end is set: a subscriber sees it either
                // way, and then its stream ends.
                task_sup.emit(SupervisorEvent::Stopped);
                let mut st = task_sup.state();
                st.end = Some(end);
                st.subscribers.clear();
                drop(st);
                task_sup.inner.done.cancel();
                drop(hold);
                drop(guard);
            })
            .detach();
        Ok(sup)
    }
}

/// Keeps `e` among the last [`KEEP_ERRORS`] errors, dropping the oldest.
fn keep_error(errors: &mut VecDeque<String>, e: String) {
    if errors.len() >= KEEP_ERRORS {
        errors.pop_front();
    }
    errors.push_back(e);
}

/// Starts incarnation of child `i` and a watcher that says when it ended.
async fn start_child(
    nursery: &ActorNursery,
    sup: &Supervisor,
    i: usize,
    ended: &async_channel::Sender<(usize, ActorId)>,
) -> Result<ChildHandle> {
    let c = &sup.inner.spec.children[i];
    let h = nursery
        .start_contained(&c.name, c.backend.clone(), c.spec.clone())
        .await?;
    sup.state().current[i] = Some(h.clone());
    if let Some(f) = &sup.inner.spec.on_started {
        // A panicking callback must not take the supervisor down with it (its task would end
        // without a word, and `cancel` and `wait` would never return): it is reported.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&c.name, &h)));
        if let Err(panic) = called {
            let error = format!(
                "the on_started callback panicked for {}: {}",
                h.id(),
                crate::thread::panic_message(&*panic)
            );
            tracing::warn!(supervisor = %sup.inner.id, "{error}");
            sup.emit(SupervisorEvent::Failed {
                child: c.name.clone(),
                id: Some(h.id().clone()),
                error,
            });
        }
    }
    let watched = h.clone();
    let tx = ended.clone();
    nursery
        .actor()
        .executor()
        .spawn(async move {
            watched.ended().await;
            let _ = tx.send((i, watched.id().clone())).await;
        })
        .detach();
    Ok(h)
}

/// Why one incarnation ended, or `None` if it was asked to (by someone other than us).
fn ending(h: &ChildHandle) -> std::result::Result<(), String> {
    if let Some(crash) = h.crash() {
        return Err(format!("actor {} crashed: {crash}", h.id()));
    }
    match h.outcome() {
        Some(ChildOutcome::Exited) | None => Ok(()),
        Some(other) => Err(format!("actor {} {other}", h.id())),
    }
}

/// The supervising loop: waits for a child to end, restarts by the strategy, gives up past the
/// intensity.
async fn supervise(
    nursery: &ActorNursery,
    sup: &Supervisor,
    ended_tx: async_channel::Sender<(usize, ActorId)>,
    ended_rx: async_channel::Receiver<(usize, ActorId)>,
) -> SupervisorEnd {
    let spec = &sup.inner.spec;
    let n = spec.children.len();
    let mut restarts_at: VecDeque<Instant> = VecDeque::new();
    let mut errors: VecDeque<String> = VecDeque::new();
    let stopping = || sup.inner.stop.is_cancelled() || nursery.teardown_token().is_cancelled();
    // The failures of the children that ended for good by failing (for `Completed`).
    let mut failed_for_good: Vec<String> = Vec::new();
    // Children whose spawn failed on a restart: they are retried (and counted) like a crash.
    let mut pending: VecDeque<(usize, String)> = VecDeque::new();
    let end = loop {
        if stopping() {
            break SupervisorEnd::Cancelled {
                failed: std::mem::take(&mut failed_for_good),
            };
        }
        if sup.state().current.iter().all(Option::is_none) && pending.is_empty() {
            break SupervisorEnd::Completed {
                failed: std::mem::take(&mut failed_for_good),
            };
        }
        let (i, failure) = if let Some((i, e)) = pending.pop_front() {
            (i, Some(e))
        } else {
            let next = async { ended_rx.recv().await.ok() }
                .or(async {
                    sup.inner.stop.cancelled().await;
                    None
                })
                .or(async {
                    nursery.teardown_token().cancelled().await;
                    None
                })
                .await;
            let Some((i, id)) = next else {
                break SupervisorEnd::Cancelled {
                    failed: std::mem::take(&mut failed_for_good),
                };
            };
            // A stale notice: an incarnation we stopped ourselves (a restart of all or of the
            // rest), already replaced.
            let Some(h) = sup.state().current[i].clone().filter(|h| h.id() == &id) else {
                continue;
            };
            if stopping() {
                // It ended before the stop reached it: a crash is still reported (by the
                // final stop, which finds it so), never taken for the stop.
                break SupervisorEnd::Cancelled {
                    failed: std::mem::take(&mut failed_for_good),
                };
            }
            match ending(&h) {
                Ok(()) => {
                    sup.emit(SupervisorEvent::Exited {
                        child: spec.children[i].name.clone(),
                        id,
                    });
                    (i, None)
                }
                Err(e) => {
                    sup.emit(SupervisorEvent::Failed {
                        child: spec.children[i].name.clone(),
                        id: Some(id),
                        error: e.clone(),
                    });
                    (i, Some(e))
                }
            }
        };
        let failed = failure.is_some();
        let restart = match spec.children[i].restart {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        };
        if let Some(e) = failure {
            if !restart {
                failed_for_good.push(e.clone());
            }
            keep_error(&mut errors, e);
        }
        if !restart {
            sup.state().current[i] = None;
            continue;
        }
        // Restart intensity: at most max_restarts in any window of `within`.
        let now = Instant::now();
        while restarts_at
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.within)
        {
            restarts_at.pop_front();
        }
        if restarts_at.len() as u32 >= spec.max_restarts {
            // Stop every child first, so the nursery's failure reports them ended. The one
            // that ended is reported already; a sibling found crashed as it is stopped is
            // reported too, and its error kept with the others.
            sup.state().current[i] = None;
            for e in sup.stop_children(0..n).await {
                keep_error(&mut errors, e);
            }
            let errors: Vec<String> = errors.into_iter().collect();
            let restarts = restarts_at.len() as u32 + 1;
            tracing::warn!(supervisor = %sup.inner.id, restarts, ?errors, "supervisor gives up");
            sup.emit(SupervisorEvent::GaveUp {
                restarts,
                within: spec.within,
                errors: errors.clone(),
            });
            nursery.escalate(ChildFailure::gave_up(
                sup.inner.id.clone(),
                "supervisor".into(),
                format!(
                    "restart {restarts} within {:?} (after {} made) exceeds its intensity of {}",
                    spec.within,
                    restarts - 1,
                    spec.max_restarts
                ),
                errors.clone(),
            ));
            break SupervisorEnd::GaveUp(errors);
        }
        restarts_at.push_back(now);
        // Which children restart: by the strategy, among those still to run.
        let group: Vec<usize> = match spec.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..n).collect(),
            Strategy::RestForOne => (i..n).collect(),
        };
        // The siblings to restart are those still running (one that ended for good stays so).
        let others: Vec<usize> = {
            let st = sup.state();
            group
                .iter()
                .copied()
                .filter(|&j| j != i && st.current[j].is_some())
                .collect()
        };
        // A sibling that crashed too meanwhile is reported (and its error kept), not taken
        // for one stopped for the strategy; it restarts with the group.
        for e in sup.stop_children(others.iter().copied()).await {
            keep_error(&mut errors, e);
        }
        sup.state().current[i] = None;
        let count = {
            let mut st = sup.state();
            st.restarts += 1;
            st.restarts
        };
        for j in group {
            // A sibling stopped for the strategy that was not to run any longer stays stopped.
            if j != i && !others.contains(&j) {
                continue;
            }
            if stopping() {
                break;
            }
            match start_child(nursery, sup, j, &ended_tx).await {
                Ok(h) => sup.emit(SupervisorEvent::Restarted {
                    child: spec.children[j].name.clone(),
                    id: h.id().clone(),
                    restarts: count,
                }),
                Err(e) => {
                    let error = format!("restarting {} failed: {e}", spec.children[j].name);
                    sup.emit(SupervisorEvent::Failed {
                        child: spec.children[j].name.clone(),
                        id: None,
                        error: error.clone(),
                    });
                    pending.push_back((j, error));
                }
            }
        }
    };
    // Stop restarting came first; now the children go, last started first (none are left
    // after a give-up or a completion). A child found crashed then is a failure of the end.
    let crashed = sup.stop_children(0..n).await;
    match end {
        SupervisorEnd::Cancelled { mut failed } => {
            failed.extend(crashed);
            SupervisorEnd::Cancelled { failed }
        }
        other => other,
    }
}
