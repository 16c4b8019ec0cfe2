//! The actor runtime entry ([`run_actor`]), the ambient current actor ([`current_actor`]), and
//! [`shield`], which keeps work alive on the current actor.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use harrow_ipc::{ActorId, Channel, SendError};
use harrow_portal::{Executor, Link, LinkConfig, LinkEnd, LinkReader, LocalInfo, Portal, Resolver};

use crate::backend::Timeouts;
use crate::beside::{Beside, Handoff};
use crate::codrive::CoDriver;
use crate::scope::{CancelToken, WaitGroup, WaitGroupGuard};
use crate::spec::SpawnSpec;

/// The actor this thread is running, if any: its identity, executor, timeouts and the state its
/// nurseries share. Cheap to clone.
#[derive(Clone)]
pub struct ActorCtx {
    inner: Arc<ActorInner>,
}

struct ActorInner {
    id: ActorId,
    backend: String,
    exec: Executor,
    timeouts: Timeouts,
    link_config: LinkConfig,
    resolver: Option<Arc<dyn Resolver>>,
    /// Set when the whole subtree must skip to the hard kill (second SIGINT).
    escalate: CancelToken,
    /// Teardowns and shields still running; the actor does not exit before they end.
    tasks: WaitGroup,
    /// The portal to the parent, once the handshake is done (none for the root).
    parent: std::sync::Mutex<Option<Portal>>,
    /// Set when something other than the parent link asks this actor to cancel itself
    /// (a child sent `CancelActor` up its link): who asked.
    self_cancel: std::sync::Mutex<Option<ActorId>>,
    self_cancel_token: CancelToken,
    /// Discovery: the registrar (root), the tree, peer links.
    discovery: crate::discovery::Discovery,
    /// Where the readers of the links this actor establishes go, when its thread drives them
    /// beside its executor (see `crate::beside`); `None`: they are spawned on it.
    readers: Option<Handoff<LinkReader>>,
}

impl fmt::Debug for ActorCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorCtx")
            .field("id", &self.inner.id)
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl ActorCtx {
    /// Whether `self` and `other` are the context of one actor (the same run of it).
    pub fn ptr_eq(&self, other: &ActorCtx) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    // Crate-private, called from the two places that start an actor's thread (the root and
    // `run_actor_parked`), each naming every part.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ActorId,
        backend: impl Into<String>,
        exec: Executor,
        timeouts: Timeouts,
        link_config: LinkConfig,
        resolver: Option<Arc<dyn Resolver>>,
        discovery: crate::discovery::Discovery,
        readers: Option<Handoff<LinkReader>>,
    ) -> Self {
        // Every actor also serves the runtime's own `harrow.discovery:*` functions.
        let resolver: Option<Arc<dyn Resolver>> = Some(Arc::new(crate::discovery::WithDiscovery {
            inner: resolver,
        }));
        ActorCtx {
            inner: Arc::new(ActorInner {
                id,
                backend: backend.into(),
                exec,
                timeouts,
                link_config,
                resolver,
                escalate: CancelToken::new(),
                tasks: WaitGroup::default(),
                parent: std::sync::Mutex::new(None),
                self_cancel: std::sync::Mutex::new(None),
                self_cancel_token: CancelToken::new(),
                discovery,
                readers,
            }),
        }
    }

    pub(crate) fn discovery(&self) -> &crate::discovery::Discovery {
        &self.inner.discovery
    }

    /// This actor's identity.
    pub fn id(&self) -> &ActorId {
        &self.inner.id
    }

    /// The backend this actor runs on (`"root"` for the root).
    pub fn backend(&self) -> &str {
        &self.inner.backend
    }

    /// The actor's executor (every task of the actor runs on it, on the actor's own thread).
    pub fn executor(&self) -> &Executor {
        &self.inner.exec
    }

    /// Runs a reader of a link this actor established: beside the executor on the actor's
    /// thread where that thread drives readers (see `crate::beside`), else as a task of it.
    pub(crate) fn run_reader(&self, reader: LinkReader) {
        let unplaced = match &self.inner.readers {
            Some(readers) => readers.put(reader),
            None => Err(reader),
        };
        if let Err(reader) = unplaced {
            self.inner.exec.spawn(reader).detach();
        }
    }

    /// The teardown bounds this actor uses for its children.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    pub(crate) fn link_config(&self) -> LinkConfig {
        self.inner.link_config.clone()
    }

    pub(crate) fn resolver(&self) -> Option<Arc<dyn Resolver>> {
        self.inner.resolver.clone()
    }

    /// The token that, once cancelled, makes every teardown in this actor skip to the hard kill.
    pub fn escalation(&self) -> &CancelToken {
        &self.inner.escalate
    }

    /// A portal to this actor's parent (none for the root, or before the handshake).
    pub fn parent(&self) -> Option<Portal> {
        self.inner
            .parent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks this whole actor to cancel itself on behalf of `canceller`: every call it serves ends
    /// with `ContextCancelled { canceller }`, its nurseries are torn down, and it exits. From
    /// now on, a call its parent starts is refused unstarted
    /// ([`RemoteError::refused`](harrow_ipc::RemoteError::refused)). For the root this cancels
    /// the root's nursery.
    pub fn cancel_self(&self, canceller: ActorId) {
        if let Some(parent) = self.parent() {
            parent.refuse_calls(&canceller);
        }
        let mut slot = self
            .inner
            .self_cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(canceller);
        }
        drop(slot);
        self.inner.self_cancel_token.cancel();
    }

    pub(crate) fn self_cancel_token(&self) -> &CancelToken {
        &self.inner.self_cancel_token
    }

    pub(crate) fn self_canceller(&self) -> Option<ActorId> {
        self.inner
            .self_cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_parent(&self, portal: Portal) {
        *self.inner.parent.lock().unwrap_or_else(|p| p.into_inner()) = Some(portal);
    }

    pub(crate) fn track(&self) -> WaitGroupGuard {
        self.inner.tasks.add()
    }

    pub(crate) async fn wait_tracked(&self, bound: Duration) -> bool {
        self.inner.tasks.wait_for(bound).await
    }

    /// Installs this actor as the current one on this thread until the guard drops.
    pub(crate) fn enter(&self) -> CurrentGuard {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        CurrentGuard { prev }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<ActorCtx>> = const { RefCell::new(None) };
}

pub(crate) struct CurrentGuard {
    prev: Option<ActorCtx>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// The actor running on this thread: set inside [`run_actor`] and [`run_root`](crate::run_root),
/// so any function an actor serves can open a nursery of its own.
pub fn current_actor() -> Option<ActorCtx> {
    CURRENT.with(|c| c.borrow().clone())
}

/// [`current_actor`], lent to `f` instead of cloned (no reference count taken: for a look on
/// every call). `f` must not enter another actor's context.
pub fn with_current_actor<R>(f: impl FnOnce(Option<&ActorCtx>) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref()))
}

/// What a child's runtime needs to start: the [`SpawnSpec`] its backend received, the backend's
/// name, and the link's tunables. Made by a backend with [`ActorInit::from_spec`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ActorInit {
    /// Who this actor is, its parent, and what it serves (its resolver and timeouts).
    pub spec: SpawnSpec,
    /// The backend's name, said in `Hello` and in the actor's tracing span.
    pub backend: String,
    /// Link tunables.
    pub link_config: LinkConfig,
    /// Set by [`introduce_in_process`](Self::introduce_in_process): the `Hello` is already
    /// said, and the acceptor it registered waits for the actor's runtime to take it.
    introduced: Option<Arc<Introduction>>,
}

/// What [`ActorInit::introduce_in_process`] did ahead of the actor's thread.
#[derive(Debug)]
struct Introduction {
    /// Taken by the actor's runtime at its start.
    acceptor: std::sync::Mutex<Option<crate::discovery::EarlyAcceptor>>,
}

impl ActorInit {
    /// The init for the child described by `spec`, on backend `backend`.
    ///
    /// The link's `cancel_cleanup` (how long a cancelled call may clean up before this actor
    /// acks its parent's cancel) is three quarters of the spec's `cancel_ack`, so the ack arrives
    /// within the parent's bound.
    pub fn from_spec(spec: SpawnSpec, backend: impl Into<String>) -> Self {
        let mut link_config = LinkConfig::default();
        link_config.cancel_cleanup = spec.timeouts().cancel_ack / 4 * 3;
        ActorInit {
            spec,
            backend: backend.into(),
            link_config,
            introduced: None,
        }
    }

    /// Says this actor's `Hello` to its parent now, on `channel` (the actor's own end, before
    /// it is handed to the actor's thread), and opens the actor to peer links from this
    /// process, so that its parent need not wait for that thread to run: the parent's
    /// `start_actor` returns once the backend has, and the first calls, and any peer's link,
    /// wait in their queues until the actor reads them. The actor's runtime then says no
    /// `Hello` of its own.
    ///
    /// Only for a child in this process on an in-memory channel
    /// ([`run_actor_in_process`]; the `Hello` gives this process's id), and only where nothing
    /// can keep the child from coming up once its thread exists. Once the backend has returned
    /// the child, a failure of its runtime (a panic before it serves) is not a
    /// [`SpawnError`](crate::SpawnError) of `start_actor` but the child's end, which its nursery
    /// reports as a crash. The thread backend uses it; the subint backend does not (an
    /// interpreter may fail to start). Fails only when the parent's end is gone; a second call
    /// does nothing.
    pub async fn introduce_in_process(&mut self, channel: &Channel) -> Result<(), SendError> {
        if self.introduced.is_some() {
            return Ok(());
        }
        let local = LocalInfo {
            id: self.spec.id.clone(),
            backend: self.backend.clone(),
        };
        channel.send(local.hello()).await?;
        let acceptor = crate::discovery::EarlyAcceptor::register(&self.spec.id.uid);
        self.introduced = Some(Arc::new(Introduction {
            acceptor: std::sync::Mutex::new(Some(acceptor)),
        }));
        Ok(())
    }

    /// The acceptor [`introduce_in_process`](Self::introduce_in_process) registered, once.
    fn take_early_acceptor(&self) -> Option<crate::discovery::EarlyAcceptor> {
        let intro = self.introduced.as_ref()?;
        intro
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Replaces the resolver (backends whose functions are not Rust, such as subint, set theirs).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.spec.actor.resolver = Some(resolver);
        self
    }

    /// This actor's identity.
    pub fn id(&self) -> &ActorId {
        &self.spec.id
    }
}

/// How an actor's runtime ended, as the actor itself saw it: *why* it stopped serving. This is
/// not the child's [`Exit`](crate::Exit) (what its parent observes of the thread or process),
/// which a backend derives from the actor's end and from its own means (a panic, a kill).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActorExit {
    /// The parent (or a peer) sent `CancelActor`.
    Cancelled {
        /// Who asked.
        canceller: ActorId,
    },
    /// The parent channel broke; the actor cancelled itself (an orphan never runs on).
    Orphaned(String),
    /// The `Hello` exchange with the parent failed.
    HandshakeFailed(String),
    /// The link was closed locally.
    Closed,
}

/// Runs one actor's runtime on the calling thread until it is cancelled or orphaned.
///
/// This is the single entry every backend's child side calls: it builds the actor's executor on
/// this thread, says `Hello` on `channel` (unless its backend said it for it:
/// [`ActorInit::introduce_in_process`]), serves the parent's calls with the spec's resolver, lets
/// served functions open nurseries of their own ([`open_nursery`](crate::open_nursery)), and on
/// `CancelActor` or a broken parent channel cancels every call, tears down its children (bounded),
/// flushes its last messages and returns.
pub fn run_actor(channel: Channel, init: ActorInit) -> ActorExit {
    run_actor_parked(channel, init, Park::Reactor)
}

/// [`run_actor`] for a `channel` in memory ([`mem::pair`](harrow_portal::ipc::mem::pair)): the
/// actor's thread parks on a futex rather than in the I/O reactor when it waits, which makes
/// every wake-up cheaper (see [`park`](crate::park)). The thread and subint backends use it;
/// a backend whose channel is a socket or pipe calls [`run_actor`].
pub fn run_actor_in_process(channel: Channel, init: ActorInit) -> ActorExit {
    run_actor_parked(channel, init, Park::InProcess)
}

/// [`run_actor_in_process`] with a helper thread that runs the actor's tasks whenever it waits
/// for work of its own ([`CoDriver::drive_until`]): the subint backend's interpreter thread, so
/// that a call reaches it without a hand-off from the actor's thread. The actor's thread runs
/// the tasks whenever the helper does not (see [`CoDriver`]). When this returns the helper
/// drives no more (it was waited for up to the spec's `hard_kill` timeout).
pub fn run_actor_in_process_codriven(
    channel: Channel,
    init: ActorInit,
    codriver: &CoDriver,
) -> ActorExit {
    run_actor_parked(channel, init, Park::CoDriven(codriver, false))
}

/// [`run_actor`] with a helper thread that runs the actor's tasks whenever it waits for work of
/// its own, as [`run_actor_in_process_codriven`] does, for an actor whose channels are sockets:
/// a Python process child, whose interpreter's serving thread is the helper. The two threads
/// take turns waiting in one epoll instance, kept for the whole run, in which the actor's
/// sockets stay registered whichever thread reads them (see
/// [`SharedParker`](harrow_portal::ipc::park::SharedParker)).
pub fn run_actor_codriven(channel: Channel, init: ActorInit, codriver: &CoDriver) -> ActorExit {
    run_actor_parked(channel, init, Park::CoDriven(codriver, true))
}

/// How an actor's thread waits, and who else runs its tasks.
enum Park<'a> {
    /// In the I/O reactor (the parent channel is a socket).
    Reactor,
    /// On a futex (the channel is in memory).
    InProcess,
    /// With a helper running the tasks when it can; on a futex, or (`true`: the channels are
    /// sockets) each thread in an epoll instance of its own.
    CoDriven(&'a CoDriver, bool),
}

fn run_actor_parked(channel: Channel, init: ActorInit, park: Park<'_>) -> ActorExit {
    let span = tracing::info_span!(
        "actor",
        name = %init.spec.id.name,
        uid = %init.spec.id.uid,
        backend = %init.backend
    );
    let _entered = span.enter();
    let exec: Executor = Arc::new(async_executor::Executor::new());
    // A co-driven actor's tasks run on either of two threads, so its readers are tasks too;
    // the others' thread drives them beside the executor.
    let readers = Handoff::new();
    let beside = !matches!(park, Park::CoDriven(..));
    let ctx = ActorCtx::new(
        init.spec.id.clone(),
        init.backend.clone(),
        exec.clone(),
        init.spec.timeouts(),
        init.link_config.clone(),
        init.spec.actor.resolver.clone(),
        crate::discovery::Discovery::default(),
        beside.then(|| readers.clone()),
    );
    let _current = ctx.enter();
    ctx.discovery().set_parent(init.spec.parent.clone());
    if let Some(tree) = init.spec.tree.clone() {
        if init.spec.granted {
            // Handed over by its backend, in a process of its own: listening before its
            // `Hello`, for its parent registers it as soon as it hears that.
            if let Err(e) = crate::discovery::take_tree(&ctx, tree) {
                tracing::warn!(error = %e, "discovery: cannot take the tree handed over");
            }
        } else {
            ctx.discovery().set_tree_shared(tree);
        }
    }
    crate::discovery::start_acceptor(&ctx, init.take_early_acceptor());
    let helper_bound = init.spec.timeouts().hard_kill;
    let main = actor_main(channel, init, ctx.clone());
    let exit = match park {
        Park::InProcess => {
            crate::park::block_on_in_process(Beside::with_tasks(main, &exec, &readers))
        }
        // The channel to the parent is a socket: sleep in an epoll instance that watches it
        // (and the sockets of peers and children read on this thread) directly.
        Park::Reactor => {
            harrow_ipc::park::block_on_following(Beside::with_tasks(main, &exec, &readers))
        }
        Park::CoDriven(co, sockets) => {
            /// Unbinds the helper on every path, a panic included.
            struct Unbind<'a>(&'a CoDriver, std::time::Duration);
            impl Drop for Unbind<'_> {
                fn drop(&mut self) {
                    self.0.unbind(self.1);
                }
            }
            co.bind(exec.clone(), ctx.clone(), sockets);
            let _unbind = Unbind(co, helper_bound);
            let signal = co.clone();
            let main = exec.spawn(async move {
                let exit = main.await;
                signal.main_done();
                exit
            });
            co.own(&exec, main)
        }
    };
    // No more peers: the acceptor and peer links go (their tasks end on the ticks below).
    ctx.discovery().release();
    // Cancelled tasks still queued hold the actor's context (and so the executor): run the queue
    // dry so that they drop their futures before the thread ends.
    while exec.try_tick() {}
    tracing::debug!(?exit, "actor exited");
    exit
}

async fn actor_main(channel: Channel, init: ActorInit, ctx: ActorCtx) -> ActorExit {
    let local = LocalInfo {
        id: init.spec.id.clone(),
        backend: init.backend.clone(),
    };
    let (resolver, exec, config) = (ctx.resolver(), ctx.executor(), init.link_config.clone());
    let established = if init.introduced.is_some() {
        Link::establish_introduced_with_reader(channel, local, resolver, exec, config).await
    } else {
        Link::establish_with_reader(channel, local, resolver, exec, config).await
    }
    .map(|(link, reader)| {
        ctx.run_reader(reader);
        link
    });
    let link = match established {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(error = %e, "handshake with parent failed");
            return ActorExit::HandshakeFailed(e.to_string());
        }
    };
    tracing::debug!(parent = %link.peer().id, "actor serving");
    ctx.set_parent(link.portal());
    let end = async { Some(link.closed().await) }
        .or(async {
            ctx.self_cancel_token().cancelled().await;
            None
        })
        .await;
    ctx.discovery().set_exiting();
    let Some(end) = end else {
        // Cancelled from elsewhere (a child asked): same as a CancelActor, with its canceller.
        let canceller = ctx.self_canceller().unwrap_or_else(|| init.spec.id.clone());
        tracing::debug!(%canceller, "actor cancelled by a peer");
        link.cancel_calls(&canceller);
        ctx.discovery().cancel_peer_calls(&canceller);
        let bound = init
            .spec
            .timeouts()
            .ladder_bound()
            .saturating_add(Duration::from_millis(500));
        link.drain(bound).await;
        if !ctx.wait_tracked(bound).await {
            tracing::warn!("teardown of this actor's children did not finish within {bound:?}");
        }
        ctx.discovery()
            .shutdown(init.link_config.close_flush_timeout)
            .await;
        close_and_flush(&link, &init.link_config).await;
        return ActorExit::Cancelled { canceller };
    };
    let exit = match end {
        LinkEnd::CancelRequested { canceller, reason } => {
            tracing::debug!(%canceller, %reason, "actor cancelled");
            ctx.discovery().cancel_peer_calls(&canceller);
            ActorExit::Cancelled { canceller }
        }
        LinkEnd::Broken(reason) => {
            tracing::debug!(%reason, "parent channel broke; cancelling self");
            link.cancel_calls(&init.spec.id);
            ctx.discovery().cancel_peer_calls(&init.spec.id);
            ActorExit::Orphaned(reason)
        }
        LinkEnd::Closed => {
            ctx.discovery().cancel_peer_calls(&init.spec.id);
            ActorExit::Closed
        }
        #[allow(unreachable_patterns)]
        other => ActorExit::Orphaned(format!("{other:?}")),
    };
    // Served calls are cancelled; wait for them to be dropped so that the nurseries they held
    // have handed their teardown to the actor, then for those teardowns and any shields.
    let bound = init
        .spec
        .timeouts()
        .ladder_bound()
        .saturating_add(Duration::from_millis(500));
    link.drain(bound).await;
    if !ctx.wait_tracked(bound).await {
        tracing::warn!("teardown of this actor's children did not finish within {bound:?}");
    }
    ctx.discovery()
        .shutdown(init.link_config.close_flush_timeout)
        .await;
    close_and_flush(&link, &init.link_config).await;
    exit
}

/// Closes the parent link and lets its writer flush (bounded), so that the last answers and the
/// `CancelAck` leave, and no I/O task outlives the actor's executor.
async fn close_and_flush(link: &Link, config: &LinkConfig) {
    link.close();
    let bound = config
        .close_flush_timeout
        .saturating_add(Duration::from_millis(100));
    if crate::scope::move_on_after(bound, link.io_stopped())
        .await
        .is_none()
    {
        tracing::warn!("the parent link's I/O did not stop within {bound:?}");
    }
}

// ------------------------------------------------------------------------------------------------
// Shield.
//
// In Rust, cancelling a task is dropping its future. A shield keeps a future running to completion
// even if its caller is dropped, on the current actor's executor, and the actor does not exit
// before it ends (the parent's hard-kill bound still applies: a shield defers the graceful cancel,
// it never absorbs the escalation).

/// Runs `fut` to completion even if the caller is dropped (cancelled) meanwhile.
///
/// Inside an actor, the shielded future runs as a task on the actor's executor and the actor
/// does not exit before it ends; the graceful cancel waits for it, the hard kill does not.
/// Outside an actor there is nothing to keep it alive: it simply runs inline.
pub async fn shield<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_actor() {
        Some(actor) => {
            let guard = actor.track();
            let task = actor.executor().spawn(async move {
                let out = fut.await;
                drop(guard);
                out
            });
            Detaching(Some(task)).await
        }
        // Outside an actor there is no executor to outlive the caller: run inline.
        None => fut.await,
    }
}

/// A task handle that detaches (keeps running) instead of cancelling when dropped.
struct Detaching<T>(Option<async_executor::Task<T>>);

impl<T> Future for Detaching<T> {
    type Output = T;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let task = self.0.as_mut().expect("polled after completion");
        match task.poll(cx) {
            std::task::Poll::Ready(v) => {
                self.0 = None;
                std::task::Poll::Ready(v)
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<T> Drop for Detaching<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_lite::future::block_on;
    use harrow_ipc::wait::deadline;
    use harrow_ipc::{ActorId, Channel, Msg, PROTOCOL_VERSION, mem};

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    /// The next message on `end`, within [`BOUND`].
    fn next(end: &Channel, what: &str) -> Msg {
        block_on(deadline(BOUND, end.recv()))
            .unwrap_or_else(|| panic!("no {what} within {BOUND:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    fn hello_from(end: &Channel, id: &ActorId) {
        let hello = LocalInfo {
            id: id.clone(),
            backend: "test".into(),
        }
        .hello();
        block_on(end.send(hello)).expect("the actor's end is open");
    }

    #[test]
    fn an_introduced_actor_is_greeted_and_reachable_before_its_thread_runs() {
        let parent = ActorId::new("parent");
        let spec = SpawnSpec::new(ActorId::new("introduced"), parent.clone());
        let mut init = ActorInit::from_spec(spec, "test");
        let id = init.id().clone();
        let (parent_end, child_end) = mem::pair();
        block_on(init.introduce_in_process(&child_end)).expect("the parent's end is open");

        // No thread runs the actor yet: its Hello is already there, said for it.
        match next(&parent_end, "Hello") {
            Msg::Hello {
                actor,
                protocol,
                pid,
                backend,
            } => {
                assert_eq!(actor, id);
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(pid, std::process::id());
                assert_eq!(backend, "test");
            }
            other => panic!("expected the actor's Hello, got {}", other.kind_name()),
        }
        // ... and a peer of this process can already hand it a link.
        let (peer_end, accepted_end) = mem::pair();
        assert!(
            crate::discovery::tree::hand_to(&id.uid, accepted_end),
            "the introduced actor takes peer links before its thread runs"
        );

        let actor = std::thread::spawn(move || run_actor_in_process(child_end, init));
        hello_from(&parent_end, &parent);
        // The peer's link, handed over before the thread ran, is answered once it does.
        hello_from(&peer_end, &ActorId::new("peer"));
        match next(&peer_end, "the actor's Hello to its peer") {
            Msg::Hello { actor, .. } => assert_eq!(actor, id),
            other => panic!(
                "expected a Hello on the peer link, got {}",
                other.kind_name()
            ),
        }
        // The actor says no Hello of its own to its parent: the next message it sends there is
        // the answer to the cancel.
        let reason = "the test is done".to_owned();
        block_on(parent_end.send(Msg::CancelActor { reason })).expect("the actor's end is open");
        match next(&parent_end, "CancelAck") {
            Msg::CancelAck { .. } => {}
            other => panic!("expected CancelAck, got {}", other.kind_name()),
        }
        parent_end.close();
        let exit = actor.join().expect("the actor's thread did not panic");
        assert!(
            matches!(exit, ActorExit::Cancelled { ref canceller } if *canceller == parent),
            "{exit:?}"
        );
    }
}
