//! The wire of harrow: the messages actors exchange, the values they carry, and the channels
//! that move them.
//!
//! Every actor-to-actor exchange is a sequence of [`Msg`] on a [`Channel`]. The transports honour
//! the same channel contract: [`mem`] passes messages through an in-memory queue without encoding them
//! (for actors that share an address space), `shm` (Linux) frames them with the [`codec`] through
//! rings in memory shared by two processes of one host, and [`unix`] frames them over a Unix
//! socket. [`stream`] frames them over any pair of async byte streams (a launched program's
//! pipes, a socket). A dropped or dead peer turns every pending and later `recv` into
//! [`RecvError::Closed`], promptly.
//!
//! Payloads are [`Value`]s; typed code converts its serde types with [`to_value`] and
//! [`from_value`].
//!
//! ```
//! use harrow_ipc::{mem, Msg};
//! # futures_lite::future::block_on(async {
//! let (a, b) = mem::pair();
//! a.send(Msg::CancelAck { teardown_ms: None }).await.unwrap();
//! assert_eq!(b.recv().await.unwrap(), Msg::CancelAck { teardown_ms: None });
//! drop(a);
//! assert!(b.recv().await.unwrap_err().is_closed());
//! # });
//! ```
// No unsafe code but one call into libc (`park::spin::this_cpu`) and the mapping of and copies
// through a shared-memory segment (`shm`), allowed there alone.
#![deny(unsafe_code)]

mod channel;
pub mod codec;
pub mod mem;
mod msg;
pub mod park;
mod serde_value;
#[cfg(target_os = "linux")]
pub mod shm;
pub mod stream;
pub mod unix;
mod value;
pub mod wait;

pub use channel::{
    BoxFuture, Channel, ChannelRx, ChannelTx, RecvError, RecvHalf, SendError, SendHalf, SentNow,
};
pub use msg::{
    ActorId, CallKind, Cid, ErrorKind, FnPath, FnPathError, Msg, PROTOCOL_VERSION, REFUSED_TYPE,
    RemoteError,
};
pub use serde_value::{ValueError, from_value, from_value_ref, to_value};
pub use value::{DEFAULT_MAX_DEPTH, Value};

/// An on/off knob from the environment: on unless `var` is set to `0` (spaces around it
/// ignored). harrow's switches that turn a fast path off for comparisons read this way
/// (`HARROW_PROCESS_SHM`, `HARROW_SUBINT_CODRIVE`, ...).
pub fn env_switch(var: &str) -> bool {
    switch_on(std::env::var_os(var).as_deref())
}

/// An [`env_switch`]'s reading of its variable's value (`None`: unset).
fn switch_on(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_none_or(|v| v.to_str().is_none_or(|v| v.trim() != "0"))
}

/// Any failure of this crate, for callers that do not need to know which layer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No message could be received.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Bytes could not be decoded into a message.
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
    /// A conversion to or from [`Value`] failed.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A function path did not parse.
    #[error(transparent)]
    FnPath(#[from] FnPathError),
    /// A transport could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn a_switch_is_off_only_when_set_to_zero() {
        assert!(super::switch_on(None), "unset: on");
        for off in ["0", " 0\n"] {
            assert!(!super::switch_on(Some(OsStr::new(off))), "{off:?}: off");
        }
        for on in ["1", "", "no", "00"] {
            assert!(super::switch_on(Some(OsStr::new(on))), "{on:?}: on");
        }
    }
}
