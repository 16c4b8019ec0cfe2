//! The portal's error type.

use harrow_ipc::{ActorId, DEFAULT_MAX_DEPTH, FnPathError, RemoteError, Value};

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
    /// A value was refused: a typed value did not convert to or from
    /// [`Value`](harrow_ipc::Value), a value nests deeper than
    /// [`DEFAULT_MAX_DEPTH`](harrow_ipc::DEFAULT_MAX_DEPTH), or a message was too large to send.
    #[error("invalid value: {0}")]
    Value(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer closed (or dropped) its receiving side of the stream before this side's ended:
    /// it reads no more, so nothing more can be sent. A producer may take it as its cue to stop.
    #[error("stream not read: {0}")]
    NotRead(String),
}

impl Error {
    /// Whether this is a `ContextCancelled` from the peer.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Remote(e) if e.is_cancelled())
    }

    /// Whether the peer refused the call before it started: it was ending, and the function
    /// did not run ([`RemoteError::is_refused`]).
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Remote(e) if e.is_refused())
    }

    /// Whether the peer stopped reading this stream ([`Error::NotRead`]).
    pub fn is_not_read(&self) -> bool {
        matches!(self, Error::NotRead(_))
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

/// Refuses a value nested deeper than [`DEFAULT_MAX_DEPTH`] where it enters the API, so the limit
/// holds on every transport (`mem` never encodes) and no deep value reaches the peer. `what` names
/// the value for the message ("arguments of m:f").
#[inline]
pub(crate) fn check_depth(value: &Value, what: impl FnOnce() -> String) -> Result<()> {
    value
        .check_depth(DEFAULT_MAX_DEPTH)
        .map_err(|e| Error::Value(format!("{}: {e}", what())))
}
