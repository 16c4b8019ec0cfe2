//! The link's I/O tasks: the writer drains the outgoing queue into the channel in batches, the
//! reader hands every incoming message to the router.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use harrow_ipc::{ChannelRx, ChannelTx, ErrorKind, Msg, RecvError, RemoteError, SendError};
use tracing::debug;

use super::queue::{Taken, WRITE_BATCH, WriterQueue, quiet};
use super::route::RouteCache;
use super::{LinkEnd, Shared};
use crate::Error;

pub(super) async fn writer(shared: Arc<Shared>, tx: ChannelTx, out: Arc<WriterQueue>) {
    /// However the writer ends (the queue closed, a failed write, the flush bound), nothing more
    /// is queued for it: a later `enqueue` is refused, as it is once the link shut down.
    struct Abandon(Arc<WriterQueue>);
    impl Drop for Abandon {
        fn drop(&mut self) {
            self.0.abandon();
        }
    }
    let _abandon = Abandon(out.clone());
    let run = async {
        let mut batch = VecDeque::with_capacity(WRITE_BATCH);
        // Whatever is queued, up to a batch: byte transports write a batch in one go.
        loop {
            match poll_fn(|cx| out.poll_take(cx, &mut batch, WRITE_BATCH)).await {
                Taken::Closed => break,
                Taken::Unfinished(n) => {
                    if !finish_unfinished(&shared, &tx, n).await {
                        return;
                    }
                }
                Taken::Msgs => {
                    // Acks alone wait for the next message (see `Shared::enqueue_quiet`): a
                    // write and a wake-up of the peer for nothing it acts on.
                    if batch.len() < WRITE_BATCH && batch.iter().all(quiet) {
                        continue;
                    }
                    if !write_batch(&shared, &tx, &mut batch).await {
                        return;
                    }
                    shared.backlog_written(out.wrote());
                }
            }
        }
        // The queue is closed: what was held still goes.
        write_batch(&shared, &tx, &mut batch).await;
    };
    let deadline = async {
        shared.wait_dead().await;
        async_io::Timer::after(shared.config.close_flush_timeout).await;
        debug!(local = %shared.local.id, "writer flush bound reached");
    };
    run.or(deadline).await;
    tx.close();
    shared.writer_done.store(true, Ordering::Release);
    shared.progress.notify_all();
}

/// Writes the rest of `n` messages a push handed to the transport without finishing them
/// ([`Taken::Unfinished`]). False when that failed: the link is then shut down (the peer would
/// miss them).
async fn finish_unfinished(shared: &Arc<Shared>, tx: &ChannelTx, n: u64) -> bool {
    match tx.send_batch(&mut VecDeque::new()).await {
        Ok(()) => {
            shared.written.fetch_add(n, Ordering::AcqRel);
            shared.progress.notify_all();
            true
        }
        Err(e) => {
            let reason = format!("sending to {} failed: {e}", shared.peer.id);
            shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
            false
        }
    }
}

/// Writes `batch` whole. False when the channel is gone (the link is then shut down).
async fn write_batch(shared: &Arc<Shared>, tx: &ChannelTx, batch: &mut VecDeque<Msg>) -> bool {
    if batch.is_empty() {
        return true;
    }
    while !batch.is_empty() {
        let before = batch.len();
        let result = tx.send_batch(batch).await;
        // Sent, plus the one handed back in an error: all left the queue.
        let done = before - batch.len();
        shared.written.fetch_add(done as u64, Ordering::AcqRel);
        if let Err(e) = result
            && !send_failed(shared, tx, e).await
        {
            return false;
        }
    }
    shared.progress.notify_all();
    true
}

/// Deals with a message that could not be sent. False when the channel is gone (the link is then
/// shut down).
async fn send_failed(shared: &Arc<Shared>, tx: &ChannelTx, e: SendError) -> bool {
    if e.is_closed() {
        let reason = format!("sending to {} failed: {e}", shared.peer.id);
        shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
        return false;
    }
    // This one message cannot travel (too large, unencodable): fail its call, not the link.
    let text = e.to_string();
    let msg = e.into_msg();
    debug!(kind = msg.kind_name(), %text, "message could not be sent");
    match msg {
        Msg::Start { cid, .. } => {
            let chan = shared.lock().calls.remove(&cid);
            if let Some(chan) = chan {
                chan.finish(Err(Error::Value(text)));
            }
        }
        // An item of a stream of one of our own calls: that call fails, and the callee is told
        // with a `Cancel`, so that neither side takes a stream missing an item for a whole one.
        Msg::Yield { cid, .. } if cid.0 % 2 == shared.parity => {
            let chan = shared.lock().calls.get(&cid).cloned();
            if let Some(chan) = chan {
                let err = Error::Value(format!(
                    "a stream item for {} was not sent: {text}",
                    chan.func
                ));
                shared.abandon_call(&chan, err);
            }
        }
        // A call's failure too large to travel: its caller still gets one, with what fits.
        Msg::Error {
            cid: Some(cid),
            error,
        } => {
            let _ = tx
                .send(Msg::Error {
                    cid: Some(cid),
                    error: Box::new(shrunk(*error, &text)),
                })
                .await;
        }
        Msg::Started { cid, .. } | Msg::Yield { cid, .. } | Msg::Return { cid, .. } => {
            let err = RemoteError::new(
                ErrorKind::Runtime,
                "SendError",
                text,
                shared.local.id.clone(),
            );
            let _ = tx
                .send(Msg::Error {
                    cid: Some(cid),
                    error: Box::new(err),
                })
                .await;
            // The call is answered (with that failure): a function still running stops, as if
            // cancelled by this actor, and nothing more of it is sent (its caller has moved on,
            // and would never grant the credit a producer waits for).
            shared.stop_served_after_answer(cid);
        }
        _ => {}
    }
    true
}

/// What fits of an error that could not be sent (`why`): its kind, type, source, relay path and
/// canceller, and the start of its message, saying what was left out (its traceback, the errors
/// of a group).
fn shrunk(error: RemoteError, why: &str) -> RemoteError {
    const KEEP: usize = 4096;
    let mut cut = KEEP.min(error.message.len());
    while !error.message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut left_out = Vec::new();
    if cut < error.message.len() {
        left_out.push(format!(
            "all but {cut} of its message's {} bytes",
            error.message.len()
        ));
    }
    if !error.traceback.is_empty() {
        left_out.push("its traceback".to_owned());
    }
    if !error.children.is_empty() {
        left_out.push(format!("its {} nested errors", error.children.len()));
    }
    if left_out.is_empty() {
        left_out.push("nothing".to_owned());
    }
    let message = format!(
        "{} [too large to send ({why}); left out: {}]",
        &error.message[..cut],
        left_out.join(", ")
    );
    RemoteError {
        message,
        traceback: String::new(),
        children: Vec::new(),
        ..error
    }
}

/// What the reader waits for.
enum Next {
    /// What the channel gave.
    Msg(Result<Msg, RecvError>),
    /// Held calls may start now (`hold`).
    Release,
    /// The link is shut down.
    Dead,
}

/// What the reader does once the channel has nothing: `Dead` once the link is shut down, and
/// `Release` once held calls may start, else keep waiting.
fn idle_next(shared: &Shared) -> Poll<Next> {
    if shared.is_dead() {
        Poll::Ready(Next::Dead)
    } else if shared.release_due() {
        Poll::Ready(Next::Release)
    } else {
        Poll::Pending
    }
}

/// The next message; `Dead` once the link is shut down (checked after the channel, so a
/// message already there still goes first), `Release` once held calls may start. A half that
/// can be polled without a future (`mem`) is, so that a wait costs no boxed future; the
/// shutdown and the backlog's shrinking wake the reader through `Shared::reader_waker`, not an
/// event listener.
async fn next_or_dead(shared: &Shared, rx: &mut ChannelRx) -> Next {
    let mut direct = true;
    let polled = poll_fn(|cx| match rx.poll_recv_now(cx) {
        None => {
            direct = false;
            Poll::Ready(Next::Dead)
        }
        Some(Poll::Ready(r)) => Poll::Ready(Next::Msg(r)),
        Some(Poll::Pending) => {
            shared.reader_waker.register(cx.waker());
            idle_next(shared)
        }
    })
    .await;
    if direct {
        return polled;
    }
    let mut recv = pin!(rx.recv());
    poll_fn(|cx| {
        if let Poll::Ready(r) = recv.as_mut().poll(cx) {
            return Poll::Ready(Next::Msg(r));
        }
        shared.reader_waker.register(cx.waker());
        idle_next(shared)
    })
    .await
}

pub(super) async fn reader(shared: Arc<Shared>, mut rx: ChannelRx) {
    let mut routes = RouteCache::default();
    // Messages read so far, published in `received` (this reader is its only writer: a store,
    // not a locked add, per message).
    let mut received = shared.received.load(Ordering::Relaxed);
    'read: loop {
        // What is there already (an in-memory queue's messages, the frames a byte stream's
        // last read brought in), routed without a future per message; then wait. Unless the
        // peer's held calls are at the backlog's bound: then nothing more is read until the
        // backlog shrinks (`hold`).
        while !shared.held_full(&routes.starts)
            && let Some(next) = rx.try_recv_now()
        {
            match next {
                Ok(msg) => {
                    received += 1;
                    shared.received.store(received, Ordering::Relaxed);
                    shared.handle(msg, &mut routes);
                }
                Err(e) => {
                    // What arrived before the failure reaches its calls before the failure.
                    shared.routed(&mut routes);
                    broken(&shared, e);
                    break 'read;
                }
            }
        }
        shared.routed(&mut routes);
        // What the routing handed over (a served call's answer) wakes the peer now, not after
        // a hop through the outlet's waker task.
        shared.reader_idle();
        if shared.held_full(&routes.starts) {
            if !shared.wait_backlog(&routes.starts).await {
                break;
            }
            continue;
        }
        let next = next_or_dead(&shared, &mut rx).await;
        match next {
            Next::Dead => break,
            Next::Release => {}
            Next::Msg(Ok(msg)) => {
                received += 1;
                shared.received.store(received, Ordering::Relaxed);
                shared.reader_busy();
                shared.handle(msg, &mut routes);
            }
            Next::Msg(Err(e)) => {
                broken(&shared, e);
                break;
            }
        }
    }
    shared.reader_idle();
    // The held calls are dropped with the reader's routes: the link is shut down, and their
    // callers are told so by their own end of it.
    shared.held.store(0, Ordering::Relaxed);
    debug!(local = %shared.local.id, "reader stopped");
    shared.reader_done.store(true, Ordering::Release);
    shared.progress.notify_all();
}

/// The channel failed under the reader: the link ends as broken.
fn broken(shared: &Shared, e: RecvError) {
    let reason = match &e {
        RecvError::Closed => format!("the channel to {} closed", shared.peer.id),
        other => format!("reading from {} failed: {other}", shared.peer.id),
    };
    if matches!(e, RecvError::Decode(_)) {
        // The peer broke the protocol (a peer's bug, or a hostile one): said where it is seen.
        tracing::warn!(local = %shared.local.id, peer = %shared.peer.id, %reason,
            "link dropped: malformed input from the peer");
    }
    shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
}

/// Sends a `Heartbeat` when nothing else was written for `heartbeat_interval`, and ends the
/// link as broken when nothing arrived from the peer for `heartbeat_timeout`. Stops when the
/// link is shut down.
pub(super) async fn heartbeat(shared: Arc<Shared>) {
    let interval = shared.config.heartbeat_interval;
    let timeout = shared.config.heartbeat_timeout;
    // Checked at the send period, or often enough for the timeout when nothing is sent.
    let tick = match (interval, timeout) {
        (Some(i), Some(t)) => i.min(t / 4),
        (Some(i), None) => i,
        (None, Some(t)) => t / 4,
        (None, None) => return,
    }
    .max(Duration::from_millis(1));
    let run = async {
        let mut seen = shared.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        let mut last_sent = Instant::now();
        let mut last_tick = Instant::now();
        let mut written_seen = shared.written.load(Ordering::Relaxed);
        loop {
            async_io::Timer::after(tick).await;
            let now = Instant::now();
            // This side's own executor was stalled (a served function blocked its thread): what
            // the peer sent meanwhile may not be read yet, so the silence is not the peer's.
            // So is a reader that stopped reading while the backlog shrinks (`hold`).
            if now.duration_since(last_tick)
                > tick
                    .saturating_mul(2)
                    .saturating_add(Duration::from_millis(50))
                || shared.reading_stopped.load(Ordering::Relaxed)
            {
                quiet_since = now;
            }
            last_tick = now;
            if let Some(i) = interval {
                // Any message tells the peer this side is alive: a heartbeat is sent only when
                // nothing else was written for an interval.
                let written = shared.written.load(Ordering::Relaxed);
                if written != written_seen {
                    written_seen = written;
                    last_sent = now;
                } else if now.duration_since(last_sent) + tick / 2 >= i {
                    shared.enqueue(Msg::Heartbeat);
                    last_sent = now;
                }
            }
            let count = shared.received.load(Ordering::Relaxed);
            if count != seen {
                seen = count;
                quiet_since = now;
            } else if let Some(t) = timeout {
                let quiet = now.duration_since(quiet_since);
                if quiet >= t {
                    let reason = format!(
                        "no message or heartbeat from {} for {quiet:?} (heartbeat timeout {t:?}): \
                         the peer is unreachable (network partition?) or frozen",
                        shared.peer.id
                    );
                    tracing::warn!(local = %shared.local.id, %reason, "link presumed dead");
                    shared.shutdown(LinkEnd::Broken(reason.clone()), reason, false);
                    return;
                }
            }
        }
    };
    run.or(shared.wait_dead()).await;
}
