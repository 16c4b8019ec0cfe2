//! The seam between a Python context call and the protocol: what `ctx.started()`,
//! `ctx.open_stream()` and the stream methods do on the Rust side.
//!
//! The interpreter thread blocks on these futures (with its GIL released) and wakes up early to
//! raise `harrow.Cancelled` when the call is cancelled meanwhile. [`PyResolver`](crate::PyResolver)
//! implements them over the portal's `CalleeContext`; tests can implement them over channels.

use std::future::Future;
use std::pin::Pin;

use harrow_ipc::Value;

/// A future a host method returns; the error is a message raised in Python as
/// `harrow.HarrowError`.
pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + 'a>>;

/// The Rust side of one context call (`ctx` in Python).
pub trait CallHost: Send + Sync + 'static {
    /// `ctx.started(value)`: sends the context's first value.
    fn started(&self, value: Value) -> HostFuture<'_, ()>;
    /// `ctx.open_stream()`: opens this side of the context's stream.
    fn open_stream(&self) -> HostFuture<'_, Box<dyn StreamHost>>;

    /// Whether the caller has cancelled this call. A host operation that failed because of
    /// that raises `harrow.Cancelled` in Python rather than a `harrow.HarrowError`.
    fn is_cancelled(&self) -> bool {
        false
    }

    /// The Python function has returned or raised; what is left is converting its outcome
    /// (formatting a traceback can take a while in a fresh interpreter). A cancelled call gets
    /// time for that, so that what it ended with is not replaced by the cancel.
    fn user_code_ended(&self) {}

    /// Whether [`answer_now`](Self::answer_now) takes a unary call's answer. When it does, the
    /// call's future does not watch for the reply before its thread parks (see `crate::spin`):
    /// the answer no longer goes through it.
    fn answers_now(&self) -> bool {
        false
    }

    /// A unary call's answer, straight from the interpreter thread to the caller, without the
    /// hop through the actor's runtime thread (which the call's future would take). `Err`
    /// hands the answer back when this host cannot (the default): it then goes through the
    /// call's future as usual.
    fn answer_now(&self, answer: crate::Answer) -> Result<(), crate::Answer> {
        Err(answer)
    }
}

/// How a [`StreamHost::send`] error begins when the peer stopped reading the stream (closed or
/// dropped its receiving side: [`harrow_portal::Error::NotRead`], whose message begins so). A
/// generator streaming its items takes it as the end of its stream: it is closed, and the call
/// returns.
pub(crate) const NOT_READ: &str = "stream not read: ";

/// The Rust side of one open stream (`stream` in Python).
pub trait StreamHost: Send + 'static {
    /// `stream.send(value)`. An error beginning with `"stream not read: "`: the peer reads no
    /// more.
    fn send(&mut self, value: Value) -> HostFuture<'_, ()>;
    /// `stream.recv()`: the next item, `None` once the peer stopped its side.
    fn recv(&mut self) -> HostFuture<'_, Option<Value>>;
    /// `stream.close()`: finishes this side. Idempotent.
    fn close(&mut self) -> HostFuture<'_, ()>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_portal_stream_not_read_begins_with_the_marker() {
        let e = harrow_portal::Error::NotRead("gone".into());
        assert!(e.to_string().starts_with(super::NOT_READ), "{e}");
        // The Python module looks for the same marker (`_NOT_READ`).
        let py = include_str!("ffi/harrow.py");
        assert!(
            py.contains(&format!("_NOT_READ = {:?}", super::NOT_READ)),
            "harrow.py's _NOT_READ is not {:?}",
            super::NOT_READ
        );
    }
}
