//! [`Link`]: the protocol engine over one channel.
//!
//! Inside a link: one **writer task** drains an unbounded queue of outgoing messages into the
//! channel (so dropping a call can enqueue `Cancel` synchronously, and writes are batched), one
//! **reader** routes every incoming message by `cid` without ever awaiting anything but the
//! channel (no head-of-line blocking), and one task per served call. The reader is a task of the
//! executor too, unless the link's owner drives it itself ([`Link::establish_with_reader`]).
//!
//! Call ids: both ends allocate cids, and stream messages (`Yield`, `Credit`, `Stop`) travel both
//! ways, so the two ends use disjoint cids: the end whose actor id sorts lower allocates even cids,
//! the other odd ones. Two ends with the same actor id are refused at `Hello`.
//!
//! The engine is split by job: `handshake` establishes a link, `io` holds its writer and
//! reader, `route` dispatches each incoming message, `serve` runs the calls the peer
//! makes into this side. This module holds the shared state, the caller side and shutdown.

mod by_cid;
mod handshake;
mod hold;
mod io;
mod outlet;
mod queue;
mod route;
mod serve;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use harrow_ipc::wait::{Event, deadline, wait_until, wait_until_some};
use harrow_ipc::{ActorId, CallKind, Cid, FnPath, Msg, PROTOCOL_VERSION, Value};
use tracing::debug;

use crate::chan::{Chan, Side, WindowRule};
use crate::{Error, Portal, Resolver, Result};

/// The executor a link spawns its tasks on: the owning actor's own executor.
pub type Executor = Arc<async_executor::Executor<'static>>;

/// Tunables of a link.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Items a stream receiver lets the sender have in flight, per direction, when the stream
    /// opens (default 64); the window never goes below it. A stream opened with a window of its
    /// own (`open_stream_with_window`) keeps that one instead, fixed. As a sender, this side
    /// always may have this many items in flight, whatever their size (see
    /// [`credit_window_bytes`](Self::credit_window_bytes)).
    pub credit_window: u32,
    /// How far the window of a stream opened with the default may grow while its items are
    /// small (default 8,192 items; at most `credit_window` turns the growth off). At each
    /// re-grant the receiver sizes its window to hold [`credit_window_bytes`](Self::credit_window_bytes)
    /// of items as large as the largest it has received recently (estimated by
    /// [`Value::approx_size`]), between `credit_window` and this many items
    /// ([`grown_window`](Self::grown_window)). A larger window lets a fast stream keep more
    /// items in flight while one side waits for its CPU.
    pub credit_window_max: u32,
    /// The estimated bytes of stream items (by [`Value::approx_size`]) per stream direction
    /// (default 256 KiB), on both sides:
    ///
    /// - **As a receiver**, a stream opened with the defaults grows its window to hold this
    ///   much of items as large as the largest received recently (within the last one to two
    ///   windows' worth of items): scalars (32 bytes each) get the whole `credit_window_max` of
    ///   8,192, items of about 1 KiB get 256, items of 4 KiB or more stay at `credit_window`.
    /// - **As a sender**, this side stops sending, whatever credit it holds, while the items it
    ///   sent and the receiver has not yet reported consumed number `credit_window` or more and
    ///   come to this many bytes or more. So a stream of small items that turns large leaves
    ///   the receiver holding about this much of them, or `credit_window` of them, not a whole
    ///   grown window; and a window of a stream's own does not let a sender put more than this
    ///   in flight either, unless its items are few.
    pub credit_window_bytes: usize,
    /// Bound on the `Hello` exchange (default 5 s).
    pub hello_timeout: Duration,
    /// Bound on waiting for the callee's answer to a `Cancel` in [`Context::cancel`](crate::Context::cancel)
    /// (default 0.5 s).
    pub cancel_timeout: Duration,
    /// After [`Link::close`] (or the link breaking), how long the writer may keep flushing
    /// what was already queued before the channel is closed anyway (default 1 s).
    pub close_flush_timeout: Duration,
    /// Callee side: how long a cancelled call that observes its own cancellation (see
    /// [`CalleeContext::cancelled`](crate::CalleeContext::cancelled)) may run its cleanup before
    /// its future is dropped, unless it extends that time
    /// ([`CalleeContext::extend_cleanup`](crate::CalleeContext::extend_cleanup)). A `CancelActor`
    /// is acknowledged once every served call ended, or after this bound (default 0.4 s: below
    /// the caller's `cancel_timeout`, so the answer arrives in time).
    pub cancel_cleanup: Duration,
    /// How long this side may write nothing before it sends a `Heartbeat`, so that the peer can
    /// tell a silent peer from a quiet one (default 1 s). `None` sends none (the peer, if it watches, then
    /// ends the link once its own `heartbeat_timeout` passes).
    pub heartbeat_interval: Option<Duration>,
    /// When nothing at all (a message or a heartbeat) arrived from the peer for this long, the
    /// link ends as [`LinkEnd::Broken`] with an error saying so: a network partition, or a peer
    /// stopped, is detected within this bound (plus one check period, at most a quarter of it).
    /// A stall of this side's own executor (a served function that blocks its thread) is not
    /// counted against the peer. Keep it several times the peer's `heartbeat_interval`.
    ///
    /// Default `None`: a link never gives up on a silent peer by itself, because a peer whose
    /// actor blocks its own thread (a long computation that never yields) is silent too, and the
    /// teardown ladder already bounds what waits for it. Set it where partitions happen: links to
    /// actors on other hosts (`RootConfig::link_config` for the root's children; a remote child
    /// sets one on its link to its parent).
    pub heartbeat_timeout: Option<Duration>,
    /// The estimated bytes (by [`Value::approx_size`] for values) this side may have queued for
    /// the peer and not yet written before it starts none of the peer's new calls (default
    /// 64 MiB; `usize::MAX` turns the bound off). A peer that sends calls and does not read
    /// their answers would otherwise make this side hold every answer.
    ///
    /// Past the bound the peer's new calls are held, in order, and start once the backlog is
    /// down to half the bound; everything else the peer sends is still read and routed. Once
    /// the held calls weigh as much as the bound too, this side stops reading from the peer
    /// until the backlog shrinks (see
    /// [`backlog_stall_timeout`](Self::backlog_stall_timeout)). Links over a transport that
    /// hands messages straight to an in-process peer (`mem`) have no backlog and hold nothing.
    pub max_backlog: usize,
    /// While this side has stopped reading from the peer (its held calls are at
    /// [`max_backlog`](Self::max_backlog)) and nothing at all was written to it for this long,
    /// the link ends as [`LinkEnd::Broken`], saying so (default 60 s; `None` waits for ever).
    /// Only a peer that neither reads nor stops calling gets there, or two peers that each
    /// stopped reading the other, which nothing else would end.
    pub backlog_stall_timeout: Option<Duration>,
}

impl LinkConfig {
    /// The window a stream opened with the defaults settles at when its largest item is
    /// estimated at `item_bytes` ([`Value::approx_size`]): as many such items as
    /// [`credit_window_bytes`](Self::credit_window_bytes) holds, between
    /// [`credit_window`](Self::credit_window) and [`credit_window_max`](Self::credit_window_max).
    ///
    /// ```
    /// use harrow_portal::LinkConfig;
    /// use harrow_ipc::Value;
    /// let config = LinkConfig::default();
    /// let int = Value::Int(7).approx_size(usize::MAX);
    /// assert_eq!(config.grown_window(int), 8192);
    /// assert_eq!(config.grown_window(1 << 20), config.credit_window);
    /// ```
    pub fn grown_window(&self, item_bytes: usize) -> u32 {
        self.window_rule().target(item_bytes)
    }

    /// How a stream opened with these defaults sizes its receiving window.
    pub(crate) fn window_rule(&self) -> WindowRule {
        WindowRule::new(
            self.credit_window,
            self.credit_window_max,
            self.credit_window_bytes,
        )
    }

    /// Sets the heartbeat period and the silence after which the link ends as broken (see
    /// [`heartbeat_interval`](Self::heartbeat_interval) and
    /// [`heartbeat_timeout`](Self::heartbeat_timeout)).
    pub fn heartbeat(mut self, interval: Option<Duration>, timeout: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            credit_window: 64,
            credit_window_max: 8192,
            credit_window_bytes: 256 << 10,
            hello_timeout: Duration::from_secs(5),
            cancel_timeout: Duration::from_millis(500),
            close_flush_timeout: Duration::from_secs(1),
            cancel_cleanup: Duration::from_millis(400),
            heartbeat_interval: Some(Duration::from_secs(1)),
            heartbeat_timeout: None,
            max_backlog: 64 << 20,
            backlog_stall_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// What this side says in its `Hello`.
#[derive(Clone, Debug)]
pub struct LocalInfo {
    /// This actor.
    pub id: ActorId,
    /// The backend this actor runs on (`"root"`, `"thread"`, `"process"`, `"subint"`).
    pub backend: String,
}

impl LocalInfo {
    /// The `Hello` this side says: its id and backend, this build's protocol version, and this
    /// process's id.
    pub fn hello(&self) -> Msg {
        Msg::Hello {
            actor: self.id.clone(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            backend: self.backend.clone(),
        }
    }
}

/// What the peer said in its `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer actor.
    pub id: ActorId,
    /// The peer's process id.
    pub pid: u32,
    /// The peer's backend name.
    pub backend: String,
    /// The peer's protocol version (equal to ours, or the handshake fails).
    pub protocol: u32,
}

/// Why a link ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEnd {
    /// The peer sent `CancelActor`. The link cancelled every call it was serving and acked; the
    /// owner should now cancel the rest of its actor and exit.
    ///
    /// The link keeps routing answers to this side's own calls (so the owner can still drain);
    /// new `Start`s from the peer are refused with a `ContextCancelled` error.
    CancelRequested {
        /// Who asked.
        canceller: ActorId,
        /// Why, as the peer said.
        reason: String,
    },
    /// The channel broke (peer gone or malformed input). Every pending caller operation got
    /// [`Error::Closed`](crate::Error::Closed); served calls were cancelled.
    Broken(String),
    /// [`Link::close`] was called locally.
    Closed,
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::CancelRequested { canceller, reason } => {
                write!(f, "{canceller} asked for a cancel: {reason}")
            }
            LinkEnd::Broken(why) => f.write_str(why),
            LinkEnd::Closed => f.write_str("closed locally"),
        }
    }
}

/// The protocol engine over one channel, serving both directions.
///
/// Created by [`Link::establish`], which exchanges `Hello` and then runs the engine's tasks on the
/// given executor (or by [`Link::establish_with_reader`], which hands the reader back to be
/// driven by the caller). Dropping the `Link` closes it.
#[derive(Debug)]
pub struct Link {
    shared: Arc<Shared>,
}

/// A link's reader, handed back by [`Link::establish_with_reader`]: the future that reads every
/// message from the link's channel and routes it. It ends once the link has shut down; dropping
/// it before then ends the link as broken (every call waiting on it fails with
/// [`Error::Closed`]).
#[must_use = "a link whose reader is not polled receives nothing"]
pub struct LinkReader {
    /// `None` once it ended.
    fut: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    shared: Arc<Shared>,
}

impl LinkReader {
    fn new(shared: Arc<Shared>, fut: impl Future<Output = ()> + Send + 'static) -> LinkReader {
        LinkReader {
            fut: Some(Box::pin(fut)),
            shared,
        }
    }
}

impl Future for LinkReader {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(());
        };
        if fut.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.fut = None;
        Poll::Ready(())
    }
}

impl Drop for LinkReader {
    fn drop(&mut self) {
        // Dropped while the link lives: nothing reads its channel any more.
        if self.fut.take().is_none() {
            return;
        }
        let reason = format!(
            "the reader of the link to {} was dropped before the link ended",
            self.shared.peer.id
        );
        self.shared
            .shutdown(LinkEnd::Broken(reason.clone()), reason, false);
        self.shared.reader_done.store(true, Ordering::Release);
        self.shared.progress.notify_all();
    }
}

impl fmt::Debug for LinkReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkReader")
            .field("local", &self.shared.local.id)
            .field("peer", &self.shared.peer.id)
            .field("ended", &self.fut.is_none())
            .finish()
    }
}

impl Link {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.shared.peer
    }

    /// Who is on this end.
    pub fn local(&self) -> &LocalInfo {
        &self.shared.local
    }

    /// A handle for calling the peer. Cheap to clone; usable from any task.
    pub fn portal(&self) -> Portal {
        Portal::new(self.shared.clone())
    }

    /// Waits until the link ends and says why. Any number of tasks may wait.
    pub async fn closed(&self) -> LinkEnd {
        wait_until_some(&self.shared.end_ev, || self.shared.end()).await
    }

    /// Whether the link has ended (whether [`closed`](Link::closed) would resolve now).
    pub fn is_closed(&self) -> bool {
        self.shared.end().is_some()
    }

    /// How many calls from the peer this link is serving right now.
    pub fn served_calls(&self) -> usize {
        self.shared.lock().served.len()
    }

    /// The estimated bytes queued for the peer and not yet written (see
    /// [`LinkConfig::max_backlog`]); 0 on a link over an in-memory transport.
    pub fn outgoing_backlog(&self) -> usize {
        self.shared.backlog()
    }

    /// How many of the peer's calls wait to start because the outgoing backlog is over
    /// [`LinkConfig::max_backlog`].
    pub fn held_calls(&self) -> usize {
        self.shared.held_calls()
    }

    /// Cancels every call this link is serving for the peer, on behalf of `canceller`: each
    /// answers its caller with `ContextCancelled { canceller }`.
    ///
    /// A call that observes its own cancellation gets up to `LinkConfig::cancel_cleanup` (or
    /// what it extended that to) to finish; the others are dropped at once.
    pub fn cancel_calls(&self, canceller: &ActorId) {
        let cids: Vec<Cid> = self.shared.lock().served.cids();
        debug!(local = %self.shared.local.id, n = cids.len(), %canceller, "cancelling served calls");
        self.shared.cancel_served(&cids, canceller);
    }

    /// Resolves once the link's reader and writer have stopped (after [`close`](Link::close) or
    /// the link breaking, the writer may flush for up to `LinkConfig::close_flush_timeout`).
    /// Whoever runs the actor's executor should await this, bounded, before it stops running it,
    /// so that no I/O task (and the channel it holds) outlives the actor.
    pub async fn io_stopped(&self) {
        let shared = &self.shared;
        let done = || {
            shared.writer_done.load(Ordering::Acquire) && shared.reader_done.load(Ordering::Acquire)
        };
        shared.progress.wait_until(done).await
    }

    /// Waits (bounded) until every served call has finished and its last message was handed to
    /// the transport. Returns false on timeout.
    pub async fn drain(&self, bound: Duration) -> bool {
        let shared = &self.shared;
        let drained = || {
            shared.lock().served.is_empty()
                && (shared.writer_done.load(Ordering::Acquire)
                    || shared.written.load(Ordering::Acquire)
                        >= shared.enqueued.load(Ordering::Acquire))
        };
        deadline(bound, shared.progress.wait_until(drained))
            .await
            .is_some()
    }

    /// Closes the link: served calls are cancelled, pending caller operations fail with
    /// [`Error::Closed`](crate::Error::Closed), the channel is closed. Idempotent, never blocks.
    ///
    /// What was already queued (including the cancellation errors of the served calls) is still
    /// written, for at most `LinkConfig::close_flush_timeout`, then the channel is closed.
    pub fn close(&self) {
        self.shared
            .shutdown(LinkEnd::Closed, "the link was closed locally".into(), true);
    }

    /// [`close`](Self::close), because this actor is being cancelled by `canceller`: this
    /// side's pending calls into the peer end as cancelled by `canceller`
    /// ([`Error::is_cancelled`]), not as closed. For a parent whose child asked it to cancel
    /// (`LinkEnd::CancelRequested`): its calls into that child are part of what is cancelled,
    /// not a failure of the link.
    pub fn close_cancelled(&self, canceller: &ActorId) {
        let local = self.shared.local.id.clone();
        let canceller = canceller.clone();
        self.shared.shutdown_with(
            LinkEnd::Closed,
            format!("the link was closed locally: {local} is cancelled by {canceller}"),
            true,
            || {
                Error::from(harrow_ipc::RemoteError::cancelled(
                    local.clone(),
                    canceller.clone(),
                ))
            },
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

// ------------------------------------------------------------------------------------------------
// The engine's shared state.

pub(crate) struct Shared {
    pub(crate) local: LocalInfo,
    pub(crate) peer: PeerInfo,
    pub(crate) config: LinkConfig,
    pub(crate) exec: Executor,
    resolver: Option<Arc<dyn Resolver>>,
    /// Where outgoing messages go: the writer's queue, or the transport itself.
    out: outlet::Outlet,
    state: Mutex<LinkState>,
    /// Bumped every time `state` is locked: the reader's route cache is valid while this has not
    /// moved (see `route::RouteCache`).
    state_gen: AtomicU64,
    /// Mirrors `state.dead.is_some()` for lock-free checks.
    dead: AtomicBool,
    dead_ev: Event,
    /// The reader while it waits for the channel: woken by `shutdown` like `dead_ev`'s
    /// listeners, without a listener to poll each time the reader waits.
    reader_waker: atomic_waker::AtomicWaker,
    /// The id of this side's next call; advanced only under `state`'s lock.
    next_cid: AtomicU64,
    parity: u64,
    enqueued: AtomicU64,
    written: AtomicU64,
    /// Messages received from the peer (any kind): the heartbeat watch compares it over time.
    received: AtomicU64,
    /// The peer's calls the reader holds back, not cancelled (`hold`).
    held: AtomicUsize,
    /// The reader stopped reading until the backlog shrinks (`hold`): the heartbeat watch does
    /// not count the peer's silence meanwhile.
    reading_stopped: AtomicBool,
    writer_done: AtomicBool,
    reader_done: AtomicBool,
    /// Writer progress and served calls finishing (for `drain` and `io_stopped`): notified
    /// several times per call, waited on only at the link's end.
    progress: harrow_ipc::wait::Watched,
    end: Mutex<Option<LinkEnd>>,
    end_ev: Event,
    acks: AtomicU64,
    /// The `teardown_ms` of the latest `CancelAck`.
    last_ack_teardown: Mutex<Option<u64>>,
    ack_ev: Event,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("local", &self.local.id)
            .field("peer", &self.peer.id)
            .field("dead", &self.dead.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LinkState {
    /// Why the link is unusable for new operations.
    dead: Option<String>,
    /// Our calls into the peer, by cid: the first in place, more in a map ([`by_cid`]). Ids
    /// this end allocates, so foldhash (a peer cannot choose keys that collide).
    calls: by_cid::ByCid<Arc<Chan>, foldhash::HashMap<Cid, Arc<Chan>>>,
    /// The peer's calls we serve, by cid: the first in place, more in a map. The peer chooses
    /// these ids, so no hash table: an ordered map costs O(log n) whatever the ids, and with
    /// the few calls a link serves at once, less per lookup than a hash that a peer could not
    /// make collide (SipHash).
    served: by_cid::ByCid<Served, BTreeMap<Cid, Served>>,
    /// Set once the peer sent `CancelActor` (or this actor began to end on its own): later
    /// `Start`s are refused.
    refuse_starts: Option<ActorId>,
    /// How many `Start`s were refused so far.
    refused: u64,
    /// `CancelAck`s owed to the peer: sent once every served call has ended (or at the bound).
    acks_owed: u32,
    /// Sends the owed acks at the bound if calls are still cleaning up then.
    ack_timer: Option<async_executor::Task<()>>,
}

pub(crate) struct Served {
    chan: Arc<Chan>,
    /// What runs the call's future after a first poll that left it pending.
    run: ServedBy,
}

/// What runs a served call's future after its first poll (in the link's reader) left it
/// pending.
pub(crate) enum ServedBy {
    /// Nothing yet: the first poll has not returned.
    Nothing,
    /// A task of its own.
    Task(async_executor::Task<()>),
    /// Nothing until something wakes it: a call that ends with `answer_now`
    /// ([`serve::Parked`]).
    Parked(Arc<serve::Parked>),
}

impl Served {
    /// The call ended with an answer: its future, if it still runs, finishes on its own (a
    /// parked one that was not woken is dropped: it said it has nothing left to do).
    fn detach(mut self) {
        match std::mem::replace(&mut self.run, ServedBy::Nothing) {
            ServedBy::Nothing => {}
            ServedBy::Task(task) => task.detach(),
            ServedBy::Parked(parked) => parked.end(true),
        }
    }
}

impl Served {
    /// The call was cancelled and its entry is gone (the link closed), but it observes its
    /// cancel: its future goes on in a task of its own, which ends it at its cleanup bound
    /// (`cleanup_until`, set by the caller).
    fn clean_up(mut self) {
        match std::mem::replace(&mut self.run, ServedBy::Nothing) {
            // Its first poll runs (in the reader); it finds its entry gone and drops the future.
            ServedBy::Nothing => {}
            ServedBy::Task(task) => task.detach(),
            ServedBy::Parked(parked) => parked.clean_up(),
        }
    }
}

impl Drop for Served {
    /// Dropping a served call's entry drops its future (a task's is cancelled).
    fn drop(&mut self) {
        match std::mem::replace(&mut self.run, ServedBy::Nothing) {
            ServedBy::Nothing | ServedBy::Task(_) => {}
            ServedBy::Parked(parked) => parked.end(false),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Only ever changed under the lock: a load and a store, not a locked add.
        let generation = self.state_gen.load(Ordering::Relaxed);
        self.state_gen
            .store(generation.wrapping_add(1), Ordering::Release);
        guard
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn end(&self) -> Option<LinkEnd> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_end(&self, end: LinkEnd) {
        {
            let mut slot = self.end.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                debug!(local = %self.local.id, peer = %self.peer.id, ?end, "link ended");
                *slot = Some(end);
            }
        }
        self.end_ev.notify(usize::MAX);
    }

    async fn wait_dead(&self) {
        wait_until(&self.dead_ev, || self.is_dead()).await
    }

    // --------------------------------------------------------------------------------------------
    // Caller side.

    /// Registers a new call and queues its `Start`.
    pub(crate) fn start_call(&self, func: &str, kind: CallKind, args: Value) -> Result<Arc<Chan>> {
        let path = FnPath::parse_cached(func)?;
        crate::error::check_depth(&args, || format!("arguments of {func}"))?;
        let mut st = self.lock();
        if let Some(reason) = &st.dead {
            return Err(Error::Closed(reason.clone()));
        }
        // Only ever advanced under the link's lock: a load and a store, not a locked add.
        let next = self.next_cid.load(Ordering::Relaxed);
        self.next_cid.store(next + 2, Ordering::Relaxed);
        let cid = Cid(next);
        let chan = Arc::new(Chan::new(cid, Side::Caller, kind, path.clone()));
        st.calls.insert(cid, chan.clone());
        self.enqueue_urgent(Msg::Start {
            cid,
            func: path,
            kind,
            args,
        });
        drop(st);
        // The calling task waits for the answer next: the peer is woken now, not after a hop
        // through the outlet's waker task.
        self.wake_peer_now();
        Ok(chan)
    }

    /// The caller gave up on a call (drop, cancel timeout): forget it and, if it was still
    /// running, tell the callee. Never blocks.
    pub(crate) fn abandon_call(&self, chan: &Chan, outcome: Error) {
        let removed = self.lock().calls.remove(&chan.cid).is_some();
        if removed {
            let send = {
                let mut st = chan.lock();
                !std::mem::replace(&mut st.cancel_sent, true)
            };
            if send {
                debug!(cid = %chan.cid, func = %chan.func, "call dropped: sending Cancel");
                self.enqueue(Msg::Cancel { cid: chan.cid });
            }
        }
        chan.finish(Err(outcome));
    }

    /// Sends `CancelActor` and waits (bounded) for the ack: `Some(teardown)` when it came, with
    /// the time the peer said it still needs to tear its own children down.
    pub(crate) async fn cancel_actor(
        &self,
        bound: Duration,
        reason: String,
    ) -> Option<Option<Duration>> {
        let acks_before = self.send_cancel_actor(reason)?;
        self.cancel_ack(acks_before, bound).await
    }

    /// Sends `CancelActor`; `None` when the link is already dead. The answer is the count of
    /// acks received before it, for [`cancel_ack`](Self::cancel_ack).
    pub(crate) fn send_cancel_actor(&self, reason: String) -> Option<u64> {
        if self.is_dead() {
            return None;
        }
        let before = self.acks.load(Ordering::Acquire);
        if !self.enqueue(Msg::CancelActor { reason }) {
            return None;
        }
        debug!(local = %self.local.id, peer = %self.peer.id, "CancelActor sent");
        Some(before)
    }

    /// Waits at most `bound` for a `CancelAck` counted after `acks_before`: `Some(teardown)`
    /// once one arrived (`teardown` as the peer said it), `None` on timeout or a dead link.
    pub(crate) async fn cancel_ack(
        &self,
        acks_before: u64,
        bound: Duration,
    ) -> Option<Option<Duration>> {
        // Acked (true) or dead (false), whichever is seen first.
        let acked_or_dead = || {
            if self.acks.load(Ordering::Acquire) > acks_before {
                Some(true)
            } else if self.is_dead() {
                Some(false)
            } else {
                None
            }
        };
        let wait = wait_until_some(&self.ack_ev, acked_or_dead);
        if !deadline(bound, wait).await.unwrap_or(false) {
            return None;
        }
        let teardown = *self
            .last_ack_teardown
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(teardown.map(Duration::from_millis))
    }

    // --------------------------------------------------------------------------------------------
    // Shutdown.

    /// Ends the link: local operations fail with `Closed(reason)`, served calls are cancelled
    /// (with an answer to the peer when `graceful`), the writer flushes and closes the channel.
    pub(crate) fn shutdown(&self, end: LinkEnd, reason: String, graceful: bool) {
        let closed = reason.clone();
        self.shutdown_with(end, reason, graceful, || Error::Closed(closed.clone()));
    }

    /// [`shutdown`](Self::shutdown), this side's pending calls ending with `pending()`.
    pub(crate) fn shutdown_with(
        &self,
        end: LinkEnd,
        reason: String,
        graceful: bool,
        pending: impl Fn() -> Error,
    ) {
        let (calls, served, ack_timer) = {
            let mut st = self.lock();
            if st.dead.is_some() {
                return;
            }
            st.dead = Some(reason.clone());
            self.dead.store(true, Ordering::Release);
            (
                st.calls.take_sorted(),
                st.served.take_sorted(),
                st.ack_timer.take(),
            )
        };
        drop(ack_timer);
        debug!(local = %self.local.id, peer = %self.peer.id, %reason, calls = calls.len(),
            served = served.len(), "link shutting down");
        for (_, chan) in calls {
            chan.finish(Err(pending()));
        }
        for (_, entry) in served {
            let aware = {
                let mut st = entry.chan.lock();
                st.cancelled_by.get_or_insert_with(|| self.local.id.clone());
                if st.outcome.is_none() {
                    st.outcome = Some(Err(Error::Closed(reason.clone())));
                }
                if graceful && !st.wire_done {
                    st.wire_done = true;
                    let answer = self.cancelled_answer(&entry.chan, &st);
                    self.enqueue(answer);
                }
                if st.cancel_aware && st.cleanup_until.is_none() {
                    // Cancelled by this actor now: the same cleanup time a cancel gives.
                    st.cleanup_until = Some(harrow_ipc::wait::instant_after(
                        self.config.cancel_cleanup.max(st.cleanup_reserved),
                    ));
                }
                st.cancel_aware
            };
            entry.chan.notify_cancel();
            if aware {
                // It observes its cancel: its cleanup runs to its end or to its bound, as for a
                // cancel, though no answer can go any more.
                entry.clean_up();
            } else {
                drop(entry); // drops the call's future
            }
        }
        if graceful {
            // Every served call has ended now: the acks owed go out with their answers.
            let mut st = self.lock();
            self.send_owed_acks(&mut st, None);
        }
        self.close_outlet();
        self.set_end(end);
        self.dead_ev.notify(usize::MAX);
        self.reader_waker.wake();
        self.ack_ev.notify(usize::MAX);
        self.progress.notify_all();
    }
}
