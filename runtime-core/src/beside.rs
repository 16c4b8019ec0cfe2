//! Driving the readers of an actor's links on the actor's thread beside its executor, not as
//! tasks of it.
//!
//! Every message that arrives on a link wakes the link's reader. As a task of the actor's
//! executor, that wake-up schedules the task (a push onto the executor's queue and a wake-up of
//! its sleeping runner), and the thread then pops it off the queue and runs it, and looks through
//! the queues once more before it sleeps again. Polled by the thread's `block_on` directly, as
//! [`Beside`] does, the wake-up queues the reader's slot and wakes the thread, which polls that
//! reader; the executor is polled only when one of its own tasks was woken. Readers are made
//! inside the actor's main future (wherever a link is established), so they are handed over
//! through a [`Handoff`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// How many rounds one poll of [`Beside`] runs while its futures keep waking each other, before
/// it hands back to the `block_on` loop underneath (which polls it again at once).
const ROUNDS: u32 = 64;

/// The slot number that stands for the handoff's incoming futures.
const INCOMING: usize = usize::MAX;
/// The slot number that stands for the main future.
const MAIN: usize = usize::MAX - 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Beside`], its wakers and its handoff share.
struct Shared<A> {
    /// The `block_on` loop's waker.
    outer: AtomicWaker,
    /// True while `Beside` is not being polled: a wake-up must go through `outer`.
    parked: AtomicBool,
    /// True when `woken` may hold something.
    any: AtomicBool,
    /// The main future was woken since `Beside` last polled it.
    main: AtomicBool,
    /// The slots woken since `Beside` last looked ([`INCOMING`]: the handoff).
    woken: Mutex<Vec<usize>>,
    /// Futures handed over and not yet given a slot; `None` once `Beside` is gone.
    incoming: Mutex<Option<Vec<A>>>,
}

impl<A> Shared<A> {
    /// After a flag or a queue was set: wakes the loop if `Beside` is not being polled.
    fn notify(&self) {
        // Sequentially consistent with `Beside::poll`'s store of `parked` and its loads of
        // `any` and `main`: either this sees the poll parked and wakes the loop, or the poll
        // sees what was set.
        if self.parked.load(Ordering::SeqCst) {
            self.outer.wake();
        }
    }
}

/// The waker of one slot's future (or of the handoff, or of the main future).
struct SlotWaker<A> {
    slot: usize,
    /// Already in `woken`, not yet looked at.
    queued: AtomicBool,
    shared: Arc<Shared<A>>,
}

impl<A> Wake for SlotWaker<A> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.slot == MAIN {
            self.shared.main.store(true, Ordering::SeqCst);
        } else {
            if !self.queued.swap(true, Ordering::AcqRel) {
                lock(&self.shared.woken).push(self.slot);
            }
            self.shared.any.store(true, Ordering::SeqCst);
        }
        self.shared.notify();
    }
}

impl<A> SlotWaker<A> {
    fn new(slot: usize, shared: &Arc<Shared<A>>) -> Arc<SlotWaker<A>> {
        Arc::new(SlotWaker {
            slot,
            queued: AtomicBool::new(false),
            shared: shared.clone(),
        })
    }
}

/// Where futures are put to be driven by a [`Beside`]. Cheap to clone.
pub(crate) struct Handoff<A> {
    shared: Arc<Shared<A>>,
    waker: Arc<SlotWaker<A>>,
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
            outer: AtomicWaker::new(),
            parked: AtomicBool::new(false),
            any: AtomicBool::new(false),
            // The main future is polled on the first poll.
            main: AtomicBool::new(true),
            woken: Mutex::new(Vec::new()),
            incoming: Mutex::new(Some(Vec::new())),
        });
        Handoff {
            waker: SlotWaker::new(INCOMING, &shared),
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
        Waker::from(self.waker.clone()).wake_by_ref();
        Ok(())
    }
}

/// One future driven beside the main one.
struct Slot<A> {
    fut: Option<A>,
    flag: Arc<SlotWaker<A>>,
    waker: Waker,
}

/// Polls `main` and, beside it, every future put into its [`Handoff`]: each only when its own
/// waker was woken. Ready with `main`'s output; the futures beside it that have not ended are
/// dropped with it, and from then on the handoff gives back what is put into it.
pub(crate) struct Beside<M, A> {
    main: Pin<Box<M>>,
    main_waker: Waker,
    slots: Vec<Slot<A>>,
    /// Slots whose future ended, for the next one handed over.
    free: Vec<usize>,
    /// The woken slots taken out of `shared.woken` (kept for its allocation).
    looking: Vec<usize>,
    handoff: Handoff<A>,
}

impl<M: Future, A: Future<Output = ()> + Unpin + Send + 'static> Beside<M, A> {
    /// Drives `main`, and beside it what is put into `handoff`.
    pub(crate) fn new(main: M, handoff: &Handoff<A>) -> Beside<M, A> {
        Beside {
            main: Box::pin(main),
            main_waker: Waker::from(SlotWaker::new(MAIN, &handoff.shared)),
            slots: Vec::new(),
            free: Vec::new(),
            looking: Vec::new(),
            handoff: handoff.clone(),
        }
    }

    /// Gives every future handed over a slot, and polls it.
    fn take_incoming(&mut self) {
        self.handoff.waker.queued.store(false, Ordering::Release);
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
                    let flag = SlotWaker::new(self.slots.len(), &self.handoff.shared);
                    self.slots.push(Slot {
                        fut: Some(fut),
                        waker: Waker::from(flag.clone()),
                        flag,
                    });
                    self.slots.len() - 1
                }
            };
            self.poll_slot(slot);
        }
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(Slot { fut, waker, .. }) = self.slots.get_mut(slot) else {
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

    /// Polls the slots woken since the last look. False when none was.
    fn poll_woken(&mut self) -> bool {
        if !self.handoff.shared.any.swap(false, Ordering::SeqCst) {
            return false;
        }
        std::mem::swap(&mut self.looking, &mut lock(&self.handoff.shared.woken));
        let mut looking = std::mem::take(&mut self.looking);
        for &slot in &looking {
            if slot == INCOMING {
                self.take_incoming();
                continue;
            }
            if let Some(s) = self.slots.get(slot) {
                // Cleared before the poll: a wake-up during it queues the slot again.
                s.flag.queued.store(false, Ordering::SeqCst);
            }
            self.poll_slot(slot);
        }
        looking.clear();
        self.looking = looking;
        true
    }
}

impl<M: Future, A: Future<Output = ()> + Unpin + Send + 'static> Future for Beside<M, A> {
    type Output = M::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        // Every field is `Unpin` (`main` is boxed).
        let this = self.get_mut();
        this.handoff.shared.outer.register(cx.waker());
        this.handoff.shared.parked.store(false, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            let slots = this.poll_woken();
            let main = this.handoff.shared.main.swap(false, Ordering::SeqCst);
            if main {
                let mut main_cx = Context::from_waker(&this.main_waker);
                if let Poll::Ready(v) = this.main.as_mut().poll(&mut main_cx) {
                    return Poll::Ready(v);
                }
            }
            if slots || main {
                continue;
            }
            this.handoff.shared.parked.store(true, Ordering::SeqCst);
            // A wake-up between the looks above and the store just made went to a flag, not
            // to the loop: look once more.
            if !this.handoff.shared.any.load(Ordering::SeqCst)
                && !this.handoff.shared.main.load(Ordering::SeqCst)
            {
                return Poll::Pending;
            }
            this.handoff.shared.parked.store(false, Ordering::SeqCst);
        }
        // Busy: let the loop underneath look at its own wake-ups, then come back.
        this.handoff.shared.parked.store(true, Ordering::SeqCst);
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

    use std::sync::atomic::AtomicUsize;

    use harrow_ipc::wait::testing::counting_waker;

    /// A future that counts its polls and ends when told.
    struct Counted {
        polls: Arc<AtomicUsize>,
        done: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Probe {
        polls: Arc<AtomicUsize>,
        done: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Probe {
        fn new() -> (Probe, Counted) {
            let p = Probe {
                polls: Arc::default(),
                done: Arc::default(),
                waker: Arc::default(),
            };
            let c = Counted {
                polls: p.polls.clone(),
                done: p.done.clone(),
                waker: p.waker.clone(),
            };
            (p, c)
        }
        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }
        fn wake(&self) {
            let w = self
                .waker
                .lock()
                .unwrap()
                .take()
                .expect("the future was polled");
            w.wake();
        }
        fn finish(&self) {
            self.done.store(true, Ordering::SeqCst);
            self.wake();
        }
    }

    fn poll_once<F: Future>(f: &mut Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        f.as_mut().poll(&mut Context::from_waker(waker))
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
