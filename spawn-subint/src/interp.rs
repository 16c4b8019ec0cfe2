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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use harrow_ipc::wait::deadline;
use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;

use harrow_python::{
    CallHost, CallJob, Error, InterpConfig, Job, JobState, Result, Shared, not_exposed,
};

/// How long [`InterpThread::spawn`] waits for the interpreter to be created.
pub const CREATE_BOUND: Duration = Duration::from_secs(60);

/// How an interpreter thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The interpreter was ended (`Py_EndInterpreter`) and its thread exited.
    Ended,
    /// The interpreter could not be ended safely in time and is leaked (reported): its thread
    /// is still stuck in Python, or a Python thread it started is still alive.
    Leaked {
        /// What is still running.
        reason: String,
    },
    /// The actor ended on its own: Python called `os._exit()` (the interpreter was ended), or
    /// the interpreter thread panicked outside a call (it released the GIL and ended its
    /// interpreter when that was safe; the reason says when it had to leak it instead).
    Failed {
        /// The panic message, and what became of the interpreter.
        reason: String,
    },
}

/// A cheap, cloneable handle for submitting calls to an interpreter thread.
#[derive(Clone)]
pub struct InterpHandle {
    shared: Arc<Shared>,
    jobs: flume::Sender<Job>,
    config: Arc<InterpConfig>,
}

impl std::fmt::Debug for InterpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpHandle")
            .field("actor", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl InterpHandle {
    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The interpreter's config.
    pub fn config(&self) -> &InterpConfig {
        &self.config
    }

    /// Checks that `func`'s module is exposed (`ModuleNotExposed` otherwise).
    pub fn check_exposed(&self, func: &FnPath) -> Result<(), CallError> {
        if self.config.exposes(func.module()) {
            Ok(())
        } else {
            Err(not_exposed(&self.config, func.module()))
        }
    }

    /// Queues a call of `func` with `args` (`Null`: no argument; anything else: exactly one
    /// positional argument, see the crate doc). `host` is the Rust side of `ctx` (needed for
    /// `CallKind::Context`; without it `ctx` methods raise `harrow.HarrowError`).
    ///
    /// The returned future resolves to the call's result. Dropping it before then cancels the
    /// call: `harrow.Cancelled` is raised in the running Python code (re-armed until it ends).
    pub fn call(
        &self,
        func: FnPath,
        kind: CallKind,
        args: Value,
        host: Option<Arc<dyn CallHost>>,
    ) -> PyCall {
        self.call_in(func, kind, args, host, None)
    }

    /// [`call`](Self::call) of an actor's served call: `env` is what its Python code reaches
    /// through `harrow.open_nursery()`, `harrow.current_actor()` and the portals.
    pub(crate) fn call_in(
        &self,
        func: FnPath,
        kind: CallKind,
        args: Value,
        host: Option<Arc<dyn CallHost>>,
        env: Option<harrow_python::nest::ActorEnv>,
    ) -> PyCall {
        let job = JobState::new(func.to_string());
        job.set_env(env);
        let (tx, rx) = flume::bounded(1);
        let mut call = PyCall {
            rx: Box::pin(rx.into_recv_async()),
            job: Arc::clone(&job),
            shared: Arc::clone(&self.shared),
            finished: false,
            immediate: None,
        };
        if let Err(e) = self.check_exposed(&func) {
            call.immediate = Some(Err(e));
            return call;
        }
        if self.shared.closing.load(Ordering::SeqCst) {
            call.immediate = Some(Err(gone(&self.shared.name)));
            return call;
        }
        let sent = self.jobs.send(Job::Call(CallJob {
            job,
            func,
            kind,
            args,
            host,
            reply: tx,
        }));
        if sent.is_err() {
            call.immediate = Some(Err(gone(&self.shared.name)));
        } else {
            self.shared.wake();
        }
        call
    }

    /// Cancels the call running now, if any (queued calls are cancelled by dropping their
    /// futures, or all at once by [`begin_shutdown`](Self::begin_shutdown)).
    pub fn cancel_current(&self) {
        self.shared.cancel_current();
    }

    /// Fault injection for tests: makes the interpreter thread panic with `message` when it
    /// takes this job. Idle, the thread itself panics (its exit is then [`Exit::Failed`]); taken
    /// while a call waits, it fails that call instead (a panic inside a call's operation).
    #[doc(hidden)]
    pub fn inject_panic(&self, message: impl Into<String>) {
        let _ = self.jobs.send(Job::Panic(message.into()));
        self.shared.wake();
    }

    /// Starts shutting the interpreter down without waiting: no new call is taken, queued calls
    /// are rejected, the running call is cancelled. Idempotent.
    pub fn begin_shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.jobs.send(Job::Shutdown);
        self.shared.cancel_current();
    }
}

fn gone(name: &str) -> CallError {
    CallError::new(
        ErrorKind::Runtime,
        "InterpreterGone",
        format!("subinterpreter {name:?} has shut down"),
    )
}

type ReplyFuture =
    Pin<Box<dyn Future<Output = Result<Result<Value, CallError>, flume::RecvError>> + Send>>;

/// One call running (or queued) in an interpreter. Resolves to its result; dropping it before
/// that cancels the call.
pub struct PyCall {
    rx: ReplyFuture,
    job: Arc<JobState>,
    shared: Arc<Shared>,
    finished: bool,
    immediate: Option<Result<Value, CallError>>,
}

impl std::fmt::Debug for PyCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyCall")
            .field("func", &self.job.func)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl PyCall {
    /// Cancels the call without dropping the future (its result will then be the cancel error,
    /// or whatever the code returned if it finished first).
    pub fn cancel(&self) {
        if !self.finished {
            self.job.cancel();
            self.shared.request_cancel();
        }
    }
}

impl Future for PyCall {
    type Output = Result<Value, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.immediate.take() {
            self.finished = true;
            return Poll::Ready(r);
        }
        match self.rx.as_mut().poll(cx) {
            Poll::Ready(r) => {
                self.finished = true;
                Poll::Ready(r.unwrap_or_else(|_| Err(gone(&self.shared.name))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PyCall {
    fn drop(&mut self) {
        if !self.finished && self.immediate.is_none() {
            self.job.cancel();
            self.shared.request_cancel();
        }
    }
}

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
    done: flume::Receiver<Exit>,
    join: Option<JoinHandle<()>>,
    exit: Option<Exit>,
}

impl std::fmt::Debug for InterpThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpThread")
            .field("actor", &self.handle.shared.name)
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
        harrow_python::ensure_main()?;
        let config = Arc::new(config);
        let shared = Shared::new(config.name.clone());
        let (jobs_tx, jobs_rx) = flume::unbounded();
        let (ready_tx, ready_rx) = flume::bounded(1);
        let (done_tx, done_rx) = flume::bounded(1);
        let thread_shared = Arc::clone(&shared);
        let thread_config = Arc::clone(&config);
        let join = std::thread::Builder::new()
            .name(format!("subint-{}", config.name))
            .stack_size(config.stack_size)
            .spawn(move || {
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
                let _ = done_tx.send(exit);
            })
            .map_err(|e| {
                shared.unregister();
                Error::Thread {
                    actor: config.name.clone(),
                    message: e.to_string(),
                }
            })?;
        Ok(Starting {
            thread: InterpThread {
                handle: InterpHandle {
                    shared,
                    jobs: jobs_tx,
                    config,
                },
                done: done_rx,
                join: Some(join),
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
                    thread.handle.shared.name
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
        match self.done.recv_timeout(bound) {
            Ok(exit) => self.finished(exit),
            Err(flume::RecvTimeoutError::Disconnected) => self.died(),
            Err(flume::RecvTimeoutError::Timeout) => self.leaked(bound),
        }
    }

    /// [`join`](Self::join) for async callers.
    pub async fn join_async(&mut self, bound: Duration) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let got = deadline(bound, self.done.recv_async()).await;
        match got {
            Some(Ok(exit)) => self.finished(exit),
            Some(Err(_)) => self.died(),
            None => self.leaked(bound),
        }
    }

    /// [`begin_shutdown`](Self::begin_shutdown) then [`join`](Self::join).
    pub fn shutdown(mut self, bound: Duration) -> Exit {
        self.begin_shutdown();
        self.join(bound)
    }

    fn finished(&mut self, exit: Exit) -> Exit {
        if let Some(j) = self.join.take() {
            // The thread sent its exit as its last act: this join is immediate.
            let _ = j.join();
        }
        if let Exit::Leaked { reason } = &exit {
            tracing::warn!(actor = %self.handle.shared.name, "subinterpreter leaked: {reason}");
        }
        self.exit = Some(exit.clone());
        exit
    }

    /// The thread ended without reporting its exit: it died by a panic that escaped its own
    /// net. Reports it failed, with the panic message.
    fn died(&mut self) -> Exit {
        let why = match self.join.take().map(JoinHandle::join) {
            Some(Err(payload)) => harrow_runtime_core::panic_message(&*payload),
            _ => "ended without reporting how".to_owned(),
        };
        let exit = Exit::Failed {
            reason: format!("the interpreter thread {why}"),
        };
        self.exit = Some(exit.clone());
        exit
    }

    fn leaked(&mut self, bound: Duration) -> Exit {
        let shared = &self.handle.shared;
        shared.leaked.store(true, Ordering::SeqCst);
        let running = shared
            .current
            .lock()
            .as_ref()
            .map(|j| j.func.clone())
            .or_else(|| shared.stage.lock().clone())
            .unwrap_or_else(|| "no call (in its teardown)".into());
        let reason = format!("interpreter thread still running {running} after {bound:?}");
        tracing::warn!(actor = %shared.name, "subinterpreter leaked: {reason}");
        Exit::Leaked { reason }
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
