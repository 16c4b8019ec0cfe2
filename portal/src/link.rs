//! [`Link`]: the protocol engine over one channel.
//!
//! Inside a link: one **writer task** drains an unbounded queue of outgoing messages into the
//! channel (so dropping a call can enqueue `Cancel` synchronously, and writes are batched), one
//! **reader task** routes every incoming message by `cid` without ever awaiting anything but the
//! channel (no head-of-line blocking), and one task per served call.
//!
//! Call ids: both ends allocate cids, and stream messages (`Yield`, `Credit`, `Stop`) travel both
//! ways, so the two ends use disjoint cids: the end whose actor id sorts lower allocates even cids,
//! the other odd ones. Two ends with the same actor id are refused at `Hello`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use harrow_ipc::wait::{Event, deadline, wait_until, wait_until_some};
use harrow_ipc::{
    ActorId, CallKind, Channel, ChannelRx, ChannelTx, Cid, ErrorKind, FnPath, Msg,
    PROTOCOL_VERSION, RecvError, RemoteError, SendError, Value,
};
use tracing::debug;

use crate::chan::{Chan, Side};
use crate::{CallError, CalleeContext, Error, Invocation, Portal, Resolver, Result};

/// The executor a link spawns its tasks on: the owning actor's own executor.
pub type Executor = Arc<async_executor::Executor<'static>>;

/// Tunables of a link.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Items a stream receiver lets the sender have in flight, per direction (default 64).
    pub credit_window: u32,
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
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            credit_window: 64,
            hello_timeout: Duration::from_secs(5),
            cancel_timeout: Duration::from_millis(500),
            close_flush_timeout: Duration::from_secs(1),
            cancel_cleanup: Duration::from_millis(400),
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

/// The protocol engine over one channel, serving both directions.
///
/// Created by [`Link::establish`], which exchanges `Hello` and then runs the engine's tasks on the
/// given executor. Dropping the `Link` closes it.
#[derive(Debug)]
pub struct Link {
    shared: Arc<Shared>,
}

impl Link {
    /// Sends our `Hello`, waits (bounded by `config.hello_timeout`) for the peer's, checks the
    /// protocol version, then starts the engine on `exec`.
    ///
    /// `resolver` serves the peer's calls; with `None`, every `Start` is answered with a
    /// `NotFound` error.
    pub async fn establish(
        channel: Channel,
        local: LocalInfo,
        resolver: Option<Arc<dyn Resolver>>,
        exec: &Executor,
        config: LinkConfig,
    ) -> Result<Link> {
        let (tx, mut rx) = channel.split();
        let span = tracing::debug_span!("link", local = %local.id);
        let _enter = span.enter();
        let hello = Msg::Hello {
            actor: local.id.clone(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            backend: local.backend.clone(),
        };
        if let Err(e) = tx.send(hello).await {
            return Err(Error::Handshake(format!(
                "could not send our Hello (channel closed before the handshake?): {e}"
            )));
        }
        let peer = match deadline(config.hello_timeout, rx.recv()).await {
            None => {
                tx.close();
                return Err(Error::Handshake(format!(
                    "the peer sent no Hello within {:?}",
                    config.hello_timeout
                )));
            }
            Some(Err(RecvError::Closed)) => {
                tx.close();
                return Err(Error::Handshake(
                    "the channel closed before the peer's Hello arrived".into(),
                ));
            }
            Some(Err(e)) => {
                tx.close();
                return Err(Error::Handshake(format!(
                    "could not read the peer's Hello: {e}"
                )));
            }
            Some(Ok(Msg::Hello {
                actor,
                protocol,
                pid,
                backend,
            })) => {
                if protocol != PROTOCOL_VERSION {
                    tx.close();
                    return Err(Error::Handshake(format!(
                        "protocol version mismatch: peer {actor} speaks version {protocol}, \
                         this side ({}) speaks version {PROTOCOL_VERSION}",
                        local.id
                    )));
                }
                if actor == local.id {
                    tx.close();
                    return Err(Error::Handshake(format!(
                        "the peer claims this side's own actor id {actor}"
                    )));
                }
                PeerInfo {
                    id: actor,
                    pid,
                    backend,
                    protocol,
                }
            }
            Some(Ok(other)) => {
                tx.close();
                return Err(Error::Handshake(format!(
                    "expected Hello as the peer's first message, got {}",
                    other.kind_name()
                )));
            }
        };
        // The peer has said who it is: lift the transport's small pre-handshake frame limit.
        rx.end_handshake();
        debug!(peer = %peer.id, backend = %peer.backend, pid = peer.pid, "link established");

        let parity = u64::from(local.id >= peer.id);
        let (out, out_rx) = async_channel::unbounded();
        let shared = Arc::new(Shared {
            local,
            peer,
            config,
            exec: exec.clone(),
            resolver,
            out,
            state: Mutex::new(LinkState::default()),
            dead: AtomicBool::new(false),
            dead_ev: Event::new(),
            next_cid: AtomicU64::new(2 + parity),
            parity,
            enqueued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writer_done: AtomicBool::new(false),
            reader_done: AtomicBool::new(false),
            progress: Event::new(),
            end: Mutex::new(None),
            end_ev: Event::new(),
            acks: AtomicU64::new(0),
            last_ack_teardown: Mutex::new(None),
            ack_ev: Event::new(),
        });
        exec.spawn(writer(shared.clone(), tx, out_rx)).detach();
        exec.spawn(reader(shared.clone(), rx)).detach();
        Ok(Link { shared })
    }

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

    /// Cancels every call this link is serving for the peer, on behalf of `canceller`: each
    /// answers its caller with `ContextCancelled { canceller }`.
    ///
    /// A call that observes its own cancellation gets up to `LinkConfig::cancel_cleanup` (or
    /// what it extended that to) to finish; the others are dropped at once.
    pub fn cancel_calls(&self, canceller: &ActorId) {
        let cids: Vec<Cid> = self.shared.lock().served.keys().copied().collect();
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
        wait_until(&shared.progress, done).await
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
        deadline(bound, wait_until(&shared.progress, drained))
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
    exec: Executor,
    resolver: Option<Arc<dyn Resolver>>,
    /// The writer's queue.
    out: async_channel::Sender<Msg>,
    state: Mutex<LinkState>,
    /// Mirrors `state.dead.is_some()` for lock-free checks.
    dead: AtomicBool,
    dead_ev: Event,
    next_cid: AtomicU64,
    parity: u64,
    enqueued: AtomicU64,
    written: AtomicU64,
    writer_done: AtomicBool,
    reader_done: AtomicBool,
    /// Writer progress and served calls finishing (for `drain`).
    progress: Event,
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
    /// Our calls into the peer, by cid.
    calls: HashMap<Cid, Arc<Chan>>,
    /// The peer's calls we serve, by cid.
    served: HashMap<Cid, Served>,
    /// Set once the peer sent `CancelActor`: later `Start`s are refused.
    refuse_starts: Option<ActorId>,
    /// `CancelAck`s owed to the peer: sent once every served call has ended (or at the bound).
    acks_owed: u32,
    /// Sends the owed acks at the bound if calls are still cleaning up then.
    ack_timer: Option<async_executor::Task<()>>,
}

pub(crate) struct Served {
    chan: Arc<Chan>,
    task: Option<async_executor::Task<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn window(&self) -> u32 {
        self.config.credit_window.max(1)
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

    /// Queues a message for the writer. Never blocks. False when the link is shut down.
    pub(crate) fn enqueue(&self, msg: Msg) -> bool {
        self.enqueued.fetch_add(1, Ordering::AcqRel);
        if self.out.try_send(msg).is_err() {
            self.enqueued.fetch_sub(1, Ordering::AcqRel);
            false
        } else {
            true
        }
    }

    async fn wait_dead(&self) {
        wait_until(&self.dead_ev, || self.is_dead()).await
    }

    // --------------------------------------------------------------------------------------------
    // Caller side.

    /// Registers a new call and queues its `Start`.
    pub(crate) fn start_call(&self, func: &str, kind: CallKind, args: Value) -> Result<Arc<Chan>> {
        let path = FnPath::parse(func)?;
        crate::error::check_depth(&args, || format!("arguments of {func}"))?;
        let mut st = self.lock();
        if let Some(reason) = &st.dead {
            return Err(Error::Closed(reason.clone()));
        }
        let cid = Cid(self.next_cid.fetch_add(2, Ordering::Relaxed));
        let chan = Arc::new(Chan::new(cid, Side::Caller, kind, func.to_owned()));
        st.calls.insert(cid, chan.clone());
        self.enqueue(Msg::Start {
            cid,
            func: path,
            kind,
            args,
        });
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
        if self.is_dead() {
            return None;
        }
        let before = self.acks.load(Ordering::Acquire);
        if !self.enqueue(Msg::CancelActor { reason }) {
            return None;
        }
        debug!(local = %self.local.id, peer = %self.peer.id, "CancelActor sent");
        // Acked (true) or dead (false), whichever is seen first.
        let acked_or_dead = || {
            if self.acks.load(Ordering::Acquire) > before {
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
    // Callee side.

    fn serve_start(self: &Arc<Self>, cid: Cid, func: FnPath, kind: CallKind, args: Value) {
        let chan = Arc::new(Chan::new(cid, Side::Callee, kind, func.to_string()));
        {
            let mut st = self.lock();
            if st.dead.is_some() {
                return;
            }
            if let Some(canceller) = &st.refuse_starts {
                let mut err = RemoteError::cancelled(self.local.id.clone(), canceller.clone());
                err.message = format!(
                    "{func} refused: this actor is being cancelled (requested by {canceller})"
                );
                self.enqueue(Msg::Error {
                    cid: Some(cid),
                    error: err,
                });
                return;
            }
            if st.served.contains_key(&cid) {
                let msg = format!("call id {cid} is already in use for another call");
                self.enqueue(Msg::Error {
                    cid: Some(cid),
                    error: RemoteError::new(
                        ErrorKind::Protocol,
                        "ProtocolError",
                        msg,
                        self.local.id.clone(),
                    ),
                });
                return;
            }
            st.served.insert(
                cid,
                Served {
                    chan: chan.clone(),
                    task: None,
                },
            );
        }
        let ctx = CalleeContext::new(self.clone(), chan.clone());
        let started = match &self.resolver {
            Some(resolver) => resolver.start(Invocation {
                func: func.clone(),
                kind,
                args,
                ctx,
            }),
            None => Err(CallError::new(
                ErrorKind::NotFound,
                "NotFound",
                format!("{func}: this actor serves no functions"),
            )),
        };
        let mut st = self.lock();
        if !st.served.contains_key(&cid) {
            // Cancelled (or the link closed) while resolving: the answer was already sent.
            return;
        }
        match started {
            Err(err) => {
                debug!(%cid, %func, %err, "resolver refused the call");
                st.served.remove(&cid);
                drop(st);
                let mut cst = chan.lock();
                if !cst.wire_done {
                    cst.wire_done = true;
                    self.enqueue(Msg::Error {
                        cid: Some(cid),
                        error: err.into_remote(&self.local.id),
                    });
                }
                drop(cst);
                self.progress.notify(usize::MAX);
            }
            Ok(fut) => {
                let shared = self.clone();
                let scope_ctx = CalleeContext::new(self.clone(), chan.clone());
                let task = self.exec.spawn(async move {
                    // The ack goes out from the call's own task, before anything the function
                    // sends: a function that finishes in its first poll then has its `StartAck`
                    // and `Return` written in one batch (one wake-up of the caller, not two).
                    {
                        let cst = chan.lock();
                        if !cst.wire_done {
                            shared.enqueue(Msg::StartAck { cid });
                        }
                    }
                    // The hook only sees the thread, so take the trace on the thread that
                    // polled the panicking future, right after the unwind.
                    let run = async {
                        let watched =
                            crate::panic_trace::Watched::new(crate::callee::CallScope::new(
                                scope_ctx,
                                AssertUnwindSafe(fut).catch_unwind(),
                            ));
                        Some(
                            watched
                                .await
                                .map_err(|payload| (payload, crate::panic_trace::take())),
                        )
                    };
                    let expired = async {
                        cleanup_expired(&chan).await;
                        None
                    };
                    match run.or(expired).await {
                        Some(result) => shared.complete_served(cid, result),
                        None => {
                            debug!(%cid, func = %chan.func, "cancelled call's cleanup time is up");
                            shared.end_served(cid, |shared, chan, st| {
                                Some(shared.cancelled_answer(chan, st))
                            });
                        }
                    }
                });
                if let Some(entry) = st.served.get_mut(&cid) {
                    entry.task = Some(task);
                }
            }
        }
    }

    /// The `ContextCancelled` answer for a served call cancelled by `st.cancelled_by`.
    fn cancelled_answer(&self, chan: &Chan, st: &crate::chan::ChanState) -> Msg {
        let canceller = st
            .cancelled_by
            .clone()
            .unwrap_or_else(|| self.local.id.clone());
        Msg::Error {
            cid: Some(chan.cid),
            error: RemoteError::cancelled(self.local.id.clone(), canceller),
        }
    }

    /// Ends served call `cid`: removes it, queues `answer`'s message as its last one (unless one
    /// went out already), and sends the `CancelAck`s owed once no served call is left. All under
    /// the link lock, so that every call's answer precedes the ack on the wire. Returns the entry
    /// (whose task the caller drops or detaches), or `None` when the call had already ended.
    fn end_served(
        &self,
        cid: Cid,
        answer: impl FnOnce(&Self, &Chan, &crate::chan::ChanState) -> Option<Msg>,
    ) -> Option<Served> {
        let mut st = self.lock();
        let entry = st.served.remove(&cid)?;
        {
            let mut cst = entry.chan.lock();
            if !cst.wire_done {
                if let Some(msg) = answer(self, &entry.chan, &cst) {
                    cst.wire_done = true;
                    self.enqueue(msg);
                }
            }
        }
        let timer = if st.served.is_empty() && st.acks_owed > 0 {
            self.send_owed_acks(&mut st, None);
            st.ack_timer.take()
        } else {
            None
        };
        drop(st);
        if let Some(timer) = timer {
            timer.detach(); // it may be this very task; it finds nothing owed and ends
        }
        entry.chan.notify();
        self.progress.notify(usize::MAX);
        Some(entry)
    }

    fn send_owed_acks(&self, st: &mut LinkState, teardown_ms: Option<u64>) {
        for _ in 0..std::mem::take(&mut st.acks_owed) {
            self.enqueue(Msg::CancelAck { teardown_ms });
        }
    }

    fn complete_served(
        &self,
        cid: Cid,
        result: std::result::Result<std::result::Result<Value, CallError>, Panicked>,
    ) {
        let local = &self.local.id;
        let entry = self.end_served(cid, |shared, chan, st| {
            Some(match result {
                Ok(Ok(value)) => {
                    match crate::error::check_depth(&value, || format!("result of {}", chan.func)) {
                        Ok(()) => Msg::Return { cid, value },
                        Err(e) => Msg::Error {
                            cid: Some(cid),
                            error: RemoteError::new(
                                ErrorKind::Runtime,
                                "ValueError",
                                e.to_string(),
                                local.clone(),
                            ),
                        },
                    }
                }
                // Cancelled and ended by that cancel: the canonical answer, naming the canceller.
                Ok(Err(err)) if st.cancelled_by.is_some() && err.kind() == ErrorKind::Cancelled => {
                    shared.cancelled_answer(chan, st)
                }
                // A failure, before or during the cleanup of a cancel: the outcome is the failure.
                Ok(Err(err)) => {
                    debug!(%cid, func = %chan.func, %err, "served call failed");
                    Msg::Error {
                        cid: Some(cid),
                        error: err.into_remote(local),
                    }
                }
                Err((payload, trace)) => {
                    let text = panic_text(payload.as_ref());
                    debug!(%cid, func = %chan.func, panic = %text, "served call panicked");
                    Msg::Error {
                        cid: Some(cid),
                        error: RemoteError::new(ErrorKind::Raised, "panic", text, local.clone())
                            .with_traceback(trace.unwrap_or_default()),
                    }
                }
            })
        });
        if let Some(task) = entry.and_then(|e| e.task) {
            task.detach(); // it is this very task, about to finish
        }
    }

    /// Cancels served calls `cids` on behalf of `canceller`. A call that observes its own
    /// cancellation is told (its stream operations fail, `cancelled()` resolves) and gets until
    /// its cleanup bound to end; its answer is then whatever it ended with (a failure raised
    /// during cleanup reaches the caller). Any other call is dropped at once and answered with
    /// `ContextCancelled { canceller }`.
    pub(crate) fn cancel_served(&self, cids: &[Cid], canceller: &ActorId) {
        for &cid in cids {
            let Some(chan) = self.lock().served.get(&cid).map(|e| e.chan.clone()) else {
                continue;
            };
            let aware = {
                let mut st = chan.lock();
                if st.cancelled_by.is_some() {
                    continue; // already being cancelled
                }
                st.cancelled_by = Some(canceller.clone());
                if st.outcome.is_none() {
                    let err = RemoteError::cancelled(self.local.id.clone(), canceller.clone());
                    st.outcome = Some(Err(Error::from(err)));
                }
                if st.cancel_aware {
                    // The bound, or later if the call asked for more (before the cancel too).
                    let bound =
                        Instant::now() + self.config.cancel_cleanup.max(st.cleanup_reserved);
                    st.cleanup_until = Some(st.cleanup_until.map_or(bound, |t| t.max(bound)));
                }
                st.cancel_aware
            };
            chan.notify();
            if !aware {
                let entry = self.end_served(cid, |shared, chan, st| {
                    Some(shared.cancelled_answer(chan, st))
                });
                drop(entry); // drops the call's future
            }
        }
        self.progress.notify(usize::MAX);
    }

    /// A `CancelActor` from the peer: refuse new calls, cancel every served one, and ack once
    /// they all ended (or at the cleanup bound, saying how long the rest still needs).
    fn cancel_actor_requested(self: &Arc<Self>, reason: String) {
        let cids: Vec<Cid> = {
            let mut st = self.lock();
            st.refuse_starts = Some(self.peer.id.clone());
            st.served.keys().copied().collect()
        };
        debug!(local = %self.local.id, peer = %self.peer.id, %reason, n = cids.len(),
            "CancelActor: cancelling served calls");
        self.cancel_served(&cids, &self.peer.id.clone());
        {
            let mut st = self.lock();
            st.acks_owed += 1;
            if st.served.is_empty() {
                self.send_owed_acks(&mut st, None);
            } else if st.ack_timer.is_none() {
                let shared = self.clone();
                let bound = self.config.cancel_cleanup;
                st.ack_timer = Some(self.exec.spawn(async move {
                    async_io::Timer::after(bound).await;
                    shared.ack_at_bound();
                }));
            }
        }
        self.set_end(LinkEnd::CancelRequested {
            canceller: self.peer.id.clone(),
            reason,
        });
    }

    /// The cleanup bound passed with calls still running (they extended their cleanup, for
    /// example to tear down their own children): ack now, saying until when they may run.
    fn ack_at_bound(&self) {
        let mut st = self.lock();
        if st.acks_owed == 0 {
            return;
        }
        let now = Instant::now();
        let latest = st
            .served
            .values()
            .filter_map(|e| e.chan.lock().cleanup_until)
            .max();
        let teardown_ms = latest
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        debug!(local = %self.local.id, n = st.served.len(), ?teardown_ms,
            "acking CancelActor with calls still cleaning up");
        self.send_owed_acks(&mut st, teardown_ms);
        if let Some(timer) = st.ack_timer.take() {
            timer.detach(); // this very task
        }
    }

    /// A protocol violation in a served call: answer with a `Protocol` error and drop the task.
    fn fail_served(&self, cid: Cid, message: String) {
        debug!(%cid, %message, "protocol violation by the caller");
        let entry = self.end_served(cid, |shared, _, _| {
            Some(Msg::Error {
                cid: Some(cid),
                error: RemoteError::new(
                    ErrorKind::Protocol,
                    "ProtocolError",
                    message.clone(),
                    shared.local.id.clone(),
                ),
            })
        });
        if let Some(entry) = entry {
            {
                let mut st = entry.chan.lock();
                if st.outcome.is_none() {
                    st.outcome = Some(Err(Error::Protocol(message)));
                }
            }
            entry.chan.notify();
        }
    }

    /// Sends a protocol error for a served call from the callee's own handle (`started` twice,
    /// stream before `started`): the caller sees it; the function keeps running.
    pub(crate) fn protocol_error_to_caller(
        &self,
        chan: &Chan,
        st: &mut crate::chan::ChanState,
        message: &str,
    ) {
        if !st.wire_done {
            st.wire_done = true;
            self.enqueue(Msg::Error {
                cid: Some(chan.cid),
                error: RemoteError::new(
                    ErrorKind::Protocol,
                    "ProtocolError",
                    message,
                    self.local.id.clone(),
                ),
            });
        }
    }

    // --------------------------------------------------------------------------------------------
    // Routing and shutdown.

    fn chan_for_stream(&self, cid: Cid) -> Option<Arc<Chan>> {
        let st = self.lock();
        if cid.0 % 2 == self.parity {
            st.calls.get(&cid).cloned()
        } else {
            st.served.get(&cid).map(|s| s.chan.clone())
        }
    }

    fn handle(self: &Arc<Self>, msg: Msg) {
        match msg {
            Msg::Start {
                cid,
                func,
                kind,
                args,
            } => self.serve_start(cid, func, kind, args),
            Msg::Cancel { cid } => {
                debug!(%cid, "Cancel from the caller");
                self.cancel_served(&[cid], &self.peer.id.clone());
            }
            Msg::StartAck { cid } => {
                if let Some(chan) = self.lock().calls.get(&cid).cloned() {
                    chan.lock().acked = true;
                    chan.notify();
                }
            }
            Msg::Started { cid, value } => {
                if let Some(chan) = self.lock().calls.get(&cid).cloned() {
                    {
                        let mut st = chan.lock();
                        st.started_seen = true;
                        st.started = Some(value);
                    }
                    chan.notify();
                }
            }
            Msg::Return { cid, value } => {
                let chan = self.lock().calls.remove(&cid);
                if let Some(chan) = chan {
                    chan.finish(Ok(value));
                }
            }
            Msg::Error {
                cid: Some(cid),
                error,
            } => {
                let chan = self.lock().calls.remove(&cid);
                match chan {
                    Some(chan) => {
                        chan.finish(Err(Error::from(error)));
                    }
                    None => debug!(%cid, %error, "error for an unknown call ignored"),
                }
            }
            Msg::Error { cid: None, error } => {
                debug!(peer = %self.peer.id, %error, "actor-level error from the peer");
            }
            Msg::Yield { cid, value } => {
                let Some(chan) = self.chan_for_stream(cid) else {
                    return;
                };
                let violation = {
                    let mut st = chan.lock();
                    if st.outcome.is_some() {
                        false // ended locally: drop the item
                    } else if !st.rx_open || st.allowance == 0 {
                        true
                    } else {
                        st.allowance -= 1;
                        st.items.push_back(value);
                        st.max_buffered = st.max_buffered.max(st.items.len());
                        false
                    }
                };
                if violation {
                    let message = format!(
                        "stream item for {} (call {cid}) arrived without credit",
                        chan.func
                    );
                    match chan.side {
                        Side::Caller => {
                            self.abandon_call(&chan, Error::Protocol(message));
                        }
                        Side::Callee => self.fail_served(cid, message),
                    }
                } else {
                    chan.notify();
                }
            }
            Msg::Credit { cid, n } => {
                if let Some(chan) = self.chan_for_stream(cid) {
                    {
                        let mut st = chan.lock();
                        st.credit = st.credit.saturating_add(n);
                    }
                    chan.notify();
                }
            }
            Msg::Stop { cid } => {
                if let Some(chan) = self.chan_for_stream(cid) {
                    chan.lock().peer_stopped = true;
                    chan.notify();
                }
            }
            Msg::CancelActor { reason } => self.cancel_actor_requested(reason),
            Msg::CancelAck { teardown_ms } => {
                *self
                    .last_ack_teardown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = teardown_ms;
                self.acks.fetch_add(1, Ordering::AcqRel);
                self.ack_ev.notify(usize::MAX);
            }
            Msg::Hello { actor, .. } => {
                debug!(%actor, "second Hello ignored");
            }
        }
    }

    /// Ends the link: local operations fail with `Closed(reason)`, served calls are cancelled
    /// (with an answer to the peer when `graceful`), the writer flushes and closes the channel.
    pub(crate) fn shutdown(&self, end: LinkEnd, reason: String, graceful: bool) {
        let (calls, served, ack_timer) = {
            let mut st = self.lock();
            if st.dead.is_some() {
                return;
            }
            st.dead = Some(reason.clone());
            self.dead.store(true, Ordering::Release);
            (
                std::mem::take(&mut st.calls),
                std::mem::take(&mut st.served),
                st.ack_timer.take(),
            )
        };
        drop(ack_timer);
        debug!(local = %self.local.id, peer = %self.peer.id, %reason, calls = calls.len(),
            served = served.len(), "link shutting down");
        for chan in calls.into_values() {
            chan.finish(Err(Error::Closed(reason.clone())));
        }
        for (_, entry) in served {
            {
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
            }
            entry.chan.notify();
            drop(entry.task);
        }
        if graceful {
            // Every served call has ended now: the acks owed go out with their answers.
            let mut st = self.lock();
            self.send_owed_acks(&mut st, None);
        }
        self.out.close();
        self.set_end(end);
        self.dead_ev.notify(usize::MAX);
        self.ack_ev.notify(usize::MAX);
        self.progress.notify(usize::MAX);
    }
}

/// Resolves when a cancelled, cancel-aware call's cleanup time is up (never for other calls).
async fn cleanup_expired(chan: &Chan) {
    let mut until = chan
        .wait(|st| st.cancelled_by.as_ref().and(st.cleanup_until))
        .await;
    loop {
        async_io::Timer::at(until).await;
        match chan.lock().cleanup_until {
            Some(later) if later > until => until = later, // extended meanwhile
            _ => return,
        }
    }
}

/// A served call that panicked: the payload and, when recorded, where it panicked.
type Panicked = (Box<dyn std::any::Any + Send>, Option<String>);

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// How many queued messages the writer hands the transport at once.
const WRITE_BATCH: usize = 256;

async fn writer(shared: Arc<Shared>, tx: ChannelTx, out: async_channel::Receiver<Msg>) {
    let run = async {
        let mut batch = VecDeque::with_capacity(WRITE_BATCH);
        while let Ok(msg) = out.recv().await {
            // Take whatever else is queued too: byte transports write a batch in one go.
            batch.push_back(msg);
            while batch.len() < WRITE_BATCH {
                match out.try_recv() {
                    Ok(msg) => batch.push_back(msg),
                    Err(_) => break,
                }
            }
            while !batch.is_empty() {
                let before = batch.len();
                let result = tx.send_batch(&mut batch).await;
                // Sent, plus the one handed back in an error: all left the queue.
                let done = before - batch.len();
                shared.written.fetch_add(done as u64, Ordering::AcqRel);
                if let Err(e) = result {
                    if !send_failed(&shared, &tx, e).await {
                        return;
                    }
                }
            }
            shared.progress.notify(usize::MAX);
        }
    };
    let deadline = async {
        shared.wait_dead().await;
        async_io::Timer::after(shared.config.close_flush_timeout).await;
        debug!(local = %shared.local.id, "writer flush bound reached");
    };
    run.or(deadline).await;
    tx.close();
    shared.writer_done.store(true, Ordering::Release);
    shared.progress.notify(usize::MAX);
}

/// Deals with a message that could not be sent. False when the channel is gone (the link is then
/// shut down).
async fn send_failed(shared: &Arc<Shared>, tx: &ChannelTx, e: SendError) -> bool {
    if e.is_closed() {
        let reason = format!("sending to {} failed: {e}", shared.peer.id);
        shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
        return false;
    }
    // This one message cannot travel (too large, unencodable): fail its call, not the link.
    let text = e.to_string();
    let msg = e.into_msg();
    debug!(kind = msg.kind_name(), %text, "message could not be sent");
    match msg {
        Msg::Start { cid, .. } => {
            let chan = shared.lock().calls.remove(&cid);
            if let Some(chan) = chan {
                chan.finish(Err(Error::Value(text)));
            }
        }
        Msg::Started { cid, .. } | Msg::Yield { cid, .. } | Msg::Return { cid, .. } => {
            let err = RemoteError::new(
                ErrorKind::Runtime,
                "SendError",
                text,
                shared.local.id.clone(),
            );
            let _ = tx
                .send(Msg::Error {
                    cid: Some(cid),
                    error: err,
                })
                .await;
        }
        _ => {}
    }
    true
}

async fn reader(shared: Arc<Shared>, mut rx: ChannelRx) {
    let mut dead = pin!(shared.wait_dead());
    loop {
        let next = async { Some(rx.recv().await) }
            .or(async {
                dead.as_mut().await;
                None
            })
            .await;
        match next {
            None => break,
            Some(Ok(msg)) => shared.handle(msg),
            Some(Err(e)) => {
                let reason = match &e {
                    RecvError::Closed => format!("the channel to {} closed", shared.peer.id),
                    other => format!("reading from {} failed: {other}", shared.peer.id),
                };
                shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
                break;
            }
        }
    }
    debug!(local = %shared.local.id, "reader stopped");
    shared.reader_done.store(true, Ordering::Release);
    shared.progress.notify(usize::MAX);
}
