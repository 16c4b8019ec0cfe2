//! Shared test support: executors, transports, link pairs, bounded waits, drop probes.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use harrow_portal::ipc::{self, ActorId, Channel, Msg, PROTOCOL_VERSION, Value};
use harrow_portal::{
    CallError, Endpoint, Executor, FnRegistry, Link, LinkConfig, LocalInfo, Resolver,
};

/// The bound on any single wait in a test (generous: the machine is loaded).
pub const BOUND: Duration = Duration::from_secs(20);

/// Which transport a test runs over.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Mem,
    Unix,
    /// Shared-memory rings beside a socketpair (Linux): a writer task like `Unix`, and sends
    /// that find it idle written where they are made.
    Shm,
}

pub fn pair(t: Transport) -> (Channel, Channel) {
    match t {
        Transport::Mem => ipc::mem::pair(),
        Transport::Unix => ipc::unix::pair().expect("socketpair"),
        #[cfg(target_os = "linux")]
        Transport::Shm => ipc::shm::pair().expect("shared-memory pair"),
        #[cfg(not(target_os = "linux"))]
        Transport::Shm => ipc::unix::pair().expect("socketpair"),
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `bound`.
pub async fn with_timeout<T>(bound: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match ipc::wait::deadline(bound, fut).await {
        Some(v) => v,
        None => panic!("timed out after {bound:?} waiting for: {what}"),
    }
}

/// Awaits `fut` with the default [`BOUND`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    with_timeout(BOUND, what, fut).await
}

/// Runs a test body on a fresh executor driven by this thread and two helper threads.
pub fn run_test<F, Fut>(t: Transport, body: F)
where
    F: FnOnce(Executor, Transport) -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = tracing_init();
    let exec: Executor = Arc::new(async_executor::Executor::new());
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let exec = exec.clone();
            let stop_rx = stop_rx.clone();
            std::thread::spawn(move || async_io::block_on(exec.run(stop_rx.recv())))
        })
        .collect();
    let test = body(exec.clone(), t);
    async_io::block_on(exec.run(with_timeout(
        Duration::from_secs(120),
        "the whole test",
        test,
    )));
    drop(stop_tx);
    for th in threads {
        let _ = th.join();
    }
}

fn tracing_init() -> Option<()> {
    None
}

/// Stamps each named `async fn name(exec: Executor, t: Transport)` as a test over mem and unix,
/// and, on Linux, over shared memory.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_test($crate::common::Transport::Mem, super::$name);
                }
            )*
        }
        mod unix {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_test($crate::common::Transport::Unix, super::$name);
                }
            )*
        }
        #[cfg(target_os = "linux")]
        mod shm {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_test($crate::common::Transport::Shm, super::$name);
                }
            )*
        }
    };
}

pub fn local(name: &str) -> LocalInfo {
    LocalInfo {
        id: ActorId::new(name),
        backend: "test".into(),
    }
}

/// Establishes two linked ends concurrently: `a` (named "a") and `b` (named "b").
pub async fn link_pair(
    exec: &Executor,
    t: Transport,
    a_resolver: Option<Arc<dyn Resolver>>,
    b_resolver: Option<Arc<dyn Resolver>>,
    config: LinkConfig,
) -> (Link, Link) {
    link_pair_named(
        exec,
        t,
        local("a"),
        a_resolver,
        local("b"),
        b_resolver,
        config,
    )
    .await
}

pub async fn link_pair_named(
    exec: &Executor,
    t: Transport,
    a: LocalInfo,
    a_resolver: Option<Arc<dyn Resolver>>,
    b: LocalInfo,
    b_resolver: Option<Arc<dyn Resolver>>,
    config: LinkConfig,
) -> (Link, Link) {
    establish_pair(exec, pair(t), a, a_resolver, b, b_resolver, config).await
}

/// Establishes two linked ends over the channels `ends`, concurrently.
pub async fn establish_pair(
    exec: &Executor,
    (ca, cb): (Channel, Channel),
    a: LocalInfo,
    a_resolver: Option<Arc<dyn Resolver>>,
    b: LocalInfo,
    b_resolver: Option<Arc<dyn Resolver>>,
    config: LinkConfig,
) -> (Link, Link) {
    let (la, lb) = bounded(
        "hello exchange",
        future::zip(
            Link::establish(ca, a, a_resolver, exec, config.clone()),
            Link::establish(cb, b, b_resolver, exec, config),
        ),
    )
    .await;
    (la.expect("link a"), lb.expect("link b"))
}

/// A caller `a` without functions linked to a callee `b` serving `reg`.
pub async fn caller_callee(exec: &Executor, t: Transport, reg: FnRegistry) -> (Link, Link) {
    link_pair(exec, t, None, Some(Arc::new(reg)), LinkConfig::default()).await
}

/// Does the `Hello` exchange by hand on a raw channel (a peer without a link).
pub async fn raw_hello(ch: &Channel, id: &ActorId) -> Msg {
    ch.send(Msg::Hello {
        actor: id.clone(),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        backend: "raw".into(),
    })
    .await
    .expect("raw hello");
    bounded("peer hello", ch.recv()).await.expect("peer hello")
}

/// A callee `b` serving with `resolver`, linked to a raw caller named "a" (it sorts lower, so
/// its cids are even), whose end is returned: the test speaks the protocol itself.
pub async fn callee_with_raw_caller(
    exec: &Executor,
    t: Transport,
    resolver: Arc<dyn Resolver>,
) -> (Link, Channel) {
    let (ca, cb) = pair(t);
    let serve = Link::establish(cb, local("b"), Some(resolver), exec, LinkConfig::default());
    let (b, hello) = bounded(
        "hello exchange",
        future::zip(serve, raw_hello(&ca, &ActorId::new("a"))),
    )
    .await;
    assert!(matches!(hello, Msg::Hello { .. }), "{hello:?}");
    (b.expect("link b"), ca)
}

/// The next message a raw peer receives on `ch`, bounded.
pub async fn next_msg(ch: &Channel) -> Msg {
    bounded("a message", ch.recv()).await.unwrap()
}

/// A raw caller's `Start` of unary call `cid` of `func` with `args`.
pub fn unary_start(cid: u64, func: &str, args: Value) -> Msg {
    Msg::Start {
        cid: ipc::Cid(cid),
        func: ipc::FnPath::parse(func).expect("a valid function path"),
        kind: ipc::CallKind::Unary,
        args,
    }
}

/// Sends a message on a channel when dropped: proves a call's future was really dropped.
pub struct DropProbe(pub async_channel::Sender<&'static str>, pub &'static str);

impl Drop for DropProbe {
    fn drop(&mut self) {
        let _ = self.0.try_send(self.1);
    }
}

/// Waits for `what` on a probe channel.
pub async fn expect_probe(rx: &async_channel::Receiver<&'static str>, what: &'static str) {
    let got = bounded(what, rx.recv()).await.expect("probe channel open");
    assert_eq!(got, what);
}

/// `t:add`, typed: the sum of two numbers.
#[allow(dead_code)]
pub const ADD: Endpoint<(i64, i64), i64> = Endpoint::new("t:add");

/// Registers the common test functions into `reg`. `probe` receives "started" when a blocking
/// function begins and "dropped" when its future is dropped.
pub fn standard_functions(reg: &mut FnRegistry, probe: async_channel::Sender<&'static str>) {
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    reg.serve(ADD, |(a, b)| async move { Ok(a + b) }).unwrap();
    reg.unary("t:fail", |_| async move {
        Err::<Value, _>(CallError::raised("ValueError", "boom"))
    })
    .unwrap();
    reg.unary("t:panic", |_| async move {
        if true {
            panic!("kaboom");
        }
        Ok(Value::Null)
    })
    .unwrap();
    let p = probe.clone();
    reg.unary("t:block", move |_| {
        let p = p.clone();
        async move {
            let _guard = DropProbe(p.clone(), "dropped");
            let _ = p.try_send("started");
            future::pending::<()>().await;
            Ok(Value::Null)
        }
    })
    .unwrap();
    let p = probe.clone();
    reg.context("t:ctx_block", move |ctx, v| {
        let p = p.clone();
        async move {
            let _guard = DropProbe(p.clone(), "dropped");
            ctx.started(v).await?;
            let _ = p.try_send("started");
            future::pending::<()>().await;
            Ok(Value::Null)
        }
    })
    .unwrap();
    let p = probe.clone();
    reg.context("t:ctx_hang", move |_ctx, _| {
        let p = p.clone();
        async move {
            let _guard = DropProbe(p.clone(), "dropped");
            let _ = p.try_send("started");
            future::pending::<()>().await;
            Ok(Value::Null)
        }
    })
    .unwrap();
    // started(args); open the stream; echo every item back; return how many.
    reg.context("t:ctx_echo", |ctx, v| async move {
        ctx.started(v).await?;
        let mut s = ctx.open_stream().await?;
        let mut n = 0;
        while let Some(item) = s.recv().await? {
            s.send(item).await?;
            n += 1;
        }
        s.close().await?;
        Ok(Value::Int(n))
    })
    .unwrap();
    // started(null); stream args (an int) items 0..n; return n.
    reg.context("t:ctx_produce", |ctx, v| async move {
        let n = v.as_i64().unwrap_or(0);
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        for i in 0..n {
            s.send(Value::Int(i)).await?;
        }
        s.close().await?;
        Ok(Value::Int(n))
    })
    .unwrap();
}

/// A registry with [`standard_functions`] and its probe.
pub fn standard_registry() -> (FnRegistry, async_channel::Receiver<&'static str>) {
    let (tx, rx) = async_channel::unbounded();
    let mut reg = FnRegistry::new();
    standard_functions(&mut reg, tx);
    (reg, rx)
}
