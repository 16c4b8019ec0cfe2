//! [`DedicatedThread`]: an OS thread whose end can be awaited with a bound, for backends.

use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::Exit;

/// How a bounded wait for a [`DedicatedThread`] ended.
///
/// Not a child's [`Exit`]: this is about one OS thread and carries what its closure returned,
/// which a backend turns into the child's `Exit` (with `From` when the closure returns `()`).
#[derive(Debug)]
pub enum Joined<T> {
    /// The thread is still running after the bound.
    Running,
    /// The thread's closure returned this.
    Finished(T),
    /// The thread's closure panicked (the panic's message).
    Panicked(String),
    /// The thread was already joined by an earlier call.
    AlreadyJoined,
}

/// A backend whose actor thread returns nothing reports its join as a child [`Exit`]: a thread
/// still running is `Running`, one that returned (or was joined before) `Exited`, one that
/// panicked `Failed` with the panic's message.
impl From<Joined<()>> for Exit {
    fn from(joined: Joined<()>) -> Exit {
        match joined {
            Joined::Running => Exit::Running,
            Joined::Finished(()) | Joined::AlreadyJoined => Exit::Exited,
            Joined::Panicked(why) => Exit::Failed(why),
        }
    }
}

/// A named OS thread whose end can be awaited from async code, with a bound.
///
/// Every backend has one of these per actor: the actor's own thread. Waiting is cancel-safe: the
/// join handle stays inside until the thread is known to have ended, so a wait dropped halfway
/// (a teardown step cut short by an escalation) loses nothing and a later wait still sees the
/// thread.
#[derive(Debug)]
pub struct DedicatedThread<T> {
    name: String,
    handle: Option<JoinHandle<T>>,
    /// Closed (every sender dropped) once the thread's closure has returned or unwound.
    done: async_channel::Receiver<()>,
}

impl<T: Send + 'static> DedicatedThread<T> {
    /// Starts `f` on a new OS thread named `name` (Linux keeps the first 15 bytes).
    pub fn spawn(
        name: impl Into<String>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::spawn_with(std::thread::Builder::new(), name, f)
    }

    /// [`spawn`](Self::spawn) with a builder (for a stack size); its name is replaced by `name`.
    pub fn spawn_with(
        builder: std::thread::Builder,
        name: impl Into<String>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let (done_tx, done) = async_channel::bounded::<()>(1);
        let handle = builder.name(thread_name(&name)).spawn(move || {
            // Dropped when the closure ends, however it ends (panics included).
            let _done = done_tx;
            f()
        })?;
        Ok(DedicatedThread {
            name,
            handle: Some(handle),
            done,
        })
    }

    /// The name the thread was given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the thread's closure has ended (or the thread was joined).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits at most `bound` for the thread to end, then joins it.
    pub async fn join(&mut self, bound: Duration) -> Joined<T> {
        if self.handle.is_none() {
            return Joined::AlreadyJoined;
        }
        // Err(Closed) once the thread dropped its sender.
        let ended = crate::scope::move_on_after(bound, self.done.recv()).await;
        if ended.is_none() {
            return Joined::Running;
        }
        let Some(handle) = self.handle.take() else {
            return Joined::AlreadyJoined;
        };
        // The closure has ended: this join returns at once.
        match handle.join() {
            Ok(v) => Joined::Finished(v),
            Err(panic) => Joined::Panicked(panic_message(&*panic)),
        }
    }

    /// [`join`](Self::join) for a synchronous caller: blocks the calling thread (at most
    /// `bound`). Not for use inside an executor's task.
    pub fn join_blocking(&mut self, bound: Duration) -> Joined<T> {
        async_io::block_on(self.join(bound))
    }

    /// Gives up on the thread: it runs on, detached. Returns whether it was still running.
    pub fn detach(&mut self) -> bool {
        match self.handle.take() {
            Some(h) => !h.is_finished(),
            None => false,
        }
    }
}

/// Linux limits thread names to 15 bytes: keep the start, on a character boundary.
pub fn thread_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if out.len() + c.len_utf8() > 15 {
            break;
        }
        out.push(c);
    }
    out
}

/// The message of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn a_join_cut_short_keeps_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut t = DedicatedThread::spawn("waiter", move || rx.recv().is_ok()).unwrap();
        let cut = block_on(crate::move_on_after(
            Duration::from_millis(10),
            t.join(Duration::from_secs(30)),
        ));
        assert!(cut.is_none());
        assert!(matches!(
            block_on(t.join(Duration::from_millis(10))),
            Joined::Running
        ));
        tx.send(()).unwrap();
        assert!(matches!(
            block_on(t.join(Duration::from_secs(30))),
            Joined::Finished(true)
        ));
        assert!(matches!(
            block_on(t.join(Duration::from_secs(1))),
            Joined::AlreadyJoined
        ));
    }

    #[test]
    fn a_panic_is_reported() {
        let mut t = DedicatedThread::spawn("boom", || -> () { panic!("on purpose") }).unwrap();
        match block_on(t.join(Duration::from_secs(30))) {
            Joined::Panicked(m) => assert!(m.contains("on purpose"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_blocking_join_is_bounded_and_keeps_the_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut t = DedicatedThread::spawn("blocking", move || rx.recv().is_ok()).unwrap();
        assert!(matches!(
            t.join_blocking(Duration::from_millis(10)),
            Joined::Running
        ));
        tx.send(()).unwrap();
        assert!(matches!(
            t.join_blocking(Duration::from_secs(30)),
            Joined::Finished(true)
        ));
        assert!(matches!(
            t.join_blocking(Duration::from_secs(1)),
            Joined::AlreadyJoined
        ));
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes() {
        assert_eq!(thread_name("a-very-long-actor-name"), "a-very-long-act");
        assert_eq!(thread_name("ééééééééé"), "ééééééé");
    }
}
