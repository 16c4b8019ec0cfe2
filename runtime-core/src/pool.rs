//! [`ActorPool`]: N actors on one backend serving calls from a bounded queue, with `submit` and
//! `map` (results in input order or as they come), backpressure, and workers that are replaced
//! when they die.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_lite::{FutureExt, Stream};
use harrow_ipc::wait::{Event, wait_until};
use harrow_ipc::{ActorId, Value};

use crate::backend::SpawnBackend;
use crate::error::Result;
use crate::nursery::{ActorNursery, ChildHandle};
use crate::scope::CancelToken;
use crate::spec::ActorSpec;

/// How a pool is sized and what it does when a worker dies.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The workers' name prefix (`<name>-<i>`, `<name>-<i>.<n>` for a replacement): short
    /// enough that the longest such name is a valid actor name.
    pub name: String,
    /// How many workers: at least 1, at most [`MAX_POOL_SIZE`].
    pub size: usize,
    /// How many submitted items may wait for a worker beyond those running: `submit` waits
    /// (backpressure) and `try_submit` fails while the queue is full. Default: `2 × size`.
    /// At least 1: a queue of 0 acts as 1 (an item handed from the queue to a free worker
    /// passes through it); at most [`MAX_POOL_QUEUE`], as its slots are allocated when the
    /// pool starts.
    pub queue: usize,
    /// How many times an item whose worker died is run again on the replacement before it is
    /// reported failed (default 0: reported at once).
    pub retries: u32,
    /// How many times in a row a worker may fail to be replaced before its slot is given up
    /// (default 3). A pool whose every slot was given up fails what is queued.
    pub replace_attempts: u32,
    /// [`ActorPool::map`] sends items in batches of this many through this runner function
    /// (see [`PoolConfig::batch`]); `None` sends them one call each.
    pub batch: Option<(String, usize)>,
}

impl PoolConfig {
    /// `size` workers named `name-<i>`, a queue of `2 × size`, no retries.
    pub fn new(name: impl Into<String>, size: usize) -> Self {
        PoolConfig {
            name: name.into(),
            size,
            queue: size.saturating_mul(2).max(1),
            retries: 0,
            replace_attempts: 3,
            batch: None,
        }
    }

    /// Makes [`ActorPool::map`] send its items `size` at a time, as one call of `runner` each
    /// (many small items then cost one round trip per batch instead of one per item). The
    /// runner is a function the workers serve that takes `[func, [item, ...]]`, calls `func` on
    /// each item in order, and returns `[results, errors]`: `results` one value per item (any
    /// value for an item that failed), `errors` a list of `[index, type_name, message]` for the
    /// items that raised. A batch whose call fails, or whose worker dies, fails each of its
    /// items. `size` 0 or 1 turns batching off. Python actors serve such a runner natively,
    /// `harrow:run_batch` (its per-item loop runs in Rust inside the interpreter).
    ///
    /// A batch's answer reaches the map's stream as one message. While a worker runs a batch
    /// it takes the next queued job and sends it ahead to the same actor, so that the actor
    /// has it at hand when the batch is done; if the worker dies, both are failed (or retried).
    pub fn batch(mut self, runner: impl Into<String>, size: usize) -> Self {
        self.batch = (size > 1).then(|| (runner.into(), size));
        self
    }

    /// Sets [`PoolConfig::queue`].
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Sets [`PoolConfig::retries`].
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Why [`ActorPool::start`] cannot start a pool of this configuration, if it cannot.
    fn unusable(&self) -> Option<String> {
        if self.size == 0 {
            return Some("a pool needs at least one worker".into());
        }
        if self.size > MAX_POOL_SIZE {
            return Some(format!(
                "a pool of {} workers is more than the {MAX_POOL_SIZE} allowed",
                self.size
            ));
        }
        if self.queue > MAX_POOL_QUEUE {
            return Some(format!(
                "a queue of {} items is more than the {MAX_POOL_QUEUE} allowed (its slots are \
                 allocated when the pool starts)",
                self.queue
            ));
        }
        // A worker's name is `name-<slot>.<generation>` (a replacement's generation may be
        // any u64): it must be a valid actor name for every replacement, not only the first.
        let longest = self.name.len() + 1 + (self.size - 1).to_string().len() + 1 + 20;
        if longest > crate::MAX_ACTOR_NAME {
            return Some(format!(
                "a pool name of {} bytes leaves no room for its workers' names (`name-<slot>.\
                 <generation>`, at most {} bytes)",
                self.name.len(),
                crate::MAX_ACTOR_NAME
            ));
        }
        None
    }
}

/// The most workers a pool may have.
pub const MAX_POOL_SIZE: usize = 1 << 16;
/// The longest queue a pool may have ([`PoolConfig::queue`]): its slots are allocated up front.
pub const MAX_POOL_QUEUE: usize = 1 << 16;

/// Why one pool item has no result.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The function failed (raised, or the call could not be made).
    #[error("pool call failed: {0}")]
    Call(harrow_portal::Error),
    /// The worker it was sent to ended before it answered (it crashed, or ended on its own)
    /// and was replaced; after the configured retries, if any. The item may or may not have
    /// run (one the worker refused unstarted is [`PoolError::Refused`]).
    #[error("pool worker {worker} ended before it answered this item: {reason}")]
    WorkerDied {
        /// The worker that died.
        worker: ActorId,
        /// How it died.
        reason: String,
    },
    /// The worker it was sent to was ending on its own (its actor had cancelled itself) and
    /// refused the item unstarted: it did not run. With [`PoolConfig::retries`] above zero the
    /// item is run on the replacement instead (not counted as a retry); without, its arguments
    /// were not kept, so it is answered this way, to be submitted again if wanted.
    #[error("pool worker {worker} was ending and refused this item, which did not run: {reason}")]
    Refused {
        /// The worker that refused it.
        worker: ActorId,
        /// Why it was ending.
        reason: String,
    },
    /// The pool was cancelled or dropped (or its nursery tore down) before the item ran.
    #[error("the pool was cancelled before this item finished")]
    Cancelled,
    /// The pool's queue is full ([`ActorPool::try_submit`] only).
    #[error("the pool's queue is full")]
    Full,
    /// The pool has no worker left (every replacement failed).
    #[error("the pool has no worker left: {0}")]
    NoWorkers(String),
}

impl PoolError {
    /// The remote error the function raised, if that is why.
    pub fn remote_error(&self) -> Option<&harrow_ipc::RemoteError> {
        match self {
            PoolError::Call(e) => e.remote_error(),
            _ => None,
        }
    }
}

type Reply = async_channel::Sender<Answer>;

/// What a worker sends back for one job: the results of consecutive items from `seq` on (one
/// item, or a whole batch in one message, so that a batch costs one send and one wake-up
/// however many items it holds).
#[derive(Debug)]
struct Answer {
    /// The index of the next item in `items`.
    seq: u64,
    items: AnswerItems,
}

#[derive(Debug)]
enum AnswerItems {
    One(Option<PoolResult>),
    /// Every item failed alike (a batch whose call failed).
    Same {
        left: usize,
        r: PoolResult,
    },
    /// A batch's results as its runner returned them, and the items that failed (by offset
    /// in the batch, in order): no per-item allocation.
    Batch {
        results: std::vec::IntoIter<Value>,
        offset: usize,
        errors: std::iter::Peekable<std::vec::IntoIter<(usize, PoolError)>>,
    },
}

impl Answer {
    fn one(seq: u64, r: PoolResult) -> Answer {
        Answer {
            seq,
            items: AnswerItems::One(Some(r)),
        }
    }

    /// The next item and its index.
    fn pop(&mut self) -> Option<(u64, PoolResult)> {
        let r = match &mut self.items {
            AnswerItems::One(r) => r.take(),
            AnswerItems::Same { left, r } => {
                *left = left.checked_sub(1)?;
                Some(r.clone())
            }
            AnswerItems::Batch {
                results,
                offset,
                errors,
            } => {
                let v = results.next()?;
                let at = *offset;
                *offset += 1;
                match errors.next_if(|(i, _)| *i == at) {
                    Some((_, e)) => Some(Err(e)),
                    None => Some(Ok(v)),
                }
            }
        }?;
        let seq = self.seq;
        self.seq += 1;
        Some((seq, r))
    }
}

struct Job {
    func: String,
    args: Value,
    /// The index of the (first) item.
    seq: u64,
    /// For a batch (see [`PoolConfig::batch`]): how many items it holds.
    batch: Option<usize>,
    reply: Reply,
}

impl Job {
    /// Answers every item of this job with `r` (a batch's items each get it).
    fn answer(self, r: PoolResult) {
        let answer = match self.batch {
            None => Answer::one(self.seq, r),
            Some(n) => Answer {
                seq: self.seq,
                items: AnswerItems::Same { left: n, r },
            },
        };
        let _ = self.reply.try_send(answer);
    }

    /// Answers a batch's items from the runner's `[results, errors]`.
    fn answer_batch(self, n: usize, worker: &ActorId, value: Value) {
        let kind = value.kind_name();
        let mut value = value;
        let parsed = match &mut value {
            Value::List(parts) => match parts.as_mut_slice() {
                [Value::List(results), Value::List(errors)] if results.len() == n => {
                    Some((std::mem::take(results), std::mem::take(errors)))
                }
                _ => None,
            },
            _ => None,
        };
        drop(value);
        let Some((results, errors)) = parsed else {
            let bad = harrow_portal::Error::Protocol(format!(
                "the batch runner did not return [results, errors] with {n} results: {kind}"
            ));
            return self.answer(Err(PoolError::Call(bad)));
        };
        let mut failed: Vec<(usize, PoolError)> = Vec::new();
        for e in errors {
            if let Some([Value::Int(i), Value::Str(ty), Value::Str(msg)]) = e.as_list()
                && let Some(i) = usize::try_from(*i).ok().filter(|i| *i < n)
            {
                let remote = harrow_ipc::RemoteError::new(
                    harrow_ipc::ErrorKind::Raised,
                    ty.clone(),
                    msg.clone(),
                    worker.clone(),
                );
                let err = PoolError::Call(harrow_portal::Error::Remote(Box::new(remote)));
                failed.push((i, err));
            }
        }
        // In item order, one error per item (the last one given wins, as a plain overwrite
        // would).
        failed.reverse();
        failed.sort_by_key(|(i, _)| *i);
        failed.dedup_by_key(|(i, _)| *i);
        let answer = Answer {
            seq: self.seq,
            items: AnswerItems::Batch {
                results: results.into_iter(),
                offset: 0,
                errors: failed.into_iter().peekable(),
            },
        };
        let _ = self.reply.try_send(answer);
    }
}

/// What the workers share.
struct Shared {
    config: PoolConfig,
    backend: Arc<dyn SpawnBackend>,
    spec: ActorSpec,
    jobs_tx: async_channel::Sender<Job>,
    jobs_rx: async_channel::Receiver<Job>,
    /// Set to stop the workers (a cancel, the pool dropped).
    stop: CancelToken,
    live_workers: AtomicUsize,
    /// The current actor of each worker slot.
    workers: Mutex<Vec<Option<ChildHandle>>>,
    /// Items answered so far.
    completed: AtomicU64,
    /// Items a worker has taken and not answered yet.
    running: AtomicUsize,
    replaced: AtomicU64,
    /// The last reason a replacement failed (for `NoWorkers`).
    last_spawn_error: Mutex<String>,
}

/// A pool of N actors on one backend. Cheap to clone; dropping the last clone cancels the pool
/// (queued items fail with [`PoolError::Cancelled`], the workers are torn down by the ladder).
///
/// ```no_run
/// # use harrow_runtime_core::*;
/// # async fn demo(nursery: ActorNursery, backend: std::sync::Arc<dyn SpawnBackend>) -> Result<()> {
/// use futures_lite::StreamExt;
/// let pool = ActorPool::start(&nursery, backend, ActorSpec::new(), PoolConfig::new("w", 4)).await?;
/// let inputs = (0..100).map(|i| ipc::Value::Int(i));
/// let mut results = pool.map("tasks:square", inputs, true);
/// while let Some((i, r)) = results.next().await {
///     println!("{i}: {r:?}");
/// }
/// pool.cancel().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ActorPool {
    handle: Arc<PoolHandle>,
}

/// Cancels the pool when the last user handle drops.
struct PoolHandle {
    shared: Arc<Shared>,
    nursery: ActorNursery,
    next_seq: AtomicU64,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        begin_cancel(&self.shared);
    }
}

impl fmt::Debug for ActorPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorPool")
            .field("config", &self.handle.shared.config)
            .field("backend", &self.handle.shared.backend.name())
            .finish_non_exhaustive()
    }
}

/// Stops the workers and fails what is queued; the workers' teardown runs on their own tasks.
fn begin_cancel(shared: &Shared) {
    shared.stop.cancel();
    shared.jobs_tx.close();
    while let Ok(job) = shared.jobs_rx.try_recv() {
        job.answer(Err(PoolError::Cancelled));
    }
}

impl ActorPool {
    /// Starts `config.size` workers on `backend` from `spec` in `nursery` (all of them, in
    /// parallel; one that cannot start is an error and the others are torn down). The workers
    /// are children of `nursery`: its teardown ends the pool too.
    pub async fn start(
        nursery: &ActorNursery,
        backend: Arc<dyn SpawnBackend>,
        spec: ActorSpec,
        config: PoolConfig,
    ) -> Result<ActorPool> {
        if let Some(reason) = config.unusable() {
            return Err(crate::SpawnError::BadSpec {
                actor: ActorId::new(&config.name),
                reason,
            }
            .into());
        }
        let (jobs_tx, jobs_rx) = async_channel::bounded(config.queue.max(1));
        let shared = Arc::new(Shared {
            workers: Mutex::new(vec![None; config.size]),
            config,
            backend,
            spec,
            jobs_tx,
            jobs_rx,
            stop: CancelToken::new(),
            live_workers: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            last_spawn_error: Mutex::new(String::new()),
        });
        // Start every worker at once: spawns overlap on backends where they can.
        let starts = (0..shared.config.size).map(|i| {
            let name = format!("{}-{i}", shared.config.name);
            let (backend, spec) = (shared.backend.clone(), shared.spec.clone());
            let nursery = nursery.clone();
            async move { nursery.start_contained(&name, backend, spec).await }
        });
        let mut started = Vec::new();
        let mut first_err = None;
        for r in join_all(starts.collect()).await {
            match r {
                Ok(h) => started.push(h),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for h in &started {
                h.cancel().await;
            }
            return Err(e);
        }
        for (i, h) in started.into_iter().enumerate() {
            shared.workers.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(h.clone());
            shared.live_workers.fetch_add(1, Ordering::SeqCst);
            let hold = nursery.hold();
            let track = nursery.actor().track();
            let (shared, nursery2) = (shared.clone(), nursery.clone());
            nursery
                .actor()
                .executor()
                .spawn(async move {
                    work(&shared, &nursery2, i, h).await;
                    if shared.live_workers.fetch_sub(1, Ordering::SeqCst) == 1 {
                        // The last worker is gone: nothing would ever run what is queued.
                        let why = shared
                            .last_spawn_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        shared.jobs_tx.close();
                        while let Ok(job) = shared.jobs_rx.try_recv() {
                            let err = if shared.stop.is_cancelled()
                                || nursery2.teardown_token().is_cancelled()
                            {
                                PoolError::Cancelled
                            } else {
                                PoolError::NoWorkers(why.clone())
                            };
                            job.answer(Err(err));
                        }
                    }
                    drop(hold);
                    drop(track);
                })
                .detach();
        }
        Ok(ActorPool {
            handle: Arc::new(PoolHandle {
                shared,
                nursery: nursery.clone(),
                next_seq: AtomicU64::new(0),
            }),
        })
    }

    /// The number of worker slots.
    pub fn size(&self) -> usize {
        self.handle.shared.config.size
    }

    /// Items answered so far (results and failures).
    pub fn completed(&self) -> u64 {
        self.handle.shared.completed.load(Ordering::SeqCst)
    }

    /// Items a worker is running now.
    pub fn running(&self) -> usize {
        self.handle.shared.running.load(Ordering::SeqCst)
    }

    /// Items waiting in the queue for a worker.
    pub fn queued(&self) -> usize {
        self.handle.shared.jobs_tx.len()
    }

    /// Workers replaced so far (after one died).
    pub fn replaced(&self) -> u64 {
        self.handle.shared.replaced.load(Ordering::SeqCst)
    }

    /// The current actors of the pool, one per slot still served.
    pub fn workers(&self) -> Vec<ChildHandle> {
        self.handle
            .shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn job(&self, func: &str, args: Value) -> (Job, async_channel::Receiver<Answer>) {
        let (tx, rx) = async_channel::bounded(1);
        let seq = self.handle.next_seq.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            func: func.to_owned(),
            args,
            seq,
            batch: None,
            reply: tx,
        };
        (job, rx)
    }

    /// Queues `func(args)`, waiting while the queue is full (backpressure); the returned
    /// [`PoolTask`] resolves to its result. A cancelled pool's task resolves to
    /// [`PoolError::Cancelled`].
    pub async fn submit(&self, func: &str, args: Value) -> PoolTask {
        let (job, rx) = self.job(func, args);
        if let Err(async_channel::SendError(job)) = self.handle.shared.jobs_tx.send(job).await {
            job.answer(Err(self.closed_error()));
        }
        PoolTask { rx: Box::pin(rx) }
    }

    /// Queues `func(args)` if the queue has room, or fails with [`PoolError::Full`] (or
    /// [`PoolError::Cancelled`] once the pool was cancelled).
    pub fn try_submit(&self, func: &str, args: Value) -> std::result::Result<PoolTask, PoolError> {
        let (job, rx) = self.job(func, args);
        match self.handle.shared.jobs_tx.try_send(job) {
            Ok(()) => Ok(PoolTask { rx: Box::pin(rx) }),
            Err(async_channel::TrySendError::Full(_)) => Err(PoolError::Full),
            Err(async_channel::TrySendError::Closed(_)) => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> PoolError {
        let s = &self.handle.shared;
        if s.stop.is_cancelled() || self.handle.nursery.teardown_token().is_cancelled() {
            PoolError::Cancelled
        } else {
            PoolError::NoWorkers(
                s.last_spawn_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
        }
    }

    /// Runs `func(args)` on a worker and returns its result.
    pub async fn run(&self, func: &str, args: Value) -> PoolResult {
        self.submit(func, args).await.await
    }

    /// Maps `func` over `inputs`: a stream of `(index, result)`, in input order if `ordered`,
    /// otherwise as results come. Inputs are fed as the queue has room and, for an ordered map,
    /// at most `size + queue` items are ahead of the next one to be yielded, so memory stays
    /// bounded whatever the stream's consumer does. Dropping the stream stops feeding.
    ///
    /// Every input gets exactly one answer. A pool cancelled (or left without a worker) during
    /// the map answers the inputs it had not sent with [`PoolError::Cancelled`] (or
    /// [`PoolError::NoWorkers`]) after the others, pulled from `inputs` as the stream is read:
    /// the stream ends when `inputs` does, never early.
    ///
    /// With [`PoolConfig::batch`] the items go in batches through its runner.
    pub fn map<I>(&self, func: &str, inputs: I, ordered: bool) -> PoolMap
    where
        I: IntoIterator<Item = Value>,
        I::IntoIter: Send + 'static,
    {
        let batch = self.handle.shared.config.batch.clone();
        self.map_inner(func, inputs, ordered, batch)
    }

    /// [`map`](Self::map), sending the items `size` at a time through `runner` whatever the
    /// pool's configuration (see [`PoolConfig::batch`] for the runner's contract).
    pub fn map_batched<I>(
        &self,
        func: &str,
        inputs: I,
        ordered: bool,
        runner: &str,
        size: usize,
    ) -> PoolMap
    where
        I: IntoIterator<Item = Value>,
        I::IntoIter: Send + 'static,
    {
        let batch = (size > 1).then(|| (runner.to_owned(), size));
        self.map_inner(func, inputs, ordered, batch)
    }

    fn map_inner<I>(
        &self,
        func: &str,
        inputs: I,
        ordered: bool,
        batch: Option<(String, usize)>,
    ) -> PoolMap
    where
        I: IntoIterator<Item = Value>,
        I::IntoIter: Send + 'static,
    {
        let shared = &self.handle.shared;
        let per_job = batch.as_ref().map_or(1, |(_, size)| *size);
        let window = (shared
            .config
            .size
            .saturating_add(shared.config.queue.max(1)) as u64)
            .saturating_mul(per_job as u64);
        let (tx, rx) = async_channel::unbounded();
        let yielded = Arc::new(Progress::default());
        let feeder_stop = CancelToken::new();
        let pool = self.clone();
        let func = func.to_owned();
        let inputs = inputs.into_iter();
        let (progress, stop) = (yielded.clone(), feeder_stop.clone());
        let leftover: Arc<Mutex<Option<Leftover>>> = Arc::default();
        let left = leftover.clone();
        let nursery = &self.handle.nursery;
        let track = nursery.actor().track();
        nursery
            .actor()
            .executor()
            .spawn(async move {
                let _track = track;
                let mut inputs = inputs.peekable();
                let mut seq = 0u64;
                let feed = async {
                    while inputs.peek().is_some() {
                        // The ordered window: never run too far ahead of the consumer.
                        wait_until(&progress.event, || {
                            progress
                                .yielded
                                .load(Ordering::SeqCst)
                                .saturating_add(window)
                                > seq
                        })
                        .await;
                        let job = match &batch {
                            None => Job {
                                func: func.clone(),
                                args: inputs.next().unwrap_or(Value::Null),
                                seq,
                                batch: None,
                                reply: tx.clone(),
                            },
                            Some((runner, size)) => {
                                let items: Vec<Value> = inputs.by_ref().take(*size).collect();
                                let n = items.len();
                                Job {
                                    func: runner.clone(),
                                    args: Value::List(vec![
                                        Value::from(func.as_str()),
                                        Value::List(items),
                                    ]),
                                    seq,
                                    batch: Some(n),
                                    reply: tx.clone(),
                                }
                            }
                        };
                        seq += job.batch.unwrap_or(1) as u64;
                        if let Err(async_channel::SendError(job)) =
                            pool.handle.shared.jobs_tx.send(job).await
                        {
                            job.answer(Err(pool.closed_error()));
                            break;
                        }
                    }
                };
                let pool_stopped = pool.handle.shared.stop.clone();
                feed.or(stop.cancelled()).or(pool_stopped.cancelled()).await;
                // Cut short (the pool was cancelled, or has no worker left): the inputs not
                // sent are answered by the stream, one by one, after the rest.
                if inputs.peek().is_some() {
                    *left.lock().unwrap_or_else(|p| p.into_inner()) = Some(Leftover {
                        rest: Box::new(inputs),
                        seq,
                        error: pool.closed_error(),
                    });
                }
                // Our sender drops here: the stream ends once the last item is answered.
                drop(pool);
            })
            .detach();
        PoolMap {
            rx: Box::pin(rx),
            ordered,
            next: 0,
            current: None,
            buffered: BTreeMap::new(),
            progress: yielded,
            feeder_stop,
            leftover,
        }
    }

    /// Cancels the pool: queued items fail with [`PoolError::Cancelled`], running calls are
    /// cancelled, and every worker is torn down with the ladder; returns once they all ended.
    pub async fn cancel(&self) {
        begin_cancel(&self.handle.shared);
        for h in self.workers() {
            h.cancel().await;
        }
    }
}

/// The result of one pool item.
pub type PoolResult = std::result::Result<Value, PoolError>;

/// One submitted item: a future of its result.
#[derive(Debug)]
pub struct PoolTask {
    rx: Pin<Box<async_channel::Receiver<Answer>>>,
}

impl std::future::Future for PoolTask {
    type Output = PoolResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoolResult> {
        let recv = self.rx.as_mut().poll_next(cx);
        recv.map(|a| match a.and_then(|mut a| a.pop()) {
            Some((_, r)) => r,
            None => Err(PoolError::Cancelled),
        })
    }
}

#[derive(Default)]
struct Progress {
    yielded: AtomicU64,
    event: Event,
}

/// The stream of [`ActorPool::map`]: `(input index, result)`.
pub struct PoolMap {
    rx: Pin<Box<async_channel::Receiver<Answer>>>,
    ordered: bool,
    /// Ordered: the index of the next item to yield; unordered: how many were yielded.
    next: u64,
    /// The answer being yielded item by item (in order: the one holding `next`).
    current: Option<Answer>,
    /// Ordered: answers that came ahead of `next`, by the index of their first item.
    buffered: BTreeMap<u64, Answer>,
    progress: Arc<Progress>,
    feeder_stop: CancelToken,
    /// The inputs a cut-short feeder did not send, answered with its error after the rest.
    leftover: Arc<Mutex<Option<Leftover>>>,
}

/// What a map's feeder left unsent when the pool stopped taking items: every such input still
/// gets its answer (the error), pulled from the iterator as the stream is read, so that no
/// input is missing from the stream and an endless iterator costs nothing up front.
struct Leftover {
    rest: Box<dyn Iterator<Item = Value> + Send>,
    /// The index of the next one.
    seq: u64,
    error: PoolError,
}

impl fmt::Debug for PoolMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolMap")
            .field("ordered", &self.ordered)
            .field("next", &self.next)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PoolMap {
    fn drop(&mut self) {
        self.feeder_stop.cancel();
    }
}

impl PoolMap {
    fn yielded(&mut self, idx: u64, r: PoolResult) -> Poll<Option<(u64, PoolResult)>> {
        self.next += 1;
        self.progress.yielded.store(self.next, Ordering::SeqCst);
        Poll::Ready(Some((idx, r)))
    }

    /// Wakes the feeder waiting for room in the window. Done once per answer (when its last
    /// item was yielded) and before waiting for the next one, not per item: the feeder is
    /// never left waiting while the consumer waits, and a batch's items cost no wake-up each.
    fn wake_feeder(&self) {
        self.progress.event.notify(usize::MAX);
    }
}

impl Stream for PoolMap {
    type Item = (u64, PoolResult);
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(a) = &mut self.current {
                if let Some((idx, r)) = a.pop() {
                    return self.yielded(idx, r);
                }
                self.current = None;
                self.wake_feeder();
            }
            if self.ordered {
                let next = self.next;
                if let Some(a) = self.buffered.remove(&next) {
                    self.current = Some(a);
                    continue;
                }
            }
            match self.rx.as_mut().poll_next(cx) {
                Poll::Pending => {
                    self.wake_feeder();
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    // Every sender is gone; in order, whatever is buffered is not contiguous
                    // (an item was lost only if the pool broke): yield it as it is.
                    if let Some(k) = self.buffered.keys().next().copied() {
                        self.current = self.buffered.remove(&k);
                        self.next = k;
                        continue;
                    }
                    let left = {
                        let mut slot = self.leftover.lock().unwrap_or_else(|p| p.into_inner());
                        let next = slot.as_mut().and_then(|l| {
                            l.rest.next()?;
                            l.seq += 1;
                            Some((l.seq - 1, l.error.clone()))
                        });
                        if next.is_none() {
                            *slot = None;
                        }
                        next
                    };
                    return match left {
                        Some((idx, error)) => self.yielded(idx, Err(error)),
                        None => Poll::Ready(None),
                    };
                }
                Poll::Ready(Some(a)) => {
                    if !self.ordered || a.seq == self.next {
                        self.current = Some(a);
                    } else {
                        self.buffered.insert(a.seq, a);
                    }
                }
            }
        }
    }
}

/// What a worker's call came to, as its item's result: `None` when the worker died under the
/// call (the item is run again, or reported as `WorkerDied`). `stopping`: the pool or its
/// nursery is tearing down; `worker_alive`: the worker's link is open and it has not ended.
fn call_outcome(
    r: std::result::Result<Value, harrow_portal::Error>,
    stopping: bool,
    worker_alive: bool,
) -> Option<std::result::Result<Value, PoolError>> {
    match r {
        Ok(v) => Some(Ok(v)),
        // A consequence of the pool's or the nursery's teardown.
        Err(e) if stopping && (e.is_cancelled() || e.is_closed()) => {
            Some(Err(PoolError::Cancelled))
        }
        // What the function raised is the worker's answer, even when the worker has gone by the
        // time it is looked at (it crashed right after, or the teardown finished meanwhile):
        // neither a cancellation nor a reason to run the item again.
        Err(e) if worker_alive || raised(&e) => Some(Err(PoolError::Call(e))),
        Err(_) if stopping => Some(Err(PoolError::Cancelled)),
        // The worker died under the call.
        Err(_) => None,
    }
}

/// Whether a call's failure is what its function raised (not a cancellation, a refusal or a
/// closed link): the item's answer even when its worker has died since.
fn raised(e: &harrow_portal::Error) -> bool {
    e.is_remote() && !e.is_cancelled()
}

/// One worker slot: takes items from the queue and runs them on its actor, replacing the actor
/// when it dies.
async fn work(shared: &Shared, nursery: &ActorNursery, slot: usize, worker: ChildHandle) {
    // The pool is stopping (or its slot was given up): its last actor goes with it.
    if let Some(last) = work_loop(shared, nursery, slot, worker).await {
        last.cancel().await;
    }
}

async fn work_loop(
    shared: &Shared,
    nursery: &ActorNursery,
    slot: usize,
    mut worker: ChildHandle,
) -> Option<ChildHandle> {
    let mut generation = 0u32;
    let stopping = || shared.stop.is_cancelled() || nursery.teardown_token().is_cancelled();
    // A job taken while a batch ran, its call already sent to this worker (see `InFlight`).
    let mut ahead: Option<InFlight<'_>> = None;
    loop {
        enum Next {
            Job(Job),
            Died,
            Stop,
        }
        let mut job = match ahead.take() {
            Some(a) => Some(a),
            None => {
                let next = async {
                    match shared.jobs_rx.recv().await {
                        Ok(job) => Next::Job(job),
                        Err(_) => Next::Stop,
                    }
                }
                .or(async {
                    worker.ended().await;
                    Next::Died
                })
                .or(async {
                    shared.stop.cancelled().await;
                    Next::Stop
                })
                .or(async {
                    nursery.teardown_token().cancelled().await;
                    Next::Stop
                })
                .await;
                match next {
                    Next::Stop => return Some(worker),
                    Next::Job(job) => Some(InFlight::new(shared, job)),
                    Next::Died => None,
                }
            }
        };
        // Run the job; if the worker dies under it (or while idle), replace the worker.
        loop {
            let result = match &mut job {
                Some(j) => {
                    let r = match j.done.take() {
                        Some(r) => Some(r),
                        None => {
                            let mut call = match j.call.take() {
                                Some(call) => call,
                                None => j.send(shared, &worker),
                            };
                            loop {
                                // While a batch runs, the next job is sent ahead to the same
                                // worker, so that it has its next batch at hand when this one
                                // is done instead of idling while results travel back.
                                let take_ahead = j.job.batch.is_some() && ahead.is_none();
                                enum Ev {
                                    Done(std::result::Result<Value, harrow_portal::Error>),
                                    Stop,
                                    Ahead(Job),
                                }
                                let ahead_ref = &mut ahead;
                                let ev = std::future::poll_fn(|cx| {
                                    if let Poll::Ready(r) = call.as_mut().poll(cx) {
                                        return Poll::Ready(Ev::Done(r));
                                    }
                                    if let Some(a) = ahead_ref.as_mut() {
                                        a.poll_call(cx);
                                    }
                                    Poll::Pending
                                })
                                .or(async {
                                    shared.stop.cancelled().await;
                                    Ev::Stop
                                })
                                .or(async {
                                    if !take_ahead {
                                        return std::future::pending().await;
                                    }
                                    match shared.jobs_rx.recv().await {
                                        Ok(next) => Ev::Ahead(next),
                                        Err(_) => std::future::pending().await,
                                    }
                                })
                                .await;
                                match ev {
                                    Ev::Done(r) => break Some(r),
                                    Ev::Stop => break None,
                                    Ev::Ahead(next) => {
                                        let mut a = InFlight::new(shared, next);
                                        a.call = Some(a.send(shared, &worker));
                                        ahead = Some(a);
                                    }
                                }
                            }
                        }
                    };
                    match r {
                        None => Some(Err(PoolError::Cancelled)),
                        // The worker is ending and did not run it: handled with its death (kept
                        // as the job's outcome, as a refused job sent ahead is).
                        Some(Err(e)) if e.is_refused() && !stopping() => {
                            j.done = Some(Err(e));
                            None
                        }
                        Some(r) => call_outcome(
                            r,
                            stopping(),
                            !worker.portal().is_closed() && !worker.has_ended(),
                        ),
                    }
                }
                None => None,
            };
            if let Some(result) = result {
                let j = job.take().expect("a result is for a job");
                j.finish(shared, worker.id(), result);
                break;
            }
            if stopping() {
                for j in job.take().into_iter().chain(ahead.take()) {
                    j.finish(shared, worker.id(), Err(PoolError::Cancelled));
                }
                return Some(worker);
            }
            // The worker died: wait (bounded by its ladder) for its outcome, then replace it.
            let bound = crate::nursery::teardown_bound(&nursery.actor().timeouts());
            if crate::scope::move_on_after(bound.saturating_mul(2), worker.ended())
                .await
                .is_none()
            {
                worker.request_teardown();
                worker.ended().await;
            }
            let reason = worker
                .crash()
                .or_else(|| worker.outcome().map(|o| format!("it {o}")))
                .unwrap_or_else(|| "its channel closed".into());
            tracing::debug!(worker = %worker.id(), %reason, "pool worker died; replacing it");
            // The job sent ahead was in flight on the dead worker too, unless it has its answer
            // (a result, or what its function raised; an answer that arrived while the worker
            // ended is taken now): it is failed or run again like the job itself.
            if let Some(a) = ahead.as_mut()
                && let Some(call) = a.call.as_mut()
                && let Some(r) = futures_lite::future::poll_once(call).await
            {
                a.done = Some(r);
                a.call = None;
            }
            let mut dead = match ahead.take() {
                Some(a)
                    if a.done
                        .as_ref()
                        .is_some_and(|r| r.as_ref().map_or_else(raised, |_| true)) =>
                {
                    ahead = Some(a);
                    None
                }
                other => other,
            };
            for j in [&mut job, &mut dead] {
                let Some(f) = j.as_mut() else { continue };
                let unrun = matches!(&f.done, Some(Err(e)) if e.is_refused());
                f.call = None;
                f.done = None;
                if unrun && f.args_kept {
                    tracing::debug!(seq = f.job.seq, "the item did not run; running it again");
                } else if unrun {
                    if let Some(f) = j.take() {
                        let err = PoolError::Refused {
                            worker: worker.id().clone(),
                            reason: reason.clone(),
                        };
                        f.finish(shared, worker.id(), Err(err));
                    }
                } else if f.attempts < shared.config.retries {
                    f.attempts += 1;
                    tracing::debug!(
                        seq = f.job.seq,
                        attempts = f.attempts,
                        "retrying the item on the replacement"
                    );
                } else if let Some(f) = j.take() {
                    let err = PoolError::WorkerDied {
                        worker: worker.id().clone(),
                        reason: reason.clone(),
                    };
                    f.finish(shared, worker.id(), Err(err));
                }
            }
            if let Some(d) = dead {
                // Run again after the job itself, on the replacement.
                ahead = Some(d);
            }
            match replace(shared, nursery, slot, &mut generation).await {
                Some(h) => worker = h,
                None => {
                    let err = if stopping() {
                        PoolError::Cancelled
                    } else {
                        PoolError::NoWorkers(
                            shared
                                .last_spawn_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .clone(),
                        )
                    };
                    for j in job.take().into_iter().chain(ahead.take()) {
                        j.finish(shared, worker.id(), Err(err.clone()));
                    }
                    return None;
                }
            }
            if job.is_none() {
                break;
            }
        }
    }
}

type CallFuture = Pin<
    Box<dyn std::future::Future<Output = std::result::Result<Value, harrow_portal::Error>> + Send>,
>;

/// A job a worker has taken: its call once sent, the call's outcome once known (a job sent
/// ahead may finish before the one running), how many times it was run again after its
/// worker died. Counts as running until dropped.
struct InFlight<'a> {
    job: Job,
    call: Option<CallFuture>,
    done: Option<std::result::Result<Value, harrow_portal::Error>>,
    attempts: u32,
    /// Whether the arguments were kept when the call was sent (retries were left).
    args_kept: bool,
    _running: Running<'a>,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, job: Job) -> Self {
        shared.running.fetch_add(1, Ordering::SeqCst);
        InFlight {
            job,
            call: None,
            done: None,
            attempts: 0,
            args_kept: false,
            _running: Running(&shared.running),
        }
    }

    /// The call of this job on `worker` (sent once polled). The arguments are kept only
    /// while the item may still be run again (retries left): a copy per item would cost every
    /// map (a fifth of a batched map's throughput, measured).
    fn send(&mut self, shared: &Shared, worker: &ChildHandle) -> CallFuture {
        self.args_kept = self.attempts < shared.config.retries;
        let args = if self.args_kept {
            self.job.args.clone()
        } else {
            std::mem::take(&mut self.job.args)
        };
        let portal = worker.portal().clone();
        let func = self.job.func.clone();
        Box::pin(async move { portal.run(&func, args).await })
    }

    /// Drives the call (a job sent ahead), keeping its outcome.
    fn poll_call(&mut self, cx: &mut Context<'_>) {
        if let Some(call) = &mut self.call
            && let Poll::Ready(r) = call.as_mut().poll(cx)
        {
            self.done = Some(r);
            self.call = None;
        }
    }

    /// Answers the job's items with `result` (a batch's from its runner's answer).
    fn finish(self, shared: &Shared, worker: &ActorId, result: PoolResult) {
        let j = self.job;
        shared
            .completed
            .fetch_add(j.batch.unwrap_or(1) as u64, Ordering::SeqCst);
        match (j.batch, result) {
            (Some(n), Ok(v)) => j.answer_batch(n, worker, v),
            (_, r) => j.answer(r),
        }
    }
}

/// Counts one running item until dropped.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a replacement for slot `slot`, retrying a few times; `None` if the slot is given up
/// (or the pool is stopping).
async fn replace(
    shared: &Shared,
    nursery: &ActorNursery,
    slot: usize,
    generation: &mut u32,
) -> Option<ChildHandle> {
    shared.workers.lock().unwrap_or_else(|p| p.into_inner())[slot] = None;
    for _ in 0..shared.config.replace_attempts.max(1) {
        if shared.stop.is_cancelled() || nursery.teardown_token().is_cancelled() {
            return None;
        }
        *generation += 1;
        let name = format!("{}-{slot}.{generation}", shared.config.name);
        match nursery
            .start_contained(&name, shared.backend.clone(), shared.spec.clone())
            .await
        {
            Ok(h) => {
                shared.replaced.fetch_add(1, Ordering::SeqCst);
                shared.workers.lock().unwrap_or_else(|p| p.into_inner())[slot] = Some(h.clone());
                if shared.stop.is_cancelled() {
                    h.cancel().await;
                    return None;
                }
                return Some(h);
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "replacing a pool worker failed");
                *shared
                    .last_spawn_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = e.to_string();
            }
        }
    }
    None
}

/// Awaits every future, concurrently on the current task.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
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
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use harrow_ipc::{ErrorKind, RemoteError};

    fn raised() -> harrow_portal::Error {
        harrow_portal::Error::Remote(Box::new(RemoteError::new(
            ErrorKind::Raised,
            "ValueError",
            "bad item",
            ActorId::new("worker"),
        )))
    }

    fn cancelled() -> harrow_portal::Error {
        let mut e = RemoteError::new(
            ErrorKind::Cancelled,
            "ContextCancelled",
            "cancelled",
            ActorId::new("worker"),
        );
        e.canceller = Some(ActorId::new("root"));
        harrow_portal::Error::Remote(Box::new(e))
    }

    fn closed() -> harrow_portal::Error {
        harrow_portal::Error::Closed("the worker's link broke".into())
    }

    #[test]
    fn what_a_worker_raised_is_its_answer_even_once_it_is_gone() {
        for stopping in [false, true] {
            for alive in [false, true] {
                let r = call_outcome(Err(raised()), stopping, alive);
                assert!(
                    matches!(&r, Some(Err(PoolError::Call(e))) if e.remote_error().is_some_and(|r| r.message == "bad item")),
                    "stopping={stopping} alive={alive}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn a_teardown_and_a_dead_worker_are_told_apart() {
        // The teardown's consequences are the pool's cancel.
        for e in [cancelled(), closed()] {
            assert!(matches!(
                call_outcome(Err(e), true, true),
                Some(Err(PoolError::Cancelled))
            ));
        }
        // Not stopping: a closed link of a gone worker is its death (the item runs again) ...
        assert!(call_outcome(Err(closed()), false, false).is_none());
        // ... and a cancel nobody in the pool asked for, to a live worker, is the call's failure.
        assert!(matches!(
            call_outcome(Err(cancelled()), false, true),
            Some(Err(PoolError::Call(_)))
        ));
        assert!(matches!(
            call_outcome(Ok(Value::Int(4)), true, false),
            Some(Ok(Value::Int(4)))
        ));
    }
}
