//! [`InterpThread`]: one subinterpreter on its own dedicated OS thread, and the calls it runs.
//!
//! # Why one dedicated thread per interpreter
//!
//! The seed (tractor's subint backend) hung intermittently in `_interpreters.destroy()`: an idle
//! worker of a thread *cache* still held a stale thread state of the subinterpreter, and destroy
//! waited for it forever. Here a subinterpreter is created, used and ended by ONE `std::thread`
//! spawned for it (named `subint-<actor>`), which exits right after `Py_EndInterpreter`. No pooled
//! or cached thread ever enters a subinterpreter: the only other threads that touch it call
//! `_PyEval_AddPendingCall`, which creates no thread state. So that race cannot happen by
//! construction (`tests/cycles.rs` runs hundreds of create/call/end cycles to show it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harrow_ipc::wait::deadline;
use harrow_python::{Error, InterpConfig, InterpHandle, Result, Shared};
use harrow_runtime_core::{DedicatedThread, Joined};

/// How long [`InterpThread::spawn`] waits for the interpreter to be created.
pub const CREATE_BOUND: Duration = Duration::from_secs(60);

/// How an interpreter thread ended: the runtime's one lifecycle enum. `Exited`: the interpreter
/// was ended (`Py_EndInterpreter`) and its thread exited. `Leaked`: the interpreter could not be
/// ended safely in time and is leaked (reported): its thread is still stuck in Python, or a
/// Python thread it started is still alive. `Failed`: the actor ended on its own: Python called
/// `os._exit()` (the interpreter was ended), or the interpreter thread panicked outside a call
/// (it released the GIL and ended its interpreter when that was safe; the reason says when it had
/// to leak it instead). An interpreter thread is never `Killed`, and its join never answers
/// `Running` (a thread still running after the bound is `Leaked`).
pub use harrow_runtime_core::Exit;

/// A subinterpreter owned by a dedicated OS thread (see the module doc).
///
/// ```no_run
/// use harrow_spawn_subint::{InterpConfig, InterpThread};
/// use harrow_ipc::{CallKind, FnPath, Value};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let t = InterpThread::spawn(InterpConfig::new("calc").expose("math"))?;
/// // One argument: the value itself (`Null` would mean no argument).
/// let call = t.handle().call(FnPath::parse("math:sqrt")?, CallKind::Unary,
///     Value::Float(16.0), None);
/// assert_eq!(futures_lite::future::block_on(call).unwrap(), Value::Float(4.0));
/// t.shutdown(std::time::Duration::from_secs(5));
/// # Ok(()) }
/// ```
pub struct InterpThread {
    handle: InterpHandle,
    /// The interpreter's own thread; its closure returns how the interpreter ended.
    thread: DedicatedThread<Exit>,
    exit: Option<Exit>,
}

impl std::fmt::Debug for InterpThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpThread")
            .field("actor", &self.handle.shared().name)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

struct Starting {
    thread: InterpThread,
    ready: flume::Receiver<Result<()>>,
}

impl InterpThread {
    fn start(config: InterpConfig) -> Result<Starting> {
        if !cfg!(harrow_subint) {
            return Err(Error::Unavailable(harrow_python::unavailable_message()));
        }
        if config.name.is_empty() {
            return Err(Error::Config("the actor name is empty".into()));
        }
        if config.stack_size < harrow_python::MIN_STACK_SIZE {
            return Err(Error::Config(format!(
                "stack_size {} is below the minimum of {} bytes",
                config.stack_size,
                harrow_python::MIN_STACK_SIZE
            )));
        }
        config.site_dirs(harrow_python::python_version())?;
        harrow_python::ensure_main()?;
        let config = Arc::new(config);
        let shared = Shared::new(config.name.clone());
        let (jobs_tx, jobs_rx) = flume::unbounded();
        let (ready_tx, ready_rx) = flume::bounded(1);
        let thread_shared = Arc::clone(&shared);
        let thread_config = Arc::clone(&config);
        let thread = DedicatedThread::spawn_with(
            std::thread::Builder::new().stack_size(config.stack_size),
            format!("subint-{}", config.name),
            move || {
                *thread_shared.thread.lock() = Some(std::thread::current().id());
                let exit =
                    crate::imp::thread_main(&thread_shared, &thread_config, jobs_rx, ready_tx);
                // From now on no one may signal this thread (python_stacks).
                *thread_shared.tid.lock() = 0;
                // Ending the interpreter nulls its pointer; one still set was leaked.
                if *thread_shared.interp.lock() == 0 {
                    thread_shared.unregister();
                } else {
                    thread_shared.leaked.store(true, Ordering::SeqCst);
                }
                exit
            },
        )
        .map_err(|e| {
            shared.unregister();
            Error::Thread {
                actor: config.name.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(Starting {
            thread: InterpThread {
                handle: InterpHandle::new(shared, jobs_tx, config),
                thread,
                exit: None,
            },
            ready: ready_rx,
        })
    }

    fn finish_start(mut thread: InterpThread, ready: Result<Result<()>, String>) -> Result<Self> {
        match ready {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(e)) => {
                // The thread reports the failure and exits at once.
                let _ = thread.join(Duration::from_secs(10));
                Err(e)
            }
            Err(why) => {
                thread.begin_shutdown();
                Err(Error::Timeout(format!(
                    "creating subinterpreter {:?}: {why}",
                    thread.handle.shared().name
                )))
            }
        }
    }

    /// Starts the thread, creates the interpreter on it and waits (bounded by
    /// [`CREATE_BOUND`]) until it is ready. Initialises the main interpreter first if needed.
    pub fn spawn(config: InterpConfig) -> Result<Self> {
        let s = Self::start(config)?;
        let ready = s
            .ready
            .recv_timeout(CREATE_BOUND)
            .map_err(|e| e.to_string());
        Self::finish_start(s.thread, ready)
    }

    /// [`spawn`](Self::spawn) for async callers (does not block the executor while the
    /// interpreter is created; the main-interpreter init on first use does, briefly).
    pub async fn spawn_async(config: InterpConfig) -> Result<Self> {
        let s = Self::start(config)?;
        let ready = match deadline(CREATE_BOUND, s.ready.recv_async()).await {
            Some(got) => got.map_err(|e| e.to_string()),
            None => Err(format!("not ready after {CREATE_BOUND:?}")),
        };
        Self::finish_start(s.thread, ready)
    }

    /// A handle for submitting calls.
    pub fn handle(&self) -> InterpHandle {
        self.handle.clone()
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// Starts shutting down without waiting: no new call is taken, queued calls are rejected,
    /// the running call is cancelled. Idempotent.
    pub fn begin_shutdown(&self) {
        self.handle.begin_shutdown();
    }

    /// Waits up to `bound` for the thread to end the interpreter and exit. When it does not in
    /// time, reports the interpreter as leaked (with what it is running) and leaves the thread
    /// detached; a later `join` may still see it end.
    pub fn join(&mut self, bound: Duration) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let joined = self.thread.join_blocking(bound);
        self.joined(joined, bound)
    }

    /// [`join`](Self::join) for async callers.
    pub async fn join_async(&mut self, bound: Duration) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let joined = self.thread.join(bound).await;
        self.joined(joined, bound)
    }

    /// [`begin_shutdown`](Self::begin_shutdown) then [`join`](Self::join), within `bound` in
    /// all. The first half is graceful: the running plain call is interrupted (as it always
    /// is), and `async def` calls are cancelled at their `await` and clean up. If the thread
    /// has not ended by then, the event loop's tasks are interrupted as well
    /// (`InterpHandle::hard_kill`): an `async def` call that never awaits (a busy loop) is not
    /// left running in a leaked interpreter.
    pub fn shutdown(mut self, bound: Duration) -> Exit {
        self.begin_shutdown();
        let graceful = bound / 2;
        if self.exit.is_none() {
            match self.thread.join_blocking(graceful) {
                Joined::Running => self.handle.hard_kill(),
                joined => return self.joined(joined, bound),
            }
        }
        self.join(bound.saturating_sub(graceful))
    }

    fn joined(&mut self, joined: Joined<Exit>, bound: Duration) -> Exit {
        match joined {
            Joined::Finished(exit) => self.finished(exit),
            Joined::Panicked(why) => self.died(why),
            Joined::Running => self.leaked(bound),
            // `self.exit` is set whenever the thread was joined: not reached.
            Joined::AlreadyJoined => self.died("was already joined".to_owned()),
        }
    }

    fn finished(&mut self, exit: Exit) -> Exit {
        if let Exit::Leaked(reason) = &exit {
            tracing::warn!(actor = %self.handle.shared().name, "subinterpreter leaked: {reason}");
        }
        self.exit = Some(exit.clone());
        exit
    }

    /// The thread ended without reporting its exit: it died by a panic that escaped its own
    /// net. Reports it failed, with the panic message.
    fn died(&mut self, why: String) -> Exit {
        let exit = Exit::Failed(format!("the interpreter thread {why}"));
        self.exit = Some(exit.clone());
        exit
    }

    fn leaked(&mut self, bound: Duration) -> Exit {
        let shared = self.handle.shared();
        shared.leaked.store(true, Ordering::SeqCst);
        let running = shared
            .current
            .lock()
            .as_ref()
            .map(|j| j.func.to_string())
            .or_else(|| shared.stage.lock().clone())
            .unwrap_or_else(|| "no call (in its teardown)".into());
        let reason = format!("interpreter thread still running {running} after {bound:?}");
        tracing::warn!(actor = %shared.name, "subinterpreter leaked: {reason}");
        Exit::Leaked(reason)
    }
}

impl Drop for InterpThread {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // Never block in drop: ask it to stop and detach.
            self.begin_shutdown();
        }
    }
}
