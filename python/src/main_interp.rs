//! [`MainInterp`]: an actor's calls served in CPython's main interpreter, on a thread of its
//! own: the Python actor of a child process (the process backend's Python children).

use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::{DedicatedThread, Joined};

use crate::config::{InterpConfig, MIN_STACK_SIZE};
use crate::error::{Error, Result};
use crate::handle::InterpHandle;
use crate::state::Shared;

/// How long [`MainInterp::start`] waits for the harness (the `harrow` module, `sys.path`, the
/// site directories) to be set up.
pub const SETUP_BOUND: Duration = Duration::from_secs(60);

/// The main interpreter of this process serving one actor's calls on a dedicated thread
/// (`py-<name>`), with the same call server, `harrow` module and cancellation as a subint actor.
/// For a process whose only Python user is that actor: Python is initialised here if needed
/// and never finalized.
pub struct MainInterp {
    handle: InterpHandle,
    thread: DedicatedThread<std::result::Result<(), String>>,
}

impl std::fmt::Debug for MainInterp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainInterp")
            .field("actor", &self.handle.name())
            .finish_non_exhaustive()
    }
}

impl MainInterp {
    /// Initialises Python if needed, starts the serving thread and waits (bounded by
    /// [`SETUP_BOUND`]) until the harness is set up. Config errors (a venv without
    /// site-packages for this Python, a too small stack) and setup failures are errors naming
    /// the actor. `legacy` and `allow_threads` do not apply (the main interpreter always allows
    /// threads and extensions).
    pub fn start(config: InterpConfig) -> Result<Self> {
        if config.name.is_empty() {
            return Err(Error::Config("the actor name is empty".into()));
        }
        if config.stack_size < MIN_STACK_SIZE {
            return Err(Error::Config(format!(
                "stack_size {} is below the minimum of {MIN_STACK_SIZE} bytes",
                config.stack_size
            )));
        }
        config.site_dirs(crate::python_version())?;
        crate::ensure_main()?;
        // Three threads take part in each call here: the actor's, this serving one, and the
        // caller's (in the parent, for a Python process child).
        harrow_ipc::park::spin::keep_busy_waits_short();
        let config = Arc::new(config);
        let shared = Shared::new(config.name.clone());
        let (jobs_tx, jobs_rx) = flume::unbounded();
        let (ready_tx, ready_rx) = flume::bounded(1);
        let (thread_shared, thread_config) = (Arc::clone(&shared), Arc::clone(&config));
        let thread = DedicatedThread::spawn_with(
            std::thread::Builder::new().stack_size(config.stack_size),
            format!("py-{}", config.name),
            move || {
                *thread_shared.thread.lock() = Some(std::thread::current().id());
                let ended = crate::imp::serve_main(&thread_shared, &thread_config, jobs_rx, |r| {
                    let _ = ready_tx.send(r);
                });
                thread_shared.unregister();
                ended
            },
        )
        .map_err(|e| {
            shared.unregister();
            Error::Thread {
                actor: config.name.clone(),
                message: e.to_string(),
            }
        })?;
        let name = config.name.clone();
        let main = MainInterp {
            handle: InterpHandle::new(shared, jobs_tx, config),
            thread,
        };
        match ready_rx.recv_timeout(SETUP_BOUND) {
            Ok(Ok(())) => Ok(main),
            Ok(Err(message)) => {
                let _ = main.shutdown(Duration::from_secs(10));
                Err(Error::Create {
                    actor: name,
                    message,
                })
            }
            Err(e) => {
                main.handle.begin_shutdown();
                Err(Error::Timeout(format!(
                    "setting up the main interpreter for actor {name:?}: {e}"
                )))
            }
        }
    }

    /// A handle for submitting calls.
    pub fn handle(&self) -> InterpHandle {
        self.handle.clone()
    }

    /// Stops taking calls (the running one is cancelled, queued ones are rejected) and waits up
    /// to `bound` for the serving thread to end. `Err` says why it did not end cleanly: still
    /// running after the bound (left detached), Python threads still alive, or a panic.
    pub fn shutdown(mut self, bound: Duration) -> std::result::Result<(), String> {
        self.handle.begin_shutdown();
        match self.thread.join_blocking(bound) {
            Joined::Finished(r) => r,
            Joined::Panicked(why) => Err(format!("the main-interpreter thread {why}")),
            Joined::Running => {
                self.thread.detach();
                Err(format!(
                    "the main-interpreter thread is still running after {bound:?}"
                ))
            }
            Joined::AlreadyJoined => Ok(()),
        }
    }
}
