//! `harrow demo`: a small actor tree on every available backend, shown live.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harrow::{
    ActorNursery, ActorSpec, CallError, ChildOutcome, FnRegistry, RootConfig, SpawnBackend,
    Timeouts, Value, exit_code, run_root,
};

/// Lets the demo's stuck actor end once the demo is over (a Rust thread cannot be killed).
static RELEASE_STUCK: AtomicBool = AtomicBool::new(false);

struct Clock(Instant);

impl Clock {
    fn say(&self, actor: &str, backend: &str, what: impl std::fmt::Display) {
        println!(
            "[{:>8.3}s] {actor:<10} {backend:<8} {what}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

struct Row {
    actor: String,
    backend: String,
    spawn: Duration,
    did: String,
    outcome: String,
}

fn functions() -> anyhow::Result<Arc<FnRegistry>> {
    let mut f = FnRegistry::new();
    f.unary("demo:add", |v: Value| async move {
        let sum = v
            .as_list()
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::as_i64)
            .sum::<i64>();
        Ok(Value::Int(sum))
    })?;
    f.unary("demo:divide", |v: Value| async move {
        match v.as_list() {
            Some([Value::Int(_), Value::Int(0)]) => Err(CallError::raised(
                "ZeroDivisionError",
                "division by zero, on purpose",
            )),
            Some([Value::Int(a), Value::Int(b)]) => Ok(Value::Int(a / b)),
            _ => Err(CallError::raised("TypeError", "divide takes [int, int]")),
        }
    })?;
    f.context("demo:echo", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut stream = ctx.open_stream().await?;
        let mut n = 0;
        while let Some(item) = stream.recv().await? {
            stream.send(item).await?;
            n += 1;
        }
        stream.close().await?;
        Ok(Value::Int(n))
    })?;
    f.unary("demo:spin", |_| async move {
        // Never yields to its executor: only the hard kill can deal with it.
        while !RELEASE_STUCK.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        Ok(Value::Null)
    })?;
    Ok(Arc::new(f))
}

async fn rust_worker(
    n: &ActorNursery,
    clock: &Clock,
    name: &str,
    backend: Arc<dyn SpawnBackend>,
    functions: Arc<FnRegistry>,
) -> anyhow::Result<Row> {
    let bname = backend.name().to_owned();
    let t0 = Instant::now();
    let child = n
        .start_actor(name, backend, ActorSpec::with_resolver(functions))
        .await?;
    let spawn = t0.elapsed();
    clock.say(name, &bname, format!("started in {spawn:.1?}"));

    let t0 = Instant::now();
    let sum = child
        .run(
            "demo:add",
            Value::List(vec![Value::Int(20), Value::Int(22)]),
        )
        .await?;
    clock.say(
        name,
        &bname,
        format!("add(20, 22) = {sum:?} in {:.1?}", t0.elapsed()),
    );

    let (mut ctx, _) = child.open_context("demo:echo", Value::Null).await?;
    let (tx, mut rx) = ctx.open_stream().await?.split();
    const ITEMS: i64 = 20_000;
    let t0 = Instant::now();
    let send = async {
        for i in 0..ITEMS {
            tx.send(Value::Int(i)).await?;
        }
        tx.close().await
    };
    let recv = async {
        let mut n = 0;
        while rx.recv().await?.is_some() {
            n += 1;
        }
        Ok::<_, harrow::portal::Error>(n)
    };
    let (sent, got) = futures_lite_zip(send, recv).await;
    sent?;
    let got = got?;
    let secs = t0.elapsed().as_secs_f64();
    let echoed = ctx.result().await?;
    clock.say(
        name,
        &bname,
        format!(
            "echoed {got} items both ways in {:.1} ms ({:.0} items/s), callee counted {echoed:?}",
            secs * 1e3,
            got as f64 / secs
        ),
    );

    let err = child
        .run(
            "demo:divide",
            Value::List(vec![Value::Int(1), Value::Int(0)]),
        )
        .await
        .expect_err("divide by zero fails");
    if let Some(remote) = err.remote_error() {
        clock.say(
            name,
            &bname,
            format!(
                "remote error {}: {} (raised in {})",
                remote.type_name, remote.message, remote.source.name
            ),
        );
    }
    let t0 = Instant::now();
    let outcome = child.cancel().await;
    clock.say(
        name,
        &bname,
        format!("cancelled: {outcome:?} in {:.1?}", t0.elapsed()),
    );
    Ok(Row {
        actor: name.into(),
        backend: bname,
        spawn,
        did: format!("1 call, {got}-item echo stream, 1 remote error"),
        outcome: format!("{outcome:?}"),
    })
}

async fn stuck_child(
    n: &ActorNursery,
    clock: &Clock,
    backend: Arc<dyn SpawnBackend>,
    functions: Arc<FnRegistry>,
    timeouts: Timeouts,
) -> anyhow::Result<Row> {
    let bname = backend.name().to_owned();
    let t0 = Instant::now();
    let child = n
        .start_actor("stuck", backend, ActorSpec::with_resolver(functions))
        .await?;
    let spawn = t0.elapsed();
    clock.say("stuck", &bname, format!("started in {spawn:.1?}"));
    let spin = child.run("demo:spin", Value::Null);
    // The call never returns: give it a moment to start spinning, then tear the actor down.
    let _ = harrow::move_on_after(Duration::from_millis(100), spin).await;
    clock.say(
        "stuck",
        &bname,
        format!(
            "spinning without yielding; cancelling (ladder bound {:.1?})",
            timeouts.ladder_bound()
        ),
    );
    let t0 = Instant::now();
    let outcome = child.cancel().await;
    let took = t0.elapsed();
    let shown = match &outcome {
        ChildOutcome::Leaked(what) => format!("leaked after the hard kill: {what}"),
        other => format!("{other:?}"),
    };
    clock.say("stuck", &bname, format!("{shown} in {took:.1?}"));
    Ok(Row {
        actor: "stuck".into(),
        backend: bname,
        spawn,
        did: "busy loop, cancel + hard kill".into(),
        outcome: format!("{} in {took:.1?}", outcome_word(&outcome)),
    })
}

fn outcome_word(o: &ChildOutcome) -> &'static str {
    match o {
        ChildOutcome::Exited => "exited",
        ChildOutcome::Failed(_) => "failed",
        ChildOutcome::Killed => "killed",
        ChildOutcome::Leaked(_) => "leaked (reported)",
        _ => "other",
    }
}

async fn futures_lite_zip<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.expect("ready"), rb.expect("ready"))
}

/// Runs the demo; returns the process exit code.
pub(crate) fn run() -> i32 {
    let functions = match functions() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("harrow demo: {e}");
            return 1;
        }
    };
    let timeouts = Timeouts {
        cancel_ack: Duration::from_millis(300),
        graceful_exit: Duration::from_millis(500),
        hard_kill: Duration::from_millis(500),
    };
    let clock = Clock(Instant::now());
    println!(
        "harrow demo: backends compiled in: {:?}",
        harrow::available_backends()
    );
    println!("{:>11} {:<10} {:<8} event", "time", "actor", "backend");
    let started = Instant::now();
    let rows = std::sync::Mutex::new(Vec::new());
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| {
        let (clock, rows) = (&clock, &rows);
        async move {
            let thread: Arc<dyn SpawnBackend> = harrow::ThreadBackend::shared();
            let row = rust_worker(&n, clock, "worker", thread.clone(), functions.clone())
                .await
                .map_err(|e| e.to_string())?;
            rows.lock().unwrap_or_else(|p| p.into_inner()).push(row);
            let row = stuck_child(&n, clock, thread, functions.clone(), timeouts)
                .await
                .map_err(|e| e.to_string())?;
            rows.lock().unwrap_or_else(|p| p.into_inner()).push(row);
            Ok(())
        }
    });
    RELEASE_STUCK.store(true, Ordering::Relaxed);
    println!();
    println!("summary ({:.2?} in all)", started.elapsed());
    println!(
        "  {:<8} {:<8} {:>10}  {:<46} outcome",
        "actor", "backend", "spawn", "did"
    );
    for r in rows.into_inner().unwrap_or_else(|p| p.into_inner()) {
        println!(
            "  {:<8} {:<8} {:>10.1?}  {:<46} {}",
            r.actor, r.backend, r.spawn, r.did, r.outcome
        );
    }
    let code = exit_code(&result);
    if let Err(e) = &result {
        println!("the tree reported: {e}");
        // A leaked Rust thread is the expected outcome of the stuck-child demo, not a failure.
        if e.failures().iter().all(|f| f.is_leak()) && e.body_error().is_none() {
            println!(
                "(the leak of the stuck Rust thread is the expected outcome: a thread cannot be killed)"
            );
            return 0;
        }
    }
    code
}
