//! What a parent passes to a child process through its environment.

use harrow_runtime_core::ipc::{ActorId, Value};
use harrow_runtime_core::{SpawnSpec, Timeouts};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Holds the number of the inherited channel descriptor (always [`CHILD_FD`]) in a child.
pub const CHILD_FD_ENV: &str = "HARROW_CHILD_FD";
/// Holds the hex-encoded bincode [`ChildSpec`] in a child.
pub const CHILD_SPEC_ENV: &str = "HARROW_CHILD_SPEC";
/// Holds the pid of the parent process that started the child.
pub const PARENT_PID_ENV: &str = "HARROW_PARENT_PID";
/// The descriptor number the child's end of the channel has in a child.
pub const CHILD_FD: i32 = 3;

/// The part of a [`SpawnSpec`] that crosses into a child process (the resolver does not: a
/// child serves what its own `main` registers).
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

    /// Encodes as hex text (bincode in serde mode), for an environment variable.
    pub fn encode(&self) -> Result<String> {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| Error::Encode(e.to_string()))?;
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Ok(out)
    }

    /// Decodes what [`encode`](Self::encode) made.
    pub fn decode(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Spec {
            var: CHILD_SPEC_ENV,
            reason,
        };
        let text = text.as_bytes();
        if text.len() % 2 != 0 {
            return Err(bad("odd number of hex digits".into()));
        }
        let mut bytes = Vec::with_capacity(text.len() / 2);
        for pair in text.chunks_exact(2) {
            let hi = hex_digit(pair[0]).ok_or_else(|| bad("not hex".into()))?;
            let lo = hex_digit(pair[1]).ok_or_else(|| bad("not hex".into()))?;
            bytes.push(hi << 4 | lo);
        }
        let (spec, used) =
            bincode::serde::decode_from_slice::<ChildSpec, _>(&bytes, bincode::config::standard())
                .map_err(|e| bad(e.to_string()))?;
        if used != bytes.len() {
            return Err(bad(format!("{} trailing bytes", bytes.len() - used)));
        }
        Ok(spec)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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
            assert!(matches!(err, Error::Spec { .. }), "{text:?}: {err}");
        }
    }
}
