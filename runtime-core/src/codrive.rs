//! [`CoDriver`]: a second thread that runs an in-process actor's tasks while it has nothing else
//! to do, so that work it would be handed arrives on it directly.
//!
//! A subint actor has two threads: the actor's own (its runtime: link, dispatcher, cancel
//! protocol) and the interpreter thread that runs every Python call. Without help, a call crosses
//! both: the caller wakes the actor's thread, which hands the job to the interpreter thread. With
//! a `CoDriver`, the interpreter thread runs the actor's tasks itself whenever it waits for a
//! call ([`drive_until`](CoDriver::drive_until)), so the call it is handed comes from its own
//! hands and only the caller and the interpreter thread take part in a round trip.
//!
//! The actor's thread (the *owner*) still answers for the actor:
//!
//! - while the helper runs the tasks (`Driving`), the owner sleeps;
//! - while the helper does its own work (`Busy`: a Python call), nobody runs the actor's tasks.
//!   Most calls end within microseconds. One watchdog thread per process looks at every busy
//!   helper once per [`TICK`]; a helper busy for [`TAKEOVER`] or longer has its owner run the
//!   tasks until it comes back. So a message (a cancel, for one) waits at most about `TICK` plus
//!   `TAKEOVER` for the actor to read it;
//! - when the helper is about to wait for something the actor's tasks must do (a context call's
//!   stream, a nursery it opened), it says so with [`away`](CoDriver::away) and the owner runs
//!   the tasks at once.
//!
//! A Python process child is co-driven the same way, by the thread serving its main
//! interpreter ([`run_actor_codriven`](crate::run_actor_codriven)). Its channels are sockets and
//! rings, watched from an epoll instance, with which a reader registers its socket when polled:
//! both threads wait in one instance, in turn ([`SharedParker`]), so that a reader stays
//! registered where the thread whose turn it is waits.
//!
//! The watchdog ticks only while helpers turn busy: it sleeps until the first busy turn, and
//! after [`QUIET`] with no busy turn anywhere until the next one, so idle actors (and a process
//! that never co-drives) cost no timer wake-ups.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::thread::Thread;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use futures_lite::FutureExt;
use harrow_ipc::park::{ParkTurn, SharedParker};
use harrow_ipc::wait::Event;
use harrow_ipc::wait::{deadline, wait_until};
use harrow_portal::Executor;

use crate::actor::ActorCtx;
use crate::park::block_on_in_process;

/// How long the helper may be busy before the actor's own thread runs its tasks.
pub const TAKEOVER: Duration = Duration::from_millis(1);

/// How often the watchdog looks at the busy helpers while it ticks. Each look is a timer
/// wake-up of its thread, which lands on a CPU where actor threads spin for their answers and
/// delays the call it meets: in `harrow bench --only rpc-subint` runs whose threads settled in
/// the slow placement, a round trip's p99 was 20-32 µs with a look per [`TAKEOVER`] and 9-12 µs
/// with a look per 5 ms.
pub const TICK: Duration = Duration::from_millis(5);

/// How long the watchdog ticks on with no helper turning busy before it sleeps until one does.
pub const QUIET: Duration = Duration::from_millis(100);

/// Tasks the helper runs in one poll before it hands back to its parker (which polls again).
const TICKS_PER_YIELD: u32 = 64;

/// How long a helper coming back waits for the owner to leave the actor's parker (for sockets:
/// [`SharedParker`]), which it does as soon as it sees the helper back. Past it the owner keeps
/// the tasks, and the helper waits for its work by its own means this time.
const OWNER_LEAVES: Duration = Duration::from_millis(100);

/// Neither driving nor watched: the owner runs the actor's tasks.
const AWAY: u8 = 0;
/// The helper runs the actor's tasks.
const DRIVING: u8 = 1;
/// The helper does its own work; the owner takes over after [`TAKEOVER`] (the watchdog says).
const BUSY: u8 = 2;

/// Lets a helper thread run an in-process actor's tasks while it waits for work of its own (see
/// the module docs). Cheap to clone; one per actor. Until the actor's runtime starts
/// ([`run_actor_in_process_codriven`](crate::run_actor_in_process_codriven)) and after it ends,
/// [`drive_until`](Self::drive_until) returns at once.
#[derive(Clone, Default)]
pub struct CoDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.inner.state.load(SeqCst) {
            DRIVING => "driving",
            BUSY => "busy",
            _ => "away",
        };
        f.debug_struct("CoDriver")
            .field("helper", &state)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// The running actor's executor and context (`None` before and after its runtime). One
    /// reference count per `drive_until`, not one per part.
    bound: Mutex<Option<Arc<Bound>>>,
    /// The helper's state: `AWAY`, `DRIVING` or `BUSY`.
    state: AtomicU8,
    /// When the helper last turned busy, in nanoseconds since the watchdog's epoch.
    busy_since: AtomicU64,
    /// The owner's thread, to wake it.
    owner: Mutex<Option<Thread>>,
    /// The actor's main task has ended.
    main_done: AtomicBool,
    /// The runtime is ending: the helper stops driving and takes no new turn.
    ending: AtomicBool,
    /// The helper came back from `AWAY` (entered `DRIVING`), or the main task ended.
    changed: Event,
    /// The driving helper's waker, woken when `ending` is set. (An `Event` listener per wait
    /// cost an allocation and two locks per call of a co-driven actor.)
    helper_waker: AtomicWaker,
    /// The helper is inside `drive_until`.
    helper_in: AtomicBool,
    /// The helper left `drive_until` while `ending` was set.
    helper_left: Event,
    /// The owner runs the actor's tasks in the actor's [`SharedParker`] (sockets only).
    owner_in_parker: AtomicBool,
    /// The owner left the parker.
    owner_left: Event,
}

thread_local! {
    /// What the helper thread learnt about spinning in the parkers of the actors it co-drove
    /// (`None` while in use).
    static HELPER_TURN: std::cell::Cell<Option<ParkTurn>> = const { std::cell::Cell::new(None) };
}

struct Bound {
    exec: Executor,
    ctx: ActorCtx,
    /// For an actor whose channels are sockets (a process child's): the parker both threads
    /// wait in, in turn, so that its readers' sockets stay registered in one epoll instance
    /// whichever thread runs them. `None`: the channels are in memory, and each thread parks
    /// on a futex.
    parker: Option<SharedParker>,
}

impl Inner {
    fn bound(&self) -> MutexGuard<'_, Option<Arc<Bound>>> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_owner(&self) {
        if let Some(t) = self
            .owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }
}

impl CoDriver {
    /// A co-driver not bound to any actor yet.
    pub fn new() -> Self {
        CoDriver::default()
    }

    /// Helper: runs the actor's tasks on this thread until `until` completes, parking as an
    /// in-process actor does when there is nothing to run. Returns whether `until` completed;
    /// `false` at once when no actor runtime is bound (not started yet, or ended), when the
    /// runtime began ending meanwhile, or (channels that are sockets) when the actor's own
    /// thread did not leave the actor's parker within 100 ms: then the caller waits
    /// for its work by its own means.
    ///
    /// After `true` the helper counts as busy: if it does not come back to `drive_until` (or
    /// say [`away`](Self::away)) within [`TAKEOVER`], the actor's own thread runs its tasks.
    pub fn drive_until(&self, until: Pin<&mut (dyn Future<Output = ()> + Send)>) -> bool {
        let inner = &*self.inner;
        let Some(bound) = inner.bound().clone() else {
            return false;
        };
        let (exec, ctx, parker) = (&bound.exec, &bound.ctx, &bound.parker);
        inner.helper_in.store(true, SeqCst);
        if inner.ending.load(SeqCst) {
            self.leave(AWAY);
            return false;
        }
        // Only an owner that runs the tasks while the helper is away waits for this (otherwise
        // it sleeps: `own`); from `BUSY`, the state of every call's end, nobody does.
        if inner.state.swap(DRIVING, SeqCst) == AWAY {
            inner.changed.notify(usize::MAX);
        }
        if parker.is_some() && inner.owner_in_parker.load(SeqCst) {
            // The owner leaves the parker as soon as it sees the state above. If it does not
            // within the bound, it keeps the tasks: the helper waits for its work by its own
            // means this time.
            let left = wait_until(&inner.owner_left, || !inner.owner_in_parker.load(SeqCst));
            if block_on_in_process(deadline(OWNER_LEAVES, left)).is_none() {
                tracing::debug!("the actor's own thread is slow to leave its parker");
                self.leave(AWAY);
                return false;
            }
        }
        /// Leaves `Driving` for `Away` if what runs below panics: the owner must not wait for
        /// a helper that is gone.
        struct Unwind<'a>(&'a CoDriver);
        impl Drop for Unwind<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.leave(AWAY);
                }
            }
        }
        let unwind = Unwind(self);
        let done = {
            let _current = ctx.enter();
            let mut until = until;
            // One task at a time, `until` looked at after each: the job a task hands over (the
            // call its link's reader started) runs before any other task, such as the call's
            // own, which has nothing to do before the job's answer. Unlike `Executor::run`, no
            // worker queue is made and dropped per wait.
            let mut tick = std::pin::pin!(exec.tick());
            // The waker registered in `helper_waker` (its data and vtable), which stands until
            // `unbind`'s one wake: registered again only for another waker.
            let mut registered: Option<(usize, &'static std::task::RawWakerVTable)> = None;
            let drive = std::future::poll_fn(|cx| {
                // Registered before the look: `unbind` sets `ending`, then wakes. (While the
                // registration stands, `helper_waker` holds a clone of its waker, so another
                // waker cannot have the same data.)
                let w = cx.waker();
                let this = (w.data() as usize, w.vtable());
                if registered != Some(this) {
                    inner.helper_waker.register(w);
                    registered = Some(this);
                }
                for _ in 0..TICKS_PER_YIELD {
                    if until.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    if inner.ending.load(SeqCst) {
                        return Poll::Ready(false);
                    }
                    match tick.as_mut().poll(cx) {
                        Poll::Ready(()) => tick.set(exec.tick()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                // Looked at again after what the parker does between polls.
                cx.waker().wake_by_ref();
                Poll::Pending
            });
            match &parker {
                Some(parker) => {
                    let mut turn = HELPER_TURN.take().unwrap_or_else(|| ParkTurn::new(true));
                    let done = parker.block_on(&mut turn, drive);
                    HELPER_TURN.set(Some(turn));
                    done
                }
                None => block_on_in_process(drive),
            }
        };
        drop(unwind);
        self.leave(if done { BUSY } else { AWAY });
        done
    }

    /// The helper leaves `drive_until` for `state`.
    fn leave(&self, state: u8) {
        let inner = &*self.inner;
        if state == BUSY {
            inner.busy_since.store(watchdog::now(), SeqCst);
        }
        inner.state.store(state, SeqCst);
        if state == BUSY {
            watchdog::busy_turn();
        } else {
            inner.wake_owner();
        }
        inner.helper_in.store(false, SeqCst);
        // Only `unbind` waits for this, after setting `ending` (both sequentially consistent:
        // either this sees `ending`, or `unbind` sees `helper_in` cleared and does not wait).
        if inner.ending.load(SeqCst) {
            inner.helper_left.notify(usize::MAX);
        }
    }

    /// Helper: it is about to wait for something the actor's tasks must do (they must run now,
    /// and not on this thread). Cheap when it is already away.
    pub fn away(&self) {
        let inner = &*self.inner;
        if inner.state.swap(AWAY, SeqCst) != AWAY {
            inner.wake_owner();
        }
    }

    /// Owner: binds the running actor (its executor and context) and this thread as its owner.
    /// Without a watchdog (its thread could not start) nothing is bound: the owner then runs
    /// every task itself.
    /// With `sockets`, the actor's channels are sockets: both threads wait in one
    /// [`SharedParker`], in turn.
    pub(crate) fn bind(&self, exec: Executor, ctx: ActorCtx, sockets: bool) {
        let inner = &*self.inner;
        if !watchdog::watch(&self.inner) {
            return;
        }
        *inner.owner.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
        inner.ending.store(false, SeqCst);
        inner.main_done.store(false, SeqCst);
        inner.state.store(AWAY, SeqCst);
        let parker = sockets.then(SharedParker::new);
        *inner.bound() = Some(Arc::new(Bound { exec, ctx, parker }));
    }

    /// The actor's main task ended (on whichever thread ran it): the owner returns.
    pub(crate) fn main_done(&self) {
        let inner = &*self.inner;
        inner.main_done.store(true, SeqCst);
        inner.changed.notify(usize::MAX);
        inner.wake_owner();
    }

    /// Owner: runs the actor's tasks whenever the helper does not, until `main` ends.
    pub(crate) fn own<T>(&self, exec: &Executor, mut main: async_executor::Task<T>) -> T {
        let inner = &*self.inner;
        let parker = inner.bound().as_ref().and_then(|b| b.parker.clone());
        let mut turn = ParkTurn::new(true);
        loop {
            if inner.main_done.load(SeqCst) {
                // Ended, or about to (it says so just before it returns): collect its value.
                return block_on_in_process(exec.run(&mut main));
            }
            if inner.state.load(SeqCst) == AWAY {
                // Until the helper comes back (it notifies `changed` when it drives again after
                // being away; seen busy, it has been driving since).
                let stop = async {
                    wait_until(&inner.changed, || inner.state.load(SeqCst) != AWAY).await;
                    None
                };
                let done = async { Some((&mut main).await) };
                let run = exec.run(done.or(stop));
                let out = match &parker {
                    Some(parker) => self.in_parker(parker, &mut turn, run).flatten(),
                    None => block_on_in_process(run),
                };
                if let Some(v) = out {
                    return v;
                }
                continue;
            }
            // The helper drives, or is busy: sleep until it goes away (or the watchdog sends
            // it away), or the actor ends. Every one of those wakes this thread after setting
            // what it looks at, and a wake-up before the park makes the park return at once.
            std::thread::park();
        }
    }

    /// Owner: runs `fut` in the actor's parker, unless the helper came back meanwhile (`None`).
    /// The helper waits for the owner to leave the parker before it uses it: one thread at a
    /// time.
    fn in_parker<F: Future>(
        &self,
        parker: &SharedParker,
        turn: &mut ParkTurn,
        fut: F,
    ) -> Option<F::Output> {
        let inner = &*self.inner;
        /// Says the owner left (also when a task panics).
        struct Leave<'a>(&'a Inner);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.owner_in_parker.store(false, SeqCst);
                self.0.owner_left.notify(usize::MAX);
            }
        }
        // Said before the state is looked at again, and the helper says it is back before it
        // looks at this (both sequentially consistent): either the owner sees the helper back,
        // or the helper waits for the owner to leave.
        inner.owner_in_parker.store(true, SeqCst);
        let _leave = Leave(inner);
        if inner.state.load(SeqCst) != AWAY {
            return None;
        }
        Some(parker.block_on(turn, fut))
    }

    /// Owner: the runtime ends. The helper stops driving (waited for up to `bound`) and
    /// the actor is unbound.
    pub(crate) fn unbind(&self, bound: Duration) {
        let inner = &*self.inner;
        inner.ending.store(true, SeqCst);
        inner.helper_waker.wake();
        let left = wait_until(&inner.helper_left, || !inner.helper_in.load(SeqCst));
        let out = block_on_in_process(deadline(bound, left));
        if out.is_none() {
            tracing::warn!(
                ?bound,
                "the co-driving thread did not leave the actor's executor"
            );
        }
        *inner.bound() = None;
        inner.state.store(AWAY, SeqCst);
        *inner.owner.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Starts the process's co-driving watchdog thread (`harrow-codrive`) now if it is not running
/// yet, as the first co-driven actor would. For leak checkers that snapshot the process's
/// threads: the thread is process-wide and never ends. Idempotent. The thread sleeps until a
/// helper first turns busy (no timer wake-ups before).
pub fn warm_up() {
    let _ = watchdog::watch_nothing();
}

/// Waits up to `bound` for the watchdog to sleep until a helper turns busy, and returns its
/// timer wake-ups so far then (`None`: it did not sleep within `bound`). For tests.
#[doc(hidden)]
pub fn watchdog_ticks_once_asleep(bound: Duration) -> Option<u64> {
    watchdog::ticks_once_asleep(bound)
}

/// The process's one watchdog thread: sends away the helpers busy for longer than
/// [`TAKEOVER`] (see the module docs).
mod watchdog {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Instant;

    /// The co-drivers bound to a running actor (dead ones are dropped at each tick).
    static ACTORS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
    /// The watchdog sleeps until the next busy turn (no timer).
    static DEEP: AtomicBool = AtomicBool::new(false);
    /// Busy turns taken by all helpers so far.
    static TURNS: AtomicU64 = AtomicU64::new(0);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// Nanoseconds since the watchdog's epoch.
    pub(super) fn now() -> u64 {
        epoch().elapsed().as_nanos() as u64
    }

    /// The watchdog's thread, started on first use (`None` if it could not start).
    fn thread() -> Option<&'static Thread> {
        static THREAD: OnceLock<Option<Thread>> = OnceLock::new();
        THREAD
            .get_or_init(|| {
                epoch();
                let started = std::thread::Builder::new()
                    .name("harrow-codrive".into())
                    .spawn(run);
                match started {
                    Ok(handle) => Some(handle.thread().clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the co-driving watchdog thread");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn actors() -> MutexGuard<'static, Vec<Weak<Inner>>> {
        ACTORS.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the thread; whether it runs.
    pub(super) fn watch_nothing() -> bool {
        thread().is_some()
    }

    /// Watches `inner` while its actor runs. `false` when there is no watchdog.
    pub(super) fn watch(inner: &Arc<Inner>) -> bool {
        if thread().is_none() {
            return false;
        }
        actors().push(Arc::downgrade(inner));
        true
    }

    /// A helper turned busy: the watchdog must be ticking.
    pub(super) fn busy_turn() {
        TURNS.fetch_add(1, SeqCst);
        if DEEP.load(SeqCst)
            && let Some(t) = thread()
        {
            t.unpark();
        }
    }

    /// Timer wake-ups of the watchdog so far (for tests).
    static TICKS: AtomicU64 = AtomicU64::new(0);

    /// Notified when the watchdog goes to sleep until a busy turn.
    static ASLEEP: Event = Event::new();

    /// Waits up to `bound` for the watchdog to sleep until a busy turn; its timer wake-ups so
    /// far then (`None`: it did not sleep within `bound`).
    pub(super) fn ticks_once_asleep(bound: Duration) -> Option<u64> {
        let asleep = wait_until(&ASLEEP, || DEEP.load(SeqCst));
        block_on_in_process(deadline(bound, asleep))?;
        Some(TICKS.load(SeqCst))
    }

    /// Sleeps until a helper turns busy, unless one has since `last_turns`.
    fn sleep_deep(last_turns: u64) {
        DEEP.store(true, SeqCst);
        ASLEEP.notify(usize::MAX);
        if TURNS.load(SeqCst) == last_turns {
            std::thread::park();
        }
        DEEP.store(false, SeqCst);
    }

    fn run() {
        let takeover = TAKEOVER.as_nanos() as u64;
        // Nothing to watch before the first busy turn: a process that never co-drives (its
        // Python checked, say, and then only thread actors) costs no timer wake-ups.
        let mut last_turns = 0;
        sleep_deep(last_turns);
        let mut quiet_since = Instant::now();
        loop {
            std::thread::park_timeout(TICK);
            TICKS.fetch_add(1, SeqCst);
            let now = now();
            let mut any_busy = false;
            actors().retain(|weak| {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                if inner.state.load(SeqCst) == BUSY {
                    any_busy = true;
                    let since = inner.busy_since.load(SeqCst);
                    if now.saturating_sub(since) >= takeover
                        && inner
                            .state
                            .compare_exchange(BUSY, AWAY, SeqCst, SeqCst)
                            .is_ok()
                    {
                        inner.wake_owner();
                    }
                }
                true
            });
            let turns = TURNS.load(SeqCst);
            if turns != last_turns || any_busy {
                last_turns = turns;
                quiet_since = Instant::now();
                continue;
            }
            if quiet_since.elapsed() < QUIET {
                continue;
            }
            // Quiet: sleep until a helper turns busy.
            sleep_deep(last_turns);
            quiet_since = Instant::now();
        }
    }
}
