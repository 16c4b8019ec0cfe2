//! [`run_root`]: the root actor of a process tree, and the only owner of SIGINT.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_lite::FutureExt;
use harrow_ipc::ActorId;
use harrow_portal::{Executor, LinkConfig, Resolver};

use crate::actor::ActorCtx;
use crate::backend::Timeouts;
use crate::beside::{Beside, Handoff};
use crate::error::{BoxError, NurseryError};
use crate::nursery::{ActorNursery, run_nursery};

/// How the root actor is set up.
#[derive(Clone)]
#[non_exhaustive]
pub struct RootConfig {
    /// The root actor's name (default `"root"`).
    pub name: String,
    /// Teardown bounds for the root's children (and, by default, the whole tree).
    pub timeouts: Timeouts,
    /// Whether the root installs its SIGINT handling (default true). Turn it off when the
    /// program already handles SIGINT or runs several roots.
    pub handle_sigint: bool,
    /// Functions the root serves to its children, if any.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Link tunables.
    pub link_config: LinkConfig,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            name: "root".into(),
            timeouts: Timeouts::default(),
            handle_sigint: true,
            resolver: None,
            link_config: LinkConfig::default(),
        }
    }
}

impl fmt::Debug for RootConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootConfig")
            .field("name", &self.name)
            .field("timeouts", &self.timeouts)
            .field("handle_sigint", &self.handle_sigint)
            .finish_non_exhaustive()
    }
}

impl RootConfig {
    /// Sets the teardown bounds.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Turns SIGINT handling on or off.
    pub fn handle_sigint(mut self, on: bool) -> Self {
        self.handle_sigint = on;
        self
    }

    /// Sets the root actor's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// Runs the root actor on the calling thread: builds its executor, opens its nursery, runs
/// `body`, and returns after every actor of the tree has exited or been reported leaked.
///
/// With [`RootConfig::handle_sigint`], the first SIGINT cancels the whole tree gracefully and a
/// second one makes every teardown skip to the hard kill; the result is then an error with
/// [`NurseryError::is_interrupted`] (exit code 130 by convention, see [`exit_code`]), also when
/// the SIGINT came as the root was ending (its body had returned). Once no root is running,
/// SIGINT takes its default action again (the process ends).
///
/// A panic in `body` fails the nursery as its body's error would (one-cancels-all, the tree torn
/// down within the ladder's bounds), then goes on out of `run_root` once everything the root
/// created is released.
///
/// ```
/// use harrow_runtime_core::{run_root, RootConfig};
/// let v = run_root(RootConfig::default().handle_sigint(false), |_nursery| async { Ok(42) });
/// assert_eq!(v.unwrap(), 42);
/// ```
pub fn run_root<T, F, Fut>(config: RootConfig, body: F) -> Result<T, NurseryError>
where
    F: FnOnce(ActorNursery) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let id = ActorId::new(config.name.clone());
    let span = tracing::info_span!("actor", name = %id.name, uid = %id.uid, backend = "root");
    let _entered = span.enter();
    let exec: Executor = Arc::new(async_executor::Executor::new());
    // The readers of the root's links to its children run beside its executor, on this thread
    // (see `crate::beside`).
    let readers = Handoff::new();
    let ctx = ActorCtx::new(
        id,
        "root",
        exec.clone(),
        config.timeouts,
        config.link_config.clone(),
        config.resolver.clone(),
        crate::discovery::Discovery::for_root(),
        Some(readers.clone()),
    );
    let _current = ctx.enter();
    crate::discovery::init_root(&ctx);
    let nursery = ActorNursery::new_root(ctx.clone());
    let sigint = if config.handle_sigint {
        match sigint::subscribe() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGINT handler; Ctrl-C will not cancel the tree");
                None
            }
        }
    } else {
        None
    };
    let watch_nursery = nursery.clone();
    let watch_ctx = ctx.clone();
    // The subscription stays in this frame, so it ends with `run_root` whatever becomes of the
    // watcher task; the task only holds its receiving end.
    let sigint_rx = sigint.as_ref().map(|s| s.receiver());
    // How many SIGINTs the watcher took: one that came while the tree was already ending (the
    // nursery's outcome taken) still makes the root's outcome an interruption.
    let sigints = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher_sigints = sigints.clone();
    let watcher = async move {
        let Some(sigint_rx) = sigint_rx else {
            return std::future::pending::<()>().await;
        };
        let mut seen = 0;
        while sigint_rx.recv().await.is_ok() {
            seen += 1;
            watcher_sigints.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if seen == 1 {
                tracing::warn!("SIGINT: cancelling the actor tree (again to force)");
                watch_nursery.interrupt();
            } else {
                tracing::warn!("second SIGINT: hard-killing what is left");
                watch_ctx.escalation().cancel();
            }
        }
        std::future::pending::<()>().await
    };
    let self_cancel_nursery = nursery.clone();
    let self_cancel_ctx = ctx.clone();
    let self_cancel = async move {
        self_cancel_ctx.self_cancel_token().cancelled().await;
        tracing::debug!(canceller = ?self_cancel_ctx.self_canceller(), "root cancelled by a child");
        if let Some(canceller) = self_cancel_ctx.self_canceller() {
            self_cancel_ctx.discovery().cancel_peer_calls(&canceller);
        }
        self_cancel_nursery.cancel_all();
    };
    // A panic in the body is the body's failure while the tree is torn down (every child
    // stopped, every resource released), and is resumed once `run_root` has cleaned up: a
    // panicking body must not leave its children running.
    let panicked: Arc<std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>> = Arc::default();
    let body_panic = panicked.clone();
    // (A panic while the body's future is polled unwinds out of the `block_on` below and is
    // caught there: no cost on each poll of the body.)
    let main = run_nursery(nursery, move |n| {
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(n)));
        async move {
            match made {
                Ok(fut) => fut.await,
                Err(payload) => {
                    let text = crate::thread::panic_message(&*payload);
                    *body_panic.lock().unwrap_or_else(|p| p.into_inner()) = Some(payload);
                    Err(format!("the root's body {text}").into())
                }
            }
        }
    });
    let root_ctx = ctx.clone();
    let teardown_ctx = ctx.clone();
    // The root's links to process children are sockets: its thread sleeps in an epoll instance
    // that watches them directly (timers and other descriptors: async-io's own thread).
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        harrow_ipc::park::block_on(Beside::with_tasks(
            async move {
                let watcher = exec_spawn(&ctx, watcher);
                let self_cancel = exec_spawn(&ctx, self_cancel);
                let r = main.await;
                wind_down(&ctx).await;
                drop(watcher);
                drop(self_cancel);
                r
            },
            &exec,
            &readers,
        ))
    }));
    let result = match ran {
        Ok(r) => r,
        Err(payload) => {
            // The body panicked as it was polled: the unwinding dropped its future and its
            // nursery, whose drop handed the children's teardown to the executor (tracked).
            // That teardown runs to its end, within its bound, before the panic goes on: on
            // the executor alone (the links' readers ran beside it, so children that do not
            // answer in time are killed by the ladder).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                async_io::block_on(exec.run(wind_down(&teardown_ctx)))
            }));
            *panicked.lock().unwrap_or_else(|p| p.into_inner()) = Some(payload);
            Err(NurseryError::new(None))
        }
    };
    root_ctx.discovery().release();
    let root_id = root_ctx.id().clone();
    drop(root_ctx);
    // Cancelled tasks still queued hold the actor's context (and so the executor): run the queue
    // dry so that they drop their futures now.
    while exec.try_tick() {}
    // A SIGINT taken while this root ran, the last ones included (the watcher may have ended
    // before it read them), is reported: never a Ctrl-C that neither ended the process nor
    // showed in the outcome.
    let interrupted = sigints.load(std::sync::atomic::Ordering::SeqCst) > 0
        || sigint
            .as_ref()
            .is_some_and(|s| s.receiver().try_recv().is_ok());
    drop(sigint);
    let payload = panicked.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
    match result {
        Ok(_) if interrupted => {
            let mut err = NurseryError::new(Some(root_id));
            err.interrupted = true;
            Err(err)
        }
        Err(mut err) if interrupted => {
            err.interrupted = true;
            Err(err)
        }
        other => other,
    }
}

/// The root's last steps once its nursery has ended: the teardowns handed to its executor
/// (detached ones, a dropped nursery's) run to their end, within their bound, and its discovery
/// shuts down.
async fn wind_down(ctx: &ActorCtx) {
    ctx.wait_tracked(crate::nursery::teardown_bound(&ctx.timeouts()))
        .await;
    ctx.discovery()
        .shutdown(ctx.link_config().close_flush_timeout)
        .await;
}

/// Runs a root on a thread of its own and returns at once with a [`RootHandle`], a future of
/// the root's result: for a program that already runs an async runtime (tokio, smol, ...) and
/// must not block one of its worker threads with [`run_root`].
///
/// `body` runs on the root's thread (its future need not be `Send`). Dropping the handle before
/// it completes cancels the root: its nursery is torn down (one-cancels-all, bounded by the
/// ladder) on the root's thread, and the drop does not wait for that. Set
/// `handle_sigint(false)` when the embedding program owns Ctrl-C.
///
/// ```
/// use harrow_runtime_core::{spawn_root, RootConfig};
/// # futures_lite::future::block_on(async {
/// let handle = spawn_root(RootConfig::default().handle_sigint(false), |_nursery| async {
///     Ok(6 * 7)
/// })
/// .unwrap();
/// assert_eq!(handle.await.unwrap(), 42); // awaited from any executor
/// # });
/// ```
pub fn spawn_root<T, F, Fut>(config: RootConfig, body: F) -> std::io::Result<RootHandle<T>>
where
    T: Send + 'static,
    F: FnOnce(ActorNursery) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, BoxError>> + 'static,
{
    let (tx, rx) = async_channel::bounded(1);
    let cancel = Arc::new(RootCancel::default());
    let theirs = cancel.clone();
    std::thread::Builder::new()
        .name(format!("harrow-root-{}", config.name))
        .spawn(move || {
            let result = run_root(config, move |nursery| {
                theirs.set(nursery.actor().clone());
                body(nursery)
            });
            let _ = tx.try_send(result);
        })?;
    Ok(RootHandle {
        result: Box::pin(async move { rx.recv().await }),
        cancel,
        done: false,
    })
}

/// The root's actor once its body started, and whether the handle asked to cancel it first.
#[derive(Default)]
struct RootCancel {
    state: std::sync::Mutex<(Option<ActorCtx>, bool)>,
}

impl RootCancel {
    fn set(&self, ctx: ActorCtx) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 {
            ctx.cancel_self(ctx.id().clone());
        }
        st.0 = Some(ctx);
    }

    fn cancel(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = true;
        if let Some(ctx) = &st.0 {
            ctx.cancel_self(ctx.id().clone());
        }
    }
}

type ResultFuture<T> = std::pin::Pin<
    Box<dyn Future<Output = Result<Result<T, NurseryError>, async_channel::RecvError>> + Send>,
>;

/// A root running on its own thread (from [`spawn_root`]): a future of its result. Dropping it
/// before it completes cancels the root.
pub struct RootHandle<T> {
    result: ResultFuture<T>,
    cancel: Arc<RootCancel>,
    done: bool,
}

impl<T> fmt::Debug for RootHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootHandle")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T> RootHandle<T> {
    /// Cancels the root (its nursery is torn down, bounded); the handle then resolves to the
    /// nursery's error.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl<T> Future for RootHandle<T> {
    type Output = Result<T, NurseryError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let out = std::task::ready!(self.result.as_mut().poll(cx));
        self.done = true;
        std::task::Poll::Ready(out.unwrap_or_else(|_| {
            let mut err = NurseryError::new(None);
            err.body = Some("the root's thread ended without a result (it panicked)".into());
            Err(err)
        }))
    }
}

impl<T> Drop for RootHandle<T> {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}

fn exec_spawn(
    ctx: &ActorCtx,
    fut: impl Future<Output = ()> + Send + 'static,
) -> async_executor::Task<()> {
    ctx.executor().spawn(fut.or(std::future::pending()))
}

/// The conventional process exit code for a root's result: 0, 130 when interrupted by SIGINT,
/// 1 for any other failure.
pub fn exit_code<T>(result: &Result<T, NurseryError>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) if e.is_interrupted() => 130,
        Err(_) => 1,
    }
}

/// The process's one SIGINT handler, shared by every root that handles SIGINT.
///
/// It is installed on first use and never removed (signal-hook-registry cannot restore the
/// previous action: removing ours would leave SIGINT ignored). While at least one root is
/// running, each SIGINT goes to every running root; when none is, it takes its default action
/// (the process ends by SIGINT), as if harrow had never installed anything.
mod sigint {
    use std::sync::{Mutex, OnceLock};

    use futures_lite::StreamExt;

    struct Hub {
        roots: Mutex<Vec<(u64, async_channel::Sender<()>)>>,
        next_id: std::sync::atomic::AtomicU64,
    }

    static HUB: OnceLock<Result<Hub, String>> = OnceLock::new();

    fn hub() -> Result<&'static Hub, String> {
        HUB.get_or_init(|| {
            let mut signals = async_signal::Signals::new([async_signal::Signal::Int])
                .map_err(|e| format!("cannot register for SIGINT: {e}"))?;
            std::thread::Builder::new()
                .name("harrow-sigint".into())
                .spawn(move || {
                    // async-io's block_on: it drives the reactor the signal pipe is registered
                    // with, even when no other thread does.
                    async_io::block_on(async {
                        while let Some(sig) = signals.next().await {
                            if sig.is_ok() {
                                deliver();
                            }
                        }
                    })
                })
                .map_err(|e| format!("cannot start the SIGINT thread: {e}"))?;
            Ok(Hub {
                roots: Mutex::new(Vec::new()),
                next_id: std::sync::atomic::AtomicU64::new(0),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn deliver() {
        let Ok(hub) = hub() else { return };
        let roots = hub.roots.lock().unwrap_or_else(|p| p.into_inner());
        if roots.is_empty() {
            drop(roots);
            // No root is running: behave as if we had never taken SIGINT over.
            let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGINT);
            return;
        }
        for (_, tx) in roots.iter() {
            let _ = tx.try_send(());
        }
    }

    /// One root's subscription; dropping it unsubscribes.
    pub(super) struct Subscription {
        id: u64,
        rx: async_channel::Receiver<()>,
    }

    impl Subscription {
        /// Where this root's SIGINTs arrive.
        pub(super) fn receiver(&self) -> async_channel::Receiver<()> {
            self.rx.clone()
        }
    }

    impl Drop for Subscription {
        fn drop(&mut self) {
            if let Ok(hub) = hub() {
                hub.roots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(id, _)| *id != self.id);
            }
        }
    }

    pub(super) fn subscribe() -> Result<Subscription, String> {
        let hub = hub()?;
        let id = hub
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = async_channel::bounded(8);
        hub.roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        Ok(Subscription { id, rx })
    }
}
