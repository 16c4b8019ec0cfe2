//! [`Link`]: the protocol engine over one channel.

use std::sync::Arc;
use std::time::Duration;

use harrow_ipc::{ActorId, Channel};

use crate::{Portal, Resolver, Result};

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
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            credit_window: 64,
            hello_timeout: Duration::from_secs(5),
            cancel_timeout: Duration::from_millis(500),
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
    _private: (),
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
        let _ = (channel, local, resolver, exec, config);
        unimplemented!("portal helper")
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        unimplemented!("portal helper")
    }

    /// A handle for calling the peer. Cheap to clone; usable from any task.
    pub fn portal(&self) -> Portal {
        unimplemented!("portal helper")
    }

    /// Waits until the link ends and says why. Any number of tasks may wait.
    pub async fn closed(&self) -> LinkEnd {
        unimplemented!("portal helper")
    }

    /// Whether the link has ended.
    pub fn is_closed(&self) -> bool {
        unimplemented!("portal helper")
    }

    /// Cancels every call this link is serving for the peer, on behalf of `canceller`: each
    /// answers its caller with `ContextCancelled { canceller }`.
    pub fn cancel_calls(&self, canceller: &ActorId) {
        let _ = canceller;
        unimplemented!("portal helper")
    }

    /// Waits (bounded) until every served call has finished and its last message was handed to
    /// the transport. Returns false on timeout.
    pub async fn drain(&self, bound: Duration) -> bool {
        let _ = bound;
        unimplemented!("portal helper")
    }

    /// Closes the link: served calls are cancelled, pending caller operations fail with
    /// [`Error::Closed`](crate::Error::Closed), the channel is closed. Idempotent, never blocks.
    pub fn close(&self) {
        unimplemented!("portal helper")
    }
}
