//! The wire of harrow: the messages actors exchange, the values they carry, and the channels
//! that move them.
//!
//! Every actor-to-actor exchange is a sequence of [`Msg`] on a [`Channel`]. Two transports honour
//! the same channel contract: [`mem`] passes messages through a flume pair without encoding them
//! (for actors that share an address space), and [`unix`] frames them with the [`codec`] over a
//! Unix socket. A dropped or dead peer turns every pending and later `recv` into
//! [`RecvError::Closed`], promptly.
//!
//! ```
//! use harrow_ipc::{mem, Msg};
//! # futures_lite::future::block_on(async {
//! let (a, b) = mem::pair();
//! a.send(Msg::CancelAck).await.unwrap();
//! assert_eq!(b.recv().await.unwrap(), Msg::CancelAck);
//! drop(a);
//! assert!(b.recv().await.unwrap_err().is_closed());
//! # });
//! ```
#![forbid(unsafe_code)]

mod channel;
pub mod codec;
pub mod mem;
mod msg;
mod value;

pub use channel::{BoxFuture, Channel, ChannelRx, ChannelTx, RecvError, RecvHalf, SendError, SendHalf};
pub use msg::{
    ActorId, CallKind, Cid, ErrorKind, FnPath, FnPathError, Msg, PROTOCOL_VERSION, RemoteError,
};
pub use value::Value;
