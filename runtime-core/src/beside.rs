//! Driving the readers of an actor's links on the actor's thread beside its executor, not as
//! tasks of it; and the executor itself beside the actor's main future, each polled only when
//! woken.
//!
//! Every message that arrives on a link wakes the link's reader. As a task of the actor's
//! executor, that wake-up schedules the task (a push onto the executor's queue and a wake-up of
//! its sleeping runner), and the thread then pops it off the queue and runs it, and looks through
//! the queues once more before it sleeps again. Polled by the thread's `block_on` directly, as
//! [`Beside`] does, the wake-up sets the reader's bit and wakes the thread, which polls that
//! reader; the executor is polled only when one of its own tasks was woken. Readers are made
//! inside the actor's main future (wherever a link is established), so they are handed over
//! through a [`Handoff`].
//!
//! The executor's tasks are run by a future of their own ([`Beside::with_tasks`]: the
//! executor's `run` of a future that never ends), woken by the executor when a task is
//! scheduled. Run as `exec.run(main)`, every wake-up of the main future also made the executor
//! look through its queues for a task (about 260 instructions and six locked ones, on the root
//! once per call it makes), and every task run polled the main future first.
//!
//! A wake-up comes from another thread (the peer's, which sent the message), so what it writes
//! travels between CPUs: a slot's bit and the flags the loop reads share one cache line
//! ([`Hot`]) for the first 64 slots, and every slot past them has its bit in a word of its 64.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// How many rounds one poll of [`Beside`] runs while its futures keep waking each other, before
/// it hands back to the `block_on` loop underneath (which polls it again at once).
const ROUNDS: u32 = 64;

/// Slots per word of wake-up bits.
const WORD: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a wake-up writes and the loop reads, in one cache line.
#[repr(align(64))]
struct Hot {
    /// Bit `b`: a word whose index is `b` modulo 64 may have bits set (word 0 is `first`).
    summary: AtomicU64,
    /// The wake-up bits of slots 0 to 63.
    first: AtomicU64,
    /// True while `Beside` is not being polled: a wake-up must go through `outer`.
    parked: AtomicBool,
    /// The main future was woken since `Beside` last polled it.
    main: AtomicBool,
    /// The executor's tasks future was woken (a task was scheduled) since it was last polled.
    tasks: AtomicBool,
    /// Futures were handed over since `Beside` last took them.
    incoming: AtomicBool,
}

/// What [`Beside`], its wakers and its handoff share.
struct Shared<A> {
    hot: Hot,
    /// The `block_on` loop's waker. `Beside::poll` puts it here only when it changes (it keeps
    /// a copy of its own to tell), and a wake-up wakes it by reference and leaves it here. An
    /// `AtomicWaker` gave it up to each wake-up and took a clone at each poll, so every message
    /// moved the waker's reference counts, and the `AtomicWaker`'s state, between the sender's
    /// CPU and this thread's.
    outer: Mutex<Option<Waker>>,
    /// Futures handed over and not yet given a slot; `None` once `Beside` is gone.
    incoming: Mutex<Option<Vec<A>>>,
}

impl<A> Shared<A> {
    /// After a flag or a bit was set: wakes the loop if `Beside` is not being polled.
    fn notify(&self) {
        // Sequentially consistent with `Beside::poll`'s store of `parked` and its loads of the
        // flags and `summary`: either this sees the poll parked and wakes the loop, or the
        // poll sees what was set. Only the first wake-up after a park wakes the loop: it says
        // the loop is no longer parked, and the loop's next poll looks at everything set.
        // Looked at first: a loop being polled (the common case while messages flow) costs
        // no locked instruction. (A load in the same total order as the swap would be.)
        if self.hot.parked.load(Ordering::SeqCst) && self.hot.parked.swap(false, Ordering::SeqCst) {
            // A poll that puts a new waker here does so before it says parked again.
            if let Some(outer) = lock(&self.outer).as_ref() {
                outer.wake_by_ref();
            }
        }
    }

    /// True if anything was woken since the loop last looked.
    fn anything_woken(&self) -> bool {
        self.hot.summary.load(Ordering::SeqCst) != 0
            || self.hot.main.load(Ordering::SeqCst)
            || self.hot.tasks.load(Ordering::SeqCst)
            || self.hot.incoming.load(Ordering::SeqCst)
    }
}

/// Which future a [`SlotWaker`] wakes.
enum Target {
    Main,
    Tasks,
    Incoming,
    /// A slot: its bit in its word (`None`: `Hot::first`) and its word's bit in `summary`.
    Slot {
        word: Option<Arc<AtomicU64>>,
        bit: u64,
        summary_bit: u64,
    },
}

/// The waker of one slot's future (or of the handoff, or of the main future).
struct SlotWaker<A> {
    target: Target,
    shared: Arc<Shared<A>>,
}

impl<A> Wake for SlotWaker<A> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let hot = &self.shared.hot;
        match &self.target {
            Target::Main => hot.main.store(true, Ordering::SeqCst),
            Target::Tasks => hot.tasks.store(true, Ordering::SeqCst),
            Target::Incoming => hot.incoming.store(true, Ordering::SeqCst),
            Target::Slot {
                word,
                bit,
                summary_bit,
            } => {
                // The bit first, then the summary: a loop that takes the summary before the bit
                // was set finds the summary set again afterwards.
                word.as_deref()
                    .unwrap_or(&hot.first)
                    .fetch_or(*bit, Ordering::AcqRel);
                hot.summary.fetch_or(*summary_bit, Ordering::SeqCst);
            }
        }
        self.shared.notify();
    }
}

/// Where futures are put to be driven by a [`Beside`]. Cheap to clone.
pub(crate) struct Handoff<A> {
    shared: Arc<Shared<A>>,
    waker: Waker,
}

impl<A> Clone for Handoff<A> {
    fn clone(&self) -> Self {
        Handoff {
            shared: self.shared.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<A: Send + 'static> Handoff<A> {
    /// A handoff for a [`Beside`] yet to be made.
    pub(crate) fn new() -> Handoff<A> {
        let shared = Arc::new(Shared {
            hot: Hot {
                summary: AtomicU64::new(0),
                first: AtomicU64::new(0),
                parked: AtomicBool::new(false),
                // The main future and the tasks are polled on the first poll.
                main: AtomicBool::new(true),
                tasks: AtomicBool::new(true),
                incoming: AtomicBool::new(false),
            },
            outer: Mutex::new(None),
            incoming: Mutex::new(Some(Vec::new())),
        });
        Handoff {
            waker: Waker::from(Arc::new(SlotWaker {
                target: Target::Incoming,
                shared: shared.clone(),
            })),
            shared,
        }
    }

    /// Hands `fut` over: the [`Beside`] polls it from its next poll on. Given back when that
    /// `Beside` is gone (its main future ended), for the caller to run some other way.
    pub(crate) fn put(&self, fut: A) -> Result<(), A> {
        match lock(&self.shared.incoming).as_mut() {
            Some(incoming) => incoming.push(fut),
            None => return Err(fut),
        }
        self.waker.wake_by_ref();
        Ok(())
    }
}

/// The future that runs an executor's tasks.
type Tasks = Pin<Box<dyn Future<Output = ()>>>;

/// One future driven beside the main one.
struct Slot<A> {
    fut: Option<A>,
    waker: Waker,
}

/// Polls `main` and, beside it, every future put into its [`Handoff`]: each only when its own
/// waker was woken. Ready with `main`'s output; the futures beside it that have not ended are
/// dropped with it, and from then on the handoff gives back what is put into it.
pub(crate) struct Beside<M, A> {
    main: Pin<Box<M>>,
    main_waker: Waker,
    /// The executor's tasks ([`with_tasks`](Beside::with_tasks)), polled when woken; `None`
    /// without, or once ended.
    tasks: Option<Tasks>,
    tasks_waker: Waker,
    slots: Vec<Slot<A>>,
    /// The wake-up bits of slots 64 and on, 64 slots a word.
    words: Vec<Arc<AtomicU64>>,
    /// Slots whose future ended, for the next one handed over.
    free: Vec<usize>,
    handoff: Handoff<A>,
    /// The waker last put in `Shared::outer`.
    outer: Option<Waker>,
}

impl<M: Future, A: Future<Output = ()> + Unpin + Send + 'static> Beside<M, A> {
    /// Drives `main`, and beside it what is put into `handoff`.
    pub(crate) fn new(main: M, handoff: &Handoff<A>) -> Beside<M, A> {
        Beside {
            main: Box::pin(main),
            main_waker: Waker::from(Arc::new(SlotWaker {
                target: Target::Main,
                shared: handoff.shared.clone(),
            })),
            tasks: None,
            tasks_waker: Waker::from(Arc::new(SlotWaker {
                target: Target::Tasks,
                shared: handoff.shared.clone(),
            })),
            slots: Vec::new(),
            words: Vec::new(),
            free: Vec::new(),
            handoff: handoff.clone(),
            outer: None,
        }
    }

    /// Drives `main`, the tasks of `exec` beside it (until `main` ends), and what is put into
    /// `handoff`: `exec.run(main)`, but each of `main` and the tasks polled only when woken.
    pub(crate) fn with_tasks(
        main: M,
        exec: &Arc<async_executor::Executor<'static>>,
        handoff: &Handoff<A>,
    ) -> Beside<M, A> {
        let exec = exec.clone();
        Beside::with_tasks_future(
            main,
            Box::pin(async move {
                exec.run(std::future::pending::<()>()).await;
            }),
            handoff,
        )
    }

    /// [`with_tasks`](Beside::with_tasks) with the future that runs the tasks.
    fn with_tasks_future(main: M, tasks: Tasks, handoff: &Handoff<A>) -> Beside<M, A> {
        let mut beside = Beside::new(main, handoff);
        beside.tasks = Some(tasks);
        beside
    }

    /// The wake-up bits of word `w` (0: `Hot::first`).
    fn word(&self, w: usize) -> &AtomicU64 {
        match w {
            0 => &self.handoff.shared.hot.first,
            _ => &self.words[w - 1],
        }
    }

    /// A waker that sets slot `slot`'s bit (a new slot: its word is made here if need be).
    fn slot_waker(&mut self, slot: usize) -> Waker {
        let w = slot / WORD;
        let word = if w == 0 {
            None
        } else {
            if self.words.len() < w {
                self.words.push(Arc::new(AtomicU64::new(0)));
            }
            Some(self.words[w - 1].clone())
        };
        Waker::from(Arc::new(SlotWaker {
            target: Target::Slot {
                word,
                bit: 1 << (slot % WORD),
                summary_bit: 1 << (w % 64),
            },
            shared: self.handoff.shared.clone(),
        }))
    }

    /// Gives every future handed over a slot, and polls it.
    fn take_incoming(&mut self) {
        let incoming = match lock(&self.handoff.shared.incoming).as_mut() {
            Some(incoming) => std::mem::take(incoming),
            None => return,
        };
        for fut in incoming {
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.slots[slot].fut = Some(fut);
                    slot
                }
                None => {
                    let slot = self.slots.len();
                    let waker = self.slot_waker(slot);
                    self.slots.push(Slot {
                        fut: Some(fut),
                        waker,
                    });
                    slot
                }
            };
            self.poll_slot(slot);
        }
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(Slot { fut, waker }) = self.slots.get_mut(slot) else {
            return;
        };
        // A wake-up of a slot whose future ended (or one given to a later future) polls
        // nothing, or the later future once more.
        let Some(f) = fut.as_mut() else {
            return;
        };
        if Pin::new(f).poll(&mut Context::from_waker(waker)).is_ready() {
            *fut = None;
            self.free.push(slot);
        }
    }

    /// Takes the handed-over futures and polls the slots woken since the last look. False when
    /// nothing was.
    fn poll_woken(&mut self) -> bool {
        let hot = &self.handoff.shared.hot;
        // Each looked at before it is taken: taking what is unset would be a locked
        // instruction for nothing. (A wake-up that a look misses is seen by the look after
        // `parked` is set, in `poll`.)
        let incoming =
            hot.incoming.load(Ordering::Relaxed) && hot.incoming.swap(false, Ordering::SeqCst);
        let summary = match hot.summary.load(Ordering::Relaxed) {
            0 => 0,
            _ => hot.summary.swap(0, Ordering::SeqCst),
        };
        if incoming {
            self.take_incoming();
        }
        let mut rest = summary;
        while rest != 0 {
            let b = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let mut w = b;
            while w <= self.words.len() {
                // Taken before the polls: a wake-up during one sets its bit again.
                let mut bits = self.word(w).swap(0, Ordering::AcqRel);
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    self.poll_slot(w * WORD + i);
                }
                w += 64;
            }
        }
        incoming || summary != 0
    }
}

impl<M: Future, A: Future<Output = ()> + Unpin + Send + 'static> Future for Beside<M, A> {
    type Output = M::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        // Every field is `Unpin` (`main` is boxed).
        let this = self.get_mut();
        if !this.outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let outer = cx.waker().clone();
            *lock(&this.handoff.shared.outer) = Some(outer.clone());
            this.outer = Some(outer);
        }
        // Not parked: a wake-up only sets its flag or bit. (Only saying parked must be
        // sequentially consistent, with the looks after it; a waker that still sees this
        // store's old value only wakes the loop once more.)
        this.handoff
            .shared
            .hot
            .parked
            .store(false, Ordering::Release);
        for _ in 0..ROUNDS {
            let slots = this.poll_woken();
            let hot = &this.handoff.shared.hot;
            let main = hot.main.load(Ordering::Relaxed) && hot.main.swap(false, Ordering::SeqCst);
            if main {
                let mut main_cx = Context::from_waker(&this.main_waker);
                if let Poll::Ready(v) = this.main.as_mut().poll(&mut main_cx) {
                    return Poll::Ready(v);
                }
            }
            let tasks =
                hot.tasks.load(Ordering::Relaxed) && hot.tasks.swap(false, Ordering::SeqCst);
            if tasks && let Some(run) = this.tasks.as_mut() {
                let mut tasks_cx = Context::from_waker(&this.tasks_waker);
                if run.as_mut().poll(&mut tasks_cx).is_ready() {
                    this.tasks = None;
                }
            }
            if slots || main || tasks {
                continue;
            }
            this.handoff.shared.hot.parked.store(true, Ordering::SeqCst);
            // A wake-up between the looks above and the store just made went to a flag or a
            // bit, not to the loop: look once more.
            if !this.handoff.shared.anything_woken() {
                return Poll::Pending;
            }
            this.handoff
                .shared
                .hot
                .parked
                .store(false, Ordering::Release);
        }
        // Busy: let the loop underneath look at its own wake-ups, then come back.
        this.handoff.shared.hot.parked.store(true, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<M, A> Drop for Beside<M, A> {
    fn drop(&mut self) {
        // What is handed over from now on is given back; what was handed over and never polled
        // is dropped here, with the futures in the slots.
        let unpolled = lock(&self.handoff.shared.incoming).take();
        drop(unpolled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use harrow_ipc::wait::testing::counting_waker;

    use crate::test_probe::{Counted, Probe};

    fn poll_once<F: Future>(f: &mut Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        f.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_main_future_and_the_tasks_are_each_polled_only_when_woken() {
        let (main, main_fut) = Probe::new();
        let (tasks, tasks_fut) = Probe::new();
        let handoff = Handoff::<Counted>::new();
        let beside = Beside::with_tasks_future(main_fut, Box::pin(tasks_fut), &handoff);
        let mut beside = std::pin::pin!(beside);
        let (wakes, outer) = counting_waker();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(
            (main.polls(), tasks.polls()),
            (1, 1),
            "both polled at first"
        );
        // The main future woken: the tasks are not looked at ...
        main.wake();
        assert_eq!(wakes.get(), 1, "the parked loop is woken");
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), tasks.polls()), (2, 1));
        // ... and a task scheduled does not poll the main future.
        tasks.wake();
        assert_eq!(wakes.get(), 2);
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), tasks.polls()), (2, 2));
        // Tasks that end (they do not, from an executor's `run`) are not polled again.
        tasks.finish();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(tasks.polls(), 3);
        main.finish();
        assert!(poll_once(&mut beside, &outer).is_ready());
        assert_eq!((main.polls(), tasks.polls()), (3, 3));
    }

    #[test]
    fn an_executors_tasks_run_beside_the_main_future_until_it_ends() {
        let exec: Arc<async_executor::Executor<'static>> = Arc::default();
        let (main, main_fut) = Probe::new();
        let handoff = Handoff::<Counted>::new();
        let beside = Beside::with_tasks(main_fut, &exec, &handoff);
        let mut beside = std::pin::pin!(beside);
        let (wakes, outer) = counting_waker();
        assert!(poll_once(&mut beside, &outer).is_pending());
        // A task spawned while the loop is parked wakes it, and runs at its next poll.
        let (task, task_fut) = Probe::new();
        exec.spawn(task_fut).detach();
        assert!(wakes.get() >= 1, "the parked loop is woken");
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(task.polls(), 1);
        assert_eq!(
            main.polls(),
            1,
            "a task's run does not poll the main future"
        );
        task.finish();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(task.polls(), 2);
        main.finish();
        assert!(poll_once(&mut beside, &outer).is_ready());
    }

    #[test]
    fn slots_past_the_first_word_and_past_64_words_are_woken_each_alone() {
        // 64 words and one more: the last word shares its summary bit with the first.
        let n = WORD * 65 + 3;
        let (main, main_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let mut beside = std::pin::pin!(beside);
        let (_wakes, outer) = counting_waker();
        assert!(poll_once(&mut beside, &outer).is_pending());
        let probes: Vec<Probe> = (0..n)
            .map(|_| {
                let (p, f) = Probe::new();
                assert!(handoff.put(f).is_ok());
                p
            })
            .collect();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert!(probes.iter().all(|p| p.polls() == 1));
        // Each in its own word: the first, the second, the last of the 64th, and the 65th
        // (whose summary bit is the first word's).
        let woken = [3, WORD + 1, WORD * 64 - 1, WORD * 64, n - 1];
        for &i in &woken {
            probes[i].wake();
        }
        assert!(poll_once(&mut beside, &outer).is_pending());
        for (i, p) in probes.iter().enumerate() {
            let want = if woken.contains(&i) { 2 } else { 1 };
            assert_eq!(p.polls(), want, "slot {i}");
        }
        assert_eq!(main.polls(), 1);
        // Ended in a high word, its slot goes to the next future handed over.
        probes[n - 1].finish();
        assert!(poll_once(&mut beside, &outer).is_pending());
        let (late, late_fut) = Probe::new();
        assert!(handoff.put(late_fut).is_ok());
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(late.polls(), 1);
        late.wake();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(late.polls(), 2);
        assert!(
            probes[..n - 1]
                .iter()
                .enumerate()
                .all(|(i, p)| p.polls() == if woken.contains(&i) { 2 } else { 1 })
        );
    }

    #[test]
    fn the_loops_waker_is_woken_in_place_and_a_new_one_replaces_it() {
        let (_main, main_fut) = Probe::new();
        let (a, a_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let mut beside = std::pin::pin!(beside);
        let (wakes, outer) = counting_waker();
        let held = Arc::strong_count(&wakes);
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert!(handoff.put(a_fut).is_ok());
        for i in 0..50 {
            assert!(poll_once(&mut beside, &outer).is_pending());
            assert_eq!(a.polls(), i + 1);
            a.wake();
            assert_eq!(wakes.get(), i + 2);
            // Kept where it was put (and the copy `Beside` tells a new one by): no clone made or
            // dropped per wake-up.
            assert_eq!(Arc::strong_count(&wakes), held + 2);
        }
        // Polled by a loop with another waker: a wake-up goes to that one, and the first is
        // let go.
        let (other_wakes, other) = counting_waker();
        assert!(poll_once(&mut beside, &other).is_pending());
        assert_eq!(a.polls(), 51);
        assert_eq!(Arc::strong_count(&wakes), held);
        a.wake();
        assert_eq!((wakes.get(), other_wakes.get()), (51, 1));
        assert!(poll_once(&mut beside, &other).is_pending());
        assert_eq!(a.polls(), 52);
    }

    #[test]
    fn each_future_is_polled_only_when_its_own_waker_was_woken() {
        let (main, main_fut) = Probe::new();
        let (a, a_fut) = Probe::new();
        let (b, b_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let mut beside = std::pin::pin!(beside);
        let (wakes, outer) = counting_waker();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(main.polls(), 1);
        assert!(handoff.put(a_fut).is_ok());
        assert!(handoff.put(b_fut).is_ok());
        // The handoff woke the loop (once: the second put found it woken already); the next
        // poll polls the new futures, not the main one.
        assert_eq!(wakes.get(), 1);
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), a.polls(), b.polls()), (1, 1, 1));
        b.wake();
        assert_eq!(wakes.get(), 2);
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), a.polls(), b.polls()), (1, 1, 2));
        a.wake();
        main.wake();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), a.polls(), b.polls()), (2, 2, 2));
        // A poll with nothing woken polls nothing.
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((main.polls(), a.polls(), b.polls()), (2, 2, 2));
    }

    #[test]
    fn a_future_that_ended_is_polled_no_more_and_its_slot_goes_to_the_next() {
        let (main, main_fut) = Probe::new();
        let (a, a_fut) = Probe::new();
        let (b, b_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let mut beside = std::pin::pin!(beside);
        let (_wakes, outer) = counting_waker();
        assert!(handoff.put(a_fut).is_ok());
        assert!(poll_once(&mut beside, &outer).is_pending());
        let a_waker = a.waker.lock().unwrap().clone().expect("polled");
        a.finish();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!(a.polls(), 2);
        assert_eq!(beside.free, vec![0]);
        // The ended future's slot is the next one's; a late wake-up by the old waker polls the
        // new future once more, never the old one.
        assert!(handoff.put(b_fut).is_ok());
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((beside.slots.len(), b.polls()), (1, 1));
        a_waker.wake();
        assert!(poll_once(&mut beside, &outer).is_pending());
        assert_eq!((a.polls(), b.polls()), (2, 2));
        main.finish();
        assert!(poll_once(&mut beside, &outer).is_ready());
    }

    #[test]
    fn the_main_future_ends_it_and_then_the_handoff_gives_back_what_is_put() {
        let (main, main_fut) = Probe::new();
        let (a, a_fut) = Probe::new();
        let (b, b_fut) = Probe::new();
        let (_c, c_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let (_wakes, outer) = counting_waker();
        let mut beside = Box::pin(beside);
        assert!(handoff.put(a_fut).is_ok());
        assert!(poll_once(&mut beside.as_mut(), &outer).is_pending());
        main.finish();
        assert!(poll_once(&mut beside.as_mut(), &outer).is_ready());
        assert_eq!(a.polls(), 1);
        // Handed over after the end, before the drop: never polled, dropped with the `Beside`
        // (the only other holder of its counter was the future itself).
        assert!(handoff.put(b_fut).is_ok());
        drop(beside);
        assert_eq!((b.polls(), Arc::strong_count(&b.polls)), (0, 1));
        // The future that had not ended is dropped too.
        assert_eq!(Arc::strong_count(&a.polls), 1);
        assert!(handoff.put(c_fut).is_err());
        assert_eq!(lock(&handoff.shared.incoming).as_ref().map(Vec::len), None);
    }

    /// Waits (bounded) until `done` says so.
    fn until(what: &str, done: impl Fn() -> bool) {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < give_up, "{what} within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn wake_ups_from_another_thread_reach_the_loop() {
        let (main, main_fut) = Probe::new();
        let (along, along_fut) = Probe::new();
        let handoff = Handoff::new();
        let beside = Beside::new(main_fut, &handoff);
        let put = handoff.clone();
        let waker_thread = std::thread::spawn(move || {
            // Each step waits for the loop to have seen the one before: the loop parks between
            // them, so each wake-up must reach it through its waker.
            assert!(put.put(along_fut).is_ok());
            until("the along future's first poll", || {
                along.waker.lock().unwrap().is_some()
            });
            along.finish();
            until("the along future's end", || along.polls() == 2);
            until("the main future's first poll", || {
                main.waker.lock().unwrap().is_some()
            });
            main.finish();
        });
        // `block_on` parks between polls; it returns only if the wake-ups reached it.
        futures_lite::future::block_on(beside);
        waker_thread.join().unwrap();
    }
}
