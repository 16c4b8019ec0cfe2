//! Where a served function panicked: the backtrace for its `Error` message.
//!
//! A panic's backtrace exists only inside the panic hook, so the portal chains a hook (installed
//! once, on the first served call; the hook found there still runs, unchanged) that records the
//! message, location and backtrace into a thread-local, but only while a served call's future is
//! being polled on that thread. Everything else panics exactly as before.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    static WATCHING: Cell<u32> = const { Cell::new(0) };
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if WATCHING.with(Cell::get) > 0 {
                // The location is always kept (it is in `info`); the backtrace only when asked
                // for (RUST_BACKTRACE / RUST_LIB_BACKTRACE, as for any panic).
                let bt = std::backtrace::Backtrace::capture();
                let trace = if bt.status() == std::backtrace::BacktraceStatus::Captured {
                    format!("{info}\n{bt}")
                } else {
                    info.to_string()
                };
                LAST.with(|l| *l.borrow_mut() = Some(trace));
            }
            previous(info);
        }));
    });
}

/// Polls `F` with panic recording on; see [`take`].
pub(crate) struct Watched<F> {
    inner: F,
}

impl<F> Watched<F> {
    pub(crate) fn new(inner: F) -> Self {
        install();
        Watched { inner }
    }
}

impl<F: Future + Unpin> Future for Watched<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        struct Unwatch;
        impl Drop for Unwatch {
            fn drop(&mut self) {
                WATCHING.with(|w| w.set(w.get().saturating_sub(1)));
            }
        }
        WATCHING.with(|w| w.set(w.get() + 1));
        let _unwatch = Unwatch;
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// The trace of the last panic recorded on this thread, if any (taken: a second call is `None`).
pub(crate) fn take() -> Option<String> {
    LAST.with(|l| l.borrow_mut().take())
}
