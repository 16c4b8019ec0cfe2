//! Process-wide and per-interpreter bookkeeping shared between the threads serving interpreters
//! and the rest of the runtime: the live-interpreter counter, the diagnostics registry, per-call cancel
//! state, and the re-arming cancel injector. No Python is touched here.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use harrow_ipc::FnPath;
use harrow_runtime_core::CancelFlag;
use harrow_runtime_core::CoDriver;
use parking_lot::Mutex;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_INTERP: AtomicU64 = AtomicU64::new(1);
static REGISTRY: Mutex<Option<HashMap<u64, Weak<Shared>>>> = Mutex::new(None);

/// How many subinterpreters are alive in this process right now: incremented after
/// `Py_NewInterpreterFromConfig` succeeded, decremented after `Py_EndInterpreter` returned.
/// A leaked interpreter stays counted. Feeds the testkit resource tracker.
pub fn live_interpreters() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Counts a subinterpreter as alive (right after it was created).
pub fn interp_created() {
    LIVE.fetch_add(1, Ordering::SeqCst);
}

/// Counts a subinterpreter as gone (right after it was ended).
pub fn interp_ended() {
    LIVE.fetch_sub(1, Ordering::SeqCst);
}

/// What an interpreter thread is doing, for diagnostics (hang dumps, leak reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpThreadInfo {
    /// The actor's name.
    pub name: String,
    /// The OS thread that owns the interpreter (`None` before it started).
    pub thread: Option<ThreadId>,
    /// The function of the call running now (`"module:function"`), if any.
    pub current_call: Option<String>,
    /// Whether the interpreter has been reported leaked.
    pub leaked: bool,
}

/// Every interpreter thread still registered (alive, or leaked), for diagnostics.
pub fn interp_threads() -> Vec<InterpThreadInfo> {
    let reg = REGISTRY.lock();
    let Some(map) = reg.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<(u64, InterpThreadInfo)> = map
        .iter()
        .filter_map(|(id, w)| w.upgrade().map(|s| (*id, s.info())))
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out.into_iter().map(|(_, i)| i).collect()
}

/// Every interpreter still registered (alive, or leaked), oldest first.
pub(crate) fn registered() -> Vec<Arc<Shared>> {
    let reg = REGISTRY.lock();
    let Some(map) = reg.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<Arc<Shared>> = map.values().filter_map(Weak::upgrade).collect();
    out.sort_by_key(|s| s.id);
    out
}

/// The Python stack of every thread of every live subinterpreter, as CPython's faulthandler
/// prints them (`File "...", line N in function`, most recent call first), under one header per
/// actor. Needs no GIL: the dump is taken in a signal handler on each interpreter's owning
/// thread, so it works while that thread is busy in Python or blocked (for hang dumps; register
/// it with the testkit's `register_dump_section`). Each interpreter's dump is bounded (2 s).
///
/// ```no_run
/// println!("{}", harrow_python::python_stacks());
/// ```
pub fn python_stacks() -> String {
    use std::fmt::Write as _;
    let all = registered();
    if all.is_empty() {
        return "no live subinterpreter\n".into();
    }
    let mut out = String::new();
    for shared in all {
        let info = shared.info();
        let _ = writeln!(
            out,
            "== subint actor {:?} (thread subint-{}, running {}{})",
            info.name,
            info.name,
            info.current_call.as_deref().unwrap_or("no call"),
            if info.leaked { ", leaked" } else { "" }
        );
        out.push_str(&crate::imp::dump_stack(&shared));
        out.push('\n');
    }
    out
}

/// Starts the process-wide helpers (the main interpreter, the cancel injector thread, the
/// co-driving watchdog of `harrow_runtime_core::codrive`) now, so that they exist before a
/// resource tracker's first snapshot. Idempotent and cheap once done.
pub fn warm_up() -> crate::Result<()> {
    crate::imp::ensure_main()?;
    let _ = injector();
    harrow_runtime_core::codrive::warm_up();
    Ok(())
}

/// Cancel state of one call: its cancel signal and what the cancel injector needs to know
/// about the call.
#[derive(Debug)]
pub struct JobState {
    /// The function called (`"module:function"`), for diagnostics (the call's own path, shared:
    /// nothing is allocated for it).
    pub func: FnPath,
    /// The call's cancel signal. In place, not in a `CancelToken`: nothing shares it apart from
    /// its job, and a token would be one more allocation per call.
    cancel: CancelFlag,
    done: AtomicBool,
    /// When `harrow.Cancelled` was last raised in the call: the injector leaves its cleanup
    /// (`except`/`finally`) alone for [`CLEANUP_GRACE`] after that.
    delivered_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Until when the injector leaves the call alone although it is cancelled: its outcome is
    /// decided (a nursery's failures are propagating out of it) and must not be replaced by an
    /// asynchronous `harrow.Cancelled` while it unwinds.
    held_until: parking_lot::Mutex<Option<std::time::Instant>>,
    /// What the call's Python code reaches (its actor, nurseries, portals), when it is an
    /// actor's served call.
    env: parking_lot::Mutex<Option<crate::nest::ActorEnv>>,
    /// The call's open cancel scopes (nursery blocks, deadlines), innermost last: its waits end
    /// with `Cancelled` when one fires.
    scopes: parking_lot::Mutex<Vec<crate::nest::Scope>>,
    /// Where the call's answer goes (see [`crate::reply`]): in the job, which the call's future
    /// and its serving thread both hold, so that it costs no allocation of its own.
    reply: crate::reply::Slot,
}

/// After `harrow.Cancelled` was raised in a call, how long the injector waits before raising it
/// again (for code that swallows it). A cleanup handling it is left alone however long it runs
/// (see `handling_exception` in the FFI module); this grace covers the cleanup's first steps.
pub(crate) const CLEANUP_GRACE: Duration = Duration::from_millis(100);

impl JobState {
    /// The cancel state of a new call of `func`.
    pub fn new(func: FnPath) -> Arc<Self> {
        JobState::with_env(func, None)
    }

    /// [`new`](Self::new), with the actor `env` its Python code reaches (see
    /// [`set_env`](Self::set_env)) given from the start.
    pub(crate) fn with_env(func: FnPath, env: Option<crate::nest::ActorEnv>) -> Arc<Self> {
        Arc::new(JobState {
            func,
            cancel: CancelFlag::new(),
            done: AtomicBool::new(false),
            delivered_at: parking_lot::Mutex::new(None),
            held_until: parking_lot::Mutex::new(None),
            env: parking_lot::Mutex::new(env),
            scopes: parking_lot::Mutex::new(Vec::new()),
            reply: crate::reply::Slot::default(),
        })
    }

    /// The call's reply slot.
    pub(crate) fn reply_slot(&self) -> &crate::reply::Slot {
        &self.reply
    }

    /// Keeps the injector from raising `harrow.Cancelled` in the call for `d` (see
    /// `held_until`). Harrow operations the call starts meanwhile still see its cancel.
    pub(crate) fn hold_injection(&self, d: Duration) {
        *self.held_until.lock() = Some(harrow_ipc::wait::instant_after(d));
    }

    fn injection_held(&self) -> bool {
        self.held_until
            .lock()
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// Gives the call's Python code its actor (nurseries, portals, the parent): see
    /// [`ActorEnv`](crate::nest::ActorEnv).
    pub fn set_env(&self, env: Option<crate::nest::ActorEnv>) {
        *self.env.lock() = env;
    }

    /// What the call's Python code reaches, if it is an actor's served call.
    pub(crate) fn env(&self) -> Option<crate::nest::ActorEnv> {
        self.env.lock().clone()
    }

    /// Opens a cancel scope in this call (innermost).
    pub(crate) fn push_scope(&self, scope: crate::nest::Scope) {
        self.scopes.lock().push(scope);
    }

    /// Closes the innermost cancel scope; returns whether it had fired.
    pub(crate) fn pop_scope(&self) -> Option<bool> {
        self.scopes.lock().pop().map(|s| s.fired())
    }

    /// The call's open cancel scopes.
    pub(crate) fn scopes(&self) -> Vec<crate::nest::Scope> {
        self.scopes.lock().clone()
    }

    /// Whether one of the call's open scopes has fired.
    pub(crate) fn scope_fired(&self) -> bool {
        self.scopes.lock().iter().any(crate::nest::Scope::fired)
    }

    /// Records that `harrow.Cancelled` was just raised in the call.
    pub(crate) fn mark_delivered(&self) {
        *self.delivered_at.lock() = Some(std::time::Instant::now());
    }

    /// Whether `harrow.Cancelled` was raised in the call less than [`CLEANUP_GRACE`] ago.
    pub(crate) fn recently_delivered(&self) -> bool {
        self.delivered_at
            .lock()
            .is_some_and(|t| t.elapsed() < CLEANUP_GRACE)
    }

    /// Marks the call cancelled and wakes whatever waits on it. Idempotent.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Records that the call ended (no cancel is injected into it any more).
    pub fn set_done(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether the call ended.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Resolves once the call is cancelled.
    pub async fn wait_cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// Per-interpreter Python type objects the Rust side raises. Raw pointers to objects of ONE
/// interpreter: only dereferenced on that interpreter's threads with its GIL held.
#[derive(Debug, Default)]
pub(crate) struct PyTypes {
    pub(crate) cancelled: AtomicPtr<c_void>,
    pub(crate) end_of_stream: AtomicPtr<c_void>,
    pub(crate) harrow_error: AtomicPtr<c_void>,
    /// `harrow._remote_error`: makes a `harrow.RemoteError` of a wire error (as a mapping).
    pub(crate) remote_error: AtomicPtr<c_void>,
    /// `harrow._nursery_error`: makes a `harrow.NurseryError` of a nursery's group.
    pub(crate) nursery_error: AtomicPtr<c_void>,
}

/// State of one interpreter shared by its owning thread, its handles, the injector and the C
/// functions Python calls.
#[derive(Debug)]
pub struct Shared {
    /// A process-unique number (registration order).
    pub id: u64,
    /// The actor's name.
    pub name: String,
    /// The interpreter (`*mut PyInterpreterState` as an address), 0 when not alive. Whoever
    /// injects a pending call holds this lock for the duration; the owning thread clears it
    /// under the lock before `Py_EndInterpreter`, so no injection targets an ended interpreter.
    pub interp: Mutex<usize>,
    /// The call running now.
    pub current: Mutex<Option<Arc<JobState>>>,
    /// True while the owning thread runs user Python code (not harness code).
    pub in_user: AtomicBool,
    /// The actor was hard-killed ([`InterpHandle::hard_kill`](crate::InterpHandle::hard_kill)):
    /// while the event loop runs, `harrow.Cancelled` is raised in whatever it runs (an `async
    /// def` call that never awaits included), re-armed until the loop ends; a plain call gets it
    /// inside an `except` or `finally` block too (a cleanup that does not end).
    pub(crate) hard_killed: AtomicBool,
    /// `with harrow.shield():` nesting depth on the owning thread.
    pub shield_depth: AtomicU32,
    /// `PyThread_get_thread_ident()` of the owning thread.
    pub owner_ident: AtomicU64,
    pub(crate) types: PyTypes,
    /// The owning thread.
    pub thread: Mutex<Option<ThreadId>>,
    /// The owning thread's OS thread id while it runs `thread_main` (0 before and after); it
    /// clears it under this lock before exiting, so a holder may signal that thread.
    pub tid: Mutex<i32>,
    /// Whether the interpreter was reported leaked.
    pub leaked: AtomicBool,
    /// What the owning thread waits for while no call runs, if anything (teardown stages), for
    /// leak reports.
    pub stage: Mutex<Option<String>>,
    /// Write end of the interpreter's wake pipe (-1 when there is none); see [`Shared::wake`].
    pub(crate) wake_w: Mutex<i32>,
    /// Whether the interpreter's event loop is running (then queued calls and cancels must
    /// wake it).
    pub loop_running: AtomicBool,
    /// Why the actor ends on its own (`os._exit` was called), if it does.
    pub exit_reason: Mutex<Option<String>>,
    /// What Python code called to end the actor (`"os._exit(3)"`), once it did: set by the
    /// harness's `os._exit` (`_native_exit_called`), read after the call that ran it.
    pub(crate) exit_called: Mutex<Option<String>>,
    /// `exit_called` is set: the one thing read after every call while it is not.
    pub(crate) exit_seen: AtomicBool,
    /// Set when shutdown began: the thread takes no new call.
    pub closing: AtomicBool,
    /// The CPU the last call was queued from (`usize::MAX`: unknown), so that the serving
    /// thread, woken by it, can follow its caller on a crowded machine (see
    /// `harrow_ipc::park::spin::SharedCpu::after_slept`).
    pub(crate) sent_from: AtomicUsize,
    /// The co-driver of the actor this interpreter serves, if it has one: the serving thread
    /// runs the actor's tasks while it waits for a call (see [`CoDriver`]).
    codriver: Mutex<Option<CoDriver>>,
    /// Woken after every job queued for the serving thread, and once a handle (a sender of the
    /// job queue) is gone: what the thread's co-driving wait for a job registers with (a
    /// `flume` receive future registered a hook, and dropped it, on every wait).
    pub(crate) job_queued: AtomicWaker,
    /// Set before every wake of [`job_queued`](Self::job_queued): the co-driving wait looks at
    /// the queue (a `try_recv` takes the channel's lock) only when this was set since its last
    /// look. It is polled after every task the thread runs, several times per call.
    pub(crate) job_maybe: AtomicBool,
}

impl Shared {
    /// The state of a new interpreter for actor `name`, registered for diagnostics until
    /// [`unregister`](Self::unregister).
    pub fn new(name: String) -> Arc<Self> {
        let shared = Arc::new(Shared {
            id: NEXT_INTERP.fetch_add(1, Ordering::Relaxed),
            name,
            interp: Mutex::new(0),
            current: Mutex::new(None),
            in_user: AtomicBool::new(false),
            hard_killed: AtomicBool::new(false),
            shield_depth: AtomicU32::new(0),
            owner_ident: AtomicU64::new(0),
            types: PyTypes::default(),
            thread: Mutex::new(None),
            tid: Mutex::new(0),
            leaked: AtomicBool::new(false),
            stage: Mutex::new(None),
            exit_reason: Mutex::new(None),
            exit_called: Mutex::new(None),
            exit_seen: AtomicBool::new(false),
            wake_w: Mutex::new(-1),
            loop_running: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            sent_from: AtomicUsize::new(usize::MAX),
            codriver: Mutex::new(None),
            job_queued: AtomicWaker::new(),
            job_maybe: AtomicBool::new(true),
        });
        REGISTRY
            .lock()
            .get_or_insert_with(HashMap::new)
            .insert(shared.id, Arc::downgrade(&shared));
        shared
    }

    /// Lets the serving thread run the tasks of the actor `codriver` belongs to while it waits
    /// for a call (`None`: no more).
    pub fn set_codriver(&self, codriver: Option<CoDriver>) {
        *self.codriver.lock() = codriver;
    }

    /// The actor's co-driver, if any.
    pub(crate) fn codriver(&self) -> Option<CoDriver> {
        self.codriver.lock().clone()
    }

    /// The serving thread is about to wait for something the actor's tasks must do: they must
    /// run on the actor's own thread now (see [`CoDriver::away`]).
    pub(crate) fn codriver_away(&self) {
        if let Some(co) = self.codriver.lock().as_ref() {
            co.away();
        }
    }

    /// Removes the interpreter from the diagnostics registry (it ended).
    pub fn unregister(&self) {
        if let Some(map) = REGISTRY.lock().as_mut() {
            map.remove(&self.id);
        }
    }

    fn info(&self) -> InterpThreadInfo {
        InterpThreadInfo {
            name: self.name.clone(),
            thread: *self.thread.lock(),
            current_call: self.current.lock().as_ref().map(|j| j.func.to_string()),
            leaked: self.leaked.load(Ordering::SeqCst),
        }
    }

    /// The running call, when it has an outstanding cancel.
    /// Whether the injector should raise `harrow.Cancelled` in the running call now: a cancel is
    /// outstanding and the last one raised is not within its cleanup grace. Records the delivery.
    pub(crate) fn take_cancel_delivery(&self) -> bool {
        let current = self.current.lock();
        match current.as_ref() {
            Some(j)
                if j.is_cancelled()
                    && !j.is_done()
                    && !j.recently_delivered()
                    && !j.injection_held() =>
            {
                j.mark_delivered();
                true
            }
            _ => false,
        }
    }

    /// Whether the running call has a cancel not yet answered.
    pub fn cancel_outstanding(&self) -> bool {
        self.current
            .lock()
            .as_ref()
            .is_some_and(|j| j.is_cancelled() && !j.is_done())
            || self.loop_interrupted()
    }

    /// Hard-killed while the event loop runs: its tasks are interrupted (see `hard_killed`).
    pub(crate) fn loop_interrupted(&self) -> bool {
        self.hard_killed.load(Ordering::SeqCst) && self.loop_running.load(Ordering::SeqCst)
    }

    /// Wakes the interpreter's event loop if it runs, so that it takes queued calls and
    /// cancels. A sender that queued its job before the loop started needs no wake: the loop's
    /// first callback takes what is queued (the flag is set before that, `SeqCst` both sides).
    pub fn wake(&self) {
        if self.loop_running.load(Ordering::SeqCst) {
            let w = self.wake_w.lock();
            if *w >= 0 {
                crate::imp::wake_write(*w);
            }
        }
    }

    /// Cancels the running call (if any) and keeps re-arming the injection until it ends.
    pub fn request_cancel(self: &Arc<Self>) {
        self.wake();
        if self.cancel_outstanding() {
            crate::imp::inject_cancel(self);
        }
        injector().send(Arc::downgrade(self));
    }

    /// Cancels the running call, whatever it is.
    pub fn cancel_current(self: &Arc<Self>) {
        if let Some(job) = self.current.lock().as_ref() {
            job.cancel();
        }
        self.request_cancel();
    }
}

/// Interpreters leaked on purpose: their `Shared` must outlive them, that is live as long as the
/// process, because a leaked interpreter may still run pending calls and `harrow` functions
/// that point at it.
static KEPT: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

/// Keeps `shared` alive for the rest of the process (its interpreter is being leaked).
pub fn keep_forever(shared: &Arc<Shared>) {
    KEPT.lock().push(Arc::clone(shared));
}

/// How often an outstanding cancel is injected again (for code that swallows `BaseException`).
pub const REARM_INTERVAL: Duration = Duration::from_millis(20);

/// The re-arming injector: one process-wide helper thread that never enters any interpreter (it
/// holds no thread state and only calls `_PyEval_AddPendingCall`, which needs none).
pub(crate) struct Injector {
    tx: flume::Sender<Weak<Shared>>,
}

impl Injector {
    fn send(&self, w: Weak<Shared>) {
        let _ = self.tx.send(w);
    }
}

fn injector() -> &'static Injector {
    static INJECTOR: OnceLock<Injector> = OnceLock::new();
    INJECTOR.get_or_init(|| {
        let (tx, rx) = flume::unbounded::<Weak<Shared>>();
        let spawned = std::thread::Builder::new()
            .name("subint-cancel-injector".into())
            .spawn(move || injector_loop(rx));
        if let Err(e) = spawned {
            tracing::error!("could not start the subint cancel injector: {e}");
        }
        Injector { tx }
    })
}

fn injector_loop(rx: flume::Receiver<Weak<Shared>>) {
    let mut armed: Vec<Weak<Shared>> = Vec::new();
    loop {
        let next = if armed.is_empty() {
            rx.recv().map_err(|_| flume::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(REARM_INTERVAL)
        };
        match next {
            Ok(w) => {
                if !armed.iter().any(|a| a.ptr_eq(&w)) {
                    armed.push(w);
                }
                continue;
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return,
        }
        armed.retain(|w| match w.upgrade() {
            Some(shared) if shared.cancel_outstanding() => {
                crate::imp::inject_cancel(&shared);
                true
            }
            _ => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_ends_the_wait_for_it_from_another_thread() {
        let job = JobState::new(FnPath::parse("m:f").expect("a valid path"));
        assert!(!job.is_cancelled());
        let waiting = Arc::clone(&job);
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (ended_tx, ended) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            futures_lite::future::block_on(async {
                let wait = waiting.wait_cancelled();
                let mut wait = std::pin::pin!(wait);
                // Polled once (registered) before the cancel is sent.
                let first = futures_lite::future::poll_once(wait.as_mut()).await;
                entered_tx
                    .send(first.is_some())
                    .expect("the test waits for this");
                wait.await;
            });
            ended_tx.send(()).expect("the test waits for this");
        });
        let ended_before_the_cancel = entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter polled its wait");
        assert!(!ended_before_the_cancel, "a wait ends only with the cancel");
        job.cancel();
        job.cancel(); // idempotent
        assert!(job.is_cancelled());
        ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait saw the cancel");
        waiter.join().expect("the waiter did not panic");
    }
}
