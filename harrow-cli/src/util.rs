//! Small helpers shared by the commands.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// A boxed future, for running a varying set of futures at once.
pub(crate) type Job<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs every future concurrently on the current task; returns their outputs in order.
pub(crate) async fn join_all<T>(mut futs: Vec<Job<'_, T>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A duration for people: `412 µs`, `12.3 ms`, `1.52 s`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Waits `d` on the current actor's executor.
pub(crate) async fn pause(d: Duration) {
    harrow::move_on_after(d, std::future::pending::<()>()).await;
}
