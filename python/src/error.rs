//! The crate's error type.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when hosting Python actors: in subinterpreters (the subint backend) or in
/// the main interpreter of a child process (Python actors in processes).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The crate was built against a Python that cannot host own-GIL subinterpreters.
    #[error("subinterpreter backend unavailable: {0}")]
    Unavailable(String),
    /// The main interpreter failed to initialise.
    #[error("Python initialisation failed: {0}")]
    Init(String),
    /// Creating the interpreter (`Py_NewInterpreterFromConfig`, or initialising a child
    /// process's main interpreter) or the per-interpreter setup after it failed.
    #[error("setting up the Python interpreter of actor {actor:?} failed: {message}")]
    Create {
        /// The actor the interpreter was for.
        actor: String,
        /// CPython's `err_msg`, or the Python error raised during setup.
        message: String,
    },
    /// The OS refused to start the interpreter's thread.
    #[error("could not start the Python interpreter thread of actor {actor:?}: {message}")]
    Thread {
        /// The actor the interpreter was for.
        actor: String,
        /// The OS error.
        message: String,
    },
    /// The interpreter's thread has stopped taking jobs (shut down, or it failed).
    #[error("the Python interpreter of actor {0:?} is gone")]
    Gone(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The configuration is invalid.
    #[error("invalid interpreter config: {0}")]
    Config(String),
}

/// The message every entry point returns when the configured Python is too old or static: what
/// was found, and what a project depending on harrow changes to get a working backend.
pub fn unavailable_message() -> String {
    format!(
        "harrow-spawn-subint was built against Python {} ({}), which cannot host own-GIL \
         subinterpreters (needs CPython >= 3.12 built with a shared libpython); point PYO3_PYTHON \
         at such a python when building (for example in the [env] table of your project's \
         .cargo/config.toml) and rebuild",
        env!("HARROW_SUBINT_PY_VERSION"),
        env!("HARROW_SUBINT_PYTHON"),
    )
}
