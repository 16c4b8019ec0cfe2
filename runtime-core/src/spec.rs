//! What a child actor is started with, defined once: [`ActorSpec`] (what the user asks for),
//! [`SpawnSpec`] (that, plus the identities the nursery chose: what a backend receives, and what
//! crosses to a child outside the parent's address space).
//!
//! ```
//! use harrow_runtime_core::{ActorSpec, SpawnSpec, Timeouts, ipc::{ActorId, Value}};
//!
//! // What the user gives `start_actor`.
//! let asked = ActorSpec::new().params(Value::Int(7)).timeouts(Timeouts::quick());
//! // What the backend receives.
//! let spec = SpawnSpec::new(ActorId::new("worker"), ActorId::new("root")).with_actor(asked);
//! assert_eq!(spec.timeouts(), Timeouts::quick());
//! // What a launched child receives (everything but the resolver), as text.
//! let received = SpawnSpec::decode(&spec.encode().unwrap()).unwrap();
//! assert_eq!(received.id, spec.id);
//! assert_eq!(received.actor.params, Value::Int(7));
//! ```

use std::fmt;
use std::sync::Arc;

use harrow_ipc::{ActorId, Value};
use harrow_portal::Resolver;
use serde::{Deserialize, Serialize};

use crate::backend::Timeouts;

/// What to give a new child beyond its name and backend.
///
/// Everything here but the resolver can cross to a child outside the parent's address space
/// (it is part of [`SpawnSpec::encode`]); the resolver is for in-process backends only.
#[derive(Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActorSpec {
    /// The Rust functions the child serves (in-process backends; never crosses an encoding).
    #[serde(skip)]
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Backend-specific parameters (for example the Python modules a subint actor exposes).
    pub params: Value,
    /// Teardown bounds for this child's own children. `None` asks for the parent's: in a
    /// [`SpawnSpec`] the nursery has already filled it in.
    pub timeouts: Option<Timeouts>,
}

impl fmt::Debug for ActorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorSpec")
            .field("resolver", &self.resolver.as_ref().map(|_| "..."))
            .field("params", &self.params)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl ActorSpec {
    /// An empty spec.
    pub fn new() -> Self {
        ActorSpec::default()
    }

    /// A spec whose child serves `resolver` (for example a [`FnRegistry`](harrow_portal::FnRegistry)).
    pub fn with_resolver(resolver: Arc<dyn Resolver>) -> Self {
        ActorSpec {
            resolver: Some(resolver),
            ..ActorSpec::default()
        }
    }

    /// Sets backend-specific parameters.
    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// Sets the child's own teardown bounds.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }
}

/// Everything a backend needs to start one child actor: its identity, its parent's, and the
/// [`ActorSpec`] the user asked for (with its timeouts resolved by the nursery).
///
/// A backend whose child lives outside the parent's address space hands it over as text with
/// [`encode`](Self::encode); the child gets it back with [`decode`](Self::decode), without the
/// resolver (a closure cannot cross: such a child serves what its own program registers).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SpawnSpec {
    /// The child's identity (chosen by the nursery).
    pub id: ActorId,
    /// The parent's identity.
    pub parent: ActorId,
    /// What the child was asked to be: resolver, params, timeouts.
    pub actor: ActorSpec,
    /// The tree's discovery data, for a child that takes it at its start instead of in a call
    /// from its parent: one in its parent's address space, or one whose backend hands it over
    /// as a [`TreeGrant`]. Never encoded: it holds the tree's secret.
    #[serde(skip)]
    pub(crate) tree: Option<Arc<crate::discovery::tree::TreeInfo>>,
    /// The tree came in a [`TreeGrant`]: the child is in a process of its own, and listens
    /// for its peers before it says `Hello`.
    #[serde(skip)]
    pub(crate) granted: bool,
}

/// The tree's discovery data, its secret included, as a backend hands it to a child in another
/// process of this host ([`Capabilities::tree_at_spawn`](crate::Capabilities::tree_at_spawn)).
///
/// The child's parent then sends it no call for it: the child must have it before it says
/// `Hello`, and listen for its peers by then. So a backend that claims `tree_at_spawn` takes it
/// with [`SpawnSpec::tree_grant`], passes [`to_bytes`](Self::to_bytes) over a channel only the
/// child can read (a descriptor it alone inherits: never argv or the environment, which other
/// programs can read and the child's own children inherit), and the child puts it back with
/// [`from_bytes`](Self::from_bytes) and [`SpawnSpec::with_tree_grant`] before its actor runs.
///
/// ```
/// use harrow_runtime_core::{SpawnSpec, SpecError, TreeGrant, ipc::ActorId};
///
/// // A spec the nursery made for a backend without `tree_at_spawn` carries no grant.
/// let spec = SpawnSpec::new(ActorId::new("worker"), ActorId::new("root"));
/// assert!(spec.tree_grant().is_none());
/// // Bytes that are not a grant are refused, never a panic.
/// assert!(matches!(TreeGrant::from_bytes(b"not a grant"), Err(SpecError::Grant(_))));
/// ```
#[derive(Clone)]
pub struct TreeGrant(Arc<crate::discovery::tree::TreeInfo>);

impl fmt::Debug for TreeGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is never printed.
        f.debug_tuple("TreeGrant").field(&self.0).finish()
    }
}

impl TreeGrant {
    /// The largest grant [`from_bytes`](Self::from_bytes) accepts (a grant is a few hundred
    /// bytes: ids, the secret and a directory path).
    pub const MAX_BYTES: usize = 64 * 1024;

    /// The grant as bytes, for the child's private channel. An error when the tree's directory
    /// is not valid UTF-8 (the same data could not be handed down in a call either).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SpecError> {
        bincode::serde::encode_to_vec(&*self.0, bincode::config::standard())
            .map_err(|e| SpecError::Grant(format!("cannot encode it: {e}")))
    }

    /// The grant [`to_bytes`](Self::to_bytes) made. Anything else (more than
    /// [`MAX_BYTES`](Self::MAX_BYTES), trailing bytes, a secret of the wrong size) is an
    /// error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<TreeGrant, SpecError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(SpecError::Grant(format!(
                "a tree grant of {} bytes (at most {})",
                bytes.len(),
                Self::MAX_BYTES
            )));
        }
        let (tree, used) =
            bincode::serde::decode_from_slice::<crate::discovery::tree::TreeInfo, _>(
                bytes,
                bincode::config::standard(),
            )
            .map_err(|e| SpecError::Grant(format!("not a tree grant: {e}")))?;
        if used != bytes.len() {
            return Err(SpecError::Grant(format!(
                "a tree grant with {} trailing bytes",
                bytes.len() - used
            )));
        }
        tree.check().map_err(SpecError::Grant)?;
        Ok(TreeGrant(Arc::new(tree)))
    }
}

/// A [`SpawnSpec`] that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The spec could not be encoded.
    #[error("cannot encode the actor spec: {0}")]
    Encode(String),
    /// The text is not an encoded spec.
    #[error("cannot decode the actor spec: {0}")]
    Decode(String),
    /// A [`TreeGrant`] could not be encoded, or the bytes are not one.
    #[error("unusable tree grant: {0}")]
    Grant(String),
}

impl SpawnSpec {
    /// A spec for actor `id`, child of `parent`, serving nothing, with default timeouts.
    pub fn new(id: ActorId, parent: ActorId) -> Self {
        SpawnSpec {
            id,
            parent,
            actor: ActorSpec::new(),
            tree: None,
            granted: false,
        }
    }

    /// The tree's discovery data for a backend that hands it to its child itself
    /// ([`Capabilities::tree_at_spawn`](crate::Capabilities::tree_at_spawn)): `Some` when the
    /// nursery put it in this spec, which it does for such a backend once its own actor has the
    /// tree. See [`TreeGrant`].
    pub fn tree_grant(&self) -> Option<TreeGrant> {
        self.tree.clone().map(TreeGrant)
    }

    /// In the child, before its actor runs: the tree's data its backend handed over. The actor
    /// then listens for its peers before it says `Hello`, and expects no call for the tree.
    pub fn with_tree_grant(mut self, grant: TreeGrant) -> Self {
        self.tree = Some(grant.0);
        self.granted = true;
        self
    }

    /// Replaces what the child is asked to be.
    pub fn with_actor(mut self, actor: ActorSpec) -> Self {
        self.actor = actor;
        self
    }

    /// The teardown bounds the child uses for its own children (the defaults when unset).
    pub fn timeouts(&self) -> Timeouts {
        self.actor.timeouts.unwrap_or_default()
    }

    /// The in-process functions the child serves, if any.
    pub fn resolver(&self) -> Option<&Arc<dyn Resolver>> {
        self.actor.resolver.as_ref()
    }

    /// The backend-specific parameters.
    pub fn params(&self) -> &Value {
        &self.actor.params
    }

    /// Encodes everything but the resolver as lowercase hex text (bincode 2 in serde mode,
    /// standard configuration inside), safe for an environment variable or an argument.
    pub fn encode(&self) -> Result<String, SpecError> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map(hex::encode)
            .map_err(|e| SpecError::Encode(e.to_string()))
    }

    /// Decodes what [`encode`](Self::encode) made (its resolver is `None`). Any other input is
    /// an error, never a panic.
    pub fn decode(text: &str) -> Result<Self, SpecError> {
        let bytes = hex::decode(text.trim()).map_err(|e| SpecError::Decode(e.to_string()))?;
        let (spec, used) =
            bincode::serde::decode_from_slice::<SpawnSpec, _>(&bytes, bincode::config::standard())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_without_its_resolver() {
        let registry: Arc<dyn Resolver> = Arc::new(harrow_portal::FnRegistry::new());
        let spec = SpawnSpec::new(ActorId::new("worker"), ActorId::new("root")).with_actor(
            ActorSpec::with_resolver(registry)
                .params(Value::Map(vec![("k".into(), Value::Bytes(vec![0, 255]))]))
                .timeouts(Timeouts::quick()),
        );
        let text = spec.encode().unwrap();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        let back = SpawnSpec::decode(&text).unwrap();
        assert_eq!(back.id, spec.id);
        assert_eq!(back.parent, spec.parent);
        assert_eq!(back.actor.params, spec.actor.params);
        assert_eq!(back.timeouts(), Timeouts::quick());
        assert!(back.resolver().is_none());
    }

    #[test]
    fn a_tree_grant_round_trips_and_bad_bytes_are_refused() {
        let tree = Arc::new(crate::discovery::TreeInfo::new().unwrap());
        let spec = SpawnSpec {
            tree: Some(tree.clone()),
            ..SpawnSpec::new(ActorId::new("worker"), ActorId::new("root"))
        };
        let grant = spec.tree_grant().expect("the spec carries the tree");
        let bytes = grant.to_bytes().unwrap();
        let back = TreeGrant::from_bytes(&bytes).unwrap();
        assert_eq!(*back.0, *tree);
        // The encoded spec never carries it; the child puts it back.
        let received = SpawnSpec::decode(&spec.encode().unwrap()).unwrap();
        assert!(received.tree_grant().is_none());
        let received = received.with_tree_grant(back);
        assert!(received.granted);
        assert_eq!(received.tree.as_deref(), Some(&*tree));
        // Never printed.
        let shown = format!("{grant:?} {received:?}");
        let secret_hex: String = tree.secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&secret_hex) && !shown.contains(&format!("{:?}", tree.secret)));

        let refused = |bytes: &[u8], why: &str| match TreeGrant::from_bytes(bytes) {
            Err(SpecError::Grant(m)) => assert!(m.contains(why), "{m:?} does not say {why:?}"),
            other => panic!("{why}: {other:?}"),
        };
        refused(&[], "not a tree grant");
        refused(&bytes[..bytes.len() - 1], "not a tree grant");
        refused(&[bytes.as_slice(), &[0]].concat(), "1 trailing bytes");
        refused(&vec![0; TreeGrant::MAX_BYTES + 1], "at most");
        let mut short = (*tree).clone();
        short.secret.pop();
        let short = TreeGrant(Arc::new(short)).to_bytes().unwrap();
        refused(&short, "a tree secret of 31 bytes");
        let mut odd = (*tree).clone();
        odd.id = "not hex".into();
        let odd = TreeGrant(Arc::new(odd)).to_bytes().unwrap();
        refused(&odd, "not 32 hex digits");
    }

    #[test]
    fn unset_timeouts_are_the_defaults() {
        let spec = SpawnSpec::new(ActorId::new("a"), ActorId::new("b"));
        assert_eq!(spec.timeouts(), Timeouts::default());
    }

    #[test]
    fn bad_spec_text_is_an_error() {
        for text in ["", "0", "zz", "00ff00ff00ff"] {
            let err = SpawnSpec::decode(text).unwrap_err();
            assert!(matches!(err, SpecError::Decode(_)), "{text:?}: {err}");
        }
    }
}
