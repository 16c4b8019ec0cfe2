//! The child side of a backend that starts its actors outside the parent's address space (a
//! re-executed binary, a launched program): what crosses to the child, and how the child turns it
//! into a running actor.
//!
//! What crosses is the [`SpawnSpec`] itself, without its resolver: the parent encodes the spec
//! it was given as text ([`SpawnSpec::encode`]: an environment variable, an argument, a first
//! line on a pipe). The child decodes it, builds its end of the channel from whatever it
//! inherited (a socket, its stdin and stdout), and calls [`run_child`] with the functions it
//! serves. How the channel is passed is the backend's business (the process backend inherits a
//! socketpair as fd 3); what travels and how the actor starts is the same for every backend and
//! lives here.
//!
//! ```
//! use harrow_runtime_core::{SpawnSpec, ipc::ActorId};
//!
//! // Parent side.
//! let spec = SpawnSpec::new(ActorId::new("worker"), ActorId::new("root"));
//! let text = spec.encode().unwrap();
//! // Child side.
//! let received = SpawnSpec::decode(&text).unwrap();
//! assert_eq!(received.id, spec.id);
//! ```

use std::sync::Arc;

use harrow_ipc::Channel;
use harrow_portal::Resolver;

use crate::actor::{ActorExit, ActorInit, run_actor};
use crate::spec::SpawnSpec;

pub use crate::spec::SpecError;

/// The spec that crosses to a launched child: the [`SpawnSpec`] itself (its resolver skipped).
#[deprecated(note = "the SpawnSpec itself crosses: use SpawnSpec::encode and SpawnSpec::decode")]
pub type ChildSpec = SpawnSpec;

/// Runs the actor of `spec` on this thread, on its end of `channel`, serving `resolver`, until it
/// is cancelled or orphaned: the child side's whole job once it has its spec and channel.
///
/// `backend` is the name the child says in its `Hello` (`"process"`, or your backend's name).
/// The caller decides what the process does afterwards; [`ActorExit::HandshakeFailed`] means the
/// parent never completed the `Hello` exchange.
pub fn run_child(
    channel: Channel,
    spec: &SpawnSpec,
    backend: &str,
    resolver: Arc<dyn Resolver>,
) -> ActorExit {
    run_actor(
        channel,
        ActorInit::from_spec(spec.clone(), backend).with_resolver(resolver),
    )
}

/// [`run_child`] with a helper thread that runs the actor's tasks while it waits for work of
/// its own (see [`CoDriver`](crate::CoDriver) and [`run_actor_codriven`](crate::run_actor_codriven)):
/// a Python process child, whose interpreter's serving thread is the helper.
pub fn run_child_codriven(
    channel: Channel,
    spec: &SpawnSpec,
    backend: &str,
    resolver: Arc<dyn Resolver>,
    codriver: &crate::CoDriver,
) -> ActorExit {
    crate::run_actor_codriven(
        channel,
        ActorInit::from_spec(spec.clone(), backend).with_resolver(resolver),
        codriver,
    )
}
