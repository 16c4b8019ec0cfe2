//! The runtime's errors: what went wrong starting a child, and what a nursery collected.

use std::fmt;

use harrow_ipc::{ActorId, RemoteError};

use crate::backend::SpawnError;

/// A boxed error, what nursery bodies return so that `?` works on anything.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with one runtime operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A child could not be spawned or did not come up.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The nursery is tearing down and takes no new children.
    #[error("the nursery is closed: it is tearing down and takes no new children")]
    NurseryClosed,
    /// There is no current actor on this thread (call inside `run_root` or an actor).
    #[error("no actor runs on this thread: open nurseries inside run_root or an actor's function")]
    NoActor,
    /// A protocol operation failed.
    #[error(transparent)]
    Portal(#[from] harrow_portal::Error),
}

/// Why one child is listed in a [`NurseryError`]. Opaque: use the queries.
pub struct ChildFailure {
    actor: ActorId,
    backend: String,
    kind: FailureKind,
}

enum FailureKind {
    Remote(harrow_portal::Error),
    Crashed(String),
    Leaked(String),
}

impl ChildFailure {
    pub(crate) fn remote(actor: ActorId, backend: String, err: harrow_portal::Error) -> Self {
        ChildFailure {
            actor,
            backend,
            kind: FailureKind::Remote(err),
        }
    }

    pub(crate) fn crashed(actor: ActorId, backend: String, why: String) -> Self {
        ChildFailure {
            actor,
            backend,
            kind: FailureKind::Crashed(why),
        }
    }

    pub(crate) fn leaked(actor: ActorId, backend: String, what: String) -> Self {
        ChildFailure {
            actor,
            backend,
            kind: FailureKind::Leaked(what),
        }
    }

    /// The child this is about.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// The child's backend.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether the child's call failed with an error raised remotely (see [`remote_error`](Self::remote_error)).
    pub fn is_remote(&self) -> bool {
        matches!(&self.kind, FailureKind::Remote(e) if e.is_remote())
    }

    /// The remote error, if the child's call raised one.
    pub fn remote_error(&self) -> Option<&RemoteError> {
        match &self.kind {
            FailureKind::Remote(e) => e.remote_error(),
            _ => None,
        }
    }

    /// Whether the child's call was cancelled by someone else (`ContextCancelled`).
    pub fn is_cancelled(&self) -> bool {
        matches!(&self.kind, FailureKind::Remote(e) if e.is_cancelled())
    }

    /// Whether the child could not be stopped and was left running (reported, not waited for).
    pub fn is_leak(&self) -> bool {
        matches!(self.kind, FailureKind::Leaked(_))
    }

    /// Whether the child died or its channel broke without being asked to stop.
    pub fn is_crash(&self) -> bool {
        matches!(self.kind, FailureKind::Crashed(_))
    }

    /// The protocol error of the child's call, if that is what failed.
    pub fn call_error(&self) -> Option<&harrow_portal::Error> {
        match &self.kind {
            FailureKind::Remote(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Remote(e) => write!(f, "actor {} ({}): {e}", self.actor, self.backend),
            FailureKind::Crashed(why) => {
                write!(f, "actor {} ({}) crashed: {why}", self.actor, self.backend)
            }
            FailureKind::Leaked(what) => write!(
                f,
                "actor {} ({}) could not be stopped and was leaked: {what}",
                self.actor, self.backend
            ),
        }
    }
}

impl fmt::Debug for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChildFailure({self})")
    }
}

/// Everything that went wrong in one nursery: the body's error, if any, and every child failure,
/// each with its actor. Returned by [`open_nursery`](crate::open_nursery) and
/// [`run_root`](crate::run_root) after every child has exited or been reported leaked.
#[derive(Debug, Default)]
pub struct NurseryError {
    pub(crate) body: Option<BoxError>,
    pub(crate) failures: Vec<ChildFailure>,
    pub(crate) interrupted: bool,
}

impl NurseryError {
    /// The error the nursery's body returned, if it failed.
    pub fn body_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.body.as_deref()
    }

    /// Every child failure, in the order they happened.
    pub fn failures(&self) -> &[ChildFailure] {
        &self.failures
    }

    /// The children that were leaked.
    pub fn leaks(&self) -> impl Iterator<Item = &ChildFailure> {
        self.failures.iter().filter(|f| f.is_leak())
    }

    /// The remote errors raised by children.
    pub fn remote_errors(&self) -> impl Iterator<Item = &RemoteError> {
        self.failures.iter().filter_map(|f| f.remote_error())
    }

    /// Whether the nursery was torn down by SIGINT.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_none() && self.failures.is_empty() && !self.interrupted
    }
}

impl fmt::Display for NurseryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.interrupted {
            parts.push("interrupted (SIGINT)".to_owned());
        }
        if let Some(b) = &self.body {
            parts.push(format!("body failed: {b}"));
        }
        for c in &self.failures {
            parts.push(c.to_string());
        }
        write!(f, "nursery failed: {}", parts.join("; "))
    }
}

impl std::error::Error for NurseryError {}
