//! Helpers shared by the spawn-subint integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use harrow_ipc::{CallKind, FnPath, Value};
use harrow_portal::CallError;
use harrow_spawn_subint::{
    CallHost, HostFuture, InterpConfig, InterpHandle, InterpThread, PyCall, StreamHost,
};

/// Generous bound for anything that should finish promptly (loaded 2-core machine).
pub const BOUND: Duration = Duration::from_secs(30);

pub fn pyfns_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pyfns")
}

/// A config exposing the test package.
pub fn config(name: &str) -> InterpConfig {
    InterpConfig::new(name)
        .expose("harrow_testfns")
        .sys_path(pyfns_dir())
}

pub fn spawn(name: &str) -> Result<InterpThread> {
    InterpThread::spawn(config(name)).with_context(|| format!("spawn {name}"))
}

/// Runs `fut` to completion, failing after `bound`.
pub fn bounded<T>(bound: Duration, fut: impl Future<Output = T>) -> Result<T> {
    async_io::block_on(harrow_ipc::wait::deadline(bound, fut))
        .ok_or_else(|| anyhow!("timed out after {bound:?}"))
}

pub fn start(h: &InterpHandle, f: &str, args: Value) -> PyCall {
    h.call(
        FnPath::parse(f).expect("valid path"),
        CallKind::Unary,
        args,
        None,
    )
}

/// A unary call, bounded.
pub fn call(
    h: &InterpHandle,
    f: &str,
    args: Value,
) -> Result<std::result::Result<Value, CallError>> {
    bounded(BOUND, start(h, f, args))
}

pub fn call_ok(h: &InterpHandle, f: &str, args: Value) -> Result<Value> {
    call(h, f, args)?.map_err(|e| anyhow!("{f} failed: {e:?}"))
}

pub fn list(items: impl IntoIterator<Item = Value>) -> Value {
    Value::List(items.into_iter().collect())
}

pub fn s(x: &str) -> Value {
    Value::Str(x.to_owned())
}

/// Number of OS threads of this process.
pub fn os_threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `cond` holds, polling on a short interval.
pub fn wait_until(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `CallHost` over channels: `started` values go to `started_rx`; the test feeds stream items
/// through `to_py` (dropping it ends the stream) and reads what Python sends from `from_py`.
pub struct ChanHost {
    started_tx: flume::Sender<Value>,
    to_py: parking_lot::Mutex<Option<flume::Receiver<Value>>>,
    from_py: flume::Sender<Value>,
    closed_tx: flume::Sender<()>,
}

pub struct ChanHostEnds {
    pub started: flume::Receiver<Value>,
    pub to_py: flume::Sender<Value>,
    pub from_py: flume::Receiver<Value>,
    pub closed: flume::Receiver<()>,
}

pub fn chan_host() -> (Arc<dyn CallHost>, ChanHostEnds) {
    let (started_tx, started) = flume::unbounded();
    let (to_py_tx, to_py_rx) = flume::unbounded();
    let (from_py_tx, from_py) = flume::unbounded();
    let (closed_tx, closed) = flume::unbounded();
    let host = ChanHost {
        started_tx,
        to_py: parking_lot::Mutex::new(Some(to_py_rx)),
        from_py: from_py_tx,
        closed_tx,
    };
    (
        Arc::new(host),
        ChanHostEnds {
            started,
            to_py: to_py_tx,
            from_py,
            closed,
        },
    )
}

impl CallHost for ChanHost {
    fn started(&self, value: Value) -> HostFuture<'_, ()> {
        Box::pin(async move {
            self.started_tx
                .send(value)
                .map_err(|_| "test host gone".to_owned())
        })
    }

    fn open_stream(&self) -> HostFuture<'_, Box<dyn StreamHost>> {
        Box::pin(async move {
            let rx = self
                .to_py
                .lock()
                .take()
                .ok_or_else(|| "stream opened twice".to_owned())?;
            Ok(Box::new(ChanStream {
                rx,
                tx: self.from_py.clone(),
                closed: self.closed_tx.clone(),
            }) as Box<dyn StreamHost>)
        })
    }
}

struct ChanStream {
    rx: flume::Receiver<Value>,
    tx: flume::Sender<Value>,
    closed: flume::Sender<()>,
}

impl StreamHost for ChanStream {
    fn send(&mut self, value: Value) -> HostFuture<'_, ()> {
        Box::pin(async move { self.tx.send(value).map_err(|_| "peer gone".to_owned()) })
    }

    fn recv(&mut self) -> HostFuture<'_, Option<Value>> {
        Box::pin(async move { Ok(self.rx.recv_async().await.ok()) })
    }

    fn close(&mut self) -> HostFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.closed.send(());
            Ok(())
        })
    }
}
