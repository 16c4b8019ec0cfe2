//! Routing: every incoming message goes to its call by `cid`, without awaiting anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harrow_ipc::{Cid, Msg, Value};
use tracing::debug;

use super::Shared;
use super::hold::Held;
use crate::Error;
use crate::chan::{Chan, Side};

/// The reader's memory of the last stream it routed a message to, so that a run of messages for
/// one stream (an echo's items, their credits) takes neither the link's lock nor a map lookup
/// each. It is used only while nobody has locked the link's state since it was filled
/// (`Shared::state_gen`): every change of the call maps happens under that lock, so a cached chan
/// is exactly what a lookup would return then.
///
/// It also holds the items of a run of `Yield`s for that stream, routed and not yet queued:
/// they are queued together, under one lock of the chan and with one notification, before the
/// reader routes any other message and before it waits ([`Shared::routed`]). So the order of
/// everything a chan sees is the order of the wire, and nothing is held while the reader waits.
#[derive(Default)]
pub(super) struct RouteCache {
    entry: Option<(Cid, u64, Arc<Chan>)>,
    /// Items for `entry`'s stream, in arrival order.
    held: Vec<Value>,
    /// The peer's calls held back while the outgoing backlog is over its bound.
    pub(super) starts: Held,
}

impl RouteCache {
    /// Whether `entry` is the chan of `cid` as a lookup would find it now.
    fn hit(&self, cid: Cid, shared: &Shared) -> bool {
        matches!(&self.entry, Some((cached, seen, _))
            if *cached == cid && *seen == shared.state_gen.load(Ordering::Acquire))
    }
}

impl Shared {
    /// The chan of stream message `cid`, if the call is still there; borrowed from `cache`, so a
    /// hit costs no reference count either.
    fn chan_for_stream<'c>(&self, cid: Cid, cache: &'c mut RouteCache) -> Option<&'c Arc<Chan>> {
        if !cache.hit(cid, self) {
            let st = self.lock();
            let chan = if cid.0 % 2 == self.parity {
                st.calls.get(&cid).cloned()
            } else {
                st.served.get(&cid).map(|s| s.chan.clone())
            };
            // Read under the lock, after our own bump: valid until somebody else locks.
            let seen = self.state_gen.load(Ordering::Acquire);
            drop(st);
            cache.entry = chan.map(|c| (cid, seen, c));
        }
        cache.entry.as_ref().map(|(_, _, chan)| chan)
    }

    /// Routes one message. A stream item is held in `cache` with the items before it for the
    /// same stream; anything else first queues what is held.
    pub(super) fn handle(self: &Arc<Self>, msg: Msg, cache: &mut RouteCache) {
        if let Msg::Yield { cid, value } = msg {
            self.hold_item(cid, value, cache);
            return;
        }
        self.queue_held(cache);
        match msg {
            start @ Msg::Start { .. } => self.start_or_hold(start, &mut cache.starts),
            Msg::Cancel { cid } => {
                debug!(%cid, "Cancel from the caller");
                if !self.cancel_held(cid, &mut cache.starts) {
                    self.cancel_served(&[cid], &self.peer.id.clone());
                }
            }
            // Nothing on this side waits for the ack (a context waits for `Started`, a unary
            // call for its answer): taking the link's lock and waking the caller for it would
            // cost each call a lookup and a spurious poll.
            Msg::StartAck { .. } => {}
            Msg::Started { cid, value } => {
                if let Some(chan) = self.lock().calls.get(&cid).cloned() {
                    {
                        let mut st = chan.lock();
                        st.started_seen = true;
                        st.started = Some(value);
                    }
                    chan.notify();
                }
            }
            Msg::Return { cid, value } => {
                let chan = self.lock().calls.remove(&cid);
                if let Some(chan) = chan {
                    chan.answer_arrived(Ok(value));
                }
            }
            Msg::Error {
                cid: Some(cid),
                error,
            } => {
                let chan = self.lock().calls.remove(&cid);
                match chan {
                    Some(chan) => chan.answer_arrived(Err(Error::from(*error))),
                    None => debug!(%cid, %error, "error for an unknown call ignored"),
                }
            }
            Msg::Error { cid: None, error } => {
                debug!(peer = %self.peer.id, %error, "actor-level error from the peer");
            }
            // Not reached (`handle` holds every item before this match); were it reached, the
            // item would be queued alone, in order.
            Msg::Yield { cid, value } => {
                self.hold_item(cid, value, cache);
                self.queue_held(cache);
            }
            Msg::Credit { cid, n, consumed } => {
                if let Some(chan) = self.chan_for_stream(cid, cache) {
                    {
                        let mut st = chan.lock();
                        st.credit = st.credit.saturating_add(n);
                        st.note_consumed(consumed);
                    }
                    chan.notify();
                }
            }
            Msg::StopReading { cid } => {
                if let Some(chan) = self.chan_for_stream(cid, cache) {
                    chan.lock().peer_stopped_reading = true;
                    chan.notify();
                }
            }
            Msg::Stop { cid } => {
                if let Some(chan) = self.chan_for_stream(cid, cache) {
                    chan.lock().peer_stopped = true;
                    chan.notify();
                }
            }
            Msg::CancelActor { reason } => {
                self.refuse_held(&mut cache.starts);
                self.cancel_actor_requested(reason);
            }
            Msg::CancelAck { teardown_ms } => {
                *self
                    .last_ack_teardown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = teardown_ms;
                self.acks.fetch_add(1, Ordering::AcqRel);
                self.ack_ev.notify(usize::MAX);
            }
            Msg::Hello { actor, .. } => {
                debug!(%actor, "second Hello ignored");
            }
            // Its arrival is all it says: the reader counted it.
            Msg::Heartbeat => {}
        }
    }

    /// Holds a stream item for `cid`'s chan: after the items held for it already, or alone once
    /// those are queued (they were for another stream, or the call maps changed).
    fn hold_item(self: &Arc<Self>, cid: Cid, value: Value, cache: &mut RouteCache) {
        // One look at the cache per item in a run; a miss queues the run before it.
        if !cache.hit(cid, self) {
            self.queue_held(cache);
            if self.chan_for_stream(cid, cache).is_none() {
                return;
            }
        }
        cache.held.push(value);
    }

    /// Queues the items held in `cache` on their chan, under one lock, and notifies it once.
    /// An item without credit is a protocol violation: the call fails, and the items after it
    /// are dropped with it.
    fn queue_held(self: &Arc<Self>, cache: &mut RouteCache) {
        let RouteCache { entry, held, .. } = cache;
        if held.is_empty() {
            return;
        }
        let Some((cid, _, chan)) = entry.as_ref() else {
            // Items are held only for the cached chan; without one there is nowhere to put them.
            held.clear();
            return;
        };
        let mut violation = false;
        {
            let mut st = chan.lock();
            // `drain` drops whatever the loop leaves.
            for value in held.drain(..) {
                if st.outcome.is_some() {
                    break; // ended locally: the items are dropped
                }
                if !st.rx_open || st.allowance == 0 {
                    violation = true;
                    break;
                }
                st.push_item(value);
            }
        }
        if violation {
            let message = format!(
                "stream item for {} (call {cid}) arrived without credit",
                chan.func
            );
            match chan.side {
                Side::Caller => self.abandon_call(chan, Error::Protocol(message)),
                Side::Callee => self.fail_served(*cid, message),
            }
        } else {
            chan.notify();
        }
    }

    /// The reader routed everything there was: what it holds is queued, and its cache is
    /// cleared (so it never keeps a finished call's chan alive while it waits). Held calls
    /// start if the backlog allows.
    pub(super) fn routed(self: &Arc<Self>, cache: &mut RouteCache) {
        self.queue_held(cache);
        cache.entry = None;
        self.release_held(&mut cache.starts);
    }
}
