//! The runtime's errors: what went wrong starting a child, and what a nursery collected.

use std::fmt;
use std::sync::OnceLock;

use harrow_ipc::{ActorId, ErrorKind, RemoteError};

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
    /// A supervisor restarted its children too often and gave up: why, and the last errors.
    GaveUp(String, Vec<String>),
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

    /// This failure as a wire error, as the nursery of `local` reports it: a child's remote
    /// error keeps its source and gets `local` on its relay path; a crash, leak or broken link
    /// is a `Runtime` error whose source is the child it is about.
    pub fn to_remote(&self, local: &ActorId) -> RemoteError {
        match &self.kind {
            FailureKind::Remote(harrow_portal::Error::Remote(e)) => {
                (**e).clone().relayed_by(local.clone())
            }
            FailureKind::Remote(other) => RemoteError::new(
                ErrorKind::Runtime,
                "ChildCallFailed",
                format!(
                    "the call to actor {} ({}) failed: {other}",
                    self.actor, self.backend
                ),
                self.actor.clone(),
            )
            .relayed_by(local.clone()),
            FailureKind::Crashed(why) => RemoteError::new(
                ErrorKind::Runtime,
                "ActorCrashed",
                format!("actor {} ({}) crashed: {why}", self.actor, self.backend),
                self.actor.clone(),
            )
            .relayed_by(local.clone()),
            FailureKind::Leaked(what) => RemoteError::new(
                ErrorKind::Runtime,
                "ActorLeaked",
                format!(
                    "actor {} ({}) could not be stopped and was leaked: {what}",
                    self.actor, self.backend
                ),
                self.actor.clone(),
            )
            .relayed_by(local.clone()),
            FailureKind::GaveUp(why, errors) => RemoteError::new(
                ErrorKind::Runtime,
                "SupervisorGaveUp",
                if errors.is_empty() {
                    format!(
                        "supervisor {} gave up: {why}; its children had ended cleanly",
                        self.actor
                    )
                } else {
                    format!(
                        "supervisor {} gave up: {why}; last errors: {}",
                        self.actor,
                        errors.join("; ")
                    )
                },
                self.actor.clone(),
            )
            .relayed_by(local.clone()),
        }
    }

    pub(crate) fn gave_up(
        supervisor: ActorId,
        backend: String,
        why: String,
        errors: Vec<String>,
    ) -> Self {
        ChildFailure {
            actor: supervisor,
            backend,
            kind: FailureKind::GaveUp(why, errors),
        }
    }

    /// Whether this is a [`Supervisor`](crate::Supervisor) that exceeded its restart intensity
    /// and gave up (its actor is the supervisor's identity).
    pub fn is_gave_up(&self) -> bool {
        matches!(self.kind, FailureKind::GaveUp(..))
    }

    /// For a supervisor that gave up: the last errors of its children, oldest first.
    pub fn last_errors(&self) -> &[String] {
        match &self.kind {
            FailureKind::GaveUp(_, errors) => errors,
            _ => &[],
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
            FailureKind::GaveUp(why, errors) => write!(
                f,
                "supervisor {} gave up: {why}; last errors: {}",
                self.actor,
                errors.join("; ")
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
///
/// It is also a tree of wire errors ([`as_remote`](Self::as_remote)): a served function that
/// fails with `open_nursery(..).await?` answers its caller with that group, so a failure deep in
/// a tree reaches the root with its structure, sources and relay paths (`Display` renders it
/// indented, like Python's `ExceptionGroup`).
#[derive(Default)]
pub struct NurseryError {
    pub(crate) body: Option<BoxError>,
    pub(crate) failures: Vec<ChildFailure>,
    pub(crate) interrupted: bool,
    /// The nursery was torn down because the served call it belongs to was cancelled (by whom).
    pub(crate) cancelled_by: Option<Box<ActorId>>,
    /// The actor the nursery belongs to (the source of the group).
    pub(crate) actor: Option<Box<ActorId>>,
    group: OnceLock<Box<RemoteError>>,
}

impl fmt::Debug for NurseryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NurseryError")
            .field("body", &self.body)
            .field("failures", &self.failures)
            .field("interrupted", &self.interrupted)
            .field("cancelled_by", &self.cancelled_by)
            .finish_non_exhaustive()
    }
}

impl NurseryError {
    pub(crate) fn new(actor: Option<ActorId>) -> Self {
        NurseryError {
            actor: actor.map(Box::new),
            ..NurseryError::default()
        }
    }

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

    /// Whether the nursery was torn down because the served call it belongs to was cancelled,
    /// and by whom. Failures collected meanwhile are still in [`failures`](Self::failures).
    pub fn cancelled_by(&self) -> Option<&ActorId> {
        self.cancelled_by.as_deref()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_none()
            && self.failures.is_empty()
            && !self.interrupted
            && self.cancelled_by.is_none()
    }

    /// This error as one wire error: a group ([`ErrorKind::Group`]) whose members are the body's
    /// error and every child failure (see [`ChildFailure::to_remote`]), or, when the nursery was
    /// only cancelled, the `ContextCancelled` that stands for that.
    pub fn as_remote(&self) -> &RemoteError {
        self.group.get_or_init(|| Box::new(self.build_group()))
    }

    fn build_group(&self) -> RemoteError {
        let local = self
            .actor
            .as_deref()
            .cloned()
            .unwrap_or_else(|| ActorId::with_uid("unknown", "-"));
        let mut members = Vec::new();
        if self.interrupted {
            members.push(RemoteError::new(
                ErrorKind::Runtime,
                "Interrupted",
                "interrupted (SIGINT)",
                local.clone(),
            ));
        }
        if let Some(body) = &self.body {
            members.push(body_to_remote(body.as_ref(), &local));
        }
        members.extend(self.failures.iter().map(|f| f.to_remote(&local)));
        match (&self.cancelled_by, members.is_empty()) {
            (Some(canceller), true) => RemoteError::cancelled(local, (**canceller).clone()),
            (cancelled_by, _) => {
                let n = members.len();
                let mut message = format!(
                    "{n} failure{} in the nursery of {}",
                    if n == 1 { "" } else { "s" },
                    local.name
                );
                if let Some(c) = cancelled_by {
                    message.push_str(&format!(" (torn down: cancelled by {c})"));
                }
                RemoteError::group(message, local, members)
            }
        }
    }
}

/// A nursery body's error as a wire error: a remote error is relayed, a nested nursery's error
/// is its group, anything else is an error raised here.
fn body_to_remote(
    body: &(dyn std::error::Error + Send + Sync + 'static),
    local: &ActorId,
) -> RemoteError {
    if let Some(harrow_portal::Error::Remote(r)) = body.downcast_ref::<harrow_portal::Error>() {
        return (**r).clone().relayed_by(local.clone());
    }
    if let Some(r) = body.downcast_ref::<RemoteError>() {
        return r.clone().relayed_by(local.clone());
    }
    if let Some(n) = body.downcast_ref::<NurseryError>() {
        return n.as_remote().clone();
    }
    if let Some(crate::Error::Portal(harrow_portal::Error::Remote(r))) =
        body.downcast_ref::<crate::Error>()
    {
        return (**r).clone().relayed_by(local.clone());
    }
    let mut message = body.to_string();
    let mut source = body.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    RemoteError::new(
        ErrorKind::Raised,
        "NurseryBodyError",
        message,
        local.clone(),
    )
}

impl fmt::Display for NurseryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.interrupted {
            parts.push("interrupted (SIGINT)".to_owned());
        }
        if let Some(c) = &self.cancelled_by {
            parts.push(format!("cancelled by {c}"));
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

impl std::error::Error for NurseryError {
    /// The whole failure as a tree of wire errors ([`NurseryError::as_remote`]): what a served
    /// function's `?` sends to its caller.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.as_remote())
    }
}
