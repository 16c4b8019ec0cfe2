//! Routed peer links: a peer in another host domain is reached through the tree.
//!
//! The link itself is an ordinary peer [`Link`](harrow_portal::Link) over an in-process `mem`
//! channel; what travels is its frames. The actor that wants the peer opens a context of
//! `harrow.discovery:tunnel` on the tree link toward the peer (its parent, or the child whose
//! subtree holds the peer) and pumps the other end of the `mem` pair through the context's
//! bidirectional stream, one frame (encoded with the ipc codec) per stream item. Each hop serves
//! that context: it opens the same context on its next tree link and pumps the two streams into
//! each other, until a hop in the peer's host domain connects to the peer's acceptor (in memory
//! or over its process's unix socket, as any peer) and pumps between the stream and that
//! channel. The peer takes it as an ordinary peer link.
//!
//! When either end or any hop goes, its side of the context ends, every pump on the way stops
//! and closes what it pumps into, and both ends' links see their channel close: every pending
//! and later operation fails with `Error::Closed`, as on a direct link.

use std::time::Duration;

use futures_lite::FutureExt;
use harrow_ipc::codec::{self, CodecConfig};
use harrow_ipc::wait::deadline;
use harrow_ipc::{Channel, ErrorKind, Value, from_value, to_value};
use harrow_portal::{CallError, CalleeContext, Context, MsgStream, Portal};
use serde::{Deserialize, Serialize};

use super::{ActorEntry, DiscoveryError, TUNNEL_FN, lock};
use crate::actor::ActorCtx;

/// How many hops a tunnel may take before it is refused (a wrong route never loops forever).
pub(crate) const MAX_HOPS: u32 = 64;

/// The arguments of `harrow.discovery:tunnel`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TunnelReq {
    /// The peer, as the registrar answered (its domain and route).
    pub(crate) target: ActorEntry,
    /// Hops left.
    pub(crate) hops_left: u32,
}

/// Where the next step toward a peer goes, from one actor.
pub(crate) enum Hop {
    /// The peer is in this actor's host domain: connect to it.
    Direct,
    /// Through a tree link: the parent's, or a child's.
    Tree(Portal),
}

/// The next step from `ctx` toward `target`: direct within the host domain; else down to the
/// child on the target's route when this actor is on it, else up to the parent.
pub(crate) async fn next_hop(ctx: &ActorCtx, target: &ActorEntry) -> Result<Hop, DiscoveryError> {
    if target.domain.is_empty() {
        return Ok(Hop::Direct);
    }
    let mine = match ctx.discovery().tree() {
        Some(t) => t.domain.clone(),
        None => ctx
            .discovery()
            .wait_tree(ctx.link_config().hello_timeout)
            .await?
            .domain
            .clone(),
    };
    if mine.is_empty() || mine == target.domain {
        return Ok(Hop::Direct);
    }
    let me = &ctx.id().uid;
    if let Some(i) = target.route.iter().position(|u| u == me) {
        let Some(next) = target.route.get(i + 1) else {
            return Err(DiscoveryError::Unreachable(format!(
                "the route to {} ends at {} but their host domains differ",
                target.id,
                ctx.id()
            )));
        };
        let child = lock(&ctx.discovery().children).get(next).cloned();
        return match child {
            Some(p) if !p.is_closed() => Ok(Hop::Tree(p)),
            // The target itself is that child: it has ended.
            _ if *next == target.id.uid => Err(DiscoveryError::Gone(format!(
                "{} has ended (its parent {} has no link to it)",
                target.id,
                ctx.id()
            ))),
            _ => Err(DiscoveryError::Unreachable(format!(
                "{} is on the route to {} but its child {next} is gone",
                ctx.id(),
                target.id
            ))),
        };
    }
    if target.route.is_empty() {
        return Err(DiscoveryError::Unreachable(format!(
            "no route to {} (it is not registered under the root)",
            target.id
        )));
    }
    match ctx.parent() {
        Some(p) if !p.is_closed() => Ok(Hop::Tree(p)),
        _ => Err(DiscoveryError::Unreachable(format!(
            "{} cannot route to {}: no parent link",
            ctx.id(),
            target.id
        ))),
    }
}

/// Opens the tunnel context toward `target` on tree link `via`, bounded by `bound`; returns the
/// context (keep it: dropping it cancels the tunnel) and its stream.
pub(crate) async fn open(
    via: &Portal,
    target: &ActorEntry,
    hops_left: u32,
    bound: Duration,
) -> Result<(Context, MsgStream), DiscoveryError> {
    let hop = via.peer().clone();
    let req = TunnelReq {
        target: target.clone(),
        hops_left,
    };
    let args = to_value(&req).map_err(|e| DiscoveryError::Setup(e.to_string()))?;
    let fut = async {
        let (mut ctx, _) = via.open_context(TUNNEL_FN, args).await?;
        let stream = ctx.open_stream().await?;
        Ok::<_, harrow_portal::Error>((ctx, stream))
    };
    match deadline(bound, fut).await {
        Some(Ok(v)) => Ok(v),
        // The last hop is the target itself, and its link is gone: it has ended.
        Some(Err(e)) if hop == target.id && e.is_closed() => Err(DiscoveryError::Gone(format!(
            "{} has ended: {e}",
            target.id
        ))),
        Some(Err(e)) => Err(DiscoveryError::Unreachable(format!(
            "routed through {hop} to {}: {e}",
            target.id
        ))),
        None => Err(DiscoveryError::Unreachable(format!(
            "no route through {hop} to {} within {bound:?}",
            target.id
        ))),
    }
}

/// The originating side: a `mem` channel whose frames travel through `(ctx, stream)`; the pump
/// runs on the actor's executor until either side ends.
pub(crate) fn channel_through(
    actor: &ActorCtx,
    target: &ActorEntry,
    ctx: Context,
    stream: MsgStream,
) -> Channel {
    let (mine, theirs) = harrow_ipc::mem::pair();
    let peer = target.id.clone();
    actor
        .executor()
        .spawn(async move {
            let why = pump_channel(theirs, stream).await;
            tracing::debug!(%peer, %why, "routed peer link ended");
            drop(ctx);
        })
        .detach();
    mine
}

/// Pumps frames between `channel` and `stream` until either ends; then closes both. Returns
/// why it stopped.
pub(crate) async fn pump_channel(channel: Channel, stream: MsgStream) -> String {
    let config = CodecConfig::default();
    let (tx, mut rx) = channel.split();
    let (stx, mut srx) = stream.split();
    let out = async {
        loop {
            let msg = match rx.recv().await {
                Ok(m) => m,
                Err(e) => return format!("the local side ended: {e}"),
            };
            let frame = match codec::encode(&msg, &config) {
                Ok(f) => f,
                Err(e) => return format!("a frame could not be encoded: {e}"),
            };
            if let Err(e) = stx.send(Value::Bytes(frame)).await {
                return format!("the tunnel ended: {e}");
            }
        }
    };
    let back = async {
        loop {
            let frame = match srx.recv().await {
                Ok(Some(v)) => match v.into_bytes() {
                    Ok(b) => b,
                    Err(other) => {
                        return format!("the tunnel carried a {} item", other.kind_name());
                    }
                },
                Ok(None) => return "the tunnel was closed".to_owned(),
                Err(e) => return format!("the tunnel ended: {e}"),
            };
            let msg = match codec::decode_frame_with(&frame, &config) {
                Ok((m, n)) if n == frame.len() => m,
                Ok(_) => return "the tunnel carried bytes after a frame".to_owned(),
                Err(e) => return format!("the tunnel carried a bad frame: {e}"),
            };
            if let Err(e) = tx.send(msg).await {
                return format!("the local side ended: {e}");
            }
        }
    };
    let why = out.or(back).await;
    tx.close();
    let _ = stx.close().await;
    why
}

/// Pumps stream items between two tunnel streams (a hop that forwards) until either ends.
async fn pump_streams(a: MsgStream, b: MsgStream) -> String {
    let (atx, mut arx) = a.split();
    let (btx, mut brx) = b.split();
    let one = async {
        loop {
            match arx.recv().await {
                Ok(Some(v)) => {
                    if let Err(e) = btx.send(v).await {
                        return format!("downstream ended: {e}");
                    }
                }
                Ok(None) => return "upstream closed".to_owned(),
                Err(e) => return format!("upstream ended: {e}"),
            }
        }
    };
    let other = async {
        loop {
            match brx.recv().await {
                Ok(Some(v)) => {
                    if let Err(e) = atx.send(v).await {
                        return format!("upstream ended: {e}");
                    }
                }
                Ok(None) => return "downstream closed".to_owned(),
                Err(e) => return format!("downstream ended: {e}"),
            }
        }
    };
    let why = one.or(other).await;
    let _ = atx.close().await;
    let _ = btx.close().await;
    why
}

fn routing_err(e: impl std::fmt::Display) -> CallError {
    CallError::new(ErrorKind::Runtime, "RoutingError", e.to_string())
}

/// Serves one hop of a tunnel (the `harrow.discovery:tunnel` context): sets up the next step
/// toward the target, says `started`, then pumps until either side ends.
pub(crate) async fn serve(call: CalleeContext, args: Value) -> Result<Value, CallError> {
    let req: TunnelReq = from_value(args)
        .map_err(|e| CallError::new(ErrorKind::BadArguments, "BadArguments", e.to_string()))?;
    let ctx = crate::current_actor().ok_or_else(|| routing_err("no current actor"))?;
    if req.hops_left == 0 {
        return Err(routing_err(format!(
            "the route to {} took more than {MAX_HOPS} hops",
            req.target.id
        )));
    }
    let bound = ctx.link_config().hello_timeout;
    let down = match next_hop(&ctx, &req.target).await.map_err(routing_err)? {
        Hop::Direct => {
            let mut ch = super::direct_channel(&ctx, &req.target, bound)
                .await
                .map_err(routing_err)?;
            // The peer proved the tree's secret (a socket), or is in this process; the link's
            // own `Hello` runs end to end through the tunnel. Frames of any size may pass.
            ch.end_handshake();
            Down::Channel(ch)
        }
        Hop::Tree(via) => {
            if via.peer() == call.caller() {
                return Err(routing_err(format!(
                    "{} would send the tunnel to {} back to {}",
                    ctx.id(),
                    req.target.id,
                    via.peer()
                )));
            }
            let (c, s) = open(&via, &req.target, req.hops_left - 1, bound)
                .await
                .map_err(routing_err)?;
            Down::Stream(c, s)
        }
    };
    call.started(Value::Null).await?;
    let up = call.open_stream().await?;
    let why = match down {
        Down::Channel(ch) => pump_channel(ch, up).await,
        Down::Stream(c, s) => {
            let why = pump_streams(up, s).await;
            drop(c);
            why
        }
    };
    tracing::debug!(target = %req.target.id, %why, "tunnel hop ended");
    Ok(Value::Null)
}

enum Down {
    Channel(Channel),
    Stream(Context, MsgStream),
}
