//! [`WarmSubintBackend`]: a subint backend that keeps interpreters created ahead of demand, so
//! that starting an actor (a pool worker, a restarted child) does not pay the interpreter's
//! creation (~13 ms, more under load) on its path.
//!
//! A filler thread keeps `size` interpreters of one configuration (the *template*) ready. A spawn
//! whose spec has the template's params takes a ready one (and the filler makes another); any
//! other spawn, or one that finds none ready, creates its interpreter as [`SubintBackend`] does.
//! A warm interpreter's thread is named after the template (`subint-<template>-<n>`), not after
//! the actor that takes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::ipc::wait::{Event, wait_until};
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, SpawnBackend, SpawnError, SpawnSpec, move_on_after,
};

use crate::interp::InterpThread;
use harrow_python::InterpConfig;

/// A subint backend with interpreters created ahead of demand (see the module doc).
///
/// ```no_run
/// use std::time::Duration;
/// use harrow_spawn_subint::{InterpConfig, WarmSubintBackend};
/// let template = InterpConfig::new("worker").expose("tasks");
/// let warm = WarmSubintBackend::start(template.clone(), 4);
/// // Spawn with the template's params to get a warm interpreter:
/// let params = template.to_params();
/// # let _ = (warm, params);
/// ```
#[derive(Clone)]
pub struct WarmSubintBackend {
    inner: Arc<Warm>,
}

struct Warm {
    template: InterpConfig,
    /// The template's params, as a spec carries them: what a spawn must match.
    key: Value,
    size: usize,
    ready: Mutex<VecDeque<InterpThread>>,
    /// Notified when an interpreter becomes ready or the filler ends.
    event: Event,
    /// Wakes the filler (a spawn took one); closed to stop it.
    wake: Mutex<Option<flume::Sender<()>>>,
    stop: AtomicBool,
    filler: Mutex<Option<JoinHandle<()>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for WarmSubintBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmSubintBackend")
            .field("template", &self.inner.template.name)
            .field("size", &self.inner.size)
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl WarmSubintBackend {
    /// Starts keeping `size` interpreters of `template` ready (created on a filler thread of
    /// its own, one after another). Call [`shutdown`](Self::shutdown) to end the idle ones.
    pub fn start(template: InterpConfig, size: usize) -> WarmSubintBackend {
        let (tx, rx) = flume::unbounded();
        let inner = Arc::new(Warm {
            key: template.to_params(),
            template,
            size,
            ready: Mutex::new(VecDeque::new()),
            event: Event::new(),
            wake: Mutex::new(Some(tx)),
            stop: AtomicBool::new(false),
            filler: Mutex::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let warm = inner.clone();
        let filler = std::thread::Builder::new()
            .name(format!("subint-warm-{}", inner.template.name))
            .spawn(move || fill(&warm, &rx));
        match filler {
            Ok(h) => *lock(&inner.filler) = Some(h),
            Err(e) => *lock(&inner.last_error) = Some(format!("no filler thread: {e}")),
        }
        WarmSubintBackend { inner }
    }

    /// The backend, ready to hand to a nursery or a pool.
    pub fn shared(&self) -> Arc<dyn SpawnBackend> {
        Arc::new(self.clone())
    }

    /// Interpreters ready now.
    pub fn ready(&self) -> usize {
        lock(&self.inner.ready).len()
    }

    /// Spawns that got a warm interpreter, and those that created their own.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.inner.hits.load(Ordering::SeqCst),
            self.inner.misses.load(Ordering::SeqCst),
        )
    }

    /// The last error of the filler (an interpreter it could not create), if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.inner.last_error).clone()
    }

    /// Waits until `n` interpreters are ready (at most the pool's size), at most `bound`; true
    /// if they are.
    pub async fn wait_ready(&self, n: usize, bound: Duration) -> bool {
        let n = n.min(self.inner.size);
        let inner = &self.inner;
        move_on_after(
            bound,
            wait_until(&inner.event, || {
                lock(&inner.ready).len() >= n || inner.stop.load(Ordering::SeqCst)
            }),
        )
        .await
        .is_some()
            && self.ready() >= n
    }

    /// Stops making interpreters and ends the idle ones, each bounded by `bound` (one that
    /// does not end in time is leaked and reported by the interpreter's own accounting).
    /// Actors already started are not affected. Idempotent.
    pub fn shutdown(&self, bound: Duration) {
        let inner = &self.inner;
        inner.stop.store(true, Ordering::SeqCst);
        lock(&inner.wake).take();
        if let Some(h) = lock(&inner.filler).take() {
            // The filler ends after the creation in progress (bounded by CREATE_BOUND).
            let _ = h.join();
        }
        let idle: Vec<InterpThread> = lock(&inner.ready).drain(..).collect();
        for interp in idle {
            let _ = interp.shutdown(bound);
        }
        inner.event.notify(usize::MAX);
    }

    fn take(&self, params: &Value) -> Option<InterpThread> {
        if *params != self.inner.key || self.inner.stop.load(Ordering::SeqCst) {
            return None;
        }
        let got = lock(&self.inner.ready).pop_front();
        if got.is_some()
            && let Some(tx) = lock(&self.inner.wake).as_ref()
        {
            let _ = tx.send(());
        }
        got
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filler: keeps `size` interpreters ready until stopped.
fn fill(warm: &Warm, wake: &flume::Receiver<()>) {
    let mut made = 0u64;
    loop {
        while lock(&warm.ready).len() < warm.size && !warm.stop.load(Ordering::SeqCst) {
            made += 1;
            let mut config = warm.template.clone();
            config.name = format!("{}-{made}", warm.template.name);
            match InterpThread::spawn(config) {
                Ok(interp) => {
                    if warm.stop.load(Ordering::SeqCst) {
                        let _ = interp.shutdown(Duration::from_secs(1));
                        break;
                    }
                    lock(&warm.ready).push_back(interp);
                    warm.event.notify(usize::MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a warm interpreter");
                    *lock(&warm.last_error) = Some(e.to_string());
                    warm.event.notify(usize::MAX);
                    // Creation fails again at once (no Python, a bad template): wait for a
                    // spawn to ask again rather than spinning.
                    break;
                }
            }
        }
        if warm.stop.load(Ordering::SeqCst) || wake.recv().is_err() {
            warm.event.notify(usize::MAX);
            return;
        }
        while wake.try_recv().is_ok() {}
    }
}

impl SpawnBackend for WarmSubintBackend {
    fn name(&self) -> &'static str {
        "subint"
    }

    fn capabilities(&self) -> Capabilities {
        crate::SubintBackend::new().capabilities()
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(async move {
            match self.take(spec.params()) {
                Some(interp) => {
                    self.inner.hits.fetch_add(1, Ordering::SeqCst);
                    crate::backend::start_on(crate::SubintBackend::new(), spec, interp)
                }
                None => {
                    self.inner.misses.fetch_add(1, Ordering::SeqCst);
                    crate::SubintBackend::new().spawn(spec).await
                }
            }
        })
    }
}
