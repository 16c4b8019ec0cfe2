//! The crate's error type.

use std::io;

/// What can go wrong on the child side of the process backend (reading the bootstrap the parent
/// left in the environment). Parent-side failures are [`SpawnError`](harrow_runtime_core::SpawnError)s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bootstrap environment variable is missing or not valid text.
    #[error("environment variable {var} is missing or not valid: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec in the environment could not be decoded.
    #[error("cannot decode the actor spec in {var}: {reason}")]
    Spec {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// The inherited channel descriptor is unusable.
    #[error("inherited channel fd {fd} is unusable: {source}")]
    Fd {
        /// The descriptor number.
        fd: i32,
        /// Why.
        source: io::Error,
    },
    /// The tree's discovery data the parent handed over (at
    /// [`CHILD_TREE_FD`](crate::CHILD_TREE_FD)) is unusable.
    #[error("the tree grant at fd {fd} is unusable: {reason}")]
    Grant {
        /// The descriptor number.
        fd: i32,
        /// Why.
        reason: String,
    },
    /// The parent this child was started by is already gone.
    #[error("the parent process {expected} is gone (parent is now {actual})")]
    ParentGone {
        /// The pid the parent said it had.
        expected: i32,
        /// The current parent pid.
        actual: i32,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
