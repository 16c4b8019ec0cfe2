//! Establishing a link: the `Hello` exchange, then starting the engine's tasks.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use harrow_ipc::wait::{Event, deadline};
use harrow_ipc::{Channel, Msg, PROTOCOL_VERSION, RecvError};
use tracing::debug;

use super::io::{heartbeat, reader, writer};
use super::outlet::{Outlet, direct_waker};
use super::{Executor, Link, LinkConfig, LinkReader, LinkState, LocalInfo, PeerInfo, Shared};
use crate::{Error, Resolver, Result};

impl Link {
    /// Sends our `Hello`, waits (bounded by `config.hello_timeout`) for the peer's, checks the
    /// protocol version, then starts the engine on `exec`.
    ///
    /// `resolver` serves the peer's calls; with `None`, every `Start` is answered with a
    /// `NotFound` error.
    ///
    /// The link's reader, writer and served calls are tasks of `exec`: something must run
    /// that executor (a thread looping on `exec.run(..)`, say) for as long as the link lives.
    /// Nothing runs it for you; on an executor nobody runs, the handshake completes (it runs in
    /// the caller's task) but no answer is ever read, and each call waits until its own bound.
    pub async fn establish(
        channel: Channel,
        local: LocalInfo,
        resolver: Option<Arc<dyn Resolver>>,
        exec: &Executor,
        config: LinkConfig,
    ) -> Result<Link> {
        let (link, reader) =
            Link::establish_with_reader(channel, local, resolver, exec, config).await?;
        exec.spawn(reader).detach();
        Ok(link)
    }

    /// [`Link::establish`], but the link's reader, the future that reads every message from
    /// the channel and routes it, is handed back instead of spawned on `exec`. The caller polls
    /// it until it ends (it ends once the link has shut down), typically on the thread that
    /// runs `exec`, beside the executor rather than as one of its tasks: a message then wakes
    /// that thread directly, with no task to schedule and no queue to pop. Nothing arrives
    /// while it is not polled. Dropping it before it ends ends the link as broken, so that no
    /// call waits for an answer nobody will read.
    pub async fn establish_with_reader(
        channel: Channel,
        local: LocalInfo,
        resolver: Option<Arc<dyn Resolver>>,
        exec: &Executor,
        config: LinkConfig,
    ) -> Result<(Link, LinkReader)> {
        Link::handshake(channel, local, resolver, exec, config, true).await
    }

    /// [`Link::establish_with_reader`] for a side whose `Hello` is already on the channel:
    /// whoever made the channel sent [`LocalInfo::hello`] on this end before handing it over.
    /// Sends no `Hello` of its own (a second one would only be ignored); waits for the peer's
    /// and checks it as usual.
    ///
    /// An in-process backend uses it through the runtime, so that a parent need not wait for
    /// its child's thread to run before it may call the child (the calls wait in the channel).
    pub async fn establish_introduced_with_reader(
        channel: Channel,
        local: LocalInfo,
        resolver: Option<Arc<dyn Resolver>>,
        exec: &Executor,
        config: LinkConfig,
    ) -> Result<(Link, LinkReader)> {
        Link::handshake(channel, local, resolver, exec, config, false).await
    }

    async fn handshake(
        channel: Channel,
        local: LocalInfo,
        resolver: Option<Arc<dyn Resolver>>,
        exec: &Executor,
        config: LinkConfig,
        say_hello: bool,
    ) -> Result<(Link, LinkReader)> {
        let (tx, mut rx) = channel.split();
        let span = tracing::debug_span!("link", local = %local.id);
        let _enter = span.enter();
        if say_hello && let Err(e) = tx.send(local.hello()).await {
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
        let (out, writer_queue) = Outlet::new(tx);
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
            reader_waker: atomic_waker::AtomicWaker::new(),
            next_cid: AtomicU64::new(2 + parity),
            state_gen: AtomicU64::new(0),
            parity,
            enqueued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            received: AtomicU64::new(0),
            held: std::sync::atomic::AtomicUsize::new(0),
            reading_stopped: AtomicBool::new(false),
            writer_done: AtomicBool::new(false),
            reader_done: AtomicBool::new(false),
            progress: harrow_ipc::wait::Watched::new(),
            end: Mutex::new(None),
            end_ev: Event::new(),
            acks: AtomicU64::new(0),
            last_ack_teardown: Mutex::new(None),
            ack_ev: Event::new(),
        });
        match writer_queue {
            Some((tx, out_rx)) => exec.spawn(writer(shared.clone(), tx, out_rx)).detach(),
            None => exec.spawn(direct_waker(shared.clone())).detach(),
        }
        if shared.config.heartbeat_interval.is_some() || shared.config.heartbeat_timeout.is_some() {
            exec.spawn(heartbeat(shared.clone())).detach();
        }
        let reader = LinkReader::new(shared.clone(), reader(shared.clone(), rx));
        Ok((Link { shared }, reader))
    }
}
