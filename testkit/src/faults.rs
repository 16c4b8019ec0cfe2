//! Fault injection: wrappers that implement the same traits as what they wrap.
//!
//! - [`FailingBackend`]: a backend whose every spawn fails.
//! - [`BreakableBackend`]: wraps a backend so that the parent's end of each child's channel
//!   misbehaves as its [`Faults`] say: it breaks on demand or after N messages (as if the peer
//!   died; both sides then see `Closed`), drops every message of a kind (a child that ignores
//!   `CancelActor`), or delays every message of a kind (a slow `CancelAck`).
//! - [`CrashingBackend`]: a child crashes on demand (its channel breaks, its exit is a failure).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harrow_runtime_core::ipc::wait::{Event, wait_until};
use harrow_runtime_core::ipc::{
    ActorId, BoxFuture as IpcBoxFuture, Channel, ChannelRx, ChannelTx, Msg, RecvError, RecvHalf,
    SendError, SendHalf,
};
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, Exit, SpawnBackend, SpawnError, SpawnSpec,
};

/// A backend whose spawn always fails with a clear [`SpawnError`], for the spawn-failure scenario.
#[derive(Debug)]
pub struct FailingBackend {
    inner: Arc<dyn SpawnBackend>,
}

impl FailingBackend {
    /// Fails every spawn, claiming `inner`'s name and capabilities.
    pub fn wrap(inner: Arc<dyn SpawnBackend>) -> Arc<dyn SpawnBackend> {
        Arc::new(FailingBackend { inner })
    }
}

impl SpawnBackend for FailingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            Err(SpawnError::Failed {
                actor: spec.id,
                reason: "fault injection: this backend's spawns always fail".into(),
            })
        })
    }
}

/// Which direction a [`Breaker`] counts messages in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Messages the parent sends to the child.
    ToChild,
    /// Messages the parent receives from the child.
    FromChild,
}

/// What a [`BreakableBackend`] does to each child's channel.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Break the channel after this many messages in this direction.
    pub break_after: Option<(Direction, usize)>,
    /// Silently drop every message of these kinds (`Msg::kind_name`) in these directions.
    pub drop_kinds: Vec<(Direction, &'static str)>,
    /// Delay every message of these kinds in these directions.
    pub delay_kinds: Vec<(Direction, &'static str, Duration)>,
}

impl Faults {
    /// No faults but on demand ([`Breaker::break_now`]).
    pub fn none() -> Self {
        Faults::default()
    }

    /// Break after `n` messages in `dir`.
    pub fn break_after(dir: Direction, n: usize) -> Self {
        Faults {
            break_after: Some((dir, n)),
            ..Faults::default()
        }
    }

    /// Drop every message of `kind` in `dir`.
    pub fn drop_kind(mut self, dir: Direction, kind: &'static str) -> Self {
        self.drop_kinds.push((dir, kind));
        self
    }

    /// Delay every message of `kind` in `dir` by `by`.
    pub fn delay_kind(mut self, dir: Direction, kind: &'static str, by: Duration) -> Self {
        self.delay_kinds.push((dir, kind, by));
        self
    }

    /// A child that never hears `CancelActor`: only the hard kill (or losing its channel) ends it.
    pub fn ignore_cancel() -> Self {
        Faults::default().drop_kind(Direction::ToChild, "CancelActor")
    }

    fn drops(&self, dir: Direction, msg: &Msg) -> bool {
        self.drop_kinds
            .iter()
            .any(|(d, k)| *d == dir && *k == msg.kind_name())
    }

    fn delay(&self, dir: Direction, msg: &Msg) -> Option<Duration> {
        self.delay_kinds
            .iter()
            .find(|(d, k, _)| *d == dir && *k == msg.kind_name())
            .map(|(_, _, by)| *by)
    }
}

/// Breaks one parent-child channel: after [`Breaker::break_now`], the parent's sends fail, its
/// receives return `Closed`, and the child's receives return `Closed`.
#[derive(Clone, Debug)]
pub struct Breaker {
    inner: Arc<BreakerInner>,
}

#[derive(Debug)]
struct BreakerInner {
    broken: AtomicBool,
    event: Event,
    tx: Mutex<Option<ChannelTx>>,
    faults: Faults,
    to_child: AtomicUsize,
    from_child: AtomicUsize,
}

impl Breaker {
    fn new(faults: Faults) -> Self {
        Breaker {
            inner: Arc::new(BreakerInner {
                broken: AtomicBool::new(false),
                event: Event::new(),
                tx: Mutex::new(None),
                faults,
                to_child: AtomicUsize::new(0),
                from_child: AtomicUsize::new(0),
            }),
        }
    }

    /// Breaks the channel now. Idempotent.
    pub fn break_now(&self) {
        if !self.inner.broken.swap(true, Ordering::SeqCst) {
            if let Some(tx) = self
                .inner
                .tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                tx.close();
            }
            self.inner.event.notify(usize::MAX);
        }
    }

    /// Whether the channel is broken.
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::SeqCst)
    }

    /// Messages that went through, per direction.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.inner.to_child.load(Ordering::SeqCst),
            self.inner.from_child.load(Ordering::SeqCst),
        )
    }

    fn count(&self, dir: Direction) {
        let n = match dir {
            Direction::ToChild => self.inner.to_child.fetch_add(1, Ordering::SeqCst) + 1,
            Direction::FromChild => self.inner.from_child.fetch_add(1, Ordering::SeqCst) + 1,
        };
        if let Some((d, limit)) = self.inner.faults.break_after
            && d == dir
            && n >= limit
        {
            self.break_now();
        }
    }

    async fn broken(&self) {
        wait_until(&self.inner.event, || self.is_broken()).await
    }
}

#[derive(Debug)]
struct BreakTx {
    tx: ChannelTx,
    breaker: Breaker,
}

impl SendHalf for BreakTx {
    fn send(&self, msg: Msg) -> IpcBoxFuture<'_, Result<(), SendError>> {
        Box::pin(async move {
            if self.breaker.is_broken() {
                return Err(SendError::Closed(Box::new(msg)));
            }
            let faults = &self.breaker.inner.faults;
            if faults.drops(Direction::ToChild, &msg) {
                return Ok(());
            }
            if let Some(by) = faults.delay(Direction::ToChild, &msg) {
                async_io::Timer::after(by).await;
            }
            self.tx.send(msg).await?;
            self.breaker.count(Direction::ToChild);
            Ok(())
        })
    }
    fn close(&self) {
        self.tx.close();
    }
}

#[derive(Debug)]
struct BreakRx {
    rx: Option<ChannelRx>,
    breaker: Breaker,
}

impl RecvHalf for BreakRx {
    fn recv(&mut self) -> IpcBoxFuture<'_, Result<Msg, RecvError>> {
        Box::pin(async move {
            loop {
                if self.breaker.is_broken() {
                    self.rx = None;
                    return Err(RecvError::Closed);
                }
                let Some(rx) = self.rx.as_mut() else {
                    return Err(RecvError::Closed);
                };
                let breaker = self.breaker.clone();
                let got = futures_lite::future::or(async { Some(rx.recv().await) }, async {
                    breaker.broken().await;
                    None
                })
                .await;
                let msg = match got {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => return Err(e),
                    None => {
                        self.rx = None;
                        return Err(RecvError::Closed);
                    }
                };
                // Reaching the break limit still delivers this message: it is the last one.
                self.breaker.count(Direction::FromChild);
                let faults = &self.breaker.inner.faults;
                if faults.drops(Direction::FromChild, &msg) {
                    continue;
                }
                if let Some(by) = faults.delay(Direction::FromChild, &msg) {
                    async_io::Timer::after(by).await;
                }
                return Ok(msg);
            }
        })
    }

    fn end_handshake(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            rx.end_handshake();
        }
    }
}

/// Wraps a backend so that every child's channel misbehaves as its [`Faults`] say (see
/// [`Breaker`] for breaking one on demand).
#[derive(Debug)]
pub struct BreakableBackend {
    inner: Arc<dyn SpawnBackend>,
    faults: Faults,
    breakers: Mutex<Vec<(ActorId, Breaker)>>,
}

impl BreakableBackend {
    /// Channels break only when told to.
    pub fn wrap(inner: Arc<dyn SpawnBackend>) -> Arc<BreakableBackend> {
        Self::with_faults(inner, Faults::none())
    }

    /// Channels break by themselves after `n` messages in `dir`.
    pub fn break_after(
        inner: Arc<dyn SpawnBackend>,
        dir: Direction,
        n: usize,
    ) -> Arc<BreakableBackend> {
        Self::with_faults(inner, Faults::break_after(dir, n))
    }

    /// Channels misbehave as `faults` say.
    pub fn with_faults(inner: Arc<dyn SpawnBackend>, faults: Faults) -> Arc<BreakableBackend> {
        Arc::new(BreakableBackend {
            inner,
            faults,
            breakers: Mutex::new(Vec::new()),
        })
    }

    /// The breaker of the channel to `actor`.
    pub fn breaker(&self, actor: &ActorId) -> Option<Breaker> {
        self.breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| id == actor)
            .map(|(_, b)| b.clone())
    }
}

impl SpawnBackend for BreakableBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            let mut child = self.inner.spawn(spec).await?;
            let breaker = Breaker::new(self.faults.clone());
            let channel = child.take_channel().map(|ch| {
                let (tx, rx) = ch.split();
                *breaker.inner.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
                Channel::from_halves(
                    BreakTx {
                        tx,
                        breaker: breaker.clone(),
                    },
                    BreakRx {
                        rx: Some(rx),
                        breaker: breaker.clone(),
                    },
                )
            });
            self.breakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((child.id().clone(), breaker));
            Ok(Box::new(BrokenChild { child, channel }) as Box<dyn Child>)
        })
    }
}

#[derive(Debug)]
struct BrokenChild {
    child: Box<dyn Child>,
    channel: Option<Channel>,
}

impl Child for BrokenChild {
    fn id(&self) -> &ActorId {
        self.child.id()
    }
    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }
    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.child.hard_kill()
    }
    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        self.child.join(bound)
    }
    fn describe(&self) -> String {
        self.child.describe()
    }
}

/// Wraps a backend so that a child can be made to *crash* on demand, on any backend: its channel
/// breaks (as if it died) and its [`Child::join`] then reports [`Exit::Failed`], which is what a
/// supervisor sees of a child that died without being asked to.
#[derive(Debug)]
pub struct CrashingBackend {
    inner: Arc<BreakableBackend>,
    crashed: Mutex<Vec<(ActorId, Arc<AtomicBool>)>>,
}

impl CrashingBackend {
    /// Children crash only when told to ([`crash`](Self::crash)).
    pub fn wrap(inner: Arc<dyn SpawnBackend>) -> Arc<CrashingBackend> {
        Arc::new(CrashingBackend {
            inner: BreakableBackend::wrap(inner),
            crashed: Mutex::new(Vec::new()),
        })
    }

    /// Makes `actor` crash: its channel breaks now and its exit is reported as a failure. False
    /// if no child of this backend is called so.
    pub fn crash(&self, actor: &ActorId) -> bool {
        let (Some(flag), Some(breaker)) = (self.flag(actor), self.inner.breaker(actor)) else {
            return false;
        };
        flag.store(true, Ordering::SeqCst);
        breaker.break_now();
        true
    }

    /// Makes `actor` fail when it is torn down: it runs on untouched, and once asked to stop,
    /// its clean exit is reported as a failure (as a child that exits with an error status
    /// while it is cancelled is). False if no child of this backend is called so.
    pub fn crash_on_teardown(&self, actor: &ActorId) -> bool {
        let Some(flag) = self.flag(actor) else {
            return false;
        };
        flag.store(true, Ordering::SeqCst);
        true
    }

    /// The flag that makes `actor`'s clean exit a failure.
    fn flag(&self, actor: &ActorId) -> Option<Arc<AtomicBool>> {
        self.crashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| id == actor)
            .map(|(_, f)| f.clone())
    }
}

impl SpawnBackend for CrashingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            let child = self.inner.spawn(spec).await?;
            let flag = Arc::new(AtomicBool::new(false));
            let mut crashed = self.crashed.lock().unwrap_or_else(|p| p.into_inner());
            // Forget children that are long gone: only the last few matter to a test.
            if crashed.len() >= 256 {
                crashed.remove(0);
            }
            crashed.push((child.id().clone(), flag.clone()));
            Ok(Box::new(CrashedChild { child, flag }) as Box<dyn Child>)
        })
    }
}

#[derive(Debug)]
struct CrashedChild {
    child: Box<dyn Child>,
    flag: Arc<AtomicBool>,
}

impl Child for CrashedChild {
    fn id(&self) -> &ActorId {
        self.child.id()
    }
    fn take_channel(&mut self) -> Option<Channel> {
        self.child.take_channel()
    }
    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.child.hard_kill()
    }
    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            match self.child.join(bound).await {
                Exit::Exited if self.flag.load(Ordering::SeqCst) => {
                    Exit::Failed("fault injection: crashed on purpose".into())
                }
                other => other,
            }
        })
    }
    fn describe(&self) -> String {
        self.child.describe()
    }
}
