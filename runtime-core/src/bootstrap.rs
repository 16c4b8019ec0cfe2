//! The child side of a backend that starts its actors outside the parent's address space (a
//! re-executed binary, a launched program): what crosses to the child, and how the child turns it
//! into a running actor.
//!
//! The parent makes a [`ChildSpec`] from the [`SpawnSpec`] it was given and hands it to the child
//! as text ([`ChildSpec::encode`]: an environment variable, an argument, a first line on a pipe).
//! The child decodes it, builds its end of the channel from whatever it inherited (a socket, its
//! stdin and stdout), and calls [`run_child`] with the functions it serves. How the channel is
//! passed is the backend's business (the process backend inherits a socketpair as fd 3); what
//! travels and how the actor starts is the same for every backend and lives here.
//!
//! ```
//! use harrow_runtime_core::bootstrap::ChildSpec;
//! use harrow_runtime_core::{SpawnSpec, ipc::ActorId};
//!
//! // Parent side.
//! let spec = SpawnSpec::new(ActorId::new("worker"), ActorId::new("root"));
//! let text = ChildSpec::from_spawn_spec(&spec).encode().unwrap();
//! // Child side.
//! let received = ChildSpec::decode(&text).unwrap();
//! assert_eq!(received.id, spec.id);
//! ```

use std::sync::Arc;

use harrow_ipc::{ActorId, Channel, Value};
use harrow_portal::Resolver;
use serde::{Deserialize, Serialize};

use crate::actor::{ActorExit, ActorInit, run_actor};
use crate::backend::{SpawnSpec, Timeouts};

/// The part of a [`SpawnSpec`] that crosses into a child outside the parent's address space.
///
/// The resolver does not cross: such a child serves what its own `main` registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChildSpec {
    /// The child's identity.
    pub id: ActorId,
    /// Its parent's identity.
    pub parent: ActorId,
    /// Teardown bounds for the child's own children.
    pub timeouts: Timeouts,
    /// Backend-specific parameters from the spawn spec.
    pub params: Value,
}

/// A [`ChildSpec`] that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The spec could not be encoded.
    #[error("cannot encode the actor spec: {0}")]
    Encode(String),
    /// The text is not an encoded spec.
    #[error("cannot decode the actor spec: {0}")]
    Decode(String),
}

impl ChildSpec {
    /// The crossing part of `spec`.
    pub fn from_spawn_spec(spec: &SpawnSpec) -> Self {
        ChildSpec {
            id: spec.id.clone(),
            parent: spec.parent.clone(),
            timeouts: spec.timeouts,
            params: spec.params.clone(),
        }
    }

    /// The [`SpawnSpec`] a child rebuilds (without a resolver).
    pub fn to_spawn_spec(&self) -> SpawnSpec {
        let mut spec = SpawnSpec::new(self.id.clone(), self.parent.clone());
        spec.timeouts = self.timeouts;
        spec.params = self.params.clone();
        spec
    }

    /// The runtime's start-up values for this child on backend `backend`, serving `resolver`.
    pub fn actor_init(&self, backend: impl Into<String>, resolver: Arc<dyn Resolver>) -> ActorInit {
        ActorInit::from_spec(self.to_spawn_spec(), backend).with_resolver(resolver)
    }

    /// Encodes as lowercase hex text (bincode 2 in serde mode, standard configuration inside),
    /// safe for an environment variable or a command-line argument.
    pub fn encode(&self) -> Result<String, SpecError> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map(hex::encode)
            .map_err(|e| SpecError::Encode(e.to_string()))
    }

    /// Decodes what [`encode`](Self::encode) made. Any other input is an error, never a panic.
    pub fn decode(text: &str) -> Result<Self, SpecError> {
        let bytes = hex::decode(text.trim()).map_err(|e| SpecError::Decode(e.to_string()))?;
        let (spec, used) =
            bincode::serde::decode_from_slice::<ChildSpec, _>(&bytes, bincode::config::standard())
                .map_err(|e| SpecError::Decode(e.to_string()))?;
        if used != bytes.len() {
            return Err(SpecError::Decode(format!(
                "{} trailing bytes",
                bytes.len() - used
            )));
        }
        Ok(spec)
    }
}

/// Runs the actor of `spec` on this thread, on its end of `channel`, serving `resolver`, until it
/// is cancelled or orphaned: the child side's whole job once it has its spec and channel.
///
/// `backend` is the name the child says in its `Hello` (`"process"`, or your backend's name).
/// The caller decides what the process does afterwards; [`ActorExit::HandshakeFailed`] means the
/// parent never completed the `Hello` exchange.
pub fn run_child(
    channel: Channel,
    spec: &ChildSpec,
    backend: &str,
    resolver: Arc<dyn Resolver>,
) -> ActorExit {
    run_actor(channel, spec.actor_init(backend, resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let spec = ChildSpec {
            id: ActorId::new("worker"),
            parent: ActorId::new("root"),
            timeouts: Timeouts::quick(),
            params: Value::Map(vec![("k".into(), Value::Bytes(vec![0, 255]))]),
        };
        let text = spec.encode().unwrap();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(ChildSpec::decode(&text).unwrap(), spec);
    }

    #[test]
    fn bad_spec_text_is_an_error() {
        for text in ["", "0", "zz", "00ff00ff00ff"] {
            let err = ChildSpec::decode(text).unwrap_err();
            assert!(matches!(err, SpecError::Decode(_)), "{text:?}: {err}");
        }
    }
}
