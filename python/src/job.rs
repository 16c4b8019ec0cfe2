//! What a backend sends to the thread serving an interpreter's calls: [`Job`]s, each call with
//! its cancel state and reply channel, and the errors every Python backend answers with.

use std::sync::Arc;

use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;

use crate::config::InterpConfig;
use crate::host::CallHost;
use crate::state::JobState;

/// One job for the thread serving an interpreter.
pub enum Job {
    /// Run this call.
    Call(CallJob),
    /// Test hook: panic on the interpreter thread (a fault-injection job).
    Panic(String),
    /// Take no more calls: the actor is ending.
    Shutdown,
}

/// One call for the interpreter thread.
pub struct CallJob {
    /// The call's cancel state, shared with its caller.
    pub job: Arc<JobState>,
    /// The function to call.
    pub func: FnPath,
    /// Unary or context.
    pub kind: CallKind,
    /// The call's arguments (see [`PyArgs`](crate::PyArgs)).
    pub args: Value,
    /// The Rust side of `ctx`, for context calls.
    pub host: Option<Arc<dyn CallHost>>,
    /// Where the call's result goes.
    pub reply: flume::Sender<Result<Value, CallError>>,
}

/// The error of a cancelled call.
pub fn cancelled_error() -> CallError {
    CallError::new(
        ErrorKind::Cancelled,
        "harrow.Cancelled",
        "the call was cancelled",
    )
}

/// The error of a call whose module `config` does not expose.
pub fn not_exposed(config: &InterpConfig, module: &str) -> CallError {
    CallError::new(
        ErrorKind::ModuleNotExposed,
        "ModuleNotExposed",
        format!(
            "module {module:?} is not exposed by actor {:?} (exposed: {:?})",
            config.name, config.modules
        ),
    )
}
