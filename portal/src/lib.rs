//! The protocol engine on both ends of one harrow channel: remote calls, contexts, bidirectional
//! streams with flow control, and the cancel protocol (`docs/PROTOCOL.md` describes the wire).
//!
//! A [`Link`] runs over one [`Channel`](harrow_ipc::Channel). It is symmetric: it serves the
//! peer's calls with a local [`Resolver`] (callee side) and carries local calls to the peer
//! through a [`Portal`] (caller side).
//!
//! - Unary call: [`Portal::run`] (`Start` -> `StartAck` -> `Return | Error`); typed, declared
//!   once as an [`Endpoint`]: [`Portal::call`] and [`FnRegistry::serve`].
//! - Context: [`Portal::open_context`] returns once the callee called
//!   [`CalleeContext::started`]; then an optional bidirectional [`MsgStream`] (credit flow control,
//!   see [`MsgStream`]), then [`Context::result`]. Typed, declared once as a
//!   [`ContextEndpoint`]: [`Portal::open`] and [`FnRegistry::serve_context`], with
//!   [`TypedContext`], [`TypedCalleeContext`] and [`TypedStream`].
//! - Cancellation: [`Context::cancel`], dropping a call or context (drop is cancel),
//!   [`Portal::cancel_actor`], [`Link::cancel_calls`]. A cancel asked for by the caller itself is
//!   quiet for that caller; one asked for by a third actor surfaces as `ContextCancelled` naming it.
//! - Failures of served functions (errors and panics) become [`RemoteError`](harrow_ipc::RemoteError)s
//!   for the caller; errors relayed with `?` through intermediate actors keep their source.
//! - Values nested deeper than [`DEFAULT_MAX_DEPTH`](harrow_ipc::DEFAULT_MAX_DEPTH) are refused
//!   where they enter, on every transport: arguments ([`Portal::run`], [`Portal::open_context`]),
//!   [`CalleeContext::started`] and stream items ([`MsgStream::send`]) fail with
//!   [`Error::Value`]; a served function's too-deep result reaches its caller as a `Runtime`
//!   remote error.
//! - Over byte transports the link lifts the channel's small pre-handshake frame limit once the
//!   peer's `Hello` is checked (see [`ChannelRx::end_handshake`](harrow_ipc::ChannelRx::end_handshake)).
//! - A link's tasks run on the executor given to [`Link::establish`]. With
//!   [`Link::establish_with_reader`], its reader (every incoming message goes through it) is
//!   handed back as a [`LinkReader`] for the caller to poll, on the executor's thread beside it,
//!   say: a message then wakes that thread with no task to schedule.
//!
//! ```
//! use std::sync::Arc;
//! use harrow_portal::{Endpoint, FnRegistry, Link, LinkConfig, LocalInfo};
//! use harrow_portal::ipc::{mem, ActorId, Value};
//!
//! const ADD: Endpoint<(i64, i64), i64> = Endpoint::new("math:add");
//!
//! let exec = Arc::new(async_executor::Executor::new());
//! async_io::block_on(exec.run(async {
//!     let mut reg = FnRegistry::new();
//!     reg.serve(ADD, |(a, b)| async move { Ok(a + b) }).unwrap();
//!     let (ca, cb) = mem::pair();
//!     let info = |name: &str| LocalInfo { id: ActorId::new(name), backend: "thread".into() };
//!     let (caller, _callee) = futures_lite::future::zip(
//!         Link::establish(ca, info("caller"), None, &exec, LinkConfig::default()),
//!         Link::establish(cb, info("callee"), Some(Arc::new(reg)), &exec, LinkConfig::default()),
//!     )
//!     .await;
//!     let caller = caller.unwrap(); // keep the Link: dropping it closes the link
//!     let portal = caller.portal();
//!     let sum = portal.call(ADD, &(2, 3)).await.unwrap();
//!     assert_eq!(sum, 5);
//!     let err = portal.run("math:nope", Value::Null).await.unwrap_err();
//!     assert!(err.to_string().contains("math:nope"));
//! }));
//! ```
#![forbid(unsafe_code)]

mod callee;
mod caller;
mod chan;
mod endpoint;
mod error;
mod link;
mod panic_trace;
mod registry;
mod typed;

pub use callee::{CallError, CallFuture, CalleeContext, Invocation, Resolver, current_call};
pub use caller::{
    CancelRequest, Context, ContextCanceller, MsgStream, OneWayStream, Portal, StreamRx, StreamTx,
};
pub use endpoint::Endpoint;
pub use error::{Error, Result};
pub use harrow_ipc as ipc;
pub use link::{Executor, Link, LinkConfig, LinkEnd, LinkReader, LocalInfo, PeerInfo};
pub use registry::{FnRegistry, StateRegistry};
pub use typed::{
    ContextEndpoint, StreamEndpoint, TypedCalleeContext, TypedContext, TypedOneWayStream, TypedRx,
    TypedStream, TypedTx,
};
