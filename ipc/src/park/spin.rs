//! The short spin an actor thread makes before it sleeps, and when it makes it.
//!
//! A round trip between two actors on two cores takes a few microseconds of work, but waking a
//! thread that sleeps can cost far more: on a virtual machine whose idle virtual CPUs halt
//! (no halt polling in the guest, as on the VMs harrow is developed on), a wake-up that has to
//! reach another CPU costs the host's scheduling of that CPU, about 50 µs, ten times the work
//! of the round trip. A thread that watches for its reply for a few tens of microseconds
//! before it sleeps is still running when the reply comes: no sleep, no wake-up, and its CPU
//! stays out of the halt.
//!
//! Spinning only pays when the thread it waits for has a core of its own. On a machine with
//! more runnable threads than cores, the spinning thread takes the CPU its peer needs, and
//! every spin makes someone else wait. So a thread spins only when:
//!
//! - **the process may use more than one CPU**: on one, the peer cannot run while the thread
//!   spins;
//! - **the machine is not overloaded**: the kernel's count of runnable threads (the fourth
//!   field of `/proc/loadavg`) and its one-minute load average (the first) are both at most
//!   twice the number of cores. The count is a sample of one instant and includes the spinning
//!   threads themselves and short-lived kernel workers, so "at most the cores" would turn
//!   spinning off at random moments on an idle machine; the load average keeps a busy machine's
//!   momentary lulls from turning it on. Beyond that, the threads we would wait for mostly wait
//!   for a core, and a spinning thread, which the scheduler sees as busy, loses the preference
//!   it gives a thread that wakes from sleep: in our measurements at load 6-9, spinning made a
//!   subint round trip 30 times slower. Both are read at most once per [`LOAD_SAMPLE`] per
//!   process (a few microseconds per 10 ms); off Linux there is no such cheap count and
//!   threads never spin;
//! - **other programs leave a core unused**: the machine's busy CPU time less this process's,
//!   over the last [`CPU_SAMPLE`] or more, is at most the cores less three quarters, and the
//!   machine was not crowded in two readings in a row (no idle core, yet programs outside this
//!   process's family got half a core or more: they wanted more) ([`others_leave_a_core`]).
//!   A reading spans the time since the process last looked; where that is long, the crowding
//!   it saw may be over, and the threads that want a CPU now decide instead. The counts above
//!   cannot tell a CPU hog from this process's own spinning threads; beside a hog, a spinning
//!   thread that yields loses its CPU for the rest of the hog's time slice. Until a process
//!   has measured that (its first [`CPU_SAMPLE`]), it takes the answer of the process that
//!   started it, or else counts the threads that want a CPU at that instant;
//! - **its recent spins paid**: spins that ran out (nothing came, or it came only after the
//!   spin's yields had given the CPU away for long) make the thread skip spins: none after the
//!   first of a run, then the next 1, 3, 7, ... up to [`MAX_SKIP`]; a spin that caught a
//!   wake-up from another thread in time resets that (one the thread gave itself does not),
//!   and so does a wake-up issued less than half the spin after the thread went to sleep
//!   ([`SpinGate::slept`]: a spin would have caught it; the parkers' wakers record when they
//!   woke a sleeping thread, [`wake_delay`]) or a sleep of [`IDLE`] or more (a new burst). An
//!   idle actor spins once after its last message, then sleeps and costs nothing. The first miss
//!   is free because it is what the end of every burst of messages looks like, and the start of
//!   the next burst would pay for it: skipping the spin after it made the second call after a
//!   pause pay a second wake-up on each side (docs/performance-log.md, "The second call after a
//!   pause").
//!
//! The spin is [`park_spin`] long: `HARROW_PARK_SPIN_US` (microseconds, at most 1 ms; 0 turns
//! spinning off), [`DEFAULT_SPIN`] when unset. It busy-waits first, then yields its CPU between
//! looks; how long it busy-waits depends on where its last waker ran ([`SpinStart`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The spin before sleeping when `HARROW_PARK_SPIN_US` is not set.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The most spins a run of misses makes a thread skip.
pub const MAX_SKIP: u32 = 255;

/// A sleep this long ends a thread's back-off ([`SpinGate::slept`]).
pub const IDLE: Duration = Duration::from_millis(10);

/// Rounds of pure busy-waiting (1, 2, 4, ... `spin_loop` hints) before each round yields.
const YIELD_AFTER: u32 = 6;

/// The runnable threads at the last reading of the load (`usize::MAX`: none yet).
static RUNNABLE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// How long a read of the machine's runnable-thread count stays the answer.
pub const LOAD_SAMPLE: Duration = Duration::from_millis(10);

/// How long a thread spins for new work before it sleeps (`HARROW_PARK_SPIN_US`, or
/// [`DEFAULT_SPIN`]; read once per process; a value that does not parse is ignored; capped at
/// 1 ms; 0 turns spinning off).
pub fn park_spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| spin_from_env("HARROW_PARK_SPIN_US", DEFAULT_SPIN))
}

/// A spin knob from the environment: `var` in microseconds, capped at 1 ms; `default` when it
/// is unset or does not parse.
pub fn spin_from_env(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, |us| {
            Duration::from_micros(us).min(Duration::from_millis(1))
        })
}

/// One parking thread's spin decisions: the back-off after spins that ran out. Not shared
/// between threads (each parker owns one).
#[derive(Debug, Default)]
pub struct SpinGate {
    /// Spins still to skip.
    skip: u32,
    /// What the next miss sets `skip` to, once a miss has been let go (0 after a hit).
    backoff: u32,
    /// The last spin ran out: the next miss backs off. (The first miss of a run does not.)
    missed: bool,
    /// A spin made every time, whatever the load and the back-off (tests).
    fixed: Option<Duration>,
}

impl SpinGate {
    /// A gate with no back-off yet.
    pub const fn new() -> SpinGate {
        SpinGate {
            skip: 0,
            backoff: 0,
            missed: false,
            fixed: None,
        }
    }

    /// A gate that spins `spin` before every sleep, whatever the load, the back-off and
    /// `HARROW_PARK_SPIN_US` say: for tests of the paths through a spin.
    #[doc(hidden)]
    pub const fn always(spin: Duration) -> SpinGate {
        SpinGate {
            skip: 0,
            backoff: 0,
            missed: false,
            fixed: Some(spin),
        }
    }

    /// Spins still to skip, and whether the last spin ran out (for tests of the parkers that
    /// keep a gate).
    #[doc(hidden)]
    pub fn backed_off(&self) -> (u32, bool) {
        (self.skip, self.missed)
    }

    /// How long to spin before this sleep: zero when spinning is off, backed off, or the
    /// machine has no core to spare.
    pub fn spin(&mut self) -> Duration {
        if let Some(spin) = self.fixed {
            return spin;
        }
        let spin = park_spin();
        if spin.is_zero() {
            return spin;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Duration::ZERO;
        }
        if !cores_to_spare() {
            return Duration::ZERO;
        }
        spin
    }

    /// The spin caught a wake-up.
    pub fn hit(&mut self) {
        self.skip = 0;
        self.backoff = 0;
        self.missed = false;
    }

    /// The spin ran out: the next spin is made all the same after the first miss of a run,
    /// and then 1, 3, 7, ... up to [`MAX_SKIP`] are skipped after each miss.
    pub fn miss(&mut self) {
        if !self.missed {
            self.missed = true;
            return;
        }
        self.backoff = (self.backoff * 2 + 1).min(MAX_SKIP);
        self.skip = self.backoff;
    }

    /// The thread slept, and its wake-up was issued `took` after it went to sleep (what
    /// [`wake_delay`] measures: the waker's moment where it recorded one, else the whole
    /// sleep). A wake-up issued sooner than half the spin, while spins are skipped after
    /// misses, says that a spin would have caught it: the back-off ends. Without this, a
    /// thread that missed its spins while its actor was quiet (a start-up, messages far apart)
    /// slept through up to [`MAX_SKIP`] waits once the calls came back to back, paying a
    /// wake-up each. (The whole sleep is no measure of that: it includes the wake-up itself,
    /// which on a VM whose idle CPUs halt takes longer than half the spin.)
    ///
    /// A sleep of [`IDLE`] or more ends it too: the misses before it belong to an earlier
    /// burst of messages, and the wake-up that ends it starts the next one, whose second
    /// message would otherwise find the thread asleep again. It costs at most one spin per
    /// [`IDLE`]; messages that come closer together keep the back-off.
    pub fn slept(&mut self, took: Duration) {
        if self.missed && self.fixed.is_none() && (took < park_spin() / 2 || took >= IDLE) {
            self.skip = 0;
            self.backoff = 0;
            self.missed = false;
        }
    }
}

/// The origin of [`now_ns`].
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Now, in nanoseconds since a moment early in the process: what a waker records (in an
/// `AtomicU64`) when it wakes a sleeping thread, for that thread's [`wake_delay`].
pub fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// How long after `parked_at` a thread's wake-up was issued: from `woke_ns`, what its waker
/// recorded ([`now_ns`]), when that lies between `parked_at` and `now`; else (no waker
/// recorded one for this sleep: 0, or a moment of an earlier sleep) the whole sleep, `now -
/// parked_at`. `parked_at` must be taken before the thread announces that it sleeps, so that
/// any waker that sees it asleep records a later moment.
pub fn wake_delay(parked_at: Instant, woke_ns: u64, now: Instant) -> Duration {
    let woke = origin().checked_add(Duration::from_nanos(woke_ns));
    match woke {
        Some(woke) if woke_ns != 0 && woke >= parked_at && woke <= now => woke - parked_at,
        _ => now.saturating_duration_since(parked_at),
    }
}

/// The CPU this thread runs on now, where that is cheap to know (Linux with glibc, which reads
/// it from the thread's rseq area: about 2 ns, no system call); `None` elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline]
#[allow(unsafe_code)]
pub fn this_cpu() -> Option<usize> {
    // SAFETY: no arguments and no memory handed over; returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// The CPU this thread runs on now, where that is cheap to know; `None` here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[inline]
pub fn this_cpu() -> Option<usize> {
    None
}

/// Where a parked thread's last wake-up came from, for its [`SharedCpu`]: the waker records
/// it ([`record`](Self::record)) before it flips the thread's wake flag, and the thread takes it
/// ([`take`](Self::take)) once it has seen the flag.
///
/// The word a waker writes comes first (`repr(C)`): a parker that keeps its flag beside a
/// source in the first 16 bytes of a 16-aligned value has both in one cache line.
#[derive(Debug)]
#[repr(C)]
pub struct WakeSource {
    /// The waker's CPU ([`NO_CPU`]: unknown or none since the last take; [`FROM_ITSELF`]: the
    /// polling thread woke itself).
    cpu: AtomicUsize,
    /// The thread that polls ([`thread_mark`]).
    poller: AtomicUsize,
}

/// Where a wake-up came from ([`WakeSource::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WokenBy {
    /// The polling thread itself (a task it ran woke another): says nothing about where the
    /// thread's peers run.
    Itself,
    /// Another thread, which ran on this CPU (`None`: unknown).
    Cpu(Option<usize>),
}

/// No CPU recorded.
const NO_CPU: usize = usize::MAX;
/// The last wake-up came from the polling thread itself.
const FROM_ITSELF: usize = usize::MAX - 1;

impl WakeSource {
    /// A source for a thread's parker, made on the thread that will poll.
    pub fn for_this_thread() -> WakeSource {
        WakeSource {
            cpu: AtomicUsize::new(NO_CPU),
            poller: AtomicUsize::new(thread_mark()),
        }
    }

    /// The calling thread polls from now on (a parker that threads use in turn).
    pub fn claim(&self) {
        self.poller.store(thread_mark(), Ordering::Relaxed);
    }

    /// Called by a waker, before it publishes the wake-up (a release store or swap of the
    /// flag the thread watches): records this thread's CPU, or that the polling thread woke
    /// itself.
    #[inline]
    pub fn record(&self) {
        let from = if thread_mark() == self.poller.load(Ordering::Relaxed) {
            FROM_ITSELF
        } else {
            this_cpu().unwrap_or(NO_CPU)
        };
        self.cpu.store(from, Ordering::Relaxed);
    }

    /// Takes the last record (after an acquire load of the flag that saw the wake-up);
    /// `Cpu(None)` when there is none.
    #[inline]
    pub fn take(&self) -> WokenBy {
        match self.cpu.swap(NO_CPU, Ordering::Relaxed) {
            FROM_ITSELF => WokenBy::Itself,
            NO_CPU => WokenBy::Cpu(None),
            cpu => WokenBy::Cpu(Some(cpu)),
        }
    }
}

/// A number that tells this thread from every other one living now: the address of a
/// thread-local (cheaper than `std::thread::current()`, which counts a reference).
fn thread_mark() -> usize {
    std::thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|m| std::ptr::from_ref(m) as usize)
}

/// How many wake-ups in a row from a waker on the spinning thread's CPU make it move.
pub const HOP_AFTER: u32 = 16;

/// The least time between two moves of one thread off its waker's CPU.
pub const HOP_EVERY: Duration = Duration::from_millis(20);

/// One thread's watch for a waker that shares its CPU.
///
/// Two threads that hand work back and forth, each spinning while the other works, can end up
/// on one CPU, and from there they only take turns through the spin's yields: neither sleeps,
/// so no wake-up gives the scheduler a chance to place one elsewhere, and its load balancing
/// leaves such busy threads where they are for milliseconds. A round trip between two thread
/// actors took about 4.3 µs that way against 3.2 µs on two CPUs, and one between a process
/// child and its parent through shared memory about 7 µs against 3.6 µs, for whole batches of
/// `harrow bench`.
///
/// So after [`HOP_AFTER`] wake-ups in a row caught by the spin only after it yielded, from a
/// waker on this thread's CPU, while no thread waits for a CPU (one is likely idle), the thread
/// moves itself off that CPU ([`hop_off`]), at most once per [`HOP_EVERY`]. Any other wake-up
/// ends the run. The run: a move costs tens of microseconds (two affinity changes and the
/// migration), which only a sustained exchange earns back. A thread just spawned starts on its
/// parent's CPU; moving it at its first call would make that call, not the ones after, pay for
/// it (the thread spawn-to-first-reply went from 0.04 to 0.09–0.14 ms).
///
/// The other way round, when the machine is crowded (other programs' CPU hogs, or more
/// runnable threads than it has room for: no thread spins then), a thread woken from its sleep
/// [`HOP_AFTER`] times in a row by a waker on another CPU moves onto the waker's CPU
/// ([`hop_onto`]; see [`after_slept`](Self::after_slept)).
#[derive(Debug, Default)]
pub struct SharedCpu {
    /// When this thread last moved off or onto its waker's CPU.
    hopped: Option<Instant>,
    /// Wake-ups in a row caught after yielding, from a waker on this thread's CPU.
    run: u32,
    /// Wake-ups from sleep in a row, on a crowded machine, from a waker on another CPU, the
    /// same one each time ...
    apart: u32,
    /// ... this one.
    apart_from: usize,
    /// The last wake-up came from a waker on another CPU (as far as this thread could tell).
    elsewhere: bool,
}

impl SharedCpu {
    /// No run yet.
    pub const fn new() -> SharedCpu {
        SharedCpu {
            hopped: None,
            run: 0,
            apart: 0,
            apart_from: 0,
            elsewhere: false,
        }
    }

    /// How the next spin should begin: yielding at once where the peer likely shares this CPU
    /// ([`yield_first`](Self::yield_first)); with the long busy-wait where the last wake-up
    /// came from another CPU and long busy-waits are allowed ([`long_busy_waits`]); else with
    /// the short one. A thread with no such history (just spawned, on its parent's CPU) begins
    /// short: a parent that busy-waited long for a child thread's first reply would hold the
    /// CPU the child starts on.
    pub fn spin_start(&self) -> SpinStart {
        self.spin_start_if(long_busy_waits())
    }

    /// [`spin_start`](Self::spin_start), with `long_allowed` in place of
    /// [`long_busy_waits`].
    fn spin_start_if(&self, long_allowed: bool) -> SpinStart {
        if self.yield_first() {
            SpinStart::YieldFirst
        } else if self.elsewhere && long_allowed {
            SpinStart::Long
        } else {
            SpinStart::Short
        }
    }

    /// Wake-ups from sleep in the current run (on a crowded machine, from a waker on another
    /// CPU).
    pub fn apart_len(&self) -> u32 {
        self.apart
    }

    /// After a wake-up from sleep, by a waker that ran on `waker_cpu` (`None`: unknown), with
    /// `crowded` saying whether the machine had no room for spinning then ([`crowded`]):
    /// counts the run of wake-ups from one other CPU, and moves this thread onto that CPU when
    /// the run is [`HOP_AFTER`] long, at most once per [`HOP_EVERY`] (moves off a CPU
    /// included). A wake-up from this CPU or from another one starts the run over: a thread
    /// woken by peers all over the machine has no one CPU to join.
    ///
    /// Without spinning, two threads that hand work back and forth are cheapest on one CPU:
    /// each hand-off is then a wake-up of a thread on the waker's own CPU, which runs once the
    /// waker sleeps, while a wake-up of another CPU costs an interrupt to it, much dearer on a
    /// virtual machine. Beside CPU hogs on every CPU the scheduler keeps a woken thread where
    /// it ran last (no CPU is idle, and the waker's CPU is no less loaded), so two threads
    /// that started on two CPUs stay there. In `harrow bench --only rpc-subint` under two
    /// `yes` hogs on two cores, runs whose two threads happened to share a CPU took 26-32 µs
    /// per call (p99 41-62 µs), and runs with one thread on each CPU 92-180 µs (p99
    /// 2.5-3.7 ms): each side ran about 20 µs per hand-off, half of it sending the interrupt,
    /// and beside a hog on each CPU that use of its CPU share made the scheduler hold it back
    /// for the hog's time slice, again and again.
    pub fn after_slept(&mut self, waker_cpu: Option<usize>, crowded: bool) {
        // Where this thread runs matters only where the waker's CPU is known.
        let here = waker_cpu.and_then(|_| this_cpu());
        self.elsewhere = apart(here, waker_cpu);
        if let Some(waker) = self.join_now(here, waker_cpu, crowded) {
            let _ = hop_onto(waker);
        }
    }

    /// [`after_slept`](Self::after_slept)'s count, for a thread on `here`: the CPU to move
    /// onto now, if the run has come to a move.
    fn join_now(
        &mut self,
        here: Option<usize>,
        waker_cpu: Option<usize>,
        crowded: bool,
    ) -> Option<usize> {
        let (Some(here), Some(waker)) = (here, waker_cpu) else {
            self.apart = 0;
            return None;
        };
        if !crowded || here == waker {
            self.apart = 0;
            return None;
        }
        if self.apart == 0 || self.apart_from != waker {
            self.apart = 0;
            self.apart_from = waker;
        }
        self.apart += 1;
        if self.apart < HOP_AFTER || self.hopped.is_some_and(|t| t.elapsed() < HOP_EVERY) {
            return None;
        }
        self.apart = 0;
        self.hopped = Some(Instant::now());
        Some(waker)
    }

    /// Wake-ups in the current run (caught after yielding, from a waker on this thread's CPU).
    pub fn run_len(&self) -> u32 {
        self.run
    }

    /// Whether the next spin should yield from its first round: the last wake-up came, after
    /// a yield, from a waker on this CPU, so the peer that will answer most likely runs here
    /// too, and cannot run before this thread yields. A busy-wait first would only delay it
    /// (about 1.6 µs of `spin_loop` hints before the first yield, on each side of a round
    /// trip). A wake-up from elsewhere ends the run, and the busy-wait comes back.
    pub fn yield_first(&self) -> bool {
        self.run > 0
    }

    /// After a wake-up caught by the spin (`after_yield`: only once it yielded) from a waker
    /// that ran on `waker_cpu` (`None`: unknown): counts the run, and moves this thread off that
    /// CPU when the run is long enough (see the type's docs).
    pub fn after_caught(&mut self, after_yield: bool, waker_cpu: Option<usize>) {
        let Some(waker) = waker_cpu else {
            self.run = 0;
            self.elsewhere = false;
            return;
        };
        let here = this_cpu();
        self.elsewhere = apart(here, waker_cpu);
        if !after_yield || here != Some(waker) {
            self.run = 0;
            return;
        }
        self.run += 1;
        if self.run < HOP_AFTER
            || !no_thread_waits()
            || self.hopped.is_some_and(|t| t.elapsed() < HOP_EVERY)
        {
            return;
        }
        self.run = 0;
        self.hopped = Some(Instant::now());
        let _ = hop_off(waker);
    }
}

/// Moves this thread off `cpu` to another CPU it may run on (the kernel moves it as soon as its
/// affinity no longer allows `cpu`), then gives it back its affinity as it was. Returns the CPU
/// it ran on while `cpu` was not allowed, `None` when it did not move: a thread that may only
/// run on `cpu` (or on one CPU), or an affinity it could not read or set.
pub fn hop_off(cpu: usize) -> Option<usize> {
    hop(cpu, false)
}

/// Moves this thread onto `cpu` (its affinity narrowed to `cpu` alone, which makes the kernel
/// move it at once), then gives it back its affinity as it was; the kernel leaves a running
/// thread where it is when its CPU stays allowed. Returns the CPU it ran on while only `cpu`
/// was allowed, `None` when it did not move: a thread that may not run on `cpu`, may only run
/// on one CPU, or could not read or set its affinity.
pub fn hop_onto(cpu: usize) -> Option<usize> {
    hop(cpu, true)
}

/// [`hop_onto`] `cpu` (`onto`) or [`hop_off`] it.
fn hop(cpu: usize, onto: bool) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        if cpu >= CpuSet::MAX_CPU {
            // Beyond what an affinity mask holds here (its queries would panic).
            return None;
        }
        let allowed = sched_getaffinity(None).ok()?;
        if allowed.count() < 2 || !allowed.is_set(cpu) {
            return None;
        }
        let narrowed = if onto {
            let mut only = CpuSet::new();
            only.set(cpu);
            only
        } else {
            let mut elsewhere = allowed;
            elsewhere.unset(cpu);
            elsewhere
        };
        sched_setaffinity(None, &narrowed).ok()?;
        let landed = this_cpu();
        let _ = sched_setaffinity(None, &allowed);
        landed
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (cpu, onto);
        None
    }
}

/// Whether a waker ran on another CPU than this thread: both known, and not the same.
fn apart(here: Option<usize>, waker: Option<usize>) -> bool {
    matches!((here, waker), (Some(h), Some(w)) if h != w)
}

/// Set by [`keep_busy_waits_short`].
static SHORT_BUSY_WAITS: AtomicBool = AtomicBool::new(false);

/// Keeps every spin of this process to the short busy-wait before its yields
/// ([`SpinStart::Short`]), for a process whose exchanges may have more threads than two: a
/// Python process child (the actor's thread, the thread serving the main interpreter, and its
/// parent's caller on two cores), where a thread that busy-waits longer holds back one that
/// needs its CPU. `harrow-python` calls it when it starts serving the main interpreter on a
/// thread of its own. (Since such a child is co-driven, most of its round trips have two
/// threads; with or without this call they ran alike, so it stays, for the exchanges that
/// still have three.)
pub fn keep_busy_waits_short() {
    SHORT_BUSY_WAITS.store(true, Ordering::Relaxed);
}

/// Whether a spin may begin with the long busy-wait ([`SpinStart::Long`]): this process does
/// not keep its busy-waits short ([`keep_busy_waits_short`]) and no thread waited for a CPU
/// at the gate's last reading ([`no_thread_waits`]).
pub fn long_busy_waits() -> bool {
    long_busy_waits_if(no_thread_waits())
}

/// [`long_busy_waits`], with `no_thread_waits` for [`no_thread_waits`].
fn long_busy_waits_if(no_thread_waits: bool) -> bool {
    !SHORT_BUSY_WAITS.load(Ordering::Relaxed) && no_thread_waits
}

/// Whether the machine is crowded for this process's spinning threads: spinning is on
/// ([`park_spin`]) but [`cores_to_spare`] says there is no room for it (CPU hogs, or more
/// runnable threads than twice the cores). A thread does not spin then, and two threads that
/// hand work back and forth are cheapest on one CPU ([`SharedCpu::after_slept`]). `false` when
/// spinning is off by choice (`HARROW_PARK_SPIN_US=0`) or the process may use only one CPU.
pub fn crowded() -> bool {
    !park_spin().is_zero() && cores() >= 2 && !cores_to_spare()
}

/// Whether the machine's runnable threads, at the last reading of [`cores_to_spare`], were at
/// most its cores: no thread was waiting for a CPU then, so a CPU may be idle.
pub fn no_thread_waits() -> bool {
    RUNNABLE.load(Ordering::Relaxed) <= cores()
}

/// How a spin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spun {
    /// Nothing came in time (see [`spin_until`]).
    Missed,
    /// Woken in time.
    Caught {
        /// Seen only once the spin had started to yield its CPU: whoever woke it may have run
        /// on this CPU meanwhile.
        after_yield: bool,
    },
}

/// Busy-waits until `woken` returns true or `spin` has passed; returns whether it was woken in
/// time (see [`spin_watch`]).
pub fn spin_until(spin: Duration, woken: impl FnMut() -> bool) -> bool {
    matches!(spin_watch(spin, woken), Spun::Caught { .. })
}

/// Busy-waits until `woken` returns true or `spin` has passed; returns whether it was woken in
/// time, and whether only after it began to yield. `woken` is asked between short runs of
/// `spin_loop` hints (and the clock every few rounds). After the first microsecond or so each
/// round also yields the CPU: a thread woken onto this core (the one whose answer we wait for,
/// often) runs at once instead of after the spin. A wake-up seen only after twice `spin` (the
/// yields gave the CPU away for long: the machine is busier than it looked) counts as a miss,
/// so that the caller backs off; the caller finds that wake-up when it tries to sleep.
pub fn spin_watch(spin: Duration, woken: impl FnMut() -> bool) -> Spun {
    spin_watch_from(spin, false, woken)
}

/// [`spin_watch`], yielding from the first round when `yield_first` (the peer likely shares
/// this CPU: [`SharedCpu::yield_first`]).
pub fn spin_watch_from(spin: Duration, yield_first: bool, woken: impl FnMut() -> bool) -> Spun {
    let start = if yield_first {
        SpinStart::YieldFirst
    } else {
        SpinStart::Short
    };
    spin_watch_starting(spin, start, woken)
}

/// How a spin begins, before its first yield ([`SharedCpu::spin_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinStart {
    /// Yield from the first round: the peer likely shares this CPU and cannot run before this
    /// thread yields.
    YieldFirst,
    /// Runs of 1, 2, 4, ... 32 `spin_loop` hints between looks, about 1.6 µs on the VMs harrow
    /// is measured on, then the yields.
    Short,
    /// [`LONG_BUSY_WAIT`] of busy-waiting with a look every 8 hints (about 0.2 µs), then the
    /// yields: the peer runs on another CPU, and its answer, about half a round trip away,
    /// often comes just after the short busy-wait, to be seen only after a yield.
    Long,
}

/// How long a [`SpinStart::Long`] spin busy-waits before its first yield (at most the spin).
pub const LONG_BUSY_WAIT: Duration = Duration::from_micros(4);

/// [`spin_watch`], beginning as `start` says.
pub fn spin_watch_starting(
    spin: Duration,
    start: SpinStart,
    mut woken: impl FnMut() -> bool,
) -> Spun {
    let began = Instant::now();
    let caught = |after_yield: bool| {
        if began.elapsed() <= spin * 2 {
            Spun::Caught { after_yield }
        } else {
            Spun::Missed
        }
    };
    let mut round = match start {
        SpinStart::YieldFirst => YIELD_AFTER,
        SpinStart::Short => 0,
        SpinStart::Long => {
            let busy = LONG_BUSY_WAIT.min(spin);
            let mut looks = 0u32;
            loop {
                if woken() {
                    return Spun::Caught { after_yield: false };
                }
                for _ in 0..8 {
                    std::hint::spin_loop();
                }
                looks += 1;
                // The clock every 8 looks (about 1.6 µs).
                if looks.is_multiple_of(8) && began.elapsed() >= busy {
                    break;
                }
            }
            YIELD_AFTER
        }
    };
    loop {
        if woken() {
            if round < YIELD_AFTER {
                return Spun::Caught { after_yield: false };
            }
            // The first yield comes after the look of round `YIELD_AFTER`.
            return caught(round > YIELD_AFTER);
        }
        if round < YIELD_AFTER {
            for _ in 0..(1u32 << round) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        round += 1;
        if round % 4 == 0 && began.elapsed() >= spin {
            return if woken() {
                caught(round > YIELD_AFTER)
            } else {
                Spun::Missed
            };
        }
    }
}

/// Whether the machine is not overloaded, as last read within [`LOAD_SAMPLE`]: its runnable
/// threads right now (this one included) and its one-minute load average are both at most
/// twice its cores, and other programs leave a core unused ([`others_leave_a_core`]).
pub fn cores_to_spare() -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// When the count was last read, in microseconds since `EPOCH`, plus one (0: never).
    static READ_AT: AtomicU64 = AtomicU64::new(0);
    static SPARE: AtomicBool = AtomicBool::new(false);
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1;
    let last = READ_AT.load(Ordering::Acquire);
    if last != 0 && now.saturating_sub(last) < LOAD_SAMPLE.as_micros() as u64 {
        return SPARE.load(Ordering::Relaxed);
    }
    // One thread reads; the others keep the previous answer meanwhile.
    if READ_AT
        .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return SPARE.load(Ordering::Relaxed);
    }
    let now = load();
    RUNNABLE.store(now.map_or(usize::MAX, |l| l.runnable), Ordering::Relaxed);
    let spare = load_leaves_room(cores(), now) && others_leave_a_core();
    SPARE.store(spare, Ordering::Relaxed);
    spare
}

/// Whether a machine (as this process may use it) of `cores` with `load` has room for a spin:
/// more than one core, and runnable threads and one-minute load average at most twice the
/// cores. On one core the peer a spin waits for cannot run until the spinning thread yields or
/// sleeps, so the spin only delays it: a thread round trip with the process held on one CPU
/// took 6.4–7.0 µs without spinning and 6.7–7.2 µs with it.
fn load_leaves_room(cores: usize, load: Option<Load>) -> bool {
    let limit = 2 * cores;
    cores >= 2 && load.is_some_and(|l| l.runnable <= limit && l.one_minute <= limit as f64)
}

/// The shortest time over which [`others_leave_a_core`] measures other programs' CPU use: the
/// kernel counts the machine's busy time in ticks of 10 ms.
pub const CPU_SAMPLE: Duration = Duration::from_millis(50);

/// Whether other programs left at least one core (less a quarter, for noise) of the machine
/// unused, over the last [`CPU_SAMPLE`] or more: the machine's busy time (`/proc/stat`) less
/// this process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`) and its parent's; and whether the
/// machine was not crowded in this reading and the one before: crowded is no idle core, and
/// programs outside this process's family ([`count_child_as_ours`]) still getting half a core
/// or more (where this reading is long, the threads that want a CPU now must confirm it: the
/// crowding it saw may be over). Read by the thread that reads the load, at most once per
/// [`CPU_SAMPLE`]; `true` where the busy time or this process's time cannot be read (the
/// parent's and children's count as nothing then).
///
/// The load's counts cannot tell a CPU hog from this process's own spinning threads: two hogs
/// on two cores and two spinning actor threads make four runnable threads, within twice the
/// cores, yet each spinning thread then shares its CPU with a hog. A spin yields its CPU
/// after a microsecond or so, so that a peer woken onto the same CPU runs; a hog takes the CPU
/// for the rest of its time slice instead (the timer tick ends it: up to 4 ms at 250 Hz), and
/// the spinning thread sees its wake-up that much later, having never slept. In `harrow bench`
/// under two hogs, whole batches of round trips took 100-1,000 µs per call that way. A sleeping
/// thread is woken with the preference the scheduler gives sleepers instead. The CPU time
/// others use tells the hogs apart: a spinning thread's time is this process's.
///
/// The parent process's time counts as ours too: a process actor's parent is the actor that
/// spawned it and talks to it, and spins for its answers. Counted as another program's, the
/// parent's spinning plus any short burst beside it (in `harrow bench`, the raw socket
/// baseline's child, run between batches) closed a process actor's gate on an idle machine for
/// whole batches of calls. The parent, for its part, counts its actor children as others in
/// the first condition (one core's worth of them still leaves the other), but not as crowding
/// ([`count_child_as_ours`]).
pub fn others_leave_a_core() -> bool {
    // The last sample, and whether the reading that ended at it found the machine crowded.
    static STATE: std::sync::Mutex<Option<(CpuSample, bool)>> = std::sync::Mutex::new(None);
    // Closed until the first reading has judged (see `judge`).
    static LEAVE: AtomicBool = AtomicBool::new(false);
    let Ok(mut last) = STATE.try_lock() else {
        return LEAVE.load(Ordering::Relaxed);
    };
    if last.is_some_and(|(l, _)| l.at.elapsed() < CPU_SAMPLE) {
        return LEAVE.load(Ordering::Relaxed);
    }
    let Some(now) = CpuSample::take() else {
        return true;
    };
    let judged = judge(
        last.as_ref(),
        &now,
        INHERITED.load(Ordering::Relaxed),
        || load().map(|l| l.runnable),
        cores(),
    );
    *last = Some((now, judged.crowded));
    LEAVE.store(judged.leave, Ordering::Relaxed);
    judged.leave
}

/// What [`judge`] found at one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judged {
    /// The gate's answer: other programs leave a core.
    leave: bool,
    /// The machine was crowded over this reading ([`CpuReading::crowded`]).
    crowded: bool,
}

/// [`others_leave_a_core`]'s answer at a reading `now`: measured since the sample `before`
/// (with whether the reading before found the machine crowded); at a process's first reading
/// (none before), the answer its starter passed (`inherited`), or else the threads that want a
/// CPU right now (`runnable`, read only then, and where a long reading's crowding may be over:
/// [`CpuReading::stale_crowding`]).
fn judge(
    before: Option<&(CpuSample, bool)>,
    now: &CpuSample,
    inherited: u8,
    runnable: impl FnOnce() -> Option<usize>,
    cores: usize,
) -> Judged {
    match before {
        Some((before, crowded_before)) => match now.reading_since(before) {
            Some(r) => Judged {
                leave: if r.stale_crowding(*crowded_before) {
                    r.others <= others_limit(cores)
                        && others_runnable_leave_a_core(runnable(), cores)
                } else {
                    r.leaves_a_core(cores, *crowded_before)
                },
                crowded: r.crowded(),
            },
            None => Judged {
                leave: true,
                crowded: false,
            },
        },
        None => Judged {
            leave: match inherited {
                INHERITED_SPARE => true,
                INHERITED_NONE_SPARE => false,
                _ => others_runnable_leave_a_core(runnable(), cores),
            },
            crowded: false,
        },
    }
}

/// [`others_leave_a_core`]'s answer before its first measurement, as the process that started
/// this one passed it ([`inherit_others_leave_a_core`]); [`INHERITED_UNKNOWN`] where none did.
static INHERITED: AtomicU8 = AtomicU8::new(INHERITED_UNKNOWN);
const INHERITED_UNKNOWN: u8 = 0;
const INHERITED_NONE_SPARE: u8 = 1;
const INHERITED_SPARE: u8 = 2;

/// Gives [`others_leave_a_core`] its answer until it has measured one ([`CPU_SAMPLE`] after
/// its first reading): the answer of the process that started this one on the same machine.
/// That process counted this one's CPU as another program's, and this one counts the
/// starter's as its own, so a core the starter saw to spare is one this process sees to
/// spare too. The process backend passes it to its children; without it, a process judges by
/// the threads that want a CPU at its first reading, its own and its starter's among them.
pub fn inherit_others_leave_a_core(leave: bool) {
    let v = if leave {
        INHERITED_SPARE
    } else {
        INHERITED_NONE_SPARE
    };
    INHERITED.store(v, Ordering::Relaxed);
}

/// The answer the process that started this one passed ([`inherit_others_leave_a_core`]), if
/// it passed one.
pub fn inherited_others_leave_a_core() -> Option<bool> {
    match INHERITED.load(Ordering::Relaxed) {
        INHERITED_SPARE => Some(true),
        INHERITED_NONE_SPARE => Some(false),
        _ => None,
    }
}

/// How many of the children counted as ours ([`count_child_as_ours`]) a reading reads, the
/// newest first: a read of `/proc/PID/stat` each, on the reading thread's way into a spin.
pub const CHILDREN_READ: usize = 4;

/// The children counted as ours, oldest first.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// A child process counted as part of this process's family by [`others_leave_a_core`], until
/// dropped. Drop it when the child is reaped: its id may be another process's after that.
#[derive(Debug)]
#[must_use = "the child counts as ours only while this is held"]
pub struct CountedChild(u32);

/// Counts the child process `pid` as part of this process's family: where the machine has no
/// idle core, its CPU time is not taken for another program's demand
/// ([`others_leave_a_core`]). The process backend counts each actor child it starts,
/// which spins for the root as the root spins for it. Only the newest [`CHILDREN_READ`] are
/// read; the older ones count as other programs.
pub fn count_child_as_ours(pid: u32) -> CountedChild {
    lock_children().push(pid);
    CountedChild(pid)
}

impl Drop for CountedChild {
    fn drop(&mut self) {
        let mut children = lock_children();
        if let Some(i) = children.iter().rposition(|&p| p == self.0) {
            children.remove(i);
        }
    }
}

fn lock_children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // A list of ids cannot be left half-changed by a panic: it is usable as it is.
    CHILDREN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The newest [`CHILDREN_READ`] children counted as ours, newest first.
fn newest_children() -> [Option<u32>; CHILDREN_READ] {
    let children = lock_children();
    let mut newest = [None; CHILDREN_READ];
    for (slot, &pid) in newest.iter_mut().zip(children.iter().rev()) {
        *slot = Some(pid);
    }
    newest
}

/// The most CPU other programs may use for this process to spin: the cores less three
/// quarters (a margin for the noise of readings in 10 ms ticks).
fn others_limit(cores: usize) -> f64 {
    cores as f64 - 0.75
}

/// The most idle CPU, in cores, of a machine that counts as busy on every core for
/// [`CpuReading::leaves_a_core`]: a quarter of a core (the ticks' noise).
const NO_IDLE_CORE: f64 = 0.25;

/// The CPU, in cores, that programs outside this process's family may use on a machine busy
/// on every core for this process to spin: less than half a core.
const CROWDING: f64 = 0.5;

/// A reading longer than this covers time in which no thread of this process looked at the
/// gate: the process was idle, or busy without waiting. What it measured is an average over
/// that time, and may be over by now ([`CpuReading::stale_crowding`]).
const LONG_READING: Duration = Duration::from_millis(2 * CPU_SAMPLE.as_millis() as u64);

/// What [`others_leave_a_core`] measured between two samples, in cores.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuReading {
    /// The wall-clock time the reading covers.
    span: Duration,
    /// The machine's idle CPU.
    idle: f64,
    /// The CPU that other programs used: all but this process and its parent.
    others: f64,
    /// The CPU that programs outside this process's family used: all but this process, its
    /// parent and the children it counts as its own ([`count_child_as_ours`]).
    outside_family: f64,
}

impl CpuReading {
    /// Whether the machine had no idle core ([`NO_IDLE_CORE`]) and programs outside this
    /// process's family still got half a core or more ([`CROWDING`]).
    fn crowded(&self) -> bool {
        self.idle <= NO_IDLE_CORE && self.outside_family >= CROWDING
    }

    /// Whether this reading lets threads spin: other programs used at most the cores less
    /// three quarters ([`others_limit`]), and the machine was not crowded ([`Self::crowded`])
    /// both over this reading and over the one before (`crowded_before`).
    ///
    /// The first condition measures what others got, not what they wanted: right after this
    /// process kept both cores of a two-core machine busy, two CPU hogs beside it got about
    /// one core between them, under the limit, and threads that then spun beside them lost
    /// their CPU for a hog's time slice at every yield (docs/performance-log.md, "The subint
    /// row's loaded bursts"). On a machine with no idle time, what others got is what they
    /// could get: any share of note means they wanted more. The family is left out of that
    /// second condition because an actor's peers in other processes spin for it: on an idle
    /// machine, a process actor and the root spinning for each other keep both cores busy.
    ///
    /// One crowded reading alone is not enough: a reading covers the time since a thread of
    /// this process last spun, and a short burst of another program's in that time (in
    /// `harrow bench`, the raw socket baseline between two batches) or a child started since
    /// the sample before (not in both samples, so another program's), crowds one reading of an
    /// idle machine. Taken alone, such readings gave every idle full run of the bench process
    /// batches of 14-22 µs per call among batches of 4 µs. CPU hogs crowd every reading.
    fn leaves_a_core(&self, cores: usize, crowded_before: bool) -> bool {
        self.others <= others_limit(cores) && !(crowded_before && self.crowded())
    }

    /// Whether this reading would close the gate as the second crowded one in a row, though it
    /// is long ([`LONG_READING`]): the crowding it saw may have ended before the reading, and
    /// the threads that want a CPU now decide instead ([`others_runnable_leave_a_core`]).
    ///
    /// A process reads only on a thread's way into a spin, so a reading spans the time since
    /// the process last waited. In `harrow bench` a process actor is idle while the bench
    /// runs its raw socket echo (150-210 ms, both cores busy, half a core or more of it the
    /// baseline's own child): each batch of calls began with a reading of about 200 ms that
    /// was mostly that echo. Two such readings in a row closed the gate of the root, of the
    /// actor or of both for the whole batch (16-32 µs per call against 3-6 µs; traced in
    /// three idle full runs, docs/performance-log.md, "A long reading's crowding may be
    /// over"). Beside CPU hogs the count still closes it: the hogs want a CPU now too. The
    /// count includes this process's own threads (the root's `async-io` thread was running at
    /// some such readings), so it can still close the gate there, as before.
    fn stale_crowding(&self, crowded_before: bool) -> bool {
        crowded_before && self.crowded() && self.span > LONG_READING
    }
}

/// The gate's first answer in a process, before any CPU time could be measured: the runnable
/// threads right now (`/proc/loadavg`), less the one reading them, are within
/// [`others_limit`]; `true` where the count cannot be read. The count includes this process's
/// other running threads, so an idle machine can read as busy here, for one [`CPU_SAMPLE`] at
/// most. An open gate until the first measurement instead let a process that starts beside CPU
/// hogs spin beside them for its first 50 ms, losing its CPU for a hog's time slice at a yield
/// (docs/performance-log.md, "A process's first 50 ms").
fn others_runnable_leave_a_core(runnable: Option<usize>, cores: usize) -> bool {
    runnable.is_none_or(|r| r.saturating_sub(1) as f64 <= others_limit(cores))
}

/// The machine's busy time and this process's CPU time at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    /// The machine's busy time (all CPUs), in the kernel's ticks (`USER_HZ`, 100 per second).
    busy_ticks: u64,
    /// The machine's idle time (all CPUs, idle and iowait), in ticks.
    idle_ticks: u64,
    /// This process's CPU time (user and system).
    ours: Duration,
    /// The parent process (its id) and its CPU time in ticks, where it could be read.
    parent: Option<(u32, u64)>,
    /// The children counted as ours ([`count_child_as_ours`], the newest [`CHILDREN_READ`])
    /// that could be read: their ids and CPU times in ticks.
    children: [Option<(u32, u64)>; CHILDREN_READ],
}

impl CpuSample {
    #[cfg(target_os = "linux")]
    fn take() -> Option<CpuSample> {
        // The first line is the machine's total; 256 bytes hold it.
        let mut buf = [0u8; 256];
        let (busy_ticks, idle_ticks) = parse_stat(read_head("/proc/stat", &mut buf)?)?;
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let ours = Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        );
        let ticks_of = |pid: u32| {
            let mut buf = [0u8; 1024];
            let text = read_head(&format!("/proc/{pid}/stat"), &mut buf)?;
            Some((pid, parse_pid_stat_ticks(text)?))
        };
        let parent = rustix::process::getppid()
            .and_then(|pid| ticks_of(pid.as_raw_nonzero().get().unsigned_abs()));
        let mut children = [None; CHILDREN_READ];
        for (slot, pid) in children.iter_mut().zip(newest_children()) {
            *slot = pid.and_then(ticks_of);
        }
        Some(CpuSample {
            at: Instant::now(),
            busy_ticks,
            idle_ticks,
            ours,
            parent,
            children,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn take() -> Option<CpuSample> {
        None
    }

    /// What was used since `before`, in cores (`None`: no time passed).
    fn reading_since(&self, before: &CpuSample) -> Option<CpuReading> {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let busy = self.busy_ticks.saturating_sub(before.busy_ticks) as f64 / 100.0;
        let idle = self.idle_ticks.saturating_sub(before.idle_ticks) as f64 / 100.0;
        // A process's ticks since `before`, where it is the same process in both samples.
        let same = |now: (u32, u64), then: Option<(u32, u64)>| match then {
            Some((pid, ticks)) if pid == now.0 => now.1.saturating_sub(ticks) as f64 / 100.0,
            _ => 0.0,
        };
        let ours = self.ours.saturating_sub(before.ours).as_secs_f64()
            + self.parent.map_or(0.0, |p| same(p, before.parent));
        let children: f64 = self
            .children
            .iter()
            .flatten()
            .map(|&c| {
                same(
                    c,
                    before
                        .children
                        .iter()
                        .flatten()
                        .find(|b| b.0 == c.0)
                        .copied(),
                )
            })
            .sum();
        let others = (busy - ours).max(0.0);
        Some(CpuReading {
            span: self.at.duration_since(before.at),
            idle: idle / wall,
            others: others / wall,
            outside_family: (others - children).max(0.0) / wall,
        })
    }
}

/// The machine's busy and idle times from `/proc/stat`'s first line (`cpu  user nice system
/// idle iowait irq softirq steal ...`), in ticks: busy is user, nice, system, irq and softirq;
/// idle is idle and iowait (steal is neither: another guest's).
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    Some((v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4]))
}

/// A process's CPU time (user and system), in ticks, from its `/proc/PID/stat` (fields 14
/// and 15; the command name, field 2, may hold spaces and parentheses: the fields are counted
/// from its closing one).
fn parse_pid_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's cores (as this process may use them).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The machine's load, from `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    /// The one-minute load average (first field).
    one_minute: f64,
    /// Runnable threads right now, the reading one included (numerator of the fourth field).
    runnable: usize,
}

#[cfg(target_os = "linux")]
fn load() -> Option<Load> {
    let mut buf = [0u8; 128];
    parse_loadavg(read_head("/proc/loadavg", &mut buf)?)
}

/// The start of a `/proc` file, as much as one read into `buf` gives (no allocation).
#[cfg(target_os = "linux")]
fn read_head<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    use std::io::Read;
    let n = std::fs::File::open(path).ok()?.read(buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

#[cfg(not(target_os = "linux"))]
fn load() -> Option<Load> {
    None
}

/// A `/proc/loadavg` line (`0.52 0.58 0.59 3/467 12345`).
fn parse_loadavg(line: &str) -> Option<Load> {
    let mut fields = line.split_ascii_whitespace();
    let one_minute = fields.next()?.parse().ok()?;
    let runnable = fields.nth(2)?.split_once('/')?.0.parse().ok()?;
    Some(Load {
        one_minute,
        runnable,
    })
}

/// Futures for the parkers' tests of what a wake-up says about spinning (here, so that the
/// futex parker's tests in `harrow-runtime-core` and the epoll parker's share them).
#[doc(hidden)]
pub mod testing {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// The children counted as this process's own ([`super::count_child_as_ours`]), oldest
    /// first.
    pub fn counted_children() -> Vec<u32> {
        super::lock_children().clone()
    }

    /// A future that wakes itself in its first poll and is done at its second: a wake-up the
    /// polling thread gave itself.
    pub fn wakes_itself_once() -> impl Future<Output = ()> + Send {
        let mut woke = false;
        std::future::poll_fn(move |cx| {
            if woke {
                return Poll::Ready(());
            }
            woke = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    /// A future that another thread, started here, completes and wakes once the future has
    /// been polled (within 10 s, or that thread panics): a wake-up from another thread. Join
    /// the handle after the future is done.
    pub fn woken_from_another_thread() -> (impl Future<Output = ()> + Send, JoinHandle<()>) {
        struct Shared {
            polled: AtomicBool,
            done: AtomicBool,
            waker: Mutex<Option<Waker>>,
        }
        let shared = Arc::new(Shared {
            polled: AtomicBool::new(false),
            done: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let theirs = Arc::clone(&shared);
        let waker_thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !theirs.polled.load(Ordering::SeqCst) {
                assert!(start.elapsed() < Duration::from_secs(10), "never polled");
                std::thread::yield_now();
            }
            theirs.done.store(true, Ordering::SeqCst);
            let waker = theirs
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        let fut = std::future::poll_fn(move |cx| {
            // The waker is stored before `done` is looked at: a wake after the store finds it.
            *shared.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            shared.polled.store(true, Ordering::SeqCst);
            if shared.done.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        (fut, waker_thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn hop_off_moves_the_thread_and_gives_its_affinity_back() {
        use rustix::thread::sched_getaffinity;
        let before = sched_getaffinity(None).expect("affinity");
        let here = this_cpu().expect("this CPU");
        match hop_off(here) {
            // Where `here` was not allowed, the thread cannot have run on it.
            Some(landed) => {
                assert!(before.count() >= 2);
                assert_ne!(landed, here);
                assert!(before.is_set(landed), "it landed on a CPU it may use");
            }
            None => assert!(
                before.count() < 2,
                "{} CPUs allowed, yet no move",
                before.count()
            ),
        }
        let after = sched_getaffinity(None).expect("affinity");
        assert_eq!(after, before, "the affinity is given back as it was");
        // A CPU the thread may not use anyway: nothing to move off.
        assert_eq!(hop_off(usize::MAX - 1), None);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn only_a_run_of_late_wake_ups_from_this_cpu_counts_toward_a_move() {
        use rustix::thread::{CpuSet, sched_setaffinity};
        // Pinned, so that "this CPU" stays put while the run is counted.
        let before = rustix::thread::sched_getaffinity(None).expect("affinity");
        let here = this_cpu().expect("this CPU");
        let mut pin = CpuSet::new();
        pin.set(here);
        sched_setaffinity(None, &pin).expect("pin");
        let mut shared = SharedCpu::new();
        assert!(!shared.yield_first());
        for _ in 0..HOP_AFTER - 1 {
            shared.after_caught(true, Some(here));
            // The peer answers from this CPU: the next spin yields to it at once.
            assert!(shared.yield_first());
        }
        assert_eq!(shared.run, HOP_AFTER - 1);
        // A wake-up caught before the spin yielded, from another CPU, or from nowhere known,
        // ends the run, and the busy-wait before the yields comes back.
        shared.after_caught(false, Some(here));
        assert_eq!(shared.run, 0);
        assert!(!shared.yield_first());
        shared.after_caught(true, Some(here));
        shared.after_caught(true, Some(here + 1));
        assert_eq!(shared.run, 0);
        assert!(!shared.yield_first());
        shared.after_caught(true, Some(here));
        shared.after_caught(true, None);
        assert_eq!(shared.run, 0);
        assert!(!shared.yield_first());
        // A run of HOP_AFTER ends in a move when nothing waits for a CPU (pinned to one CPU,
        // there is nowhere to go: the affinity stays as it was), and starts over.
        for _ in 0..HOP_AFTER {
            shared.after_caught(true, Some(here));
        }
        if no_thread_waits() {
            assert_eq!(shared.run, 0);
            assert!(shared.hopped.is_some());
        }
        assert_eq!(
            rustix::thread::sched_getaffinity(None).expect("affinity"),
            pin
        );
        sched_setaffinity(None, &before).expect("unpin");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn hop_onto_moves_the_thread_there_and_gives_its_affinity_back() {
        use rustix::thread::sched_getaffinity;
        let before = sched_getaffinity(None).expect("affinity");
        let here = this_cpu().expect("this CPU");
        let other = (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| c != here && before.is_set(c));
        match other {
            Some(cpu) => assert_eq!(hop_onto(cpu), Some(cpu), "it ran on the CPU it moved onto"),
            None => assert_eq!(hop_onto(here), None, "one CPU allowed: nowhere to go"),
        }
        assert_eq!(
            sched_getaffinity(None).expect("affinity"),
            before,
            "the affinity is given back as it was"
        );
        // A CPU the thread may not use: no move.
        assert_eq!(hop_onto(usize::MAX - 1), None);
    }

    #[test]
    fn only_a_run_of_wake_ups_from_another_cpu_on_a_crowded_machine_counts_toward_a_join() {
        let mut shared = SharedCpu::new();
        let (here, there) = (Some(0), Some(1));
        for _ in 0..HOP_AFTER - 1 {
            assert_eq!(shared.join_now(here, there, true), None);
        }
        assert_eq!(shared.apart_len(), HOP_AFTER - 1);
        // A wake-up from a third CPU starts the run over from it.
        assert_eq!(shared.join_now(here, Some(2), true), None);
        assert_eq!(shared.apart_len(), 1);
        shared.join_now(here, there, true);
        assert_eq!(shared.apart_len(), 1);
        // A wake-up from this CPU, from nowhere known, or on a machine with room to spin ends
        // the run.
        assert_eq!(shared.join_now(here, here, true), None);
        assert_eq!(shared.apart_len(), 0);
        shared.join_now(here, there, true);
        assert_eq!(shared.join_now(here, None, true), None);
        assert_eq!(shared.apart_len(), 0);
        shared.join_now(here, there, true);
        assert_eq!(shared.join_now(None, there, true), None);
        assert_eq!(shared.apart_len(), 0);
        shared.join_now(here, there, true);
        assert_eq!(shared.join_now(here, there, false), None);
        assert_eq!(shared.apart_len(), 0);
        // A full run moves onto the waker's CPU, and starts over.
        for _ in 0..HOP_AFTER - 1 {
            assert_eq!(shared.join_now(here, there, true), None);
        }
        assert_eq!(shared.join_now(here, there, true), Some(1));
        assert_eq!(shared.apart_len(), 0);
        // Another full run within `HOP_EVERY` of that move does not move again.
        for _ in 0..HOP_AFTER {
            assert_eq!(shared.join_now(here, there, true), None);
        }
        assert_eq!(shared.apart_len(), HOP_AFTER);
        // Nor does a move off a CPU, which shares the limit.
        let mut hopped = SharedCpu::new();
        hopped.hopped = Some(Instant::now());
        for _ in 0..HOP_AFTER {
            assert_eq!(hopped.join_now(here, there, true), None);
        }
    }

    #[test]
    fn the_load_is_the_first_field_and_the_runnable_count_the_fourth() {
        let load = |one_minute, runnable| {
            Some(Load {
                one_minute,
                runnable,
            })
        };
        assert_eq!(parse_loadavg("0.52 0.58 0.59 3/467 12345\n"), load(0.52, 3));
        assert_eq!(parse_loadavg("17.00 0.01 0.05 1/80 7"), load(17.0, 1));
        assert_eq!(parse_loadavg("0.52 0.58 0.59"), None);
        assert_eq!(parse_loadavg("0.52 0.58 0.59 x/467 1"), None);
        assert_eq!(parse_loadavg("x 0.58 0.59 3/467 1"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_spin_needs_a_second_core_and_a_load_within_twice_the_cores() {
        let load = |runnable, one_minute| {
            Some(Load {
                one_minute,
                runnable,
            })
        };
        assert!(load_leaves_room(2, load(4, 4.0)));
        assert!(
            !load_leaves_room(2, load(5, 1.0)),
            "runnable over twice the cores"
        );
        assert!(
            !load_leaves_room(2, load(1, 4.5)),
            "load average over twice the cores"
        );
        assert!(!load_leaves_room(2, None), "no reading");
        assert!(!load_leaves_room(1, load(1, 0.0)), "one core: never");
        assert!(load_leaves_room(8, load(16, 0.5)));
    }

    #[test]
    fn this_machine_reports_its_load() {
        // At least this thread is running while it reads.
        assert!(load().is_some_and(|l| l.runnable >= 1 && l.one_minute >= 0.0));
    }

    #[test]
    fn the_busy_time_is_the_first_line_less_idle_iowait_and_steal() {
        let stat = "cpu  100 5 30 1000 7 2 3 40 0 0\ncpu0 50 2 15 500 3 1 1 20 0 0\nintr 1 2\n";
        assert_eq!(parse_stat(stat), Some((100 + 5 + 30 + 2 + 3, 1000 + 7)));
        assert_eq!(parse_stat("cpu0 1 2 3 4 5 6 7 8\n"), None, "not the total");
        assert_eq!(parse_stat("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(parse_stat("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn other_programs_use_what_the_machine_was_busy_with_beyond_this_process() {
        let at = Instant::now();
        let sample = |after_ms: u64, busy_ticks: u64, ours_ms: u64| CpuSample {
            at: at + Duration::from_millis(after_ms),
            busy_ticks,
            idle_ticks: 0,
            ours: Duration::from_millis(ours_ms),
            parent: None,
            children: [None; CHILDREN_READ],
        };
        let before = sample(0, 1_000, 500);
        // 100 ms on which the machine was busy for 200 ms of CPU (two cores), 50 of them ours:
        // others used one and a half cores.
        let others = sample(100, 1_020, 550)
            .reading_since(&before)
            .expect("time passed")
            .others;
        assert!((others - 1.5).abs() < 1e-9, "{others}");
        // This process busier than the ticks said (they are coarse): none, not less than none.
        let r = sample(100, 1_001, 600).reading_since(&before);
        assert_eq!(r.map(|r| (r.others, r.outside_family)), Some((0.0, 0.0)));
        assert_eq!(sample(0, 1_010, 500).reading_since(&before), None);
    }

    #[test]
    fn a_first_reading_takes_the_starters_answer_or_counts_the_threads_that_want_a_cpu() {
        let at = Instant::now();
        let now = CpuSample {
            at,
            busy_ticks: 1_000,
            idle_ticks: 1_000,
            ours: Duration::ZERO,
            parent: None,
            children: [None; CHILDREN_READ],
        };
        let never = || -> Option<usize> { panic!("the count is read only when it decides") };
        // A first reading measured nothing: never crowded.
        assert!(!judge(None, &now, INHERITED_SPARE, never, 2).crowded);
        // The starter's answer, whatever the threads now.
        assert!(judge(None, &now, INHERITED_SPARE, never, 2).leave);
        assert!(!judge(None, &now, INHERITED_NONE_SPARE, never, 2).leave);
        // None passed: the runnable threads less the reading one, within the cores less 3/4.
        assert!(
            judge(None, &now, INHERITED_UNKNOWN, || Some(1), 2).leave,
            "this thread alone"
        );
        assert!(
            judge(None, &now, INHERITED_UNKNOWN, || Some(2), 2).leave,
            "one other"
        );
        assert!(
            !judge(None, &now, INHERITED_UNKNOWN, || Some(3), 2).leave,
            "two hogs on two cores"
        );
        assert!(judge(None, &now, INHERITED_UNKNOWN, || Some(4), 4).leave);
        assert!(!judge(None, &now, INHERITED_UNKNOWN, || Some(5), 4).leave);
        assert!(
            judge(None, &now, INHERITED_UNKNOWN, || None, 2).leave,
            "no count"
        );
        // Once measured, the measure decides, whatever was passed: 100 ms in which others
        // used one and a half cores of two, then half a core (the rest idle).
        let later = |busy_ticks| CpuSample {
            at: at + Duration::from_millis(100),
            busy_ticks,
            idle_ticks: 1_000 + 20 - (busy_ticks - 1_000),
            ours: now.ours,
            parent: now.parent,
            children: now.children,
        };
        for inherited in [INHERITED_SPARE, INHERITED_NONE_SPARE, INHERITED_UNKNOWN] {
            let before = (now, false);
            assert!(!judge(Some(&before), &later(1_015), inherited, never, 2).leave);
            assert!(judge(Some(&before), &later(1_005), inherited, never, 2).leave);
        }
    }

    #[test]
    fn the_parent_process_counts_as_ours() {
        let at = Instant::now();
        let sample = |after_ms: u64, busy_ticks: u64, parent: Option<(u32, u64)>| CpuSample {
            at: at + Duration::from_millis(after_ms),
            busy_ticks,
            idle_ticks: 0,
            ours: Duration::ZERO,
            parent,
            children: [None; CHILDREN_READ],
        };
        let before = sample(0, 1_000, Some((7, 300)));
        // 100 ms, 20 ticks of busy time over the machine, 15 of them the parent's (the actor
        // that spawned this one, spinning for its answers): half a core used by others.
        let others = sample(100, 1_020, Some((7, 315)))
            .reading_since(&before)
            .expect("time passed")
            .others;
        assert!((others - 0.5).abs() < 1e-9, "{others}");
        // Another parent (the first one died): its time is not a difference of one process's.
        let others = sample(100, 1_020, Some((1, 900)))
            .reading_since(&before)
            .expect("time passed")
            .others;
        assert!((others - 2.0).abs() < 1e-9, "{others}");
        let others = sample(100, 1_020, None)
            .reading_since(&before)
            .expect("time passed")
            .others;
        assert!((others - 2.0).abs() < 1e-9, "{others}");
    }

    #[test]
    fn on_a_machine_with_no_idle_core_others_who_got_half_a_core_wanted_more() {
        let at = Instant::now();
        // 100 ms on two cores: 20 ticks of CPU, `busy` of them busy and the rest idle; this
        // process used `ours_ms` of CPU time and a child counted as ours `child` ticks.
        let sample = |after_ms: u64, busy: u64, ours_ms: u64, child: u64| CpuSample {
            at: at + Duration::from_millis(after_ms),
            busy_ticks: 1_000 + busy,
            idle_ticks: 1_000 + (after_ms / 5).saturating_sub(busy),
            ours: Duration::from_millis(ours_ms),
            parent: None,
            children: [Some((42, 100 + child)), None, None, None],
        };
        let before = sample(0, 0, 0, 0);
        let reading = |busy, ours_ms, child| {
            sample(100, busy, ours_ms, child)
                .reading_since(&before)
                .expect("time passed")
        };
        // Two hogs beside this process's two busy threads: each got half a core, so others
        // used one core of two, within the limit, but no core was idle.
        let squeezed = reading(20, 100, 0);
        assert!(squeezed.crowded());
        assert!(!squeezed.leaves_a_core(2, true), "crowded twice in a row");
        assert!(
            squeezed.leaves_a_core(2, false),
            "crowded once: a burst, maybe"
        );
        // The same use with a core idle: nobody waited.
        assert!(
            !reading(10, 0, 0).crowded(),
            "one core's worth of others, one idle"
        );
        // Nothing idle, but what others used is this process's child, spinning for it.
        assert!(!reading(20, 100, 10).crowded(), "a child counted as ours");
        // Nothing idle and a third of a core for others: noise, not crowding.
        assert!(!reading(20, 130, 4).crowded(), "a little of another's");
        // Beyond the limit, crowded or not.
        let over = reading(15, 0, 0);
        assert!(!over.crowded() && !over.leaves_a_core(2, false));
        // A child that was not in the earlier sample counts as another program.
        let mut later = sample(100, 20, 100, 10);
        later.children[0] = Some((43, 110));
        let r = later.reading_since(&before).expect("time passed");
        assert!((r.outside_family - 1.0).abs() < 1e-9, "{r:?}");
        assert!(r.crowded());
    }

    #[test]
    fn the_gate_closes_at_the_second_crowded_reading_in_a_row() {
        let at = Instant::now();
        // Readings 100 ms apart on two cores with no idle time: others got one core (crowded)
        // or none (not), this process the rest.
        let sample = |i: u64, ours: Duration| CpuSample {
            at: at + Duration::from_millis(100 * i),
            busy_ticks: 20 * i,
            idle_ticks: 0,
            ours,
            parent: None,
            children: [None; CHILDREN_READ],
        };
        let never = || -> Option<usize> { panic!("measured readings do not count threads") };
        let mut last = (sample(0, Duration::ZERO), false);
        let mut leaves = Vec::new();
        for (i, others_ticks) in [(1, 0), (2, 10), (3, 0), (4, 10), (5, 10), (6, 10), (7, 0)] {
            let ours = last.0.ours + Duration::from_millis(200 - 10 * others_ticks);
            let now = sample(i, ours);
            let judged = judge(Some(&last), &now, INHERITED_UNKNOWN, never, 2);
            assert_eq!(judged.crowded, others_ticks == 10, "reading {i}");
            leaves.push(judged.leave);
            last = (now, judged.crowded);
        }
        assert_eq!(leaves, [true, true, true, true, false, false, true]);
    }

    #[test]
    fn a_long_readings_crowding_is_checked_against_the_threads_that_want_a_cpu_now() {
        let at = Instant::now();
        // Two cores with no idle time from the start; by `ms`, this process had used `ours_ms`
        // of CPU time and others the rest.
        let sample = |ms: u64, ours_ms: u64| CpuSample {
            at: at + Duration::from_millis(ms),
            busy_ticks: ms / 5,
            idle_ticks: 0,
            ours: Duration::from_millis(ours_ms),
            parent: None,
            children: [None; CHILDREN_READ],
        };
        let never = || -> Option<usize> { panic!("this reading decides without the count") };
        // 300 ms in which others got one core of two: crowded, and long.
        let first = sample(0, 0);
        let crowded_long = sample(300, 300);
        let r = crowded_long.reading_since(&first).expect("time passed");
        assert!(r.crowded() && r.span > LONG_READING, "{r:?}");
        // Once: open, as any first crowded reading.
        let once = judge(
            Some(&(first, false)),
            &crowded_long,
            INHERITED_UNKNOWN,
            never,
            2,
        );
        assert_eq!(
            once,
            Judged {
                leave: true,
                crowded: true
            }
        );
        // Twice in a row, the second long: the threads that want a CPU now decide.
        let before = (first, true);
        let twice = |runnable: Option<usize>| {
            judge(
                Some(&before),
                &crowded_long,
                INHERITED_UNKNOWN,
                || runnable,
                2,
            )
        };
        assert!(
            twice(Some(1)).leave,
            "this thread alone: the crowding is over"
        );
        assert!(twice(Some(2)).leave, "and its peer");
        assert!(!twice(Some(3)).leave, "two hogs still there");
        assert!(twice(None).leave, "no count");
        assert!(
            twice(Some(3)).crowded,
            "the reading was crowded whatever the count"
        );
        // A reading of CPU_SAMPLE, crowded after a crowded one: fresh, it closes the gate.
        let short = sample(350, 350);
        let r = short.reading_since(&crowded_long).expect("time passed");
        assert!(r.crowded() && r.span <= LONG_READING, "{r:?}");
        let judged = judge(
            Some(&(crowded_long, true)),
            &short,
            INHERITED_UNKNOWN,
            never,
            2,
        );
        assert_eq!(
            judged,
            Judged {
                leave: false,
                crowded: true
            }
        );
        // Long and beyond the limit (others got a core and a half): closed, whatever the count.
        let over = sample(300, 150);
        let r = over.reading_since(&first).expect("time passed");
        assert!(r.others > others_limit(2), "{r:?}");
        assert!(!judge(Some(&before), &over, INHERITED_UNKNOWN, || Some(1), 2).leave);
    }

    #[test]
    fn a_child_counts_as_ours_while_held_and_the_newest_are_read() {
        // Ids no other test registers, beyond any real pid.
        let base = u32::MAX - 100;
        let held: Vec<CountedChild> = (0..CHILDREN_READ as u32 + 2)
            .map(|i| count_child_as_ours(base + i))
            .collect();
        let newest = newest_children();
        let expect: Vec<Option<u32>> = (0..CHILDREN_READ as u32)
            .map(|i| Some(base + CHILDREN_READ as u32 + 1 - i))
            .collect();
        assert_eq!(newest.to_vec(), expect);
        drop(held);
        assert!(
            lock_children().iter().all(|&p| p < base),
            "dropped children are forgotten"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_cpu_time_is_counted_past_its_name() {
        let stat = "4242 (harrow (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 3 0";
        assert_eq!(parse_pid_stat_ticks(stat), Some(123 + 45));
        assert_eq!(
            parse_pid_stat_ticks("4242 (harrow) S 1 2 3"),
            None,
            "too short"
        );
        assert_eq!(parse_pid_stat_ticks("no name here"), None);
        let mut buf = [0u8; 1024];
        let own = read_head("/proc/self/stat", &mut buf).expect("our own stat");
        assert!(parse_pid_stat_ticks(own).is_some(), "{own}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_reports_its_busy_time_and_ours() {
        let first = CpuSample::take().expect("/proc/stat and the process clock");
        // Burn some CPU: this process's time moves.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        let second = CpuSample::take().expect("a second sample");
        assert!(second.ours > first.ours);
        assert!(second.busy_ticks >= first.busy_ticks);
        assert!(
            second
                .reading_since(&first)
                .is_some_and(|r| r.others >= 0.0 && r.outside_family <= r.others)
        );
        // Whatever the machine's load, the gate answers (and keeps its answer within a sample).
        let _ = others_leave_a_core();
    }

    #[test]
    fn a_short_sleep_or_an_idle_spell_ends_the_back_off_and_one_between_does_not() {
        let spin = park_spin();
        let mut gate = SpinGate::new();
        for _ in 0..6 {
            gate.miss();
        }
        assert_eq!((gate.skip, gate.backoff), (31, 31));
        if spin.is_zero() {
            // Spinning off in this environment: no sleep is short enough to say otherwise.
            gate.slept(Duration::ZERO);
            assert_eq!((gate.skip, gate.backoff), (31, 31));
            return;
        }
        gate.slept(spin);
        assert_eq!((gate.skip, gate.backoff), (31, 31), "as long as a spin: no");
        gate.slept(IDLE - Duration::from_nanos(1));
        assert_eq!((gate.skip, gate.backoff), (31, 31), "shorter than idle: no");
        gate.slept(spin / 2 - Duration::from_nanos(1));
        assert_eq!(
            (gate.skip, gate.backoff, gate.missed),
            (0, 0, false),
            "a spin would have caught it"
        );
        // Not backing off: nothing to end.
        gate.slept(Duration::ZERO);
        assert_eq!((gate.skip, gate.backoff), (0, 0));
        // An idle spell ends it as well: the next burst starts afresh.
        for _ in 0..6 {
            gate.miss();
        }
        gate.slept(IDLE);
        assert_eq!(
            (gate.skip, gate.backoff, gate.missed),
            (0, 0, false),
            "a sleep of an idle spell"
        );
        // After a first miss, which skips nothing, a short sleep starts the run afresh too.
        gate.miss();
        gate.slept(Duration::ZERO);
        gate.miss();
        assert_eq!((gate.skip, gate.backoff), (0, 0), "a first miss again");
    }

    #[test]
    fn a_wake_delay_is_the_wakers_moment_when_it_recorded_one_for_this_sleep() {
        // The origin is set by the first reading; the moments below come after it.
        let _ = now_ns();
        let parked_at = Instant::now();
        let now = parked_at + Duration::from_millis(2);
        let ns_at = |t: Instant| u64::try_from((t - origin()).as_nanos()).expect("fits");
        // Issued 3 µs after the thread parked, seen 2 ms later (a slow wake-up): 3 µs.
        let woke = ns_at(parked_at + Duration::from_micros(3));
        assert_eq!(wake_delay(parked_at, woke, now), Duration::from_micros(3));
        // Nothing recorded, a moment of an earlier sleep, or one after `now`: the whole sleep.
        assert_eq!(wake_delay(parked_at, 0, now), Duration::from_millis(2));
        let before = ns_at(parked_at).saturating_sub(1);
        assert_eq!(wake_delay(parked_at, before, now), Duration::from_millis(2));
        let after = ns_at(now) + 1;
        assert_eq!(wake_delay(parked_at, after, now), Duration::from_millis(2));
        // `now_ns` counts from the same origin.
        let (a, b) = (now_ns(), Instant::now());
        assert!(origin() + Duration::from_nanos(a) <= b);
    }

    #[test]
    fn misses_back_off_and_a_hit_resets() {
        let mut gate = SpinGate::new();
        gate.miss();
        assert_eq!(
            (gate.skip, gate.backoff),
            (0, 0),
            "the first miss is let go"
        );
        gate.miss();
        assert_eq!((gate.skip, gate.backoff), (1, 1));
        assert!(
            gate.spin().is_zero(),
            "the spin after a second miss is skipped"
        );
        assert_eq!(gate.skip, 0);
        gate.miss();
        gate.miss();
        assert_eq!((gate.skip, gate.backoff), (7, 7));
        for _ in 0..20 {
            gate.miss();
        }
        assert_eq!((gate.skip, gate.backoff), (MAX_SKIP, MAX_SKIP));
        gate.hit();
        gate.miss();
        assert_eq!(
            (gate.skip, gate.backoff),
            (0, 0),
            "a hit resets the back-off"
        );
        gate.miss();
        assert_eq!((gate.skip, gate.backoff), (1, 1));
    }

    #[test]
    fn a_wake_source_keeps_the_word_its_waker_writes_first() {
        // What a parker beside it counts on to keep its hot words together (see `repr(C)`).
        assert_eq!(std::mem::offset_of!(WakeSource, cpu), 0);
    }

    #[test]
    fn a_wake_source_tells_the_polling_thread_from_another_and_is_taken_once() {
        let source = Arc::new(WakeSource::for_this_thread());
        assert_eq!(source.take(), WokenBy::Cpu(None), "nothing recorded yet");
        // The polling thread woke its own future: says nothing about its peers.
        source.record();
        assert_eq!(source.take(), WokenBy::Itself);
        assert_eq!(source.take(), WokenBy::Cpu(None), "taken once");
        // Another thread's record names that thread's CPU, where this platform can tell.
        let other = Arc::clone(&source);
        let read = std::thread::spawn(move || {
            let cpu = this_cpu();
            other.record();
            cpu
        })
        .join()
        .expect("the recording thread");
        // It may have moved between its reading and its record: any CPU will do.
        match (read, source.take()) {
            (Some(_), WokenBy::Cpu(Some(_))) | (None, WokenBy::Cpu(None)) => {}
            (read, seen) => panic!("read {read:?} on the other thread, recorded {seen:?}"),
        }
    }

    #[test]
    fn a_spin_busy_waits_long_only_after_a_wake_up_from_another_cpu() {
        let mut cpu = SharedCpu::new();
        assert_eq!(
            cpu.spin_start_if(true),
            SpinStart::Short,
            "no history: short"
        );
        let Some(here) = this_cpu() else {
            return; // Where this thread runs cannot be told here: nothing to watch.
        };
        // A CPU number this thread cannot be on.
        let elsewhere = here + 1_000;
        cpu.after_caught(false, Some(elsewhere));
        assert_eq!(cpu.spin_start_if(true), SpinStart::Long);
        assert_eq!(
            cpu.spin_start_if(false),
            SpinStart::Short,
            "long busy-waits not allowed"
        );
        cpu.after_caught(false, None);
        assert_eq!(cpu.spin_start_if(true), SpinStart::Short, "waker unknown");
        cpu.after_slept(Some(elsewhere), false);
        assert_eq!(cpu.spin_start_if(true), SpinStart::Long, "woken from sleep");
        cpu.after_slept(None, false);
        assert_eq!(cpu.spin_start_if(true), SpinStart::Short);
        assert!(apart(Some(0), Some(1)));
        assert!(!apart(Some(1), Some(1)), "the same CPU");
        assert!(!apart(None, Some(1)) && !apart(Some(1), None));
    }

    #[test]
    fn a_long_busy_wait_catches_a_wake_up_before_any_yield_and_ends_with_the_spin() {
        assert_eq!(
            spin_watch_starting(Duration::from_secs(30), SpinStart::Long, || true),
            Spun::Caught { after_yield: false }
        );
        // Seen at a later look of the busy-wait: still no yield made.
        let mut asked = 0;
        assert_eq!(
            spin_watch_starting(Duration::from_secs(30), SpinStart::Long, || {
                asked += 1;
                asked == 5
            }),
            Spun::Caught { after_yield: false }
        );
        // Nothing comes: the spin runs out, busy-wait and yields included, and not before.
        for spin in [Duration::from_micros(2), Duration::from_micros(50)] {
            let start = Instant::now();
            assert_eq!(
                spin_watch_starting(spin, SpinStart::Long, || false),
                Spun::Missed
            );
            assert!(start.elapsed() >= spin);
        }
        // A process that keeps its busy-waits short never begins long.
        assert!(!long_busy_waits_if(false), "a thread waits for a CPU");
        keep_busy_waits_short();
        assert!(!long_busy_waits_if(true));
        assert!(!long_busy_waits());
    }

    #[test]
    fn a_spin_that_yields_first_looks_once_before_its_first_yield() {
        assert_eq!(
            spin_watch_from(Duration::from_secs(30), true, || true),
            Spun::Caught { after_yield: false }
        );
        let mut asked = 0;
        assert_eq!(
            spin_watch_from(Duration::from_secs(30), true, || {
                asked += 1;
                asked == 2
            }),
            Spun::Caught { after_yield: true }
        );
        assert_eq!(
            spin_watch_from(Duration::from_micros(50), true, || false),
            Spun::Missed
        );
    }

    #[test]
    fn spin_watch_says_whether_the_wake_came_before_the_yields() {
        assert_eq!(
            spin_watch(Duration::from_secs(30), || true),
            Spun::Caught { after_yield: false }
        );
        // Seen at the first look after the pure spin: still no yield made.
        let mut asked = 0;
        assert_eq!(
            spin_watch(Duration::from_secs(30), || {
                asked += 1;
                asked > YIELD_AFTER as usize
            }),
            Spun::Caught { after_yield: false }
        );
        let mut asked = 0;
        assert_eq!(
            spin_watch(Duration::from_secs(30), || {
                asked += 1;
                asked == YIELD_AFTER as usize + 3
            }),
            Spun::Caught { after_yield: true }
        );
        assert_eq!(
            spin_watch(Duration::from_micros(50), || false),
            Spun::Missed
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_cpu_is_one_this_thread_may_use() {
        let cpu = this_cpu().expect("sched_getcpu");
        let allowed = rustix::thread::sched_getaffinity(None).expect("affinity");
        assert!(allowed.is_set(cpu), "cpu {cpu}");
    }

    #[test]
    fn spin_until_sees_a_wake_and_gives_up_when_none_comes() {
        let mut asked = 0;
        assert!(spin_until(Duration::from_secs(30), || {
            asked += 1;
            asked == 3
        }));
        assert!(!spin_until(Duration::from_micros(50), || false));
        // Woken, but only long after the window: a miss.
        let start = Instant::now();
        assert!(!spin_until(Duration::from_micros(50), || start.elapsed()
            > Duration::from_millis(5)));
    }
}
