//! Routing: every incoming message goes to its call by `cid`, without awaiting anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harrow_ipc::{Cid, Msg};
use tracing::debug;

use super::Shared;
use crate::Error;
use crate::chan::{Chan, Side};

/// The reader's memory of the last stream it routed a message to, so that a run of messages for
/// one stream (an echo's items, their credits) takes neither the link's lock nor a map lookup
/// each. It is used only while nobody has locked the link's state since it was filled
/// (`Shared::state_gen`): every change of the call maps happens under that lock, so a cached chan
/// is exactly what a lookup would return then. The reader clears it before it waits, so it never
/// keeps a finished call's chan alive for long.
#[derive(Default)]
pub(super) struct RouteCache {
    entry: Option<(Cid, u64, Arc<Chan>)>,
}

impl RouteCache {
    pub(super) fn clear(&mut self) {
        self.entry = None;
    }
}

impl Shared {
    /// The chan of stream message `cid`, if the call is still there; borrowed from `cache`, so a
    /// hit costs no reference count either.
    fn chan_for_stream<'c>(&self, cid: Cid, cache: &'c mut RouteCache) -> Option<&'c Arc<Chan>> {
        let hit = matches!(&cache.entry, Some((cached, seen, _))
            if *cached == cid && *seen == self.state_gen.load(Ordering::Acquire));
        if !hit {
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

    pub(super) fn handle(self: &Arc<Self>, msg: Msg, cache: &mut RouteCache) {
        match msg {
            Msg::Start {
                cid,
                func,
                kind,
                args,
            } => self.serve_start(cid, func, kind, args),
            Msg::Cancel { cid } => {
                debug!(%cid, "Cancel from the caller");
                self.cancel_served(&[cid], &self.peer.id.clone());
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
                    chan.lock().answered = true;
                    chan.finish(Ok(value));
                }
            }
            Msg::Error {
                cid: Some(cid),
                error,
            } => {
                let chan = self.lock().calls.remove(&cid);
                match chan {
                    Some(chan) => {
                        chan.lock().answered = true;
                        chan.finish(Err(Error::from(*error)));
                    }
                    None => debug!(%cid, %error, "error for an unknown call ignored"),
                }
            }
            Msg::Error { cid: None, error } => {
                debug!(peer = %self.peer.id, %error, "actor-level error from the peer");
            }
            Msg::Yield { cid, value } => {
                let Some(chan) = self.chan_for_stream(cid, cache) else {
                    return;
                };
                let violation = {
                    let mut st = chan.lock();
                    if st.outcome.is_some() {
                        false // ended locally: drop the item
                    } else if !st.rx_open || st.allowance == 0 {
                        true
                    } else {
                        st.push_item(value);
                        false
                    }
                };
                if violation {
                    let message = format!(
                        "stream item for {} (call {cid}) arrived without credit",
                        chan.func
                    );
                    match chan.side {
                        Side::Caller => {
                            self.abandon_call(chan, Error::Protocol(message));
                        }
                        Side::Callee => self.fail_served(cid, message),
                    }
                } else {
                    chan.notify();
                }
            }
            Msg::Credit { cid, n } => {
                if let Some(chan) = self.chan_for_stream(cid, cache) {
                    {
                        let mut st = chan.lock();
                        st.credit = st.credit.saturating_add(n);
                    }
                    chan.notify();
                }
            }
            Msg::Stop { cid } => {
                if let Some(chan) = self.chan_for_stream(cid, cache) {
                    chan.lock().peer_stopped = true;
                    chan.notify();
                }
            }
            Msg::CancelActor { reason } => self.cancel_actor_requested(reason),
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
}
