//! Routing: every incoming message goes to its call by `cid`, without awaiting anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harrow_ipc::{Cid, Msg};
use tracing::debug;

use super::Shared;
use crate::Error;
use crate::chan::{Chan, Side};

impl Shared {
    fn chan_for_stream(&self, cid: Cid) -> Option<Arc<Chan>> {
        let st = self.lock();
        if cid.0 % 2 == self.parity {
            st.calls.get(&cid).cloned()
        } else {
            st.served.get(&cid).map(|s| s.chan.clone())
        }
    }

    pub(super) fn handle(self: &Arc<Self>, msg: Msg) {
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
            Msg::StartAck { cid } => {
                if let Some(chan) = self.lock().calls.get(&cid).cloned() {
                    chan.lock().acked = true;
                    chan.notify();
                }
            }
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
                let Some(chan) = self.chan_for_stream(cid) else {
                    return;
                };
                let violation = {
                    let mut st = chan.lock();
                    if st.outcome.is_some() {
                        false // ended locally: drop the item
                    } else if !st.rx_open || st.allowance == 0 {
                        true
                    } else {
                        st.allowance -= 1;
                        st.items.push_back(value);
                        st.max_buffered = st.max_buffered.max(st.items.len());
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
                            self.abandon_call(&chan, Error::Protocol(message));
                        }
                        Side::Callee => self.fail_served(cid, message),
                    }
                } else {
                    chan.notify();
                }
            }
            Msg::Credit { cid, n } => {
                if let Some(chan) = self.chan_for_stream(cid) {
                    {
                        let mut st = chan.lock();
                        st.credit = st.credit.saturating_add(n);
                    }
                    chan.notify();
                }
            }
            Msg::Stop { cid } => {
                if let Some(chan) = self.chan_for_stream(cid) {
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
