//! [`InterpHandle`]: submitting calls to the thread that serves an interpreter's calls, and
//! [`PyCall`], one call in flight. The same for every Python backend: what owns the interpreter
//! (a subint actor's dedicated thread, a process child's main-interpreter thread) hands out the
//! handle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_portal::CallError;

use crate::config::InterpConfig;
use crate::host::CallHost;
use crate::job::{CallJob, Job, not_exposed};
use crate::reply::{Answer, Closed, ReplyRx};
use crate::spin::SpinGate;
use crate::state::{JobState, Shared};

/// A cheap, cloneable handle for submitting calls to an interpreter thread.
#[derive(Clone)]
pub struct InterpHandle {
    shared: Arc<Shared>,
    jobs: flume::Sender<Job>,
    config: Arc<InterpConfig>,
    /// The interpreter's reply-spin back-off (see `crate::spin`), shared by its handles.
    spin: Arc<SpinGate>,
    /// Last, so that it is dropped after `jobs`: a wait for a job that sees this handle gone
    /// sees its sender gone too.
    _gone: WakeWhenGone,
}

/// Wakes the serving thread's co-driving wait for a job when a handle is dropped, so that it
/// looks again and finds the queue closed once the last one is gone.
struct WakeWhenGone(Arc<Shared>);

impl Clone for WakeWhenGone {
    fn clone(&self) -> Self {
        WakeWhenGone(Arc::clone(&self.0))
    }
}

impl Drop for WakeWhenGone {
    fn drop(&mut self) {
        self.0.job_maybe.store(true, Ordering::Release);
        self.0.job_queued.wake();
    }
}

impl std::fmt::Debug for InterpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpHandle")
            .field("actor", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl InterpHandle {
    /// The handle of an interpreter whose calls the thread receiving `jobs` serves
    /// ([`ffi::serve`](crate::ffi)), described by `shared` and `config`.
    pub fn new(shared: Arc<Shared>, jobs: flume::Sender<Job>, config: Arc<InterpConfig>) -> Self {
        InterpHandle {
            _gone: WakeWhenGone(Arc::clone(&shared)),
            shared,
            jobs,
            config,
            spin: Arc::default(),
        }
    }

    /// The interpreter's state shared with its serving thread (diagnostics, cancel).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The interpreter's config.
    pub fn config(&self) -> &InterpConfig {
        &self.config
    }

    /// Checks that `func`'s module is exposed (`ModuleNotExposed` otherwise). The built-in
    /// [`BATCH_RUNNER`](crate::BATCH_RUNNER) needs no exposing (it checks the function it runs).
    pub fn check_exposed(&self, func: &FnPath) -> Result<(), CallError> {
        if self.config.exposes(func.module()) || crate::job::is_batch_runner(func) {
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
    pub fn call_in(
        &self,
        func: FnPath,
        kind: CallKind,
        args: Value,
        host: Option<Arc<dyn CallHost>>,
        env: Option<crate::nest::ActorEnv>,
    ) -> PyCall {
        let job = JobState::with_env(func.clone(), env);
        let (tx, rx) = crate::reply::reply(&job);
        let mut call = PyCall {
            reply: rx,
            spin: None,
            in_flight: None,
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
        // Counted in flight from before it can be answered (see `SpinGate::spin`).
        self.spin.begin();
        call.in_flight = Some(Arc::clone(&self.spin));
        // A unary call whose answer the interpreter thread sends itself: nothing to watch for.
        let answered_directly =
            kind == CallKind::Unary && host.as_ref().is_some_and(|h| h.answers_now());
        if !answered_directly {
            call.spin = Some(Arc::clone(&self.spin));
        }
        let from = harrow_ipc::park::spin::this_cpu().unwrap_or(usize::MAX);
        self.shared.sent_from.store(from, Ordering::Relaxed);
        let sent = self.send_job(Job::Call(CallJob {
            job,
            func,
            kind,
            args,
            host,
            reply: tx,
        }));
        if sent.is_err() {
            call.immediate = Some(Err(gone(&self.shared.name)));
            call.spin = None;
            call.end_in_flight();
        } else {
            self.shared.wake();
        }
        call
    }

    /// Queues `job` for the serving thread and wakes its co-driving wait for one.
    fn send_job(&self, job: Job) -> Result<(), flume::SendError<Job>> {
        self.jobs.send(job)?;
        self.shared.job_maybe.store(true, Ordering::Release);
        self.shared.job_queued.wake();
        Ok(())
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
        let _ = self.send_job(Job::Panic(message.into()));
        self.shared.wake();
    }

    /// The hard kill: [`begin_shutdown`](Self::begin_shutdown), and while the interpreter's
    /// event loop runs, `harrow.Cancelled` is raised in what it runs, re-armed until the loop
    /// ends, so that an `async def` call that never awaits (a busy loop) is interrupted too,
    /// as a plain call is. Idempotent.
    pub fn hard_kill(&self) {
        self.shared.hard_killed.store(true, Ordering::SeqCst);
        self.begin_shutdown();
    }

    /// Starts shutting the interpreter down without waiting: no new call is taken, queued calls
    /// are rejected, the running call is cancelled. Idempotent.
    pub fn begin_shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = self.send_job(Job::Shutdown);
        self.shared.cancel_current();
    }
}

/// What a call's future ends with, from what its reply slot gave: the answer; for one that
/// went straight to the caller, nothing worth making (the portal sends nothing for a call
/// already answered, so no error is built and formatted per call for it to drop); for a slot
/// closed without an answer, the interpreter's end.
fn received(r: Result<Answer, Closed>, name: &str) -> Answer {
    match r {
        Ok(answer) => answer,
        Err(Closed::AnsweredElsewhere) => Ok(Value::Null),
        Err(Closed::Gone) => Err(gone(name)),
    }
}

fn gone(name: &str) -> CallError {
    CallError::new(
        ErrorKind::Runtime,
        "InterpreterGone",
        format!("the interpreter of actor {name:?} has shut down"),
    )
}

thread_local! {
    /// The interpreter whose calls this thread serves, if it does (see `ffi::serve`).
    static SERVING: std::cell::RefCell<Option<Arc<Shared>>> =
        const { std::cell::RefCell::new(None) };
}

/// Marks this thread as serving `shared`'s calls (`None`: not any more).
#[cfg_attr(not(harrow_python), allow(dead_code))]
pub(crate) fn set_serving_here(shared: Option<Arc<Shared>>) {
    SERVING.with(|s| *s.borrow_mut() = shared);
}

/// Whether this thread serves an interpreter's calls.
fn serving_here() -> bool {
    SERVING.with(|s| s.borrow().is_some())
}

/// On an interpreter's serving thread: it is going to wait for a task of its actor, so the
/// actor's own thread must run the tasks now (see `harrow_runtime_core::CoDriver`). Nothing
/// elsewhere.
pub(crate) fn away_here() {
    SERVING.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            shared.codriver_away();
        }
    });
}

/// One call running (or queued) in an interpreter. Resolves to its result; dropping it before
/// that cancels the call.
pub struct PyCall {
    /// Where the call's result arrives.
    reply: ReplyRx,
    /// Taken by the first poll that finds no reply: only that one may spin.
    spin: Option<Arc<SpinGate>>,
    /// Set while the call counts as in flight on its interpreter (taken when it ends).
    in_flight: Option<Arc<SpinGate>>,
    shared: Arc<Shared>,
    finished: bool,
    immediate: Option<Result<Value, CallError>>,
}

impl PyCall {
    /// The state of the interpreter the call runs in.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl std::fmt::Debug for PyCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyCall")
            .field("func", &self.reply.job().func)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl PyCall {
    /// The call no longer counts as in flight on its interpreter (once).
    fn end_in_flight(&mut self) {
        if let Some(gate) = self.in_flight.take() {
            gate.end();
        }
    }

    /// Cancels the call without dropping the future (its result will then be the cancel error,
    /// or whatever the code returned if it finished first).
    pub fn cancel(&self) {
        if !self.finished {
            self.reply.job().cancel();
            self.shared.request_cancel();
        }
    }
}

impl Future for PyCall {
    type Output = Result<Value, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.immediate.take() {
            self.finished = true;
            self.end_in_flight();
            return Poll::Ready(r);
        }
        match self.reply.poll_recv(cx) {
            Poll::Ready(r) => {
                self.finished = true;
                self.end_in_flight();
                Poll::Ready(received(r, &self.shared.name))
            }
            Poll::Pending => {
                // Not answered yet: watch for the reply briefly before this thread parks (see
                // `crate::spin`). Once per call; never on the serving thread itself (running
                // the actor's tasks while idle): the reply needs this very thread.
                let Some(gate) = self.spin.take() else {
                    return Poll::Pending;
                };
                if serving_here() {
                    return Poll::Pending;
                }
                let got = gate.spin(|| {
                    self.reply
                        .try_recv()
                        .map(|r| received(r, &self.shared.name))
                });
                match got {
                    Some(r) => {
                        self.finished = true;
                        self.end_in_flight();
                        Poll::Ready(r)
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl Drop for PyCall {
    fn drop(&mut self) {
        self.end_in_flight();
        // A closed reply slot means the call ended (a unary call's answer may have gone
        // straight to its caller, and its future be dropped before it looked); so does a job
        // marked done (the future dropped where that answer was sent, just before the slot
        // closes): nothing runs that a cancel could stop, and a cancel request would wake the
        // re-arming injector.
        if !self.finished
            && self.immediate.is_none()
            && !self.reply.is_closed()
            && !self.reply.job().is_done()
        {
            self.reply.job().cancel();
            self.shared.request_cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call's future as `PyHandle::call` makes it, without an interpreter behind it.
    fn a_call(shared: &Arc<Shared>) -> (PyCall, crate::reply::ReplyTx) {
        let job = JobState::new(FnPath::parse("m:f").expect("a valid path"));
        let (tx, rx) = crate::reply::reply(&job);
        let call = PyCall {
            reply: rx,
            spin: None,
            in_flight: None,
            shared: Arc::clone(shared),
            finished: false,
            immediate: None,
        };
        (call, tx)
    }

    #[test]
    fn a_call_dropped_after_its_answer_went_elsewhere_is_not_cancelled() {
        let shared = Shared::new("drop-test".into());
        // Answered straight to its caller: the reply slot closed without an answer in it, and
        // the future dropped before it looked.
        let (call, tx) = a_call(&shared);
        let job = Arc::clone(call.reply.job());
        tx.answered_elsewhere();
        drop(call);
        assert!(!job.is_cancelled(), "an ended call is not cancelled");
        // Dropped where its answer is sent straight to the caller (the link's `answer_now`),
        // after its job was marked done and before its reply slot closes.
        let (call, tx) = a_call(&shared);
        let job = Arc::clone(call.reply.job());
        job.set_done();
        drop(call);
        assert!(
            !job.is_cancelled(),
            "a call whose job is done is not cancelled"
        );
        tx.answered_elsewhere();
        // A call still running when its future is dropped is cancelled.
        let (call, tx) = a_call(&shared);
        let job = Arc::clone(call.reply.job());
        drop(call);
        assert!(job.is_cancelled(), "a dropped running call is cancelled");
        drop(tx);
        shared.unregister();
    }

    #[test]
    fn a_call_answered_elsewhere_ends_quietly_and_one_never_run_ends_gone() {
        let shared = Shared::new("end-test".into());
        // The answer went straight to the caller: the future ends, with nothing to send.
        let (call, tx) = a_call(&shared);
        tx.answered_elsewhere();
        let ended = futures_lite::future::block_on(call);
        assert!(matches!(ended, Ok(Value::Null)), "{ended:?}");
        // The job was dropped unrun (the interpreter shut down): the caller hears why.
        let (call, tx) = a_call(&shared);
        drop(tx);
        let ended = futures_lite::future::block_on(call);
        let err = ended.expect_err("a call never run fails");
        assert!(err.to_string().starts_with("InterpreterGone: "), "{err}");
        shared.unregister();
    }
}
