//! The contract between the runtime and a backend: [`SpawnBackend`] and [`Child`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use harrow_ipc::{ActorId, Channel};
use harrow_portal::LinkConfig;

use crate::spec::SpawnSpec;

/// A boxed, sendable future, as returned by the object-safe backend traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Child::hard_kill`] can do to a child that ignores the graceful cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HardKill {
    /// The child is ended for sure (a process is SIGKILLed and reaped).
    Kills,
    /// Running code is interrupted where it can be (a Python subinterpreter at its next bytecode);
    /// code blocked in a native call can still outlive the bound and is then leaked.
    Interrupts,
    /// Nothing can stop the child's code: it is detached and reported leaked (a Rust thread).
    Detaches,
}

/// What a backend can do. Shared code and tests branch on these, never on a backend's name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The child runs in parallel with its parent (its own OS thread or process).
    pub parallel: bool,
    /// What a hard kill achieves.
    pub hard_kill: HardKill,
    /// The child lives in the parent's address space (so in-process resolvers can be passed).
    pub in_process: bool,
    /// A child can itself start children with this backend.
    pub nested: bool,
    /// The child may run on another host than its parent (a launcher such as ssh starts it). It
    /// then begins a *host domain* of its own: peers in other domains reach it, and it reaches
    /// them, through the tree's links rather than a local socket (see `docs/DISCOVERY.md`).
    pub other_host: bool,
    /// The backend hands its child the tree's discovery data as it starts it
    /// ([`SpawnSpec::tree_grant`](crate::SpawnSpec::tree_grant), over a channel only the child
    /// can read), and the child takes it before it says `Hello`
    /// ([`SpawnSpec::with_tree_grant`](crate::SpawnSpec::with_tree_grant)). Its parent then sends
    /// it no call for it. Meaningless with [`other_host`](Self::other_host) (such a child begins
    /// a host domain of its own, handed to it in a call) and for an
    /// [`in_process`](Self::in_process) child, which shares its parent's data anyway.
    pub tree_at_spawn: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::new()
    }
}

impl Capabilities {
    /// Defaults: parallel, in-process, nestable, hard kill that detaches (the weakest kill: claim
    /// more with [`with_hard_kill`](Self::with_hard_kill) only if the backend really does it).
    pub fn new() -> Self {
        Capabilities {
            parallel: true,
            hard_kill: HardKill::Detaches,
            in_process: true,
            nested: true,
            other_host: false,
            tree_at_spawn: false,
        }
    }

    /// Sets [`Capabilities::hard_kill`].
    pub fn with_hard_kill(mut self, hard_kill: HardKill) -> Self {
        self.hard_kill = hard_kill;
        self
    }

    /// Sets [`Capabilities::in_process`].
    pub fn with_in_process(mut self, in_process: bool) -> Self {
        self.in_process = in_process;
        self
    }

    /// Sets [`Capabilities::nested`].
    pub fn with_nested(mut self, nested: bool) -> Self {
        self.nested = nested;
        self
    }

    /// Sets [`Capabilities::other_host`].
    pub fn with_other_host(mut self, other_host: bool) -> Self {
        self.other_host = other_host;
        self
    }

    /// Sets [`Capabilities::tree_at_spawn`].
    pub fn with_tree_at_spawn(mut self, tree_at_spawn: bool) -> Self {
        self.tree_at_spawn = tree_at_spawn;
        self
    }
}

/// The bounds of the teardown ladder. Every wait in teardown is one of these.
///
/// Each bound is how long its step waits, taken as given: a zero `cancel_ack` or
/// `graceful_exit` skips to the hard kill at once, and with a zero `hard_kill` a child that
/// cannot be killed (a thread actor) is reported leaked even when it was about to exit. Keep
/// them at least as long as a child needs to notice a cancel ([`Timeouts::quick`] is the
/// shortest the test suite uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timeouts {
    /// How long to wait for a `CancelAck` (default 0.5 s).
    pub cancel_ack: Duration,
    /// How long to wait for the child to exit after the graceful cancel (default 1 s).
    pub graceful_exit: Duration,
    /// How long to wait for the child to exit after the hard kill (default 1 s).
    pub hard_kill: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            cancel_ack: Duration::from_millis(500),
            graceful_exit: Duration::from_secs(1),
            hard_kill: Duration::from_secs(1),
        }
    }
}

impl Timeouts {
    /// Small bounds for tests: 0.2 s / 0.4 s / 0.4 s.
    pub fn quick() -> Self {
        Timeouts {
            cancel_ack: Duration::from_millis(200),
            graceful_exit: Duration::from_millis(400),
            hard_kill: Duration::from_millis(400),
        }
    }

    /// The longest the whole ladder can take for one child.
    pub fn ladder_bound(&self) -> Duration {
        self.cancel_ack
            .saturating_add(self.graceful_exit)
            .saturating_add(self.hard_kill)
    }
}

/// Where a child is in its life, or how it ended: the one lifecycle enum of the runtime.
///
/// [`Child::join`] answers `Running` (not ended within the bound), `Exited`, `Failed` or `Killed`;
/// a backend that knows its child can never be stopped may answer `Leaked`. The nursery records
/// each child's final outcome with the same enum ([`ChildHandle::outcome`](crate::ChildHandle::outcome)):
/// `Exited`, `Failed`, `Killed`, or `Leaked` when the ladder's last join still saw it running.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The child is still running (a bounded wait ended first).
    Running,
    /// The child's runtime returned normally (by itself, or after the graceful cancel).
    Exited,
    /// The child ended abnormally (a panic, a non-zero exit status, a signal it did not ask for).
    Failed(String),
    /// The child was ended by [`Child::hard_kill`].
    Killed,
    /// The child could not be stopped within the bounds and was left running, reported: what is
    /// still running (a thread name, a pid, an interpreter).
    Leaked(String),
}

// As a predicate of the child: "it exited", "it failed: ...".
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Running => f.write_str("is still running"),
            Exit::Exited => f.write_str("exited"),
            Exit::Failed(why) => write!(f, "failed: {why}"),
            Exit::Killed => f.write_str("was killed"),
            Exit::Leaked(why) => write!(f, "was leaked: {why}"),
        }
    }
}

/// Why a child could not be spawned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The spec is not usable by this backend.
    #[error("cannot spawn actor {actor}: bad spec: {reason}")]
    BadSpec {
        /// The actor.
        actor: ActorId,
        /// What is wrong.
        reason: String,
    },
    /// The backend cannot run here (e.g. no suitable Python).
    #[error("cannot spawn actor {actor}: backend {backend} unavailable: {reason}")]
    Unavailable {
        /// The actor.
        actor: ActorId,
        /// The backend name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// Starting the child failed.
    #[error("cannot spawn actor {actor}: {reason}")]
    Failed {
        /// The actor.
        actor: ActorId,
        /// Why.
        reason: String,
    },
    /// The child started but did not complete the handshake in time or correctly.
    #[error("actor {actor} did not come up: {reason}")]
    Handshake {
        /// The actor.
        actor: ActorId,
        /// Why.
        reason: String,
    },
}

impl SpawnError {
    /// The actor that could not be spawned.
    pub fn actor(&self) -> &ActorId {
        match self {
            SpawnError::BadSpec { actor, .. }
            | SpawnError::Unavailable { actor, .. }
            | SpawnError::Failed { actor, .. }
            | SpawnError::Handshake { actor, .. } => actor,
        }
    }
}

/// Where an actor runs. Object-safe: the runtime holds backends as `Arc<dyn SpawnBackend>`.
///
/// This is the page a backend author reads (`docs/BACKENDS.md` in the repository walks through a
/// complete example backend). A backend decides *where* an actor runs (an OS thread, a
/// subinterpreter, a child process); the runtime decides everything else. The runtime calls
/// [`SpawnBackend::spawn`], performs the `Hello` handshake on the returned child's channel, serves
/// and supervises it, and tears it down with this ladder:
///
/// 1. `CancelActor` over the channel, bounded by [`Timeouts::cancel_ack`];
/// 2. [`Child::join`] bounded by [`Timeouts::graceful_exit`];
/// 3. the runtime drops its end of the channel (a child that still yields exits as an orphan),
///    then [`Child::hard_kill`];
/// 4. [`Child::join`] bounded by [`Timeouts::hard_kill`]; a child still running is reported leaked.
///
/// # Writing a backend
///
/// - `spawn` starts the child so that it runs [`run_actor`](crate::run_actor) on the child's end of
///   a [`Channel`] with an [`ActorInit`](crate::ActorInit) made from the [`SpawnSpec`]. It returns
///   once the child is started; it need not wait for the child's `Hello` (the runtime does, bounded).
///   Every failure is a [`SpawnError`] naming the actor, never a panic.
/// - `spawn` must be **cancel-safe**: the nursery drops its future when it has not finished within
///   `LinkConfig::hello_timeout`, at any `.await`. Whatever the future has started by then (a
///   thread, a process, a temporary file) must be ended or released by dropping it: hold each
///   resource in a guard whose `Drop` undoes it, and hand the guards to the [`Child`] only at the
///   end. A `Child` dropped by the runtime (a failed handshake, a spawn abandoned halfway) must not
///   leave anything running either, beyond what it reports.
/// - [`SpawnBackend::spawn`] runs on the parent actor's own thread, inside its executor: never
///   block it (no `std::thread::sleep`, no blocking joins); do slow work on a thread of its own
///   and await it.
/// - Every method is bounded: `join` never waits longer than its bound, `hard_kill` never blocks.
///   `join` must be cancel-safe (a ladder step can be cut short by an escalation, and `join` is
///   then called again): [`DedicatedThread`](crate::DedicatedThread) gives an actor thread exactly
///   that.
/// - A child whose code can't be stopped is reported by `join` as [`Exit::Running`] after
///   `hard_kill`; the runtime then reports it leaked and goes on. Never hang instead.
/// - Declare what the backend can do in [`Capabilities`]; shared code and the conformance suite
///   branch on capabilities, never on the backend's name.
///
/// - A child whose channel is already gone (the ladder drops it before the hard kill) must still
///   be ended by `hard_kill` and reaped by `join`: never rely on the channel to reach a child
///   you are killing.
///
/// ```
/// use harrow_runtime_core::{Capabilities, HardKill};
/// let caps = Capabilities::new().with_hard_kill(HardKill::Kills).with_in_process(false);
/// assert!(caps.parallel);
/// ```
pub trait SpawnBackend: Send + Sync + fmt::Debug + 'static {
    /// A short lowercase name (`"thread"`, `"process"`, `"subint"`), for logs and reports.
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Starts a child actor that will run [`run_actor`](crate::run_actor) with `spec`.
    /// Returns once the child is started (it may not have said `Hello` yet).
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>>;

    /// The link tunables the parent uses on its link to a child of this backend, given its own.
    /// The default keeps them. A backend whose children live on other machines sets a heartbeat
    /// timeout here (when the parent set none), so that a silent partition ends the link, and
    /// the child with it, within a bound.
    fn link_config(&self, parent: &LinkConfig) -> LinkConfig {
        parent.clone()
    }
}

/// The parent's handle on one running child.
pub trait Child: Send + fmt::Debug {
    /// The child's identity.
    fn id(&self) -> &ActorId;

    /// The parent's end of the channel to the child. Called once by the runtime; later calls
    /// return `None`.
    fn take_channel(&mut self) -> Option<Channel>;

    /// Ends the child by force, as far as the backend can ([`Capabilities::hard_kill`]).
    /// Never blocks for long; the runtime follows it with a bounded [`join`](Child::join).
    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>>;

    /// Waits at most `bound` for the child to end. Returns [`Exit::Running`] if it has not.
    /// May be called again after `Running`.
    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit>;

    /// What the child is, for leak reports (thread name, pid, interpreter id...).
    fn describe(&self) -> String {
        format!("{}", self.id())
    }
}
