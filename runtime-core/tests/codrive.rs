//! `CoDriver`: a helper thread that runs an in-process actor's tasks while it waits for work of
//! its own. The helper here mimics a subint actor's interpreter thread: it drives the actor while
//! idle, takes "jobs" the actor's functions queue for it, and answers them.
//!
//! - While the helper drives and is not busy, the actor's functions run on the helper.
//! - While a job keeps the helper busy, the actor's own thread takes over: another call is
//!   answered before the job ends.
//! - Once the actor ends, `drive_until` returns at once and the helper falls back to its own
//!   waiting.
//! - A job is taken as soon as the task that handed it over returns, before the tasks queued
//!   with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harrow_runtime_core::ipc::{ActorId, Channel, ErrorKind, Value, mem};
use harrow_runtime_core::portal::{CallError, FnRegistry};
use harrow_runtime_core::{
    ActorInit, ActorSpec, BoxFuture, Capabilities, Child, CoDriver, DedicatedThread, Exit,
    HardKill, RootConfig, SpawnBackend, SpawnError, SpawnSpec, run_actor_in_process_codriven,
    run_root,
};

/// Bound on every wait in these tests.
const BOUND: Duration = Duration::from_secs(30);
const OWNER: &str = "co-owner";
const HELPER: &str = "co-helper";

/// What the actor's `t:job` queues for the helper: a job the helper holds until `release`
/// gives the word (or is dropped), then answers with its thread's name.
struct Job {
    started: flume::Sender<()>,
    release: flume::Receiver<()>,
    answer: flume::Sender<String>,
}

enum ToHelper {
    Job(Job),
    Stop,
}

fn this_thread() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

#[derive(Debug)]
struct CoBackend {
    co: CoDriver,
}

impl SpawnBackend for CoBackend {
    fn name(&self) -> &'static str {
        "codriven-test"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_hard_kill(HardKill::Detaches)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        let id = spec.id.clone();
        let (parent_end, child_end) = mem::pair();
        let init = ActorInit::from_spec(spec, "codriven-test");
        let co = self.co.clone();
        let thread = DedicatedThread::spawn(OWNER, move || {
            run_actor_in_process_codriven(child_end, init, &co);
        });
        Box::pin(async move {
            let thread = thread.map_err(|e| SpawnError::Failed {
                actor: id.clone(),
                reason: e.to_string(),
            })?;
            Ok(Box::new(CoChild {
                id,
                channel: Some(parent_end),
                thread,
            }) as Box<dyn Child>)
        })
    }
}

#[derive(Debug)]
struct CoChild {
    id: ActorId,
    channel: Option<Channel>,
    thread: DedicatedThread<()>,
}

impl Child for CoChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move { self.thread.join(bound).await.into() })
    }

    fn describe(&self) -> String {
        format!("co-driven test actor {}", self.id)
    }
}

/// The helper's next job: the actor is driven until one comes; without an actor to drive, it is
/// waited for by the helper's own means (bounded). Also says whether the actor was driven.
fn next_job<T: Send>(
    co: &CoDriver,
    jobs: &flume::Receiver<T>,
) -> (Result<T, flume::RecvError>, bool) {
    let mut got = None;
    let driven = {
        let next = std::pin::pin!(async {
            got = Some(jobs.recv_async().await);
        });
        co.drive_until(next)
    };
    let next = got.unwrap_or_else(|| {
        jobs.recv_timeout(BOUND)
            .map_err(|_| flume::RecvError::Disconnected)
    });
    (next, driven)
}

/// The helper's loop: drive the actor until a job comes, run it, again; without an actor to
/// drive, wait for the next job by itself. Returns how many times it drove.
fn helper(co: CoDriver, jobs: flume::Receiver<ToHelper>) -> usize {
    let mut drove = 0;
    loop {
        let (next, driven) = next_job(&co, &jobs);
        if driven {
            drove += 1;
        }
        match next {
            Ok(ToHelper::Job(job)) => {
                let _ = job.started.send(());
                let _ = job.release.recv_timeout(BOUND);
                let _ = job.answer.send(this_thread());
            }
            Ok(ToHelper::Stop) | Err(_) => return drove,
        }
    }
}

#[test]
fn the_helper_runs_the_actors_tasks_and_the_owner_takes_over_while_it_is_busy() {
    let co = CoDriver::new();
    let (jobs_tx, jobs_rx) = flume::unbounded::<ToHelper>();
    let helper_thread = {
        let co = co.clone();
        std::thread::Builder::new()
            .name(HELPER.into())
            .spawn(move || helper(co, jobs_rx))
            .expect("helper thread")
    };
    // The job's release, held by the test until it has checked what happens meanwhile.
    let (release_tx, release_rx) = flume::unbounded::<()>();
    let (started_tx, started_rx) = flume::unbounded::<()>();

    let mut reg = FnRegistry::new();
    reg.unary("t:where", |_v: Value| async move {
        Ok(Value::Str(this_thread()))
    })
    .expect("register");
    {
        let jobs = jobs_tx.clone();
        reg.unary("t:job", move |v: Value| {
            let jobs = jobs.clone();
            let (started, release) = (started_tx.clone(), release_rx.clone());
            async move {
                let release = if v == Value::Bool(true) {
                    release
                } else {
                    // Released at once: a job that ends as soon as it starts.
                    let (tx, rx) = flume::bounded(1);
                    let _ = tx.send(());
                    rx
                };
                let (answer, answered) = flume::bounded(1);
                let job = Job {
                    started,
                    release,
                    answer,
                };
                let _ = jobs.send(ToHelper::Job(job));
                let by = answered.recv_async().await.unwrap_or_default();
                Ok(Value::Str(by))
            }
        })
        .expect("register");
    }
    let reg = Arc::new(reg);
    let backend = Arc::new(CoBackend { co: co.clone() });

    let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let child = n
            .start_actor("codriven", backend, ActorSpec::with_resolver(reg))
            .await?;
        // A first job: the helper learns of the actor when it comes back from it.
        assert_eq!(
            child.run("t:job", Value::Null).await?,
            Value::Str(HELPER.into())
        );

        // The helper starts driving soon after: from then on, with no job keeping it busy,
        // every call runs on it.
        let mut first = None;
        for i in 0..10_000 {
            if child.run("t:where", Value::Null).await? == Value::Str(HELPER.into()) {
                first = Some(i);
                break;
            }
        }
        assert!(first.is_some(), "no call ran on the helper in 10,000");
        for _ in 0..200 {
            assert_eq!(
                child.run("t:where", Value::Null).await?,
                Value::Str(HELPER.into()),
                "a call ran elsewhere while the helper drove"
            );
        }

        // A job that keeps the helper busy until released: meanwhile the owner answers.
        // (The job is released only after the other call was answered, so that answer came
        // while the helper was busy.)
        // (The first job said it started too.)
        while started_rx.try_recv().is_ok() {}
        let held = child.run("t:job", Value::Bool(true));
        let meanwhile = async {
            started_rx.recv_async().await.expect("the job started");
            let during = child.run("t:where", Value::Null).await;
            release_tx.send(()).expect("release");
            during
        };
        let (held, during) = futures_lite::future::zip(held, meanwhile).await;
        assert_eq!(during?, Value::Str(OWNER.into()));
        assert_eq!(held?, Value::Str(HELPER.into()));
        child.cancel().await;
        Ok(Value::Null)
    });
    assert_eq!(out.expect("the tree"), Value::Null);

    // The actor has ended: driving returns at once, and the helper waits by its own means.
    let mut ready = std::pin::pin!(async {});
    assert!(!co.drive_until(ready.as_mut()), "drove an ended actor");
    jobs_tx.send(ToHelper::Stop).expect("stop the helper");
    let drove = helper_thread.join().expect("the helper thread");
    assert!(drove >= 1, "the helper never drove");
}

/// A job handed to the helper by one of the actor's tasks is taken before any other task runs:
/// the helper looks at what it waits for after every task, so a task queued beside the job (as a
/// served call's own task is) waits until the helper comes back from the job.
#[test]
fn the_helper_takes_a_job_before_the_tasks_queued_with_it() {
    /// A job: whether the task queued with it had run on the helper when the helper took it.
    type OrderJob = (Arc<AtomicBool>, flume::Sender<bool>);
    let co = CoDriver::new();
    let (jobs_tx, jobs_rx) = flume::unbounded::<Option<OrderJob>>();
    let helper_thread = {
        let co = co.clone();
        std::thread::Builder::new()
            .name(HELPER.into())
            .spawn(move || {
                loop {
                    match next_job(&co, &jobs_rx).0 {
                        Ok(Some((ran, answer))) => {
                            let _ = answer.send(ran.load(Ordering::SeqCst));
                        }
                        Ok(None) | Err(_) => return,
                    }
                }
            })
            .expect("helper thread")
    };

    let mut reg = FnRegistry::new();
    {
        let jobs = jobs_tx.clone();
        // Queues a task, then a job; answers where it started and what the helper saw.
        reg.unary("t:order", move |_v: Value| {
            let jobs = jobs.clone();
            let started_on = this_thread();
            let ran = Arc::new(AtomicBool::new(false));
            let (answer, answered) = flume::bounded(1);
            let queued = {
                let ran = ran.clone();
                harrow_runtime_core::current_actor().map(|actor| {
                    actor
                        .executor()
                        .spawn(async move {
                            // The owner may run it meanwhile (it takes over from a helper
                            // kept off its CPU for long); only the helper's order is checked.
                            if this_thread() == HELPER {
                                ran.store(true, Ordering::SeqCst);
                            }
                        })
                        .detach()
                })
            };
            let _ = jobs.send(Some((ran, answer)));
            async move {
                if queued.is_none() {
                    return Err(CallError::new(ErrorKind::Raised, "NoActor", "no actor"));
                }
                let seen = answered.recv_async().await.map_err(|_| {
                    CallError::new(ErrorKind::Raised, "NoHelper", "the helper is gone")
                })?;
                Ok(Value::List(vec![Value::Str(started_on), Value::Bool(seen)]))
            }
        })
        .expect("register");
    }
    let reg = Arc::new(reg);
    let backend = Arc::new(CoBackend { co: co.clone() });

    let out = run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let child = n
            .start_actor("codriven-order", backend, ActorSpec::with_resolver(reg))
            .await?;
        let (mut on_helper, mut after_the_task) = (0, 0);
        for _ in 0..200 {
            let answer = child.run("t:order", Value::Null).await?;
            let Value::List(got) = &answer else {
                panic!("not a list");
            };
            // Only the calls started while the helper drove (the first ones reach the owner,
            // before the helper learns of the actor).
            if got[0] == Value::Str(HELPER.into()) {
                on_helper += 1;
                if got[1] == Value::Bool(true) {
                    after_the_task += 1;
                }
            }
        }
        child.cancel().await;
        Ok(Value::List(vec![
            Value::Int(on_helper),
            Value::Int(after_the_task),
        ]))
    });
    let out = out.expect("the tree");
    jobs_tx.send(None).expect("stop the helper");
    helper_thread.join().expect("the helper thread");
    let Value::List(counts) = &out else {
        panic!("not a list")
    };
    let (Value::Int(on_helper), Value::Int(after_the_task)) = (&counts[0], &counts[1]) else {
        panic!("not two counts")
    };
    assert!(
        *on_helper >= 100,
        "only {on_helper} of 200 calls started on the helper"
    );
    assert_eq!(
        *after_the_task, 0,
        "of {on_helper} jobs handed over on the helper, {after_the_task} were taken after the \
         task queued with them ran"
    );
}
