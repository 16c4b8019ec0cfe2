//! Holding the peer's calls back while this side's answers pile up unread.
//!
//! A peer that sends calls and reads none of the answers would make this side keep every answer
//! in its writer's queue: a few bytes of `Start` can ask for megabytes of `Return`. So the
//! link weighs what it has queued for the peer and not yet written (its **backlog**, estimated
//! by [`queue::weight`](super::queue::weight)). While the backlog is above
//! [`LinkConfig::max_backlog`](crate::LinkConfig::max_backlog), the reader starts none of the
//! peer's new calls: it holds their `Start`s, in order, and goes on reading and routing
//! everything else (answers to this side's own calls, credits, cancels), so two peers that both
//! hold each other's calls still read each other's answers and cannot deadlock on that. Once
//! the backlog is down to half the bound, the held calls start, in order, until it is above the
//! bound again.
//!
//! The held `Start`s are memory the peer sent (no more than it sent), but a peer that keeps
//! sending is bounded too: once the held `Start`s weigh as much as the bound, the reader stops
//! reading altogether until the backlog is down to half; the peer's own sends then wait. If
//! nothing is written for [`LinkConfig::backlog_stall_timeout`](crate::LinkConfig) meanwhile,
//! the link ends as broken, saying why: a peer that neither reads nor stops calling (or two
//! peers that each stopped reading the other, a deadlock nothing else would end).
//!
//! A `Cancel` of a held call answers it as cancelled (it never ran); a `CancelActor` refuses
//! every held call before its ack, as it refuses the calls that come after it. Only links
//! whose transport has a writer (byte streams: `unix`, `shm`) have a backlog: an in-memory
//! (`mem`) link hands each message to its peer's queue, in the same process.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harrow_ipc::wait::deadline;
use harrow_ipc::{Cid, ErrorKind, Msg, RemoteError};
use tracing::{debug, warn};

use super::outlet::Outlet;
use super::queue::weight;
use super::{LinkEnd, Shared};

/// The peer's `Start`s the reader holds back, in arrival order.
#[derive(Default)]
pub(super) struct Held {
    /// Each `Start` with its cid and weight. An entry whose cid is no longer in `cids` was
    /// cancelled while held: it is skipped when its turn comes.
    starts: VecDeque<(Cid, usize, Msg)>,
    /// The cids of the held calls not cancelled. The peer chooses them: an ordered set, not a
    /// hash (see `LinkState::served`).
    cids: BTreeSet<Cid>,
    /// The weight of `starts`.
    weight: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

impl Shared {
    /// The estimated bytes queued for the peer and not yet written; always 0 on a link without
    /// a writer.
    pub(crate) fn backlog(&self) -> usize {
        match &self.out {
            Outlet::Writer(q) => q.backlog(),
            Outlet::Direct(_) => 0,
        }
    }

    fn over_backlog(&self) -> bool {
        self.backlog() > self.config.max_backlog
    }

    fn backlog_low(&self) -> bool {
        self.backlog() <= self.config.max_backlog / 2
    }

    /// The peer's calls held back now.
    pub(crate) fn held_calls(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the reader holds calls back and may start them now: it is woken for this.
    pub(super) fn release_due(&self) -> bool {
        self.held.load(Ordering::SeqCst) > 0 && self.backlog_low()
    }

    /// The writer wrote what it took; `left` is queued still. Wakes the reader if it holds
    /// calls back and may start them now.
    pub(super) fn backlog_written(&self, left: usize) {
        if self.held.load(Ordering::SeqCst) > 0 && left <= self.config.max_backlog / 2 {
            self.reader_waker.wake();
            self.progress.notify_all();
        }
    }

    /// Routes a `Start`: the call starts now, or, while the backlog is over its bound (or calls
    /// are held already, which go first), it is held.
    pub(super) fn start_or_hold(self: &Arc<Self>, start: Msg, held: &mut Held) {
        if held.is_empty() && !self.over_backlog() {
            self.serve(start);
            return;
        }
        if self.lock().refuse_starts.is_some() {
            // This actor is ending: the held calls and this one are refused now (a refusal is
            // small), rather than held for a release that may never come.
            self.refuse_held(held);
            self.serve(start);
            return;
        }
        let Msg::Start { cid, .. } = &start else {
            return;
        };
        let cid = *cid;
        if !held.cids.insert(cid) {
            self.enqueue(Msg::Error {
                cid: Some(cid),
                error: Box::new(RemoteError::new(
                    ErrorKind::Protocol,
                    "ProtocolError",
                    format!("call id {cid} is already in use for another call"),
                    self.local.id.clone(),
                )),
            });
            return;
        }
        if held.is_empty() {
            debug!(local = %self.local.id, peer = %self.peer.id, backlog = self.backlog(),
                "outgoing backlog over its bound: holding the peer's calls back");
        }
        let w = weight(&start, self.config.max_backlog);
        held.weight = held.weight.saturating_add(w);
        held.starts.push_back((cid, w, start));
        self.held.store(held.cids.len(), Ordering::SeqCst);
    }

    fn serve(self: &Arc<Self>, start: Msg) {
        if let Msg::Start {
            cid,
            func,
            kind,
            args,
        } = start
        {
            self.serve_start(cid, func, kind, args);
        }
    }

    /// Starts held calls, in order, if the backlog is down to half its bound, until it is over
    /// the bound again.
    pub(super) fn release_held(self: &Arc<Self>, held: &mut Held) {
        if held.is_empty() || !self.backlog_low() {
            return;
        }
        while let Some((cid, w, start)) = held.starts.pop_front() {
            held.weight -= w;
            if !held.cids.remove(&cid) {
                continue; // cancelled while held: answered then
            }
            self.held.store(held.cids.len(), Ordering::SeqCst);
            self.serve(start);
            if self.over_backlog() {
                break;
            }
        }
    }

    /// A `Cancel` from the peer for `cid`: true when the call was held (it is answered as
    /// cancelled, having never run).
    pub(super) fn cancel_held(&self, cid: Cid, held: &mut Held) -> bool {
        if held.is_empty() || !held.cids.remove(&cid) {
            return false;
        }
        self.held.store(held.cids.len(), Ordering::SeqCst);
        let error = RemoteError::cancelled(self.local.id.clone(), self.peer.id.clone());
        self.enqueue(Msg::Error {
            cid: Some(cid),
            error: Box::new(error),
        });
        true
    }

    /// The peer sent `CancelActor`: every held call is refused now, before the ack.
    pub(super) fn refuse_held(self: &Arc<Self>, held: &mut Held) {
        if held.is_empty() {
            return;
        }
        self.lock()
            .refuse_starts
            .get_or_insert_with(|| self.peer.id.clone());
        while let Some((cid, _, start)) = held.starts.pop_front() {
            if held.cids.remove(&cid) {
                self.serve(start); // refused
            }
        }
        held.weight = 0;
        self.held.store(0, Ordering::SeqCst);
    }

    /// Whether the reader must stop reading: the held calls weigh as much as the bound.
    pub(super) fn held_full(&self, held: &Held) -> bool {
        held.weight > self.config.max_backlog
    }

    /// The reader stopped reading (see [`held_full`](Self::held_full)): waits until the
    /// backlog is down to half its bound. False when the link ended meanwhile, or was ended
    /// here because nothing was written for `backlog_stall_timeout`.
    pub(super) async fn wait_backlog(&self, held: &Held) -> bool {
        self.reading_stopped.store(true, Ordering::Relaxed);
        debug!(local = %self.local.id, peer = %self.peer.id, backlog = self.backlog(),
            held = held.cids.len(), "the peer's held calls are at the bound: reading stops");
        let result = loop {
            let written = self.written.load(Ordering::Acquire);
            let drained = self
                .progress
                .wait_until(|| self.is_dead() || self.backlog_low());
            let Some(stall) = self.config.backlog_stall_timeout else {
                drained.await;
                break !self.is_dead();
            };
            if deadline(stall, drained).await.is_some() {
                break !self.is_dead();
            }
            if self.written.load(Ordering::Acquire) != written {
                continue; // slow, not stalled
            }
            self.stalled(stall, held);
            break false;
        };
        self.reading_stopped.store(false, Ordering::Relaxed);
        result
    }

    /// Ends the link: the peer read nothing for `stall` while its held calls are at the bound.
    fn stalled(&self, stall: Duration, held: &Held) {
        let reason = format!(
            "{} read nothing of the {} bytes queued for it for {stall:?} (backlog_stall_timeout) \
             while it sent {} more calls that wait for that backlog to shrink: the peer \
             neither reads nor stops calling",
            self.peer.id,
            self.backlog(),
            held.cids.len(),
        );
        warn!(local = %self.local.id, %reason, "link dropped");
        self.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
    }
}
