//! Discovery and peer portals: actors find each other by name and talk directly.
//!
//! - **The registrar** lives in the root. Every actor is registered by its parent once it said
//!   `Hello` (so it is findable as soon as `start_actor` returns), and removed with its whole
//!   subtree when its parent saw it end. An actor may add names ([`ActorCtx::register_names`]),
//!   which is also how a restarted actor re-registers under a well-known name.
//! - **Lookups** ([`ActorCtx::find_actor`], [`ActorCtx::wait_for_actor`],
//!   [`ActorCtx::query_actors`], and the free functions of this module that use
//!   [`current_actor`](crate::current_actor)) travel up the tree to the root as calls of the
//!   internal function `harrow.discovery:registrar`, each hop relaying. Names may repeat: a
//!   lookup by name returns the live actor that **claimed that name first** (its own name when
//!   it registered, an extra one when it was added; stable while it lives); a lookup by uid
//!   returns exactly that actor.
//! - **Peer portals**: a found actor is reached over a link of its own, with the whole protocol
//!   (calls, contexts, streams with credit, `cancel_actor`). In the same process the link runs
//!   over the in-process `mem` transport; across processes over the target process's unix socket
//!   in the tree's runtime directory (mode 0700), after a challenge-response proving the tree's
//!   secret ([`handshake`]). Links are cached per peer and end when either side exits.
//! - A portal to oneself is refused ([`DiscoveryError::SelfPortal`]).
//! - A `CancelActor` received over a peer link cancels the whole actor on the requester's
//!   behalf: every call it serves, on any link, ends with `ContextCancelled` naming the requester.

pub mod handshake;
mod registrar;
mod route;
pub(crate) mod tree;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harrow_ipc::wait::{Event, deadline, wait_until_some};
use harrow_ipc::{ActorId, Channel, ErrorKind, Value, from_value, to_value};
use harrow_portal::{
    CallError, CallFuture, Invocation, Link, LinkEnd, LocalInfo, Portal, Resolver,
};
use serde::{Deserialize, Serialize};

use crate::actor::ActorCtx;

pub use registrar::ActorEntry;
pub(crate) use registrar::Registrar;
pub(crate) use tree::TreeInfo;
pub use tree::{check_runtime_dir, recent_refusals};

/// The module of the runtime's own discovery functions (served by every actor).
pub const DISCOVERY_MODULE: &str = "harrow.discovery";
const REGISTRAR_FN: &str = "harrow.discovery:registrar";
const TREE_FN: &str = "harrow.discovery:tree";
const TUNNEL_FN: &str = "harrow.discovery:tunnel";

/// Why a discovery operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Called outside any actor.
    #[error("discovery needs a running actor (call it inside run_root or a served function)")]
    NoActor,
    /// The registrar could not be reached (a broken link on the way to the root).
    #[error("the registrar is unreachable: {0}")]
    Registrar(String),
    /// Nobody answered to that name within the bound.
    #[error("no actor named {name:?} appeared within {timeout:?}")]
    Timeout {
        /// The name waited for.
        name: String,
        /// The bound.
        timeout: Duration,
    },
    /// A peer portal to the calling actor itself was asked for.
    #[error("actor {0} asked for a portal to itself: use its own functions directly")]
    SelfPortal(ActorId),
    /// The actor was found but could not be reached (no route to it, a broken link on the
    /// way, no handshake in time).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The actor was found but has ended (it is on its way out of the registry): its process
    /// no longer listens, or it no longer takes peer links. [`ActorCtx::find_actor`] and
    /// [`ActorCtx::find_actor_by_uid`] answer `None` for it.
    #[error("peer gone: {0}")]
    Gone(String),
    /// The peer handshake failed.
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeError),
    /// The link's `Hello` exchange with the peer failed, or the peer was not who was expected.
    #[error("peer link: {0}")]
    Link(String),
    /// The tree's runtime directory is unsafe or unusable.
    #[error("runtime directory {dir:?} refused: {reason}")]
    RuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The tree's secret has not reached this actor (its parent never handed it down).
    #[error("this actor does not know its tree's secret yet: {0}")]
    NoTree(String),
    /// Setting up discovery failed (randomness, a socket, a thread).
    #[error("discovery setup: {0}")]
    Setup(String),
}

/// A request to the registrar (relayed hop by hop to the root).
#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Register(ActorEntry),
    AddNames { uid: String, names: Vec<String> },
    Remove { uid: String },
    Find { name: String },
    FindUid { uid: String },
    Wait { name: String, timeout_ms: u64 },
    List,
}

#[derive(Debug, Serialize, Deserialize)]
enum Resp {
    Done(bool),
    Entry(Option<ActorEntry>),
    Entries(Vec<ActorEntry>),
}

// ------------------------------------------------------------------------------------------------
// Per-actor state.

/// What one actor keeps for discovery: the registrar (root only), the tree, its peer links.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    registrar: Option<Arc<Registrar>>,
    tree: Mutex<Option<Arc<TreeInfo>>>,
    tree_ev: Event,
    parent: Mutex<Option<ActorId>>,
    peers: Mutex<HashMap<u64, Arc<Link>>>,
    next_peer: AtomicU64,
    acceptor: Mutex<Option<tree::AcceptorGuard>>,
    /// Set when this actor started its process's listener (a non-root process): it stops it.
    owns_listener: Mutex<Option<String>>,
    /// Set for the first actor of a host domain (the root, a child on another host): at its
    /// exit it stops its process's listener and removes the domain's runtime directory.
    domain_top: std::sync::atomic::AtomicBool,
    /// The portals to this actor's live children, by uid: the tree links routed peer links
    /// travel down.
    children: Mutex<HashMap<String, Portal>>,
    /// Set once this (non-root) actor is exiting: its parent removes its whole subtree from the
    /// registrar, so its own nurseries need not unregister each child on the way out.
    exiting: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Discovery {
    pub(crate) fn for_root() -> Self {
        Discovery {
            registrar: Some(Arc::new(Registrar::default())),
            domain_top: true.into(),
            ..Default::default()
        }
    }

    pub(crate) fn tree(&self) -> Option<Arc<TreeInfo>> {
        lock(&self.tree).clone()
    }

    fn set_tree(&self, t: TreeInfo) {
        self.set_tree_shared(Arc::new(t));
    }

    /// Sets the tree's data once (a later one is ignored), and wakes whoever waits for it.
    pub(crate) fn set_tree_shared(&self, t: Arc<TreeInfo>) {
        lock(&self.tree).get_or_insert(t);
        self.tree_ev.notify(usize::MAX);
    }

    async fn wait_tree(&self, bound: Duration) -> Result<Arc<TreeInfo>, DiscoveryError> {
        deadline(bound, wait_until_some(&self.tree_ev, || self.tree()))
            .await
            .ok_or_else(|| {
                DiscoveryError::NoTree(format!("not handed down by the parent within {bound:?}"))
            })
    }

    /// After the actor's executor stopped: drops the acceptor and the peer links (closing them),
    /// so that the tasks waiting on them end on the executor's last ticks.
    pub(crate) fn release(&self) {
        drop(lock(&self.acceptor).take());
        lock(&self.children).clear();
        let links: Vec<Arc<Link>> = lock(&self.peers).drain().map(|(_, l)| l).collect();
        for l in &links {
            l.close();
        }
    }

    /// This actor is on its way out (see `exiting`).
    pub(crate) fn set_exiting(&self) {
        self.exiting.store(true, Ordering::Release);
    }

    pub(crate) fn set_parent(&self, parent: ActorId) {
        *lock(&self.parent) = Some(parent);
    }

    fn live_peer(&self, uid: &str) -> Option<Portal> {
        lock(&self.peers)
            .values()
            .find(|l| l.peer().id.uid == uid && !l.is_closed())
            .map(|l| l.portal())
    }

    /// Cancels every call this actor serves over its peer links, on behalf of `canceller`.
    pub(crate) fn cancel_peer_calls(&self, canceller: &ActorId) {
        for l in lock(&self.peers).values() {
            l.cancel_calls(canceller);
        }
    }

    /// At the actor's exit: no more peers come in, every peer link is drained (bounded), closed
    /// and its I/O stopped, and a listener this actor started is stopped.
    pub(crate) async fn shutdown(&self, bound: Duration) {
        drop(lock(&self.acceptor).take());
        lock(&self.children).clear();
        let links: Vec<Arc<Link>> = lock(&self.peers).drain().map(|(_, l)| l).collect();
        if !links.is_empty() {
            // One bound for all of them, not one each.
            let _ = deadline(bound, async {
                for l in &links {
                    l.drain(bound).await;
                }
            })
            .await;
            for l in &links {
                l.close();
            }
            let _ = deadline(bound, async {
                for l in &links {
                    l.io_stopped().await;
                }
            })
            .await;
        }
        if let Some(tree_id) = lock(&self.owns_listener).take() {
            tree::stop_listener(&tree_id);
        }
        if self.domain_top.load(Ordering::Acquire) {
            // The root, or the first actor of another host domain: its process's listener and
            // the domain's runtime directory go with it.
            if let Some(t) = self.tree() {
                tree::stop_listener(&t.id);
                if t.root_pid == std::process::id() && t.dir.exists() {
                    let _ = std::fs::remove_dir_all(&t.dir);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Setup at the actor's start, hooks for the nursery.

/// At the root's start: the tree's secret and directory, the registrar's first entry.
pub(crate) fn init_root(ctx: &ActorCtx) {
    match TreeInfo::new() {
        Ok(t) => ctx.discovery().set_tree(t),
        Err(e) => {
            tracing::warn!(error = %e, "discovery: no tree secret; peers across processes will fail")
        }
    }
    if let Some(reg) = &ctx.discovery().registrar {
        let domain = ctx
            .discovery()
            .tree()
            .map(|t| t.domain.clone())
            .unwrap_or_default();
        reg.register(
            ActorEntry::new(ctx.id().clone(), std::process::id(), ctx.backend(), None)
                .with_domain(domain),
        );
    }
    start_acceptor(ctx, None);
}

/// An actor's acceptor registered before its thread runs
/// ([`ActorInit::introduce_in_process`](crate::ActorInit::introduce_in_process)): peers of this
/// process may hand it channels from then on, and they wait in its queue.
#[derive(Debug)]
pub(crate) struct EarlyAcceptor {
    guard: tree::AcceptorGuard,
    rx: async_channel::Receiver<Channel>,
}

impl EarlyAcceptor {
    pub(crate) fn register(uid: &str) -> Self {
        let (guard, rx) = tree::add_acceptor(uid);
        EarlyAcceptor { guard, rx }
    }
}

/// At an actor's start (before its `Hello`, or with the acceptor registered when it was said
/// for it): it takes peer links from this process from now on.
pub(crate) fn start_acceptor(ctx: &ActorCtx, early: Option<EarlyAcceptor>) {
    let (guard, rx) = match early {
        Some(EarlyAcceptor { guard, rx }) => (guard, rx),
        None => tree::add_acceptor(&ctx.id().uid),
    };
    *lock(&ctx.discovery().acceptor) = Some(guard);
    let me = ctx.clone();
    ctx.executor()
        .spawn(async move {
            while let Ok(channel) = rx.recv().await {
                let me2 = me.clone();
                me.executor()
                    .spawn(async move {
                        let local = LocalInfo {
                            id: me2.id().clone(),
                            backend: me2.backend().to_owned(),
                        };
                        match Link::establish(
                            channel,
                            local,
                            me2.resolver(),
                            me2.executor(),
                            me2.link_config(),
                        )
                        .await
                        {
                            Ok(link) => {
                                tracing::debug!(peer = %link.peer().id, "peer link accepted");
                                adopt(&me2, link);
                            }
                            Err(e) => tracing::warn!(error = %e, "peer link refused at Hello"),
                        }
                    })
                    .detach();
            }
        })
        .detach();
}

/// This actor, in a process of its own, takes the tree's data its parent handed it (in a call,
/// or its backend in its spec): it starts its host domain when it is the first actor of one, and
/// otherwise listens for its peers (once per process), before anyone can find it.
pub(crate) fn take_tree(ctx: &ActorCtx, mut tree: Arc<TreeInfo>) -> Result<(), DiscoveryError> {
    if tree.starts_domain() {
        // A child on another host: its own domain, its own directory there (created on first
        // use), nothing of the parent's host.
        Arc::make_mut(&mut tree).start_domain();
        ctx.discovery().domain_top.store(true, Ordering::Release);
    } else if tree.root_pid != std::process::id() && tree::ensure_listener(&tree)? {
        *lock(&ctx.discovery().owns_listener) = Some(tree.id.clone());
    }
    ctx.discovery().set_tree_shared(tree);
    Ok(())
}

/// Keeps a peer link, and watches it: a `CancelActor` over it cancels this actor on the
/// requester's behalf; an ended link is forgotten.
fn adopt(ctx: &ActorCtx, link: Link) -> Portal {
    let link = Arc::new(link);
    let portal = link.portal();
    let key = ctx.discovery().next_peer.fetch_add(1, Ordering::Relaxed);
    lock(&ctx.discovery().peers).insert(key, link.clone());
    let me = ctx.clone();
    ctx.executor()
        .spawn(async move {
            let end = link.closed().await;
            drop(link);
            if let LinkEnd::CancelRequested { canceller, reason } = end {
                tracing::debug!(%canceller, %reason, "cancelled by a peer");
                me.cancel_peer_calls_and_self(canceller);
            }
            // Dropping the last handle closes the link (idempotent).
            let _ = lock(&me.discovery().peers).remove(&key);
        })
        .detach();
    portal
}

impl ActorCtx {
    fn cancel_peer_calls_and_self(&self, canceller: ActorId) {
        self.discovery().cancel_peer_calls(&canceller);
        self.cancel_self(canceller);
    }
}

/// Before (or once) a child in another process of this host comes up: peers in its process
/// will connect back to this one, so this process listens too. The root's process creates the
/// runtime directory here, before the child may look for it.
pub(crate) fn listen_for_a_child(actor: &ActorCtx, tree: &TreeInfo) {
    match tree::ensure_listener(tree) {
        Ok(created) => {
            if created && tree.root_pid != std::process::id() {
                *lock(&actor.discovery().owns_listener) = Some(tree.id.clone());
            }
        }
        Err(e) => tracing::warn!(error = %e, "discovery: cannot listen for peers"),
    }
}

/// How a new child got its tree's data, if it got it without a call from its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TreeGiven {
    /// Not yet: its parent hands it down in a call.
    No,
    /// In its spec, in its parent's process (it takes it only if its `Hello` says so).
    InProcess,
    /// In its spec, handed over by its backend as it started the child in a process of its
    /// own, which listens for its peers before it says `Hello`.
    AtSpawn,
}

/// The nursery saw `link`'s child say `Hello`: hand the tree down, register it. A child that
/// may run on another host (`other_host`) starts a host domain of its own. `given` says
/// whether the child took this actor's tree data at its start, so that it needs no call for it.
pub(crate) async fn child_up(actor: &ActorCtx, link: &Link, other_host: bool, given: TreeGiven) {
    let peer = link.peer().clone();
    let bound = actor.link_config().hello_timeout;
    lock(&actor.discovery().children).insert(peer.id.uid.clone(), link.portal());
    let mut domain = String::new();
    if let Some(mut tree) = actor.discovery().tree() {
        if other_host {
            // It never connects to this host's sockets: no listener here for its sake.
            match tree.for_other_host() {
                Ok(t) => tree = Arc::new(t),
                Err(e) => tracing::warn!(error = %e, "discovery: no domain for a remote child"),
            }
        }
        domain = tree.domain.clone();
        let other_process = !other_host && peer.pid != std::process::id();
        if other_process && given != TreeGiven::AtSpawn {
            // (A child given the tree at its start had this process listen before it started.)
            listen_for_a_child(actor, &tree);
        }
        let args = match to_value(&*tree) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "discovery: cannot encode the tree info");
                Value::Null
            }
        };
        let portal = link.portal();
        let in_spec = match given {
            TreeGiven::No => false,
            TreeGiven::InProcess => peer.pid == std::process::id(),
            TreeGiven::AtSpawn => !other_host,
        };
        if in_spec {
            // It has the tree already, from its spec (the same `Arc` in this process), and
            // listens if it must.
        } else if other_process || other_host {
            // Its listener (or its domain) must be up before anyone can find it.
            match deadline(bound, portal.run(TREE_FN, args)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(child = %peer.id, error = %e, "tree not handed down")
                }
                None => tracing::debug!(child = %peer.id, "tree hand-down timed out"),
            }
        } else {
            actor
                .executor()
                .spawn(async move {
                    if let Err(e) = portal.run(TREE_FN, args).await {
                        tracing::debug!(error = %e, "tree not handed down");
                    }
                })
                .detach();
        }
    }
    let entry = ActorEntry::new(
        peer.id.clone(),
        peer.pid,
        peer.backend.clone(),
        Some(actor.id().uid.clone()),
    )
    .with_domain(domain);
    match deadline(bound, request(actor, Req::Register(entry))).await {
        Some(Ok(_)) => {}
        Some(Err(e)) => tracing::debug!(child = %peer.id, error = %e, "not registered"),
        None => tracing::debug!(child = %peer.id, "registration timed out"),
    }
}

/// The nursery saw its child `id` end: it and its subtree leave the registrar.
pub(crate) async fn child_gone(actor: &ActorCtx, id: &ActorId) {
    lock(&actor.discovery().children).remove(&id.uid);
    if actor.discovery().exiting.load(Ordering::Acquire) {
        // Our parent removes us with our subtree: no relay per child during the teardown.
        return;
    }
    let bound = actor.timeouts().cancel_ack;
    let req = Req::Remove {
        uid: id.uid.clone(),
    };
    if let Some(Err(e)) = deadline(bound, request(actor, req)).await {
        tracing::debug!(child = %id, error = %e, "not unregistered");
    }
}

// ------------------------------------------------------------------------------------------------
// The registrar, locally or up the tree.

async fn request(ctx: &ActorCtx, req: Req) -> Result<Resp, DiscoveryError> {
    if let Some(reg) = &ctx.discovery().registrar {
        return Ok(match req {
            Req::Register(e) => {
                reg.register(e);
                Resp::Done(true)
            }
            Req::AddNames { uid, names } => Resp::Done(reg.add_names(&uid, names)),
            Req::Remove { uid } => Resp::Done(!reg.remove(&uid).is_empty()),
            Req::Find { name } => Resp::Entry(reg.find(&name)),
            Req::FindUid { uid } => Resp::Entry(reg.find_uid(&uid)),
            Req::Wait { name, timeout_ms } => {
                Resp::Entry(reg.wait(&name, Duration::from_millis(timeout_ms)).await)
            }
            Req::List => Resp::Entries(reg.list()),
        });
    }
    let parent = ctx
        .parent()
        .ok_or_else(|| DiscoveryError::Registrar("this actor has no parent link yet".into()))?;
    let args = to_value(&req).map_err(|e| DiscoveryError::Registrar(e.to_string()))?;
    let v = parent
        .run(REGISTRAR_FN, args)
        .await
        .map_err(|e| DiscoveryError::Registrar(e.to_string()))?;
    from_value(v).map_err(|e| DiscoveryError::Registrar(format!("bad answer: {e}")))
}

fn entry_of(resp: Resp) -> Result<Option<ActorEntry>, DiscoveryError> {
    match resp {
        Resp::Entry(e) => Ok(e),
        other => Err(DiscoveryError::Registrar(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

// ------------------------------------------------------------------------------------------------
// The public API.

impl ActorCtx {
    /// The live actor answering to `name` (the first to claim it, if several do), without
    /// connecting to it.
    pub async fn lookup_actor(&self, name: &str) -> Result<Option<ActorEntry>, DiscoveryError> {
        entry_of(
            request(
                self,
                Req::Find {
                    name: name.to_owned(),
                },
            )
            .await?,
        )
    }

    /// A portal to the live actor answering to `name` (the first to claim it, if several
    /// do), or `None` when there is none. An actor still registered but found ended when it is
    /// reached (it is on its way out of the registry) counts as none.
    pub async fn find_actor(&self, name: &str) -> Result<Option<Portal>, DiscoveryError> {
        match self.lookup_actor(name).await? {
            Some(e) => live(self.portal_to(&e).await),
            None => Ok(None),
        }
    }

    /// A portal to the live actor with this uid, or `None`.
    pub async fn find_actor_by_uid(&self, uid: &str) -> Result<Option<Portal>, DiscoveryError> {
        let req = Req::FindUid {
            uid: uid.to_owned(),
        };
        match entry_of(request(self, req).await?)? {
            Some(e) => live(self.portal_to(&e).await),
            None => Ok(None),
        }
    }

    /// Waits, at most `timeout`, for an actor answering to `name` to be registered (it may not
    /// exist yet), then returns a portal to it.
    pub async fn wait_for_actor(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Portal, DiscoveryError> {
        let req = Req::Wait {
            name: name.to_owned(),
            // The request travels as a signed integer: a longer wait (`Duration::MAX`, say)
            // is as good as for ever.
            timeout_ms: u64::try_from(timeout.as_millis().min(i64::MAX as u128))
                .unwrap_or(i64::MAX as u64),
        };
        // Each hop relays; the margin lets the root's own bound answer first.
        let found = deadline(
            timeout.saturating_add(Duration::from_secs(1)),
            request(self, req),
        )
        .await
        .unwrap_or(Ok(Resp::Entry(None)))?;
        match entry_of(found)? {
            Some(e) => self.portal_to(&e).await,
            None => Err(DiscoveryError::Timeout {
                name: name.to_owned(),
                timeout,
            }),
        }
    }

    /// Every live actor of the tree, in registration order.
    pub async fn query_actors(&self) -> Result<Vec<ActorEntry>, DiscoveryError> {
        match request(self, Req::List).await? {
            Resp::Entries(v) => Ok(v),
            other => Err(DiscoveryError::Registrar(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Registers extra names for this actor (kept until it exits). Also the way to re-register
    /// a well-known name, for example from a restarted actor.
    pub async fn register_names(&self, names: &[&str]) -> Result<(), DiscoveryError> {
        let id = self.id().clone();
        self.register_names_for(&id, names).await
    }

    /// Registers extra names for another live actor of the tree, for example a supervisor
    /// pointing a well-known name at the child it just restarted. The names go when that actor
    /// exits.
    pub async fn register_names_for(
        &self,
        id: &ActorId,
        names: &[&str],
    ) -> Result<(), DiscoveryError> {
        let req = Req::AddNames {
            uid: id.uid.clone(),
            names: names.iter().map(|s| (*s).to_owned()).collect(),
        };
        match request(self, req).await? {
            Resp::Done(true) => Ok(()),
            _ => Err(DiscoveryError::Registrar(format!(
                "actor {id} is not registered"
            ))),
        }
    }

    /// A peer portal to `entry`'s actor: the cached link if one is live, else a new one (in
    /// memory in the same process, over its process's socket otherwise).
    pub async fn portal_to(&self, entry: &ActorEntry) -> Result<Portal, DiscoveryError> {
        if entry.id == *self.id() {
            return Err(DiscoveryError::SelfPortal(entry.id.clone()));
        }
        if let Some(p) = self.discovery().live_peer(&entry.id.uid) {
            return Ok(p);
        }
        let config = self.link_config();
        let bound = config.hello_timeout;
        let entry = if entry.domain.is_empty() || !entry.route.is_empty() {
            entry.clone()
        } else {
            // An entry without its route (built by hand): ask the registrar for it.
            let req = Req::FindUid {
                uid: entry.id.uid.clone(),
            };
            entry_of(request(self, req).await?)?
                .ok_or_else(|| DiscoveryError::Gone(format!("actor {} has ended", entry.id)))?
        };
        let channel = match route::next_hop(self, &entry).await? {
            route::Hop::Direct => direct_channel(self, &entry, bound).await?,
            route::Hop::Tree(via) => {
                let (ctx, stream) = route::open(&via, &entry, route::MAX_HOPS, bound).await?;
                route::channel_through(self, &entry, ctx, stream)
            }
        };
        let local = LocalInfo {
            id: self.id().clone(),
            backend: self.backend().to_owned(),
        };
        let link = Link::establish(channel, local, self.resolver(), self.executor(), config)
            .await
            .map_err(|e| DiscoveryError::Link(e.to_string()))?;
        if link.peer().id != entry.id {
            link.close();
            return Err(DiscoveryError::Link(format!(
                "expected {} but {} answered",
                entry.id,
                link.peer().id
            )));
        }
        Ok(adopt(self, link))
    }

    /// The runtime directory of this actor's host domain (mode 0700; one unix socket per
    /// process that has peers in other processes), once this actor knows its tree. The path is
    /// not a secret.
    pub fn runtime_dir(&self) -> Option<PathBuf> {
        self.discovery().tree().map(|t| t.dir.clone())
    }

    /// How many peer links this actor holds right now.
    pub fn peer_links(&self) -> usize {
        lock(&self.discovery().peers)
            .values()
            .filter(|l| !l.is_closed())
            .count()
    }
}

/// A found actor's portal, or `None` for one that was found ended when reached.
fn live(portal: Result<Portal, DiscoveryError>) -> Result<Option<Portal>, DiscoveryError> {
    match portal {
        Ok(p) => Ok(Some(p)),
        Err(DiscoveryError::Gone(why)) => {
            tracing::debug!(%why, "found actor is gone");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A channel straight to `entry`'s actor, which lives in this actor's host domain: in memory
/// within this process, over its process's unix socket (after the peer handshake) otherwise.
async fn direct_channel(
    ctx: &ActorCtx,
    entry: &ActorEntry,
    bound: Duration,
) -> Result<harrow_ipc::Channel, DiscoveryError> {
    if entry.pid == std::process::id() {
        let (mine, theirs) = harrow_ipc::mem::pair();
        if !tree::hand_to(&entry.id.uid, theirs) {
            return Err(DiscoveryError::Gone(format!(
                "actor {} has ended",
                entry.id
            )));
        }
        Ok(mine)
    } else {
        let tree = ctx.discovery().wait_tree(bound).await?;
        tree::connect(&tree, entry.pid, &entry.id.uid, bound).await
    }
}

/// [`ActorCtx::find_actor`] for the current actor.
pub async fn find_actor(name: &str) -> Result<Option<Portal>, DiscoveryError> {
    crate::current_actor()
        .ok_or(DiscoveryError::NoActor)?
        .find_actor(name)
        .await
}

/// [`ActorCtx::wait_for_actor`] for the current actor.
pub async fn wait_for_actor(name: &str, timeout: Duration) -> Result<Portal, DiscoveryError> {
    crate::current_actor()
        .ok_or(DiscoveryError::NoActor)?
        .wait_for_actor(name, timeout)
        .await
}

/// [`ActorCtx::query_actors`] for the current actor.
pub async fn query_actors() -> Result<Vec<ActorEntry>, DiscoveryError> {
    crate::current_actor()
        .ok_or(DiscoveryError::NoActor)?
        .query_actors()
        .await
}

// ------------------------------------------------------------------------------------------------
// The resolver every actor serves with: its own functions, plus `harrow.discovery:*`.

/// Serves `harrow.discovery:*` and hands every other call to the actor's own resolver.
#[derive(Debug)]
pub(crate) struct WithDiscovery {
    pub(crate) inner: Option<Arc<dyn Resolver>>,
}

impl Resolver for WithDiscovery {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        if call.func.module() != DISCOVERY_MODULE {
            return match &self.inner {
                Some(r) => r.start(call),
                None => Err(CallError::new(
                    ErrorKind::NotFound,
                    "NotFound",
                    format!("{}: this actor serves no functions", call.func),
                )),
            };
        }
        let bad = |m: String| CallError::new(ErrorKind::BadArguments, "BadArguments", m);
        let caller = call.ctx.caller().clone();
        match call.func.function() {
            "registrar" => {
                let req: Req = from_value(call.args).map_err(|e| bad(e.to_string()))?;
                Ok(Box::pin(async move {
                    let ctx = crate::current_actor().ok_or_else(|| {
                        CallError::new(ErrorKind::Runtime, "DiscoveryError", "no current actor")
                    })?;
                    let resp = request(&ctx, req).await.map_err(|e| {
                        CallError::new(ErrorKind::Runtime, "DiscoveryError", e.to_string())
                    })?;
                    to_value(&resp).map_err(|e| {
                        CallError::new(ErrorKind::Runtime, "DiscoveryError", e.to_string())
                    })
                }))
            }
            "tree" => {
                let tree: TreeInfo = from_value(call.args).map_err(|e| bad(e.to_string()))?;
                Ok(Box::pin(async move {
                    let ctx = crate::current_actor().ok_or_else(|| {
                        CallError::new(ErrorKind::Runtime, "DiscoveryError", "no current actor")
                    })?;
                    if lock(&ctx.discovery().parent).as_ref() != Some(&caller) {
                        return Err(CallError::new(
                            ErrorKind::Runtime,
                            "DiscoveryError",
                            format!("only this actor's parent hands the tree down, not {caller}"),
                        ));
                    }
                    take_tree(&ctx, Arc::new(tree)).map_err(|e| {
                        CallError::new(ErrorKind::Runtime, "DiscoveryError", e.to_string())
                    })?;
                    Ok(Value::Null)
                }))
            }
            "tunnel" => {
                if call.kind != harrow_ipc::CallKind::Context {
                    return Err(bad(format!(
                        "{TUNNEL_FN} is a context (open it with open_context)"
                    )));
                }
                Ok(Box::pin(route::serve(call.ctx, call.args)))
            }
            other => Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{DISCOVERY_MODULE}:{other}: no such discovery function"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use futures_lite::future::block_on;
    use harrow_ipc::{Msg, mem};

    use super::*;
    use crate::{
        ActorInit, ActorSpec, BoxFuture, Capabilities, Child, Exit, RootConfig, SpawnBackend,
        SpawnError, SpawnSpec, Timeouts, run_root,
    };

    const BOUND: Duration = Duration::from_secs(10);

    /// A backend whose child is the test's own end of the channel, with whether the spec it was
    /// given carried the tree. It runs in this process, and claims either that (`in_process`)
    /// or that it hands the tree over at the child's start, as one in another process would
    /// (`tree_at_spawn`: the grant goes through its bytes).
    #[derive(Debug)]
    struct Bare(Mutex<mpsc::Sender<(Channel, bool)>>, Capabilities);

    #[derive(Debug)]
    struct BareChild {
        id: ActorId,
        channel: Option<Channel>,
    }

    impl SpawnBackend for Bare {
        fn name(&self) -> &'static str {
            "bare"
        }

        fn capabilities(&self) -> Capabilities {
            self.1.clone()
        }

        fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
            Box::pin(async move {
                let id = spec.id.clone();
                let failed = |reason: String| SpawnError::Failed {
                    actor: id.clone(),
                    reason,
                };
                let (parent_end, child_end) = mem::pair();
                let had_tree = spec.tree.is_some();
                let spec = match (self.1.tree_at_spawn, spec.tree_grant()) {
                    (true, Some(grant)) => {
                        // As a child in another process gets it: bytes, and a spec without it.
                        let bytes = grant.to_bytes().map_err(|e| failed(e.to_string()))?;
                        let grant = crate::TreeGrant::from_bytes(&bytes)
                            .map_err(|e| failed(e.to_string()))?;
                        let text = spec.encode().map_err(|e| failed(e.to_string()))?;
                        let bare = SpawnSpec::decode(&text).map_err(|e| failed(e.to_string()))?;
                        assert!(bare.tree.is_none(), "an encoded spec carries no tree");
                        bare.with_tree_grant(grant)
                    }
                    _ => spec,
                };
                let mut init = ActorInit::from_spec(spec, "bare");
                init.introduce_in_process(&child_end)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                lock(&self.0)
                    .send((child_end, had_tree))
                    .map_err(|e| failed(e.to_string()))?;
                Ok(Box::new(BareChild {
                    id: id.clone(),
                    channel: Some(parent_end),
                }) as Box<dyn Child>)
            })
        }
    }

    impl Child for BareChild {
        fn id(&self) -> &ActorId {
            &self.id
        }

        fn take_channel(&mut self) -> Option<Channel> {
            self.channel.take()
        }

        fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }

        fn join(&mut self, _bound: Duration) -> BoxFuture<'_, Exit> {
            Box::pin(async { Exit::Exited })
        }

        fn describe(&self) -> String {
            format!("bare test actor {}", self.id)
        }
    }

    /// The next message on `end`, within [`BOUND`].
    fn next(end: &Channel) -> Msg {
        block_on(deadline(BOUND, end.recv()))
            .expect("a message within the bound")
            .expect("the parent's end is open")
    }

    /// A child in its parent's process gets the tree's data in its spec, and its parent sends
    /// it no call for it: the only call it receives in its life is its parent's body's.
    #[test]
    fn an_in_process_child_takes_the_tree_from_its_spec_and_gets_no_call_for_it() {
        let calls = a_child_s_calls(Capabilities::new());
        assert_eq!(calls, vec!["test:first"], "the calls the child got");
    }

    /// So does a child whose backend hands the tree over at its start.
    #[test]
    fn a_child_given_the_tree_at_its_start_gets_no_call_for_it() {
        let caps = Capabilities::new()
            .with_in_process(false)
            .with_tree_at_spawn(true);
        let calls = a_child_s_calls(caps);
        assert_eq!(calls, vec!["test:first"], "the calls the child got");
    }

    /// A backend that claims neither: its child gets the tree in a call. (Its `Hello` says it
    /// runs in this process, so the call does not hold up `start_actor`.)
    #[test]
    fn a_child_not_given_the_tree_gets_a_call_for_it() {
        let mut calls = a_child_s_calls(Capabilities::new().with_in_process(false));
        calls.sort();
        assert_eq!(
            calls,
            vec![TREE_FN, "test:first"],
            "the calls the child got"
        );
    }

    /// The calls a child of a `Bare` backend with `caps` gets in its life: its spec carried the
    /// tree exactly when the backend claims to hand it over.
    fn a_child_s_calls(caps: Capabilities) -> Vec<String> {
        let given = caps.in_process || caps.tree_at_spawn;
        let (tx, rx) = mpsc::channel();
        let child = std::thread::spawn(move || {
            let (end, had_tree): (Channel, bool) = rx.recv_timeout(BOUND).expect("spawned");
            // Every call it is asked for, answered, until the nursery's teardown cancels it.
            let mut calls = Vec::new();
            loop {
                match next(&end) {
                    Msg::Start { cid, func, .. } => {
                        calls.push(func.to_string());
                        let answer = [
                            Msg::StartAck { cid },
                            Msg::Return {
                                cid,
                                value: Value::Null,
                            },
                        ];
                        for msg in answer {
                            block_on(end.send(msg)).expect("the parent's end is open");
                        }
                    }
                    Msg::CancelActor { .. } => break,
                    _ => {}
                }
            }
            block_on(end.send(Msg::CancelAck { teardown_ms: None })).expect("open");
            end.close();
            (had_tree, calls)
        });
        let config = RootConfig::default()
            .handle_sigint(false)
            .timeouts(Timeouts::quick());
        let backend: Arc<dyn SpawnBackend> = Arc::new(Bare(Mutex::new(tx), caps));
        run_root(config, |n| async move {
            let child = n.start_actor("bare", backend, ActorSpec::new()).await?;
            child.run("test:first", Value::Null).await?;
            Ok(())
        })
        .expect("the bare child answered its call and its cancel");
        let (had_tree, calls) = child.join().expect("the fake child did not panic");
        assert_eq!(had_tree, given, "whether the spec carried the root's tree");
        calls
    }
}
