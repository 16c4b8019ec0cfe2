//! Stand-ins used when the configured Python cannot host own-GIL subinterpreters: every entry
//! point reports [`Error::Unavailable`].

use std::sync::Arc;

use crate::config::InterpConfig;
use crate::error::{Error, Result, unavailable_message};
use crate::interp::{Exit, Job};
use crate::state::Shared;

pub(crate) fn ensure_main() -> Result<()> {
    Err(Error::Unavailable(unavailable_message()))
}

pub(crate) fn thread_main(
    _shared: &Arc<Shared>,
    _config: &InterpConfig,
    _jobs: flume::Receiver<Job>,
    ready: flume::Sender<Result<()>>,
) -> Exit {
    let _ = ready.send(Err(Error::Unavailable(unavailable_message())));
    Exit::Exited
}

pub(crate) fn inject_cancel(_shared: &Shared) {}

pub(crate) fn dump_stack(_shared: &Shared) -> String {
    format!("(python stacks unavailable: {})\n", unavailable_message())
}

#[cfg(feature = "bench-internals")]
pub(crate) fn bare_create_end(_config: &InterpConfig) -> Result<std::time::Duration> {
    Err(Error::Unavailable(unavailable_message()))
}

pub(crate) fn wake_write(_fd: i32) {}
