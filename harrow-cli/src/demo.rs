//! `harrow demo`: a small actor tree with one actor on each available backend, shown live.
//!
//! Phase 1 starts a worker per backend (a Rust thread actor, a Rust process actor, a Python
//! subint actor) and, on all of them at once: a call, an addition, a bidirectional echo stream,
//! a remote error. Phase 2 starts a stuck child per backend (a busy loop that never yields).
//! Phase 3 cancels the whole tree at once, showing what each backend's teardown does to a
//! well-behaved and to a stuck child. Every figure printed is measured in this run.

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harrow::{
    ActorNursery, ActorSpec, ChildHandle, ChildOutcome, HardKill, RootConfig, SpawnBackend,
    Timeouts, Value, run_root,
};

use crate::util::{Job, human, join_all};

/// Items sent through each echo stream (and received back).
const ITEMS: i64 = 20_000;

/// What code an actor runs, which decides the function names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Rust,
    #[cfg_attr(not(feature = "subint"), allow(dead_code))]
    Python,
}

impl Flavor {
    fn func(self, name: &str) -> String {
        match self {
            Flavor::Rust => format!("demo:{name}"),
            Flavor::Python => format!("{}:{name}", crate::pymod::MODULE),
        }
    }

    fn error_type(self) -> &'static str {
        match self {
            Flavor::Rust => "DivisionByZero",
            Flavor::Python => "ZeroDivisionError",
        }
    }
}

/// One actor as the demo shows it.
struct Row {
    actor: String,
    backend: String,
    hard_kill: &'static str,
    state: &'static str,
    spawn: Option<Duration>,
    work: Vec<String>,
    teardown: Option<Duration>,
    outcome: String,
}

/// The live view: every event is printed as it happens and recorded for the summary.
struct Live {
    t0: Instant,
    rows: Mutex<Vec<Row>>,
    problems: Mutex<Vec<String>>,
    /// The children whose cancel has not returned yet: actor, handle, stuck, hard kill. One
    /// left when the root ends was torn down by its nursery instead (the body was cancelled
    /// by a failure meanwhile, such as the stuck Rust thread's leak): its outcome is read from
    /// its handle then, and judged the same way.
    cancelling: Mutex<Vec<(&'static str, ChildHandle, bool, HardKill)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hard_kill_text(h: HardKill) -> &'static str {
    match h {
        HardKill::Kills => "SIGKILL + reap",
        HardKill::Interrupts => "interrupt Python",
        HardKill::Detaches => "detach + report",
        _ => "other",
    }
}

impl Live {
    fn add(&self, actor: &str, backend: &dyn SpawnBackend) {
        lock(&self.rows).push(Row {
            actor: actor.into(),
            backend: backend.name().into(),
            hard_kill: hard_kill_text(backend.capabilities().hard_kill),
            state: "starting",
            spawn: None,
            work: Vec::new(),
            teardown: None,
            outcome: String::new(),
        });
    }

    fn with_row(&self, actor: &str, f: impl FnOnce(&mut Row)) {
        if let Some(r) = lock(&self.rows).iter_mut().find(|r| r.actor == actor) {
            f(r);
        }
    }

    fn event(&self, actor: &str, state: &'static str, what: impl Display) {
        let mut backend = String::new();
        self.with_row(actor, |r| {
            r.state = state;
            backend = r.backend.clone();
        });
        println!(
            "[{:>7.3}s] {actor:<15} {backend:<8} {state:<10} {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }

    fn work(&self, actor: &str, what: impl Into<String>) {
        let what = what.into();
        self.with_row(actor, |r| r.work.push(what));
    }

    fn problem(&self, actor: &str, what: impl Display) {
        let msg = format!("{actor}: {what}");
        println!(
            "[{:>7.3}s] UNEXPECTED: {msg}",
            self.t0.elapsed().as_secs_f64()
        );
        lock(&self.problems).push(msg);
    }

    fn tree(&self, title: &str) {
        let rows = lock(&self.rows);
        println!(
            "  ── tree {title}, at {:.3}s ──",
            self.t0.elapsed().as_secs_f64()
        );
        println!("  root (pid {}, this process)", std::process::id());
        for (i, r) in rows.iter().enumerate() {
            let branch = if i + 1 == rows.len() {
                "└──"
            } else {
                "├──"
            };
            let spawn = r
                .spawn
                .map_or("-".into(), |d| format!("up in {}", human(d)));
            println!(
                "  {branch} {:<15} {:<8} {:<10} {spawn}",
                r.actor, r.backend, r.state
            );
        }
    }
}

/// An actor to start: its name, backend, spec and flavour.
struct Plan {
    name: &'static str,
    backend: Arc<dyn SpawnBackend>,
    spec: ActorSpec,
    flavor: Flavor,
}

async fn start(n: &ActorNursery, live: &Live, plan: &Plan) -> anyhow::Result<ChildHandle> {
    live.add(plan.name, plan.backend.as_ref());
    live.event(plan.name, "starting", "start_actor");
    let t0 = Instant::now();
    let child = match n
        .start_actor(plan.name, plan.backend.clone(), plan.spec.clone())
        .await
    {
        Ok(child) => child,
        Err(e) => {
            // The summary's outcome column says so (the error itself is reported as a problem).
            live.with_row(plan.name, |r| r.state = "spawn failed");
            return Err(e.into());
        }
    };
    let took = t0.elapsed();
    live.with_row(plan.name, |r| r.spawn = Some(took));
    live.event(
        plan.name,
        "running",
        format!("up in {} (spawn to Hello)", human(took)),
    );
    Ok(child)
}

/// Phase 1 on one worker: calls, a bidirectional stream, a remote error.
async fn work(live: &Live, plan: &Plan, child: &ChildHandle) -> anyhow::Result<()> {
    let (name, f) = (plan.name, plan.flavor);
    let t0 = Instant::now();
    let who = child.run(&f.func("whoami"), Value::Null).await?;
    live.event(
        name,
        "running",
        format!(
            "whoami -> {} ({})",
            who.as_str().unwrap_or("?"),
            human(t0.elapsed())
        ),
    );

    let t0 = Instant::now();
    let sum = child
        .run(
            &f.func("add"),
            Value::List(vec![Value::Int(20), Value::Int(22)]),
        )
        .await?;
    live.event(
        name,
        "running",
        format!("add([20, 22]) -> {sum:?} ({})", human(t0.elapsed())),
    );
    if sum != Value::Int(42) {
        live.problem(name, format!("add returned {sum:?}, not 42"));
    }
    live.work(name, "call");

    let (mut ctx, first) = child
        .open_context(&f.func("echo_stream"), Value::Null)
        .await?;
    let (tx, mut rx) = ctx.open_stream().await?.split();
    let t0 = Instant::now();
    let send = async {
        for i in 0..ITEMS {
            tx.send(Value::Int(i)).await?;
        }
        tx.close().await
    };
    let recv = async {
        let mut n = 0i64;
        while let Some(v) = rx.recv().await? {
            if v != Value::Int(n) {
                return Err(harrow::portal::Error::Protocol(format!(
                    "item {n} came back as {v:?}"
                )));
            }
            n += 1;
        }
        Ok(n)
    };
    let (sent, got) = futures_lite::future::zip(send, recv).await;
    sent?;
    let got = got?;
    let took = t0.elapsed();
    let counted = ctx.result().await?;
    let rate = got as f64 / took.as_secs_f64();
    live.event(
        name,
        "running",
        format!(
            "stream: started {first:?}, echoed {got} items both ways in {} ({rate:.0} items/s); callee counted {counted:?}",
            human(took)
        ),
    );
    if got != ITEMS || counted != Value::Int(ITEMS) {
        live.problem(
            name,
            format!("echo stream: {got} items back, callee counted {counted:?}, expected {ITEMS}"),
        );
    }
    live.work(
        name,
        format!("{}k-item stream {:.0}k/s", ITEMS / 1000, rate / 1e3),
    );

    let err = child
        .run(
            &f.func("divide"),
            Value::List(vec![Value::Int(1), Value::Int(0)]),
        )
        .await;
    match err.as_ref().map_err(|e| e.remote_error()) {
        Err(Some(remote)) => {
            live.event(
                name,
                "running",
                format!(
                    "divide([1, 0]) -> remote error {}: {} (raised in {})",
                    remote.type_name, remote.message, remote.source.name
                ),
            );
            if f == Flavor::Python {
                let first = remote.traceback.lines().next().unwrap_or("(no traceback)");
                let frame = remote
                    .traceback
                    .lines()
                    .rev()
                    .find(|l| l.trim_start().starts_with("File "))
                    .map(str::trim)
                    .unwrap_or("");
                live.event(name, "running", format!("  traceback: {first} ... {frame}"));
            }
            if remote.type_name != f.error_type() {
                live.problem(
                    name,
                    format!(
                        "expected a {} error, got {}",
                        f.error_type(),
                        remote.type_name
                    ),
                );
            }
            live.work(name, "remote error");
        }
        other => live.problem(name, format!("divide by zero did not raise: {other:?}")),
    }
    Ok(())
}

/// Phase 2 on one stuck child: start a busy loop that never yields; returns once it runs.
async fn get_stuck(
    live: &Live,
    plan: &Plan,
    child: &ChildHandle,
) -> anyhow::Result<harrow::Context> {
    let (ctx, first) = child
        .open_context(&plan.flavor.func("spin"), Value::Null)
        .await?;
    // It said so just before entering the loop: give the loop a moment to begin.
    crate::util::pause(Duration::from_millis(50)).await;
    live.event(
        plan.name,
        "running",
        format!("said {first:?}: now in a busy loop that never yields"),
    );
    live.work(plan.name, "busy loop");
    Ok(ctx)
}

/// Phase 3 on one child: cancel it and check the outcome is what its backend promises.
async fn teardown(live: &Live, plan: &Plan, child: &ChildHandle, stuck: bool) {
    let name = plan.name;
    let hard = plan.backend.capabilities().hard_kill;
    live.event(
        name,
        "cancelling",
        if stuck {
            format!("cancel; hard kill here = {}", hard_kill_text(hard))
        } else {
            "cancel".into()
        },
    );
    let t0 = Instant::now();
    lock(&live.cancelling).push((name, child.clone(), stuck, hard));
    let outcome = child.cancel().await;
    let took = t0.elapsed();
    lock(&live.cancelling).retain(|(actor, ..)| *actor != name);
    judge(live, name, stuck, hard, &outcome, Some(took));
}

/// Records a child's teardown outcome and checks it is what its backend promises. `took`: how
/// long its cancel took, when the demo saw it return.
fn judge(
    live: &Live,
    name: &str,
    stuck: bool,
    hard: HardKill,
    outcome: &ChildOutcome,
    took: Option<Duration>,
) {
    let (state, text) = match outcome {
        ChildOutcome::Exited => ("exited", "exited".to_owned()),
        ChildOutcome::Killed => ("killed", "killed".to_owned()),
        ChildOutcome::Leaked(what) => ("leaked", format!("leaked (reported): {what}")),
        ChildOutcome::Failed(why) => ("failed", format!("failed: {why}")),
        other => ("other", format!("{other:?}")),
    };
    let why = match (stuck, hard, state) {
        (true, HardKill::Detaches, "leaked") => {
            "; a Rust thread cannot be stopped: detached, and released by the demo at exit"
        }
        (true, HardKill::Kills, "killed") => "; no CancelAck from the busy loop, so SIGKILL",
        (true, HardKill::Interrupts, "exited") => {
            "; harrow.Cancelled was raised inside `while True: pass` at its next bytecode"
        }
        (true, HardKill::Interrupts, "killed") => "; interrupted by the hard kill",
        _ => "",
    };
    live.with_row(name, |r| {
        r.teardown = took;
        r.outcome = state.to_owned();
    });
    let when = match took {
        Some(took) => format!("after {}", human(took)),
        None => "(torn down by its nursery: the demo's body was cancelled meanwhile)".into(),
    };
    live.event(name, state, format!("{text} {when}{why}"));
    let expected = match (stuck, hard) {
        (false, _) => state == "exited",
        (true, HardKill::Detaches) => state == "leaked",
        (true, HardKill::Kills) => state == "killed",
        (true, _) => state == "exited" || state == "killed",
    };
    if !expected {
        live.problem(name, format!("unexpected teardown outcome: {text}"));
    }
}

/// `--remote` and its options: actors on another host too.
#[derive(Debug, Default)]
pub(crate) struct RemoteArgs {
    /// `ssh://[user@]host[:port]`.
    pub(crate) url: Option<String>,
    /// Upload the binary when missing or different.
    pub(crate) upload: bool,
    /// The binary's path on the remote host.
    pub(crate) path: Option<String>,
    /// Extra ssh `-o` options.
    pub(crate) ssh_options: Vec<String>,
}

impl RemoteArgs {
    /// The remote backend asked for, if any.
    #[cfg(feature = "remote")]
    fn backend(&self) -> Result<Option<Arc<dyn SpawnBackend>>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut b = harrow::RemoteBackend::from_url(url)?.upload(self.upload);
        if let Some(path) = &self.path {
            b = b.remote_path(path.clone());
        }
        for o in &self.ssh_options {
            b = b.ssh_option(o.clone());
        }
        Ok(Some(b.into_shared()))
    }

    #[cfg(not(feature = "remote"))]
    fn backend(&self) -> Result<Option<Arc<dyn SpawnBackend>>, String> {
        match &self.url {
            Some(_) => Err("the `remote` feature is off in this build of harrow".into()),
            None => Ok(None),
        }
    }
}

fn plans(
    py: Option<&crate::pymod::PyDir>,
    remote: Option<Arc<dyn SpawnBackend>>,
) -> (Vec<Plan>, Vec<Plan>) {
    let mut workers = Vec::new();
    let mut stuck = Vec::new();
    #[cfg(feature = "thread")]
    {
        let spec = ActorSpec::with_resolver(crate::fns::registry());
        for (list, name) in [
            (&mut workers, "worker-thread"),
            (&mut stuck, "stuck-thread"),
        ] {
            list.push(Plan {
                name,
                backend: harrow::ThreadBackend::shared(),
                spec: spec.clone(),
                flavor: Flavor::Rust,
            });
        }
    }
    #[cfg(feature = "process")]
    for (list, name) in [
        (&mut workers, "worker-process"),
        (&mut stuck, "stuck-process"),
    ] {
        // A process child serves what `main` passes to `maybe_run_child`.
        list.push(Plan {
            name,
            backend: harrow::ProcessBackend::shared(),
            spec: ActorSpec::new(),
            flavor: Flavor::Rust,
        });
    }
    #[cfg(feature = "subint")]
    if let Some(dir) = py {
        for (list, name) in [
            (&mut workers, "worker-python"),
            (&mut stuck, "stuck-python"),
        ] {
            list.push(Plan {
                name,
                backend: harrow::SubintBackend::shared(),
                spec: ActorSpec::new().params(dir.params(name, false)),
                flavor: Flavor::Python,
            });
        }
    }
    if let Some(backend) = remote {
        // A remote child serves what `main` passes to `remote::maybe_run_child`, there.
        for (list, name) in [
            (&mut workers, "worker-remote"),
            (&mut stuck, "stuck-remote"),
        ] {
            list.push(Plan {
                name,
                backend: backend.clone(),
                spec: ActorSpec::new(),
                flavor: Flavor::Rust,
            });
        }
    }
    let _ = py;
    (workers, stuck)
}

/// Runs the demo; returns the process exit code (0: everything as expected).
pub(crate) fn run(remote: RemoteArgs) -> i32 {
    let mut compiled = harrow::compiled_backends();
    if harrow::remote_compiled() {
        compiled.push("remote (with --remote)");
    }
    println!("harrow demo: backends compiled in: {}", compiled.join(", "));
    let py = match harrow::subint_status() {
        Ok(()) => match crate::pymod::PyDir::create() {
            Ok(dir) => Some(dir),
            Err(e) => {
                println!("cannot write the demo's Python module: {e}");
                return 1;
            }
        },
        Err(why) => {
            println!("the Python actor is skipped: {why}");
            None
        }
    };
    let remote = match remote.backend() {
        Ok(r) => r,
        Err(why) => {
            println!("--remote: {why}");
            return 2;
        }
    };
    let (workers, stuck) = plans(py.as_ref(), remote);
    if workers.is_empty() {
        println!("no backend is available in this build");
        return 1;
    }
    let timeouts = Timeouts {
        cancel_ack: Duration::from_millis(300),
        graceful_exit: Duration::from_millis(500),
        hard_kill: Duration::from_millis(500),
    };
    println!(
        "teardown ladder: cancel_ack {} + graceful_exit {} + hard_kill {} (bound {})",
        human(timeouts.cancel_ack),
        human(timeouts.graceful_exit),
        human(timeouts.hard_kill),
        human(timeouts.ladder_bound())
    );
    println!();
    println!(
        "{:>10} {:<15} {:<8} {:<10} event",
        "time", "actor", "backend", "state"
    );
    let live = Live {
        t0: Instant::now(),
        rows: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        cancelling: Mutex::new(Vec::new()),
    };
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| {
        let (live, workers, stuck) = (&live, &workers, &stuck);
        async move {
            // Phase 1: the workers, all at once.
            let jobs: Vec<Job<'_, Option<ChildHandle>>> = workers
                .iter()
                .map(|p| {
                    let n = n.clone();
                    Box::pin(async move {
                        let r = async {
                            let child = start(&n, live, p).await?;
                            work(live, p, &child).await?;
                            Ok::<_, anyhow::Error>(child)
                        }
                        .await;
                        r.map_err(|e| live.problem(p.name, format!("{e:#}"))).ok()
                    }) as Job<'_, _>
                })
                .collect();
            let worker_handles = join_all(jobs).await;
            live.tree("after the workers' calls and streams");

            // Phase 2: a stuck child per backend.
            let jobs: Vec<Job<'_, Option<(ChildHandle, harrow::Context)>>> = stuck
                .iter()
                .map(|p| {
                    let n = n.clone();
                    Box::pin(async move {
                        let r = async {
                            let child = start(&n, live, p).await?;
                            let ctx = get_stuck(live, p, &child).await?;
                            Ok::<_, anyhow::Error>((child, ctx))
                        }
                        .await;
                        r.map_err(|e| live.problem(p.name, format!("{e:#}"))).ok()
                    }) as Job<'_, _>
                })
                .collect();
            let stuck_handles = join_all(jobs).await;
            live.tree("with the stuck children spinning");

            // Phase 3: cancel everything at once.
            let mut jobs: Vec<Job<'_, ()>> = Vec::new();
            for (p, h) in workers.iter().zip(&worker_handles) {
                if let Some(child) = h {
                    jobs.push(Box::pin(teardown(live, p, child, false)));
                }
            }
            for (p, h) in stuck.iter().zip(&stuck_handles) {
                if let Some((child, _ctx)) = h {
                    jobs.push(Box::pin(teardown(live, p, child, true)));
                }
            }
            let t0 = Instant::now();
            join_all(jobs).await;
            println!(
                "[{:>7.3}s] every child has an outcome, {} after the cancels",
                live.t0.elapsed().as_secs_f64(),
                human(t0.elapsed())
            );
            drop(stuck_handles);
            Ok(())
        }
    });
    // A cancel cut short: the root has torn that child down since, and recorded its outcome.
    for (name, child, stuck, hard) in std::mem::take(&mut *lock(&live.cancelling)) {
        match child.outcome() {
            Some(outcome) => judge(&live, name, stuck, hard, &outcome, None),
            None => live.problem(name, "no teardown outcome was recorded"),
        }
    }
    // The stuck Rust thread was detached: let it go now.
    crate::fns::release_spinners();
    let total = live.t0.elapsed();
    drop(py);

    summary(&live, total);
    let mut problems = std::mem::take(&mut *lock(&live.problems));
    if let Err(e) = &result {
        if e.is_interrupted() {
            println!("interrupted (SIGINT): the tree was cancelled");
            return 130;
        }
        let expected_leak = |f: &harrow::ChildFailure| {
            f.is_leak() && f.backend() == "thread" && f.actor().name == "stuck-thread"
        };
        if e.body_error().is_some() || !e.failures().iter().all(expected_leak) {
            problems.push(format!("the tree reported: {e}"));
        } else {
            println!(
                "the root reported {} leak(s), as expected: {}",
                e.failures().len(),
                e.failures()
                    .iter()
                    .map(|f| f.actor().name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if problems.is_empty() {
        println!("result: every outcome as expected");
        0
    } else {
        println!("result: {} unexpected outcome(s):", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        1
    }
}

fn summary(live: &Live, total: Duration) {
    println!();
    println!(
        "summary ({} in all, every figure measured in this run)",
        human(total)
    );
    println!(
        "  {:<15} {:<8} {:<17} {:>9}  {:<48} {:>9}  outcome",
        "actor", "backend", "hard kill", "spawn", "did", "teardown"
    );
    for r in lock(&live.rows).iter() {
        println!(
            "  {:<15} {:<8} {:<17} {:>9}  {:<48} {:>9}  {}",
            r.actor,
            r.backend,
            r.hard_kill,
            r.spawn.map_or("-".into(), human),
            r.work.join(", "),
            r.teardown.map_or("-".into(), human),
            if r.outcome.is_empty() {
                r.state
            } else {
                &r.outcome
            }
        );
    }
}
