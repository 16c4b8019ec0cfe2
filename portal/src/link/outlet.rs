//! How a link's outgoing messages leave: through the writer task, or straight into the
//! transport.
//!
//! A transport whose sends may wait (the `unix`, `shm` and `stream` byte transports) gets the
//! writer task of `io`: [`Shared::enqueue`] queues, the writer drains the queue in batches; a
//! message that finds the writer idle and the transport ready is written where it is made
//! ([`ChannelTx::send_batch_now`], see `queue`), without the writer's hop. A transport
//! whose sends never wait ([`ChannelTx::sends_immediately`]: the in-memory `mem` transport of
//! in-process actors) gets each message handed over by whoever sends it, where it is made
//! ([`ChannelTx::send_now`]), with no queue and no task in between. What it still needs is a
//! wake-up of the peer, and that is batched: the first message after a wake-up schedules the
//! outlet's **waker task**, which runs once the tasks already runnable on this executor have
//! had their turn and wakes the peer once for everything handed over meanwhile
//! ([`ChannelTx::flush_now`]). A peer that is running may pick the messages up before that
//! (unless the transport gathers them until the flush, as the thread actors' `mem` pair does a
//! batch at a time); one that is parked is woken once per batch, not once per message (a
//! `StartAck` and the `Return` of a call that finished at once arrive together, as do the items
//! of a stream burst).
//!
//! Two cases skip the waker task's hop. What the link's **reader** hands over while it routes
//! (a served call that answered in its first poll: its `StartAck` and `Return`) is flushed by
//! the reader itself before it waits again, so the answer leaves without another task being
//! scheduled. And a call's `Start` wakes the peer at once ([`Shared::enqueue_urgent`] then
//! [`Shared::wake_peer_now`]): the calling task waits for the answer next, so there is nothing
//! to batch it with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::future::poll_fn;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use harrow_ipc::{ChannelTx, Msg};

use super::queue::{Pushed, WriterQueue, weight};
use super::{LinkEnd, Shared};

pub(crate) enum Outlet {
    /// Through the writer task's queue.
    Writer(Arc<WriterQueue>),
    /// Straight into the transport.
    Direct(Direct),
}

pub(crate) struct Direct {
    tx: ChannelTx,
    /// No more sends: the link shut down.
    closed: AtomicBool,
    /// Messages were handed over since the peer was last woken.
    wake_pending: AtomicBool,
    /// A send found the peer gone: the waker task ends the link.
    broken: AtomicBool,
    /// The link's reader is routing what arrived: it wakes the peer itself before it waits
    /// ([`Shared::reader_idle`]), so a message handed over meanwhile does not schedule the
    /// waker task (a served call that answers at once costs no task hop for its answer).
    reader_busy: AtomicBool,
    /// Wakes the waker task (for `wake_pending`, `broken` and the close): a waker slot, not an
    /// event, so a batch costs no listener to allocate, poll and remove.
    task: AtomicWaker,
}

impl Direct {
    /// Hands `msg` to the transport (no wake-up of the peer). False when the link is shut down
    /// or the peer is gone; for the latter (this may run under the link's locks) the waker task
    /// ends the link.
    #[inline]
    fn hand_over(&self, msg: Msg) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        // Matched, not `is_err()`: the error (and the message in it) is dropped in its arm, so a
        // message handed over costs no out-of-line drop of the `Ok`.
        if let Err(e) = self.tx.send_now(msg) {
            drop(e);
            self.broken.store(true, Ordering::Release);
            self.task.wake();
            return false;
        }
        true
    }
}

impl Outlet {
    /// The outlet for `tx`, and the writer's queue when `tx` needs a writer.
    pub(crate) fn new(tx: ChannelTx) -> (Outlet, Option<(ChannelTx, Arc<WriterQueue>)>) {
        if tx.sends_immediately() {
            let direct = Direct {
                tx,
                closed: AtomicBool::new(false),
                wake_pending: AtomicBool::new(false),
                broken: AtomicBool::new(false),
                reader_busy: AtomicBool::new(false),
                task: AtomicWaker::new(),
            };
            (Outlet::Direct(direct), None)
        } else {
            let queue = Arc::new(WriterQueue::new(Some(tx.clone())));
            (Outlet::Writer(queue.clone()), Some((tx, queue)))
        }
    }
}

impl Shared {
    /// Queues (or, on a direct outlet, hands over) a message. Never blocks. False when the link
    /// is shut down.
    #[inline]
    pub(crate) fn enqueue(&self, msg: Msg) -> bool {
        match &self.out {
            Outlet::Writer(out) => {
                let weight = match self.config.max_backlog {
                    usize::MAX => 0,
                    cap => weight(&msg, cap),
                };
                self.enqueued.fetch_add(1, Ordering::AcqRel);
                match out.push(msg, weight) {
                    Pushed::Refused => {
                        self.enqueued.fetch_sub(1, Ordering::AcqRel);
                        false
                    }
                    Pushed::Queued => true,
                    Pushed::Written(n) => {
                        // As the writer counts its writes (`drain` and the heartbeat read it).
                        self.written.fetch_add(n, Ordering::AcqRel);
                        self.progress.notify_all();
                        true
                    }
                }
            }
            Outlet::Direct(d) => {
                if !d.hand_over(msg) {
                    return false;
                }
                // Written at once: `drain` has nothing to wait for (a direct outlet never counts
                // `enqueued`), and the waker task counts a write per batch for the heartbeat.
                // A wake-up already pending covers this message too: the waker task clears the
                // flag before it wakes the peer, so a message handed over before the clear is
                // seen by the peer it wakes, and one after it finds the flag clear and sets it.
                // (The plain load first spares a locked instruction per message in a burst.)
                // While the reader is busy it flushes before it waits: it clears
                // `reader_busy` before it looks at `wake_pending` and we look at `reader_busy`
                // after setting `wake_pending` (both SeqCst), so one of us sees the other.
                if !d.wake_pending.load(Ordering::Acquire)
                    && !d.wake_pending.swap(true, Ordering::SeqCst)
                    && !d.reader_busy.load(Ordering::SeqCst)
                {
                    d.task.wake();
                }
                true
            }
        }
    }

    /// Whether queued messages wait for the writer task, which runs only when the task that
    /// queued them yields to their executor.
    #[inline]
    pub(crate) fn writes_later(&self) -> bool {
        matches!(self.out, Outlet::Writer(_))
    }

    /// Hands a message over without scheduling the waker task: the caller wakes the peer itself
    /// right after ([`wake_peer_now`](Self::wake_peer_now), outside any lock it holds). For a
    /// message the peer must act on before anything else can happen (a call's `Start`: the
    /// calling task waits for the answer next). A writer's queue takes it as usual (and writes
    /// it at once if the writer is idle).
    pub(crate) fn enqueue_urgent(&self, msg: Msg) -> bool {
        match &self.out {
            Outlet::Writer(_) => self.enqueue(msg),
            Outlet::Direct(d) => d.hand_over(msg),
        }
    }

    /// Queues a message the peer need not act on by itself (a served call's `StartAck`, which
    /// callers ignore), so that it does not cost the peer a wake-up of its own: it travels with
    /// the next message that does wake the peer. Every call that was acked ends with a message
    /// of its own (its answer), and the link's close wakes the peer too, so nothing is held for
    /// longer than its call runs. On a direct outlet the message is handed over without
    /// scheduling a wake-up; a writer's queue keeps such messages without waking the writer,
    /// and the writer holds a batch made of them alone, until the next message (or the close)
    /// comes (`queue`, [`io::writer`](super::io::writer)).
    pub(crate) fn enqueue_quiet(&self, msg: Msg) -> bool {
        match &self.out {
            Outlet::Writer(_) => self.enqueue(msg),
            Outlet::Direct(d) => d.hand_over(msg),
        }
    }

    /// Wakes the peer now for what [`enqueue_urgent`](Self::enqueue_urgent) handed over (and
    /// anything handed over before it; a wake-up still pending for those stays pending, and
    /// costs one lock when it comes). Nothing to do for a writer.
    pub(crate) fn wake_peer_now(&self) {
        if let Outlet::Direct(d) = &self.out {
            d.tx.flush_now();
        }
    }

    /// The reader starts routing what arrived (see `Direct::reader_busy`).
    pub(super) fn reader_busy(&self) {
        if let Outlet::Direct(d) = &self.out {
            d.reader_busy.store(true, Ordering::Relaxed);
        }
    }

    /// The reader is about to wait: it wakes the peer for what was handed over while it routed
    /// (a served call's answer), instead of the waker task doing so after a task hop.
    pub(super) fn reader_idle(&self) {
        if let Outlet::Direct(d) = &self.out {
            d.reader_busy.store(false, Ordering::SeqCst);
            if d.wake_pending.load(Ordering::SeqCst) && d.wake_pending.swap(false, Ordering::SeqCst)
            {
                d.tx.flush_now();
                self.written.fetch_add(1, Ordering::AcqRel);
                self.progress.notify_all();
            }
        }
    }

    /// No more messages: a writer flushes what is queued (bounded) and closes the channel; a
    /// direct outlet closes it now (the peer still receives what was handed over, then the
    /// close, which wakes it).
    pub(super) fn close_outlet(&self) {
        match &self.out {
            Outlet::Writer(out) => {
                out.close();
            }
            Outlet::Direct(d) => {
                d.closed.store(true, Ordering::Release);
                d.tx.close();
                d.task.wake();
            }
        }
    }
}

/// A direct outlet's task, in place of the writer: wakes the peer once per batch of messages
/// handed over, ends the link as broken when a send found the peer gone (`enqueue` may run under
/// the link's locks, so it cannot end the link itself), and reports the outlet done once the
/// link is shut down.
pub(super) async fn direct_waker(shared: Arc<Shared>) {
    let Outlet::Direct(d) = &shared.out else {
        return;
    };
    // Flushes what is pending first, so a shutdown still wakes the peer for what was handed
    // over before it (the close that follows wakes it too).
    poll_fn(|cx| {
        loop {
            if d.wake_pending.load(Ordering::Acquire) {
                d.wake_pending.store(false, Ordering::SeqCst);
                d.tx.flush_now();
                shared.written.fetch_add(1, Ordering::AcqRel);
                shared.progress.notify_all();
                continue;
            }
            if d.broken.load(Ordering::Acquire) || shared.is_dead() {
                return Poll::Ready(());
            }
            d.task.register(cx.waker());
            // Checked again after registering: a wake-up in between is not lost.
            if !d.wake_pending.load(Ordering::SeqCst)
                && !d.broken.load(Ordering::SeqCst)
                && !shared.is_dead()
            {
                return Poll::Pending;
            }
        }
    })
    .await;
    if d.broken.load(Ordering::Acquire) && !shared.is_dead() {
        let reason = format!(
            "sending to {} failed: the channel is closed (the peer is gone)",
            shared.peer.id
        );
        shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
    }
    shared.close_outlet();
    shared.writer_done.store(true, Ordering::Release);
    shared.progress.notify_all();
}
