//! The portal's error type.

use harrow_ipc::{ActorId, FnPathError, RemoteError};

/// `Result` with the portal's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong on the caller side of a link.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote function failed, or the call was cancelled by someone else
    /// (`ContextCancelled`, see [`Error::is_cancelled`]).
    #[error("remote error: {0}")]
    Remote(Box<RemoteError>),
    /// The channel to the peer is closed: the peer is gone or the link was shut down.
    #[error("transport closed: {0}")]
    Closed(String),
    /// The peer did not complete the `Hello` exchange correctly.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A protocol rule was broken locally (`started` twice, send after close, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A function path did not parse.
    #[error(transparent)]
    FnPath(#[from] FnPathError),
    /// A typed value did not convert to or from [`Value`](harrow_ipc::Value).
    #[error("value conversion failed: {0}")]
    Value(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Whether this is a `ContextCancelled` from the peer.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Remote(e) if e.is_cancelled())
    }

    /// Whether the failure came from the remote side (including cancellation).
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote(_))
    }

    /// Whether the transport is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_))
    }

    /// The remote error, if this is one.
    pub fn remote_error(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// For a cancellation: who asked for it.
    pub fn canceller(&self) -> Option<&ActorId> {
        self.remote_error().and_then(|e| e.canceller.as_ref())
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::Remote(Box::new(e))
    }
}
