//! The caller side: [`Portal`], [`Context`], [`MsgStream`].

use std::time::Duration;

use harrow_ipc::{ActorId, Cid, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Result;

/// A handle for calling functions in the peer actor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Portal {
    _private: (),
}

impl Portal {
    /// The actor this portal calls.
    pub fn peer(&self) -> &ActorId {
        unimplemented!("portal helper")
    }

    /// Runs `func` (`"module:function"`) in the peer with `args` and returns its result.
    ///
    /// Dropping the future before it completes sends `Cancel` to the peer without blocking.
    pub async fn run(&self, func: &str, args: Value) -> Result<Value> {
        let _ = (func, args);
        unimplemented!("portal helper")
    }

    /// [`run`](Portal::run) with typed arguments and result, converted through serde.
    pub async fn run_typed<A: Serialize, R: DeserializeOwned>(
        &self,
        func: &str,
        args: &A,
    ) -> Result<R> {
        let _ = (func, args);
        unimplemented!("portal helper")
    }

    /// Opens a context: starts `func` in the peer and waits for its `started` value.
    ///
    /// Dropping the returned [`Context`] before its result arrived sends `Cancel`.
    pub async fn open_context(&self, func: &str, args: Value) -> Result<(Context, Value)> {
        let _ = (func, args);
        unimplemented!("portal helper")
    }

    /// Asks the peer to cancel its whole actor runtime. True when it acked within `timeout`;
    /// false on timeout or when the channel is already closed. Never waits longer than `timeout`.
    pub async fn cancel_actor(&self, timeout: Duration) -> bool {
        let _ = timeout;
        unimplemented!("portal helper")
    }

    /// Whether the link under this portal has ended.
    pub fn is_closed(&self) -> bool {
        unimplemented!("portal helper")
    }
}

/// The caller's end of a remote context.
#[derive(Debug)]
pub struct Context {
    _private: (),
}

impl Context {
    /// The call id.
    pub fn cid(&self) -> Cid {
        unimplemented!("portal helper")
    }

    /// Opens the bidirectional stream of this context.
    pub async fn open_stream(&mut self) -> Result<MsgStream> {
        unimplemented!("portal helper")
    }

    /// Waits for the context's final result (after the callee returned).
    pub async fn result(self) -> Result<Value> {
        unimplemented!("portal helper")
    }

    /// Cancels the context and waits (bounded by the link's `cancel_timeout`) for the callee to
    /// confirm. A cancel by its own caller is quiet: this returns `Ok(())` and the stream ends.
    pub async fn cancel(&self) -> Result<()> {
        unimplemented!("portal helper")
    }
}

/// A bidirectional stream of values inside a context (either side).
#[derive(Debug)]
pub struct MsgStream {
    _private: (),
}

impl MsgStream {
    /// Sends one item, waiting for credit when the peer's window is full.
    /// Fails after [`close`](MsgStream::close) or when the peer is gone.
    pub async fn send(&self, value: Value) -> Result<()> {
        let _ = value;
        unimplemented!("portal helper")
    }

    /// Receives the next item; `Ok(None)` once the peer stopped its side.
    pub async fn recv(&mut self) -> Result<Option<Value>> {
        unimplemented!("portal helper")
    }

    /// Finishes this side of the stream (`Stop`). Idempotent.
    pub async fn close(&self) -> Result<()> {
        unimplemented!("portal helper")
    }

    /// Splits into a sending half (cloneable) and a receiving half.
    pub fn split(self) -> (StreamTx, StreamRx) {
        unimplemented!("portal helper")
    }
}

/// The sending half of a [`MsgStream`].
#[derive(Clone, Debug)]
pub struct StreamTx {
    _private: (),
}

impl StreamTx {
    /// See [`MsgStream::send`].
    pub async fn send(&self, value: Value) -> Result<()> {
        let _ = value;
        unimplemented!("portal helper")
    }

    /// See [`MsgStream::close`].
    pub async fn close(&self) -> Result<()> {
        unimplemented!("portal helper")
    }
}

/// The receiving half of a [`MsgStream`].
#[derive(Debug)]
pub struct StreamRx {
    _private: (),
}

impl StreamRx {
    /// See [`MsgStream::recv`].
    pub async fn recv(&mut self) -> Result<Option<Value>> {
        unimplemented!("portal helper")
    }
}
