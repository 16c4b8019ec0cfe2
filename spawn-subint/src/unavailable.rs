//! Stand-ins used when the configured Python cannot host own-GIL subinterpreters: every entry
//! point reports [`Error::Unavailable`].

use std::sync::Arc;

use harrow_python::{Error, InterpConfig, Job, Result, Shared, unavailable_message};

use crate::interp::Exit;

pub(crate) fn thread_main(
    _shared: &Arc<Shared>,
    _config: &InterpConfig,
    _jobs: flume::Receiver<Job>,
    ready: flume::Sender<Result<()>>,
) -> Exit {
    let _ = ready.send(Err(Error::Unavailable(unavailable_message())));
    Exit::Ended
}

#[cfg(feature = "bench-internals")]
pub(crate) fn bare_create_end(_config: &InterpConfig) -> Result<std::time::Duration> {
    Err(Error::Unavailable(unavailable_message()))
}
