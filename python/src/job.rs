//! What a backend sends to the thread serving an interpreter's calls: [`Job`]s, each call with
//! its cancel state and reply slot ([`ReplyTx`]), and the errors every Python backend answers
//! with.

use std::sync::Arc;

use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;

use crate::config::InterpConfig;
use crate::host::CallHost;
use crate::reply::ReplyTx;
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
    pub reply: ReplyTx,
}

/// The batch runner every Python actor serves natively (the runner of an `ActorPool`'s batched
/// maps, see `PoolConfig::batch`): `harrow:run_batch([func, [item, ...]])` calls `func` on each
/// item in order on the interpreter thread, in a loop of the call server itself (no Python
/// runner frame per item), and returns `[results, errors]`: one result per item (`None` for an
/// item that failed) and `[index, type_name, message]` for each item that failed. An item is
/// the call's one argument by the rule of a single call: `None` calls `func()`, an encoded
/// [`PyArgs`](crate::PyArgs) calls `func(args, **kwargs)`, anything else `func(item)`.
///
/// An item that raises an `Exception`, or returns a value that does not convert, fails alone;
/// anything else (`harrow.Cancelled`, `SystemExit`, `os._exit`) fails the whole batch, as it
/// would a single call. `func`'s module must be exposed by the actor (the runner itself needs no
/// exposing); `func` must be a plain function (a generator or context function is refused).
pub const BATCH_RUNNER: &str = "harrow:run_batch";

/// Whether `func` is [`BATCH_RUNNER`].
pub fn is_batch_runner(func: &FnPath) -> bool {
    func.module() == "harrow" && func.function() == "run_batch"
}

/// The error of a cancelled call.
pub fn cancelled_error() -> CallError {
    CallError::new(
        ErrorKind::Cancelled,
        "harrow.Cancelled",
        "the call was cancelled",
    )
}

/// `err`, unless it is a cancellation of a call that was not cancelled (`cancelled` false):
/// then the function's failure. A `harrow.Cancelled` that user code raised itself, or that
/// escaped the scope whose cancel it was (a deadline's, re-raised after it), ended a call nobody
/// cancelled; reported as the call's cancellation, it would hide a failure.
pub(crate) fn unless_cancelled(err: CallError, cancelled: bool) -> CallError {
    if cancelled || err.kind() != ErrorKind::Cancelled {
        return err;
    }
    let r = err.into_remote(&harrow_ipc::ActorId::new("-"));
    let why = "raised in a call that was not cancelled";
    let message = if r.message.is_empty() {
        why.to_owned()
    } else {
        format!("{} ({why})", r.message)
    };
    CallError::new(ErrorKind::Raised, r.type_name, message).with_traceback(r.traceback)
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
