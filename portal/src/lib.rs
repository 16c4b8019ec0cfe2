//! The protocol engine on both ends of one harrow channel: remote calls, contexts, bidirectional
//! streams with flow control, and the cancel protocol (DESIGN.md §3).
//!
//! A [`Link`] runs over one [`Channel`](harrow_ipc::Channel). It is symmetric: it serves the
//! peer's calls with a local [`Resolver`] (callee side) and carries local calls to the peer
//! through a [`Portal`] (caller side).
#![forbid(unsafe_code)]

mod callee;
mod caller;
mod error;
mod link;
mod registry;

pub use callee::{CallError, CallFuture, CalleeContext, Invocation, Resolver};
pub use caller::{Context, MsgStream, Portal, StreamRx, StreamTx};
pub use error::{Error, Result};
pub use harrow_ipc as ipc;
pub use link::{Executor, Link, LinkConfig, LinkEnd, LocalInfo, PeerInfo};
pub use registry::FnRegistry;
