//! A `block_on` for threads whose messages arrive on sockets: while the future waits, the thread
//! sleeps in an epoll instance of its own, which watches the sockets of the [`unix`](crate::unix)
//! channels read on this thread and an `eventfd` for wake-ups from other threads.
//!
//! Why not `async_io::block_on`: async-io's reactor registers every descriptor in one-shot mode,
//! so each wait for a readable socket re-arms it (`epoll_ctl`), and each of its turns arms a
//! `timerfd` and drains and re-arms its notifier, whatever is pending: about five syscalls per
//! wait besides the `epoll_wait` itself. Here a socket is registered once, edge-triggered, when
//! it is first read on the thread, and a wait is one `epoll_wait`. A wake-up from another thread
//! costs an `eventfd` write only when this thread is asleep (and a read to drain it), as a futex
//! would. Wake-ups from tasks on this same thread cost nothing.
//!
//! Everything else a future on such a thread waits for (timers, other async-io descriptors: pipes,
//! listeners) is served by whichever thread drives async-io's reactor (another `async_io::block_on`
//! or async-io's own thread), which then wakes this thread like any other waker.
//!
//! Off Linux, [`block_on`] is `async_io::block_on` and channels use async-io alone.
//!
//! Before it sleeps, a thread spins for a short while (see [`spin`]): on a machine with idle
//! cores, the reply to what it just sent often arrives within microseconds, and catching it
//! awake costs no sleep and no wake-up on either side.
//!
//! The channels of the shared-memory transport ([`shm`](crate::shm)) register their socket here
//! too, but their bytes arrive in a ring, not on the socket: the spin looks at their rings (a
//! load each) instead of calling `epoll_wait`, and before the thread sleeps it asks their writers
//! for a wake-up byte on the socket, which the sleeping `epoll_wait` then sees.

use std::future::Future;

pub mod spin;

/// Runs `fut` to completion on this thread; see the module docs.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    block_on_gated(spin::SpinGate::new(), fut)
}

/// [`block_on`] for an actor's thread, which follows its peer: on a crowded machine (no room
/// for spinning: CPU hogs, overload), a thread woken from its sleep again and again by the
/// writer of a shared-memory ring that runs on one other CPU moves onto that CPU
/// ([`SharedCpu::after_slept`](spin::SharedCpu::after_slept)). Only one side of a pair should
/// follow the other (the actor its parent), or both could move at once and swap CPUs.
pub fn block_on_following<F: Future>(fut: F) -> F::Output {
    #[cfg(target_os = "linux")]
    {
        imp::block_on(&mut spin::SpinGate::new(), true, fut)
    }
    #[cfg(not(target_os = "linux"))]
    {
        async_io::block_on(fut)
    }
}

/// [`block_on`] with the given spin decisions (tests force the spin with
/// [`SpinGate::always`](spin::SpinGate::always)).
#[doc(hidden)]
pub fn block_on_gated<F: Future>(mut gate: spin::SpinGate, fut: F) -> F::Output {
    #[cfg(target_os = "linux")]
    {
        imp::block_on(&mut gate, false, fut)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = gate;
        async_io::block_on(fut)
    }
}

/// A parker that threads use in turn, one at a time, kept from one `block_on` to the next: for
/// threads that take turns running the same tasks, such as a co-driven actor's helper and its
/// own thread (see `harrow_runtime_core::CoDriver`). A reader registers its socket with the
/// parker it is polled in; here that is the same parker whichever of the threads polls it, so
/// its registration stays put, and the edges that came while no thread waited are taken by the
/// next one that does. (With a parker per thread, a reader left registered with the parker of a
/// thread that now does other work would wait there for edges nobody takes.)
///
/// Each thread keeps what it learns about spinning in a [`ParkTurn`] of its own. One thread at a
/// time: a `block_on` that finds another thread in the parker waits for it to leave. (Running
/// the tasks elsewhere meanwhile would not do: a reader registered in the parker, and no longer
/// polled by the thread in it, would wait there for edges nobody takes once that thread left.)
/// So the thread in it must be bound to leave: a co-driven actor's own thread leaves as soon as
/// the helper is back.
#[derive(Clone)]
pub struct SharedParker {
    #[cfg(target_os = "linux")]
    shared: Option<std::sync::Arc<imp::Shared>>,
}

impl std::fmt::Debug for SharedParker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedParker").finish_non_exhaustive()
    }
}

impl SharedParker {
    /// A parker with its own epoll instance; without one (none left, or not Linux) every
    /// `block_on` runs in async-io.
    pub fn new() -> SharedParker {
        #[cfg(target_os = "linux")]
        {
            let shared = match imp::Shared::new() {
                Ok(shared) => Some(std::sync::Arc::new(shared)),
                Err(e) => {
                    tracing::debug!(error = %e, "no epoll instance of its own: parking in async-io");
                    None
                }
            };
            SharedParker { shared }
        }
        #[cfg(not(target_os = "linux"))]
        SharedParker {}
    }

    /// Runs `fut` to completion on this thread, which waits in the parker (spinning before it
    /// sleeps as [`block_on`] does, as `turn` says), once no other thread is in it.
    pub fn block_on<F: Future>(&self, turn: &mut ParkTurn, fut: F) -> F::Output {
        #[cfg(target_os = "linux")]
        if let Some(shared) = &self.shared {
            return shared.block_on(&mut turn.parking, fut);
        }
        let _ = turn;
        async_io::block_on(fut)
    }

    /// Whether a thread is in the parker now (for tests).
    #[doc(hidden)]
    pub fn in_use(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(shared) = &self.shared {
            return shared.in_use();
        }
        false
    }
}

impl Default for SharedParker {
    fn default() -> Self {
        SharedParker::new()
    }
}

/// One thread's side of a [`SharedParker`]: what its waits taught it about spinning, and
/// whether it follows its peer onto its CPU as [`block_on_following`] does.
pub struct ParkTurn {
    #[cfg(target_os = "linux")]
    parking: imp::Parking,
}

impl std::fmt::Debug for ParkTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkTurn").finish_non_exhaustive()
    }
}

impl ParkTurn {
    /// A turn whose spins `gate` decides (tests force or forbid the spin with
    /// [`SpinGate::always`](spin::SpinGate::always)).
    #[doc(hidden)]
    pub fn gated(gate: spin::SpinGate) -> ParkTurn {
        #[cfg(target_os = "linux")]
        {
            let mut parking = imp::Parking::new(false);
            parking.gate = gate;
            ParkTurn { parking }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = gate;
            ParkTurn {}
        }
    }

    /// A thread's turn; with `follow`, it follows its peer ([`block_on_following`]).
    pub fn new(follow: bool) -> ParkTurn {
        #[cfg(target_os = "linux")]
        {
            ParkTurn {
                parking: imp::Parking::new(follow),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = follow;
            ParkTurn {}
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) use imp::Registration;

/// A transport whose bytes do not arrive through the socket it registers (a shared-memory
/// ring, [`shm`](crate::shm)): the socket carries only wake-up bytes and the peer's end. The
/// parker looks at such a transport while it spins, and arms it before it sleeps.
#[cfg(target_os = "linux")]
pub(crate) trait Watch: Send + Sync {
    /// Whether bytes are waiting (a load: no system call).
    fn has_data(&self) -> bool;
    /// Asks the peer to send a wake-up byte with its next write, then fences: the caller looks
    /// at [`has_data`](Watch::has_data) again before it sleeps. `token` (never 0) names the
    /// parker that asks.
    fn arm(&self, token: u32);
    /// The thread is awake: no wake-up byte is needed, unless another parker asked for one since
    /// (the reader moved to another thread, whose parker armed with a token of its own: a
    /// parker that disarmed from an outdated list of its watched transports would leave that
    /// thread asleep with no bell coming).
    fn disarm(&self, token: u32);
    /// The socket had an edge: take its wake-up bytes and note its end. `hung_up`: the edge
    /// said the peer closed (or the socket failed), so read to the end, not only to a short read.
    fn on_edge(&self, hung_up: bool);
    /// The CPU the peer's writer ran on when it last wrote (`None`: unknown), for the move off
    /// a CPU shared with it and the move onto its CPU ([`SharedCpu`](spin::SharedCpu)).
    fn writer_cpu(&self) -> Option<usize>;
}

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::future::Future;
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::{Duration, Instant};

    use rustix::buffer::spare_capacity;
    use rustix::event::{EventfdFlags, epoll, eventfd};

    use super::Watch;
    use super::spin::{self, SharedCpu, SpinGate, Spun, WakeSource, WokenBy, spin_watch_starting};

    /// The future is being polled; no wake-up since the poll began.
    const RUNNING: u8 = 0;
    /// Woken since the poll began: poll again before sleeping.
    const NOTIFIED: u8 = 1;
    /// Asleep in `epoll_wait` (or about to be): a wake-up must write the `eventfd`.
    const PARKED: u8 = 2;

    /// The epoll key of the wake-up `eventfd`; sockets get keys counted from 0.
    const WAKE_KEY: u64 = u64::MAX;

    /// How many events one `epoll_wait` takes at most.
    const EVENTS: usize = 64;

    /// The longest a thread that does not sleep goes without taking its sockets' edges.
    const LOOK_EVERY: Duration = Duration::from_millis(1);

    /// One thread's epoll instance, its wake-up `eventfd` and the sockets registered in it.
    ///
    /// A waker writes `source` and then `state`, and the spinning thread reads both: they share
    /// one cache line (`repr(C)`, aligned to a line), so that a wake-up from another CPU moves
    /// one line, not two. (Apart, the thread stream echo lost 8 % to the second line.)
    #[repr(C, align(64))]
    pub(super) struct Poller {
        state: AtomicU8,
        /// Where the last wake-up from a waker ([`ParkWaker`]) came from.
        source: WakeSource,
        /// `None` once the `block_on` that made it returned: its descriptors are closed then,
        /// even if a waker or a registration outlives it (a waker kept by a leaked future, say).
        fds: Mutex<Option<Fds>>,
        next_key: AtomicU64,
        interests: Mutex<HashMap<u64, Arc<Interest>>>,
        /// The registered interests that have a [`Watch`] (copied on write: the parker takes
        /// the list with one reference count per loop).
        watched: Mutex<Arc<[Arc<Interest>]>>,
        /// `watched` is not empty: a parker with no watched transport (a root whose children
        /// are in-process) takes no lock and no count for it.
        any_watched: AtomicBool,
        /// When a waker last found the thread asleep and woke it ([`spin::now_ns`]): for the
        /// thread's [`spin::wake_delay`].
        woke_at: AtomicU64,
        /// What this poller arms its watched transports with (see [`Watch::disarm`]).
        token: u32,
    }

    /// The token of the next poller ([`Poller::token`]); 0 means disarmed and 1 is a reader
    /// with no parker.
    static NEXT_TOKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);

    /// One registered socket: whether an edge arrived since its reader last consumed one,
    /// whether the peer has closed its end (sticky), and the reader's waker.
    #[derive(Default)]
    struct Interest {
        ready: AtomicBool,
        hung_up: AtomicBool,
        waker: Mutex<Option<Waker>>,
        /// Where the bytes arrive when not through the socket.
        watch: Option<Arc<dyn Watch>>,
    }

    impl Interest {
        fn waker(&self) -> MutexGuard<'_, Option<Waker>> {
            self.waker.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// A watched transport with bytes for a reader that waits: marks it ready and wakes the
        /// reader. Whether it woke one.
        fn check_watch(&self) -> bool {
            let Some(watch) = &self.watch else {
                return false;
            };
            if !watch.has_data() {
                return false;
            }
            self.ready.store(true, Ordering::Release);
            let waker = self.waker().take();
            match waker {
                Some(w) => {
                    w.wake();
                    true
                }
                None => false,
            }
        }
    }

    /// A poller's watched interests, as its parker takes them for one turn of its loop.
    enum WatchedList {
        Empty,
        Listed(Arc<[Arc<Interest>]>),
    }

    impl std::ops::Deref for WatchedList {
        type Target = [Arc<Interest>];

        fn deref(&self) -> &[Arc<Interest>] {
            match self {
                WatchedList::Empty => &[],
                WatchedList::Listed(list) => list,
            }
        }
    }

    /// The descriptors of a [`Poller`]. The thread in `block_on` holds a copy it waits on
    /// without locking; others take theirs under the lock, for one call.
    #[derive(Clone)]
    struct Fds {
        epoll: Arc<OwnedFd>,
        wake: Arc<OwnedFd>,
    }

    impl Poller {
        fn new() -> io::Result<Poller> {
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            // Edge-triggered, and never read: an `eventfd` reports an edge for every write,
            // whatever its count, so a wake-up costs its writer's `write` and no `read` here.
            // The count grows by one per wake-up of a sleeping thread and would take centuries
            // to reach the `u64` limit at which a write fails.
            epoll::add(
                &epoll,
                &wake,
                epoll::EventData::new_u64(WAKE_KEY),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )?;
            Ok(Poller {
                fds: Mutex::new(Some(Fds {
                    epoll: Arc::new(epoll),
                    wake: Arc::new(wake),
                })),
                state: AtomicU8::new(RUNNING),
                next_key: AtomicU64::new(0),
                interests: Mutex::new(HashMap::new()),
                watched: Mutex::new(Arc::from(Vec::new())),
                any_watched: AtomicBool::new(false),
                source: WakeSource::for_this_thread(),
                woke_at: AtomicU64::new(0),
                token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed).max(2),
            })
        }

        fn watched(&self) -> WatchedList {
            if !self.any_watched.load(Ordering::Acquire) {
                return WatchedList::Empty;
            }
            WatchedList::Listed(
                self.watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
        }

        fn set_watched(&self, f: impl FnOnce(&mut Vec<Arc<Interest>>)) {
            let mut slot = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            let mut list = slot.to_vec();
            f(&mut list);
            self.any_watched.store(!list.is_empty(), Ordering::Release);
            *slot = Arc::from(list);
        }

        /// Arms the watched transports whose readers wait, then looks at them once more: true
        /// when one has bytes (its reader is woken: do not sleep).
        fn arm_watched(&self, watched: &[Arc<Interest>]) -> bool {
            let mut woke = false;
            for interest in watched {
                if let Some(watch) = &interest.watch
                    && interest.waker().is_some()
                {
                    watch.arm(self.token);
                }
            }
            for interest in watched {
                woke |= interest.check_watch();
            }
            woke
        }

        fn disarm_watched(&self, watched: &[Arc<Interest>]) {
            for watch in watched.iter().filter_map(|i| i.watch.as_ref()) {
                watch.disarm(self.token);
            }
        }

        fn interests(&self) -> MutexGuard<'_, HashMap<u64, Arc<Interest>>> {
            self.interests.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// The descriptors, unless the poller's `block_on` returned.
        fn fds(&self) -> Option<Fds> {
            self.fds.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Wakes the thread from its `epoll_wait`, if the descriptors are still open: the
        /// `eventfd` is written under the lock (a non-blocking write), which costs no reference
        /// counts. Only the waker that found the thread asleep writes, so nobody waits here.
        fn wake_up(&self) {
            if let Some(fds) = &*self.fds.lock().unwrap_or_else(|p| p.into_inner()) {
                wake_up(&fds.wake);
            }
        }

        /// Closes the descriptors (once the last copy in use is dropped) and forgets the
        /// registrations.
        fn close(&self) {
            self.fds.lock().unwrap_or_else(|p| p.into_inner()).take();
            self.interests().clear();
            self.set_watched(Vec::clear);
        }

        /// Sleeps until a registered socket has an edge or another thread wakes this one, and
        /// hands each socket's edge to its reader.
        /// An error (other than a signal's `EINTR`) means the instance cannot be waited on.
        fn wait(&self, fds: &Fds, events: &mut Vec<epoll::Event>) -> rustix::io::Result<()> {
            events.clear();
            let waited = epoll::wait(&*fds.epoll, spare_capacity(events), None);
            // Awake: the wake-ups the events below cause need no `eventfd` write. (One that came
            // from another thread meanwhile left the `eventfd` readable: drained below, or
            // reported by the next wait.)
            self.state.store(RUNNING, Ordering::Release);
            self.dispatch(events, waited)
        }

        /// Takes the edges already there, without sleeping (the thread spins, `RUNNING`), and
        /// hands each to its reader.
        fn poll_now(&self, fds: &Fds, events: &mut Vec<epoll::Event>) {
            events.clear();
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let waited = epoll::wait(&*fds.epoll, spare_capacity(events), Some(&zero));
            // An error shows again in the sleeping wait that follows the spin.
            let _ = self.dispatch(events, waited);
        }

        /// Hands the edges `epoll_wait` returned to their readers (the wake-up `eventfd`'s edge
        /// needs nothing more: the thread is awake).
        fn dispatch(
            &self,
            events: &[epoll::Event],
            waited: rustix::io::Result<usize>,
        ) -> rustix::io::Result<()> {
            match waited {
                Ok(_) => {}
                // A signal: the caller polls its future again and comes back.
                Err(rustix::io::Errno::INTR) => return Ok(()),
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let key = event.data.u64();
                if key == WAKE_KEY {
                    continue;
                }
                let interest = self.interests().get(&key).cloned();
                if let Some(interest) = interest {
                    let hangup =
                        epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
                    // Copied out: the event struct is packed.
                    let flags = event.flags;
                    if flags.intersects(hangup) {
                        interest.hung_up.store(true, Ordering::Release);
                    }
                    if let Some(watch) = &interest.watch {
                        watch.on_edge(interest.hung_up.load(Ordering::Acquire));
                    }
                    interest.ready.store(true, Ordering::Release);
                    let waker = interest.waker().take();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            }
            Ok(())
        }
    }

    /// Wakes the thread in [`block_on`]: no syscall unless it sleeps.
    struct ParkWaker(Arc<Poller>);

    impl Wake for ParkWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            // Published by the swap, read by the spinner after its acquire load.
            self.0.source.record();
            if self.0.state.swap(NOTIFIED, Ordering::AcqRel) == PARKED {
                // Read by the thread once the wake-up (below) has reached it.
                self.0.woke_at.store(spin::now_ns(), Ordering::Release);
                self.0.wake_up();
            }
        }
    }

    /// Writes one to the `eventfd`, which nobody reads: should its count ever be full (the
    /// write refused), it is read back to zero and written again.
    fn wake_up(wake: &OwnedFd) {
        let one = 1u64.to_ne_bytes();
        if rustix::io::write(wake, &one) == Err(rustix::io::Errno::AGAIN) {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(wake, &mut buf);
            let _ = rustix::io::write(wake, &one);
        }
    }

    thread_local! {
        /// The poller of the innermost `block_on` running on this thread.
        static CURRENT: RefCell<Option<Arc<Poller>>> = const { RefCell::new(None) };
    }

    /// Makes `poller` this thread's current one until dropped, then restores the previous one
    /// (also when the future panics).
    struct Enter {
        previous: Option<Arc<Poller>>,
    }

    impl Enter {
        fn new(poller: Arc<Poller>) -> Enter {
            let previous = CURRENT.with(|c| c.borrow_mut().replace(poller));
            Enter { previous }
        }
    }

    impl Drop for Enter {
        fn drop(&mut self) {
            let previous = self.previous.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }

    /// Closes a poller when dropped (also when the future panics).
    struct CloseOnDrop(Arc<Poller>);

    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }

    /// Runs `fut` to completion, spinning as `gate` says; `gate` keeps what the waits taught it.
    pub(super) fn block_on<F: Future>(gate: &mut SpinGate, follow: bool, fut: F) -> F::Output {
        let poller = match Poller::new() {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::debug!(error = %e, "no epoll instance of its own: parking in async-io");
                return async_io::block_on(fut);
            }
        };
        let _close = CloseOnDrop(poller.clone());
        let waker = Waker::from(Arc::new(ParkWaker(poller.clone())));
        let mut parking = Parking::new(follow);
        parking.gate = std::mem::take(gate);
        /// Hands the gate back (also when the future panics).
        struct GiveBack<'a>(&'a mut SpinGate, Parking);
        impl Drop for GiveBack<'_> {
            fn drop(&mut self) {
                *self.0 = std::mem::take(&mut self.1.gate);
            }
        }
        let mut back = GiveBack(gate, parking);
        run(&poller, &waker, &mut back.1, fut)
    }

    /// A poller that threads use in turn ([`super::SharedParker`]), with its waker.
    pub(super) struct Shared {
        poller: Arc<Poller>,
        waker: Waker,
        /// Held by the thread that runs in it.
        turn: Mutex<()>,
    }

    impl Shared {
        pub(super) fn new() -> io::Result<Shared> {
            let poller = Arc::new(Poller::new()?);
            let waker = Waker::from(Arc::new(ParkWaker(poller.clone())));
            Ok(Shared {
                poller,
                waker,
                turn: Mutex::new(()),
            })
        }

        pub(super) fn in_use(&self) -> bool {
            matches!(
                self.turn.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            )
        }

        pub(super) fn block_on<F: Future>(&self, parking: &mut Parking, fut: F) -> F::Output {
            // Released on every path, a panicking future included (a poisoned lock guards
            // nothing that a panic could have left half-done).
            let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
            // Wake-ups from this thread are its own from now on.
            self.poller.source.claim();
            run(&self.poller, &self.waker, parking, fut)
        }
    }

    impl Drop for Shared {
        fn drop(&mut self) {
            self.poller.close();
        }
    }

    /// What a parking thread keeps from one wait to the next.
    pub(super) struct Parking {
        pub(super) gate: SpinGate,
        pub(super) shared_cpu: SharedCpu,
        pub(super) events: Vec<epoll::Event>,
        /// Whether the thread follows its peer ([`super::block_on_following`]).
        pub(super) follow: bool,
    }

    impl Parking {
        pub(super) fn new(follow: bool) -> Parking {
            Parking {
                gate: SpinGate::new(),
                shared_cpu: SharedCpu::new(),
                events: Vec::with_capacity(EVENTS),
                follow,
            }
        }
    }

    /// Runs `fut` to completion on `poller` (in which no other thread runs meanwhile), woken
    /// through `waker` (a [`ParkWaker`] of `poller`). On an error of its instance, the poller
    /// is closed and `fut` finishes in async-io.
    fn run<F: Future>(
        poller: &Arc<Poller>,
        waker: &Waker,
        parking: &mut Parking,
        fut: F,
    ) -> F::Output {
        let mut fut = pin!(fut);
        let Some(fds) = poller.fds() else {
            return async_io::block_on(fut);
        };
        let enter = Enter::new(poller.clone());
        let mut cx = Context::from_waker(waker);
        let Parking {
            gate,
            shared_cpu,
            events,
            follow,
        } = parking;
        let follow = *follow;
        // When the sockets' edges were last taken (a sleep takes them, and so does a spin's
        // look where a socket carries data).
        let mut looked = Instant::now();
        // The loop's turn right after a sleep, which took the edges and read the clock: the
        // turn reads it no more.
        let mut after_sleep = false;
        loop {
            poller.state.store(RUNNING, Ordering::Release);
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            // A thread kept busy never sleeps, and a spin does not look at the sockets of
            // watched transports: their edges (a peer's end above all) are taken at least
            // once per `LOOK_EVERY` all the same (a turn after a sleep looks at the next one).
            if !std::mem::take(&mut after_sleep) && looked.elapsed() >= LOOK_EVERY {
                poller.poll_now(&fds, events);
                looked = Instant::now();
            }
            let spin = gate.spin();
            if !spin.is_zero() {
                // Watch for a wake-up from another thread and for the sockets' edges. The flag
                // is a load; the sockets cost a system call per look, made only when there are
                // any (a root whose children are all in-process has none; a socket is
                // registered by a read on this thread, so none appears during the spin).
                // Watched transports (shared memory) are looked at with a load; their sockets'
                // edges (wake-up bytes, the peer's end) wait for the sleep.
                let watched = poller.watched();
                let sockets = poller.interests().len() > watched.len();
                // What a look of this thread's found and woke its reader for, if it did: a
                // ring (with the CPU its writer ran on, where known) or a socket's edge
                // (`None`: it says nothing about where the peer runs).
                let mut found: Option<Option<usize>> = None;
                let spun = spin_watch_starting(spin, shared_cpu.spin_start(), || {
                    if poller.state.load(Ordering::Acquire) != RUNNING {
                        return true;
                    }
                    for interest in watched.iter() {
                        if interest.check_watch() {
                            found = Some(interest.watch.as_ref().and_then(|w| w.writer_cpu()));
                        }
                    }
                    if found.is_none() && sockets {
                        poller.poll_now(&fds, events);
                        if poller.state.load(Ordering::Acquire) != RUNNING {
                            found = Some(None);
                        }
                    }
                    poller.state.load(Ordering::Acquire) != RUNNING
                });
                if let Spun::Caught { after_yield } = spun {
                    // The wake-up that a look found (its reader woken from this thread) or a
                    // waker's, which says where it ran; a wake-up this thread gave itself (a
                    // task it ran woke another) neither counts toward a move nor ends the run,
                    // and says nothing of whether spins pay.
                    let woken_by = poller.source.take();
                    match (found, woken_by) {
                        (Some(cpu), _) | (None, WokenBy::Cpu(cpu)) => {
                            gate.hit();
                            shared_cpu.after_caught(after_yield, cpu);
                        }
                        (None, WokenBy::Itself) => {}
                    }
                    continue;
                }
                gate.miss();
            }
            // A watched transport's writer rings its bell only when asked to.
            let watched = poller.watched();
            if !watched.is_empty() && poller.arm_watched(&watched) {
                poller.disarm_watched(&watched);
                continue;
            }
            // Before the state says parked: a waker that finds it parked records a later
            // moment.
            let slept_at = Instant::now();
            if poller
                .state
                .compare_exchange(RUNNING, PARKED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Woken while it was polled.
                poller.disarm_watched(&watched);
                continue;
            }
            let waited = poller.wait(&fds, events);
            looked = Instant::now();
            after_sleep = true;
            let woke = poller.woke_at.load(Ordering::Acquire);
            gate.slept(spin::wake_delay(slept_at, woke, looked));
            poller.disarm_watched(&watched);
            if follow {
                // Only a ring says where its writer ran; any other wake-up ends the run. (The
                // rings are looked at only on a crowded machine: an actor may read many.)
                let crowded = spin::crowded();
                let waker_cpu = if crowded {
                    watched
                        .iter()
                        .filter_map(|i| i.watch.as_ref())
                        .find(|w| w.has_data())
                        .and_then(|w| w.writer_cpu())
                } else {
                    None
                };
                shared_cpu.after_slept(waker_cpu, crowded);
            }
            if let Err(e) = waited {
                // Not expected with a descriptor held open; never spin on it: finish in
                // async-io (the readers leave the closed instance on their next read).
                tracing::warn!(error = %e, "epoll_wait failed: parking in async-io from now on");
                drop(enter);
                poller.close();
                return async_io::block_on(fut.as_mut());
            }
        }
    }

    /// A socket registered with the epoll instance of the thread that reads it. Dropping it
    /// without [`deregister`](Registration::deregister) leaves the descriptor in that instance
    /// until the descriptor's last copy closes.
    pub(crate) struct Registration {
        poller: Arc<Poller>,
        key: u64,
        interest: Arc<Interest>,
    }

    impl Registration {
        /// Registers `fd` with the current thread's poller; `None` when this thread is not in
        /// [`block_on`](super::block_on) (or the registration failed: the caller then waits
        /// through async-io).
        pub(crate) fn here(fd: BorrowedFd<'_>) -> Option<Registration> {
            Self::register(fd, None)
        }

        /// [`here`](Registration::here) for a transport whose bytes arrive through `watch`, not
        /// through `fd` (which carries only wake-up bytes and the peer's end).
        pub(crate) fn here_watched(
            fd: BorrowedFd<'_>,
            watch: Arc<dyn Watch>,
        ) -> Option<Registration> {
            let registration = Self::register(fd, Some(watch.clone()))?;
            // Wake-up bytes queued before the registration make no edge: take them now, all.
            watch.on_edge(true);
            Some(registration)
        }

        fn register(fd: BorrowedFd<'_>, watch: Option<Arc<dyn Watch>>) -> Option<Registration> {
            let poller = CURRENT.with(|c| c.borrow().clone())?;
            let key = poller.next_key.fetch_add(1, Ordering::Relaxed);
            let watched = watch.is_some();
            let interest = Arc::new(Interest {
                watch,
                ..Interest::default()
            });
            // Readable from the start: the edge of bytes already queued is not reported again.
            interest.ready.store(true, Ordering::Relaxed);
            let fds = poller.fds()?;
            poller.interests().insert(key, interest.clone());
            let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
            if let Err(e) = epoll::add(&*fds.epoll, fd, epoll::EventData::new_u64(key), flags) {
                tracing::debug!(error = %e, "epoll_ctl(ADD) failed: reading through async-io");
                poller.interests().remove(&key);
                return None;
            }
            if watched {
                poller.set_watched(|list| list.push(interest.clone()));
            }
            Some(Registration {
                poller,
                key,
                interest,
            })
        }

        /// The registration of `fd` with this thread's poller, kept in `slot`: one made on
        /// another thread is removed from that thread's poller first (the reader moved), and a
        /// missing one is made with `register`. `None` when this thread has no poller.
        pub(crate) fn on_this_thread<'a>(
            slot: &'a mut Option<Registration>,
            fd: BorrowedFd<'_>,
            register: impl FnOnce() -> Option<Registration>,
        ) -> Option<&'a Registration> {
            if slot.as_ref().is_some_and(|r| !r.is_here())
                && let Some(r) = slot.take()
            {
                r.deregister(fd);
            }
            if slot.is_none() {
                *slot = register();
            }
            slot.as_ref()
        }

        /// Whether the current thread's poller is this registration's.
        pub(crate) fn is_here(&self) -> bool {
            CURRENT.with(|c| {
                c.borrow()
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p, &self.poller))
            })
        }

        /// Takes the socket's readiness: ready if an edge arrived since the last call (or since
        /// the registration), else pending with `cx`'s waker kept for the next edge.
        pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
            if self.interest.ready.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            {
                let mut slot = self.interest.waker();
                match &mut *slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
            }
            // An edge handled between the swap and the store above found no waker.
            if self.interest.ready.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        }

        /// Whether an edge said the peer closed its end (or the socket failed). Then a short
        /// read does not mean drained: the end of the stream (a read of 0) is still to come, and
        /// no further edge will announce it (the edge of the last bytes and the hang-up's may
        /// have been one).
        pub(crate) fn hung_up(&self) -> bool {
            self.interest.hung_up.load(Ordering::Acquire)
        }

        /// Marks the socket readable again (a read filled its whole buffer: more may be queued).
        pub(crate) fn set_ready(&self) {
            self.interest.ready.store(true, Ordering::Release);
        }

        /// Removes `fd` (the descriptor this was registered with, still open) from the poller.
        pub(crate) fn deregister(self, fd: BorrowedFd<'_>) {
            if let Some(fds) = self.poller.fds() {
                let _ = epoll::delete(&*fds.epoll, fd);
            }
            self.poller.interests().remove(&self.key);
            if self.interest.watch.is_some() {
                let me = &self.interest;
                self.poller
                    .set_watched(|list| list.retain(|i| !Arc::ptr_eq(i, me)));
            }
        }
    }

    impl std::fmt::Debug for Registration {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Registration")
                .field("key", &self.key)
                .finish_non_exhaustive()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// How many edges an `epoll_wait` that does not sleep reports.
        fn edges_now(epoll: &OwnedFd) -> usize {
            let mut events = Vec::with_capacity(4);
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            epoll::wait(epoll, spare_capacity(&mut events), Some(&zero)).expect("epoll_wait");
            events.len()
        }

        #[test]
        fn every_wake_up_is_an_edge_though_the_eventfd_is_never_read() {
            let poller = Poller::new().expect("an epoll instance");
            let fds = poller.fds().expect("open");
            assert_eq!(edges_now(&fds.epoll), 0);
            for _ in 0..3 {
                wake_up(&fds.wake);
                assert_eq!(edges_now(&fds.epoll), 1, "a wake-up after unread ones");
                assert_eq!(edges_now(&fds.epoll), 0, "an edge is reported once");
            }
        }

        #[test]
        fn a_full_eventfd_is_emptied_and_the_wake_up_still_lands() {
            let poller = Poller::new().expect("an epoll instance");
            let fds = poller.fds().expect("open");
            // The largest count an eventfd holds; one more write would be refused.
            let full = (u64::MAX - 1).to_ne_bytes();
            rustix::io::write(&*fds.wake, &full).expect("fill the count");
            assert_eq!(edges_now(&fds.epoll), 1);
            wake_up(&fds.wake);
            assert_eq!(edges_now(&fds.epoll), 1, "the wake-up was lost");
            let mut buf = [0u8; 8];
            rustix::io::read(&*fds.wake, &mut buf).expect("a count");
            assert_eq!(u64::from_ne_bytes(buf), 1);
        }

        #[test]
        fn the_park_waker_records_where_its_wake_up_came_from() {
            // How a source tells the polling thread from another is `WakeSource`'s; here,
            // that the waker records into the poller's before it flips the flag.
            let poller = Arc::new(Poller::new().expect("an epoll instance"));
            Waker::from(Arc::new(ParkWaker(poller.clone()))).wake_by_ref();
            assert_eq!(poller.state.load(Ordering::Acquire), NOTIFIED);
            assert_eq!(poller.source.take(), WokenBy::Itself);
        }

        #[test]
        fn a_wake_up_that_finds_the_thread_asleep_records_its_moment() {
            let poller = Arc::new(Poller::new().expect("an epoll instance"));
            let waker = Waker::from(Arc::new(ParkWaker(poller.clone())));
            // Not asleep: nothing to record.
            waker.wake_by_ref();
            assert_eq!(poller.woke_at.load(Ordering::Acquire), 0);
            poller.state.store(PARKED, Ordering::Release);
            let before = spin::now_ns();
            waker.wake_by_ref();
            let woke = poller.woke_at.load(Ordering::Acquire);
            assert!(
                woke >= before && woke <= spin::now_ns(),
                "recorded {woke}, before {before}"
            );
        }

        #[test]
        fn a_wakers_two_writes_land_in_one_cache_line() {
            // What a waker writes (`source`, then `state`) and the spinner reads: one line.
            assert_eq!(std::mem::align_of::<Poller>(), 64);
            assert_eq!(std::mem::offset_of!(Poller, state), 0);
            let source_end =
                std::mem::offset_of!(Poller, source) + std::mem::size_of::<WakeSource>();
            assert!(
                source_end <= 64,
                "the wake source ends at byte {source_end}"
            );
        }

        #[test]
        fn a_wake_up_the_thread_gave_itself_is_not_a_spin_that_paid() {
            // Its second poll comes from a spin that caught the future's own wake-up at once,
            // which says nothing of whether spins pay.
            let mut gate = SpinGate::always(Duration::from_micros(50));
            gate.miss();
            gate.miss();
            block_on(&mut gate, false, spin::testing::wakes_itself_once());
            assert_eq!(
                gate.backed_off(),
                (1, true),
                "not counted as a hit (which ends the back-off)"
            );
            // A wake-up from another thread caught by the spin (up to 500 ms) is one.
            let (fut, waker_thread) = spin::testing::woken_from_another_thread();
            let mut gate = SpinGate::always(Duration::from_millis(500));
            gate.miss();
            gate.miss();
            block_on(&mut gate, false, fut);
            waker_thread.join().expect("the waking thread");
            assert_eq!(gate.backed_off(), (0, false), "a hit ends the back-off");
        }
    }
}
