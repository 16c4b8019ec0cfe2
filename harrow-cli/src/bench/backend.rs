//! Per backend: spawn-to-first-reply, RPC round trip, stream throughput (a bidirectional echo)
//! and the teardown of a stuck child, each repeated and interleaved with its baseline (harrow,
//! baseline, harrow, baseline, ...) so that a change in the machine's load hits both alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harrow::{ActorNursery, ActorSpec, ChildHandle, ChildOutcome, SpawnBackend, Value};

use super::baseline::{BareSpawn, RawTransport, faster};
use super::stats::{Samples, Unit};
use super::{Progress, Sizes};

/// One harrow figure beside its baseline, both as samples.
pub(super) struct Row {
    pub(super) backend: &'static str,
    /// The JSON key: `rpc_round_trip`, ...
    pub(super) key: &'static str,
    /// The label in the table: `RPC round trip`, ...
    pub(super) label: &'static str,
    pub(super) unit: Unit,
    pub(super) harrow: Samples,
    /// The outcome, for teardowns (`killed`, ...); empty otherwise.
    pub(super) note: String,
    pub(super) baseline_label: String,
    pub(super) baseline: Samples,
    /// Round trips only: every single round trip's latency (µs), for p50 and p99; empty
    /// otherwise.
    pub(super) harrow_lat: Samples,
    pub(super) baseline_lat: Samples,
}

impl Row {
    /// How many times slower than the baseline, from the medians: time / baseline time, or
    /// baseline throughput / throughput.
    pub(super) fn ratio(&self) -> f64 {
        let (h, b) = (self.harrow.median(), self.baseline.median());
        match self.unit {
            Unit::ItemsPerS => b / h,
            _ => h / b,
        }
    }
}

/// A backend and the functions its actors serve, by role.
pub(super) struct Plan {
    pub(super) name: &'static str,
    backend: Arc<dyn SpawnBackend>,
    spec: ActorSpec,
    bare: BareSpawn,
    pub(super) echo: String,
    /// An `async def` echo, for backends that run Python.
    async_echo: Option<String>,
    stream: String,
    spin: String,
    /// A function that fails for `[1, 0]` and succeeds for `[1, 1]` (division).
    divide: String,
}

/// The plans of the backends available here (`py`: the Python module's directory, when the
/// subint backend is available).
pub(super) fn plans(py: Option<&crate::pymod::PyDir>) -> Vec<Plan> {
    let mut v = Vec::new();
    let rust = |name, backend, spec, bare| Plan {
        name,
        backend,
        spec,
        bare,
        echo: "demo:echo".into(),
        async_echo: None,
        stream: "demo:echo_stream".into(),
        spin: "demo:spin".into(),
        divide: "demo:divide".into(),
    };
    #[cfg(feature = "thread")]
    v.push(rust(
        "thread",
        harrow::ThreadBackend::shared(),
        ActorSpec::with_resolver(crate::fns::registry()),
        BareSpawn::Thread,
    ));
    #[cfg(feature = "process")]
    v.push(rust(
        "process",
        harrow::ProcessBackend::shared(),
        ActorSpec::new(),
        BareSpawn::Process,
    ));
    #[cfg(feature = "subint")]
    if let Some(dir) = py {
        let m = crate::pymod::MODULE;
        v.push(Plan {
            name: "subint",
            backend: harrow::SubintBackend::shared(),
            spec: ActorSpec::new().params(dir.params("bench", false)),
            bare: BareSpawn::Subint,
            echo: format!("{m}:echo"),
            async_echo: Some(format!("{m}:aecho")),
            stream: format!("{m}:echo_stream"),
            spin: format!("{m}:spin"),
            divide: format!("{m}:divide"),
        });
    }
    // Python in child processes (this binary re-executed, serving the same module in its main
    // interpreter), beside a bare Python process start.
    #[cfg(all(feature = "subint", feature = "process"))]
    if let Some(dir) = py {
        let m = crate::pymod::MODULE;
        v.push(Plan {
            name: "pyprocess",
            backend: harrow::PyProcessBackend::shared(),
            spec: ActorSpec::new().params(dir.params("bench", false)),
            bare: BareSpawn::Python,
            echo: format!("{m}:echo"),
            async_echo: Some(format!("{m}:aecho")),
            stream: format!("{m}:echo_stream"),
            spin: format!("{m}:spin"),
            divide: format!("{m}:divide"),
        });
    }
    let _ = (py, rust);
    v
}

/// Every figure of one backend, each interleaved with its baseline.
pub(super) async fn measure(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![spawn_to_first_reply(n, p, s, prog).await?];
    rows.extend(rpc_and_stream(n, p, s, prog).await?);
    rows.push(peer_round_trip(n, p, s, prog).await?);
    rows.push(failing_call(n, p, s, prog).await?);
    if let Some(aecho) = &p.async_echo {
        rows.push(async_round_trip(n, p, aecho, s, prog).await?);
    }
    rows.push(teardown(n, p, s, prog).await?);
    Ok(rows)
}

fn row(p: &Plan, key: &'static str, label: &'static str, unit: Unit, base: &str) -> Row {
    Row {
        backend: p.name,
        key,
        label,
        unit,
        harrow: Samples::default(),
        note: String::new(),
        baseline_label: base.to_owned(),
        baseline: Samples::default(),
        harrow_lat: Samples::default(),
        baseline_lat: Samples::default(),
    }
}

impl Plan {
    /// Whether this backend's actors share our address space.
    pub(super) fn backend_in_process(&self) -> bool {
        self.backend.capabilities().in_process
    }
}

pub(super) async fn start(n: &ActorNursery, p: &Plan, name: String) -> anyhow::Result<ChildHandle> {
    Ok(n.start_actor(&name, p.backend.clone(), p.spec.clone())
        .await?)
}

/// Start an actor and get its first reply, then one bare spawn; `s.spawns` times.
pub(super) async fn spawn_to_first_reply(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Row> {
    prog.step(&format!(
        "{}: spawn-to-first-reply x{}, interleaved with {}",
        p.name,
        s.spawns,
        p.bare.label()
    ));
    let mut r = row(
        p,
        "spawn_to_first_reply",
        "spawn-to-first-reply",
        Unit::Ms,
        p.bare.label(),
    );
    for i in 0..s.spawns {
        let t = Instant::now();
        let child = start(n, p, format!("{}-spawn-{i}", p.name)).await?;
        child.run(&p.echo, Value::Int(1)).await?;
        r.harrow.push(ms(t.elapsed()));
        child.cancel().await;
        r.baseline.push(ms(p.bare.once()?));
    }
    Ok(r)
}

/// `s.reps` rounds of: a batch of calls, a free batch of the raw ping-pong, another batch of
/// calls, a batch of the ping-pong held on one CPU (each side's faster batch counted: see
/// [`rpc_batch`]), an echo stream, a raw echo.
async fn rpc_and_stream(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<[Row; 2]> {
    let mut raw = RawTransport::new(p.backend.capabilities().in_process)?;
    let per_batch = (s.rpc_round_trips / s.reps).max(1);
    prog.step(&format!(
        "{}: {} rounds of 2 x {per_batch} RPC round trips (the faster batch counted) and a \
         {}-item stream echo, interleaved with a {} and a {}",
        p.name,
        s.reps,
        s.items,
        raw.ping_pong_label(),
        raw.echo_label()
    ));
    let mut rtt = row(
        p,
        "rpc_round_trip",
        "RPC round trip",
        Unit::Us,
        raw.ping_pong_label(),
    );
    let mut echo = row(
        p,
        "stream_echo_throughput",
        "stream echo (both ways)",
        Unit::ItemsPerS,
        &raw.echo_label(),
    );
    let child = start(n, p, format!("{}-rpc", p.name)).await?;
    for i in 0..50 {
        child.run(&p.echo, Value::Int(i)).await?;
    }
    for _ in 0..s.reps {
        // Two batches a side, taking turns, each side's faster counted: see `rpc_batch`.
        let first = rpc_batch(&child, &p.echo, per_batch).await?;
        let free = raw.free_batch(per_batch)?;
        let second = rpc_batch(&child, &p.echo, per_batch).await?;
        let pinned = raw.pinned_batch(per_batch)?;
        for (row, lat, (mean, each)) in [
            (
                &mut rtt.harrow,
                &mut rtt.harrow_lat,
                faster(first, Some(second)),
            ),
            (
                &mut rtt.baseline,
                &mut rtt.baseline_lat,
                faster(free, pinned),
            ),
        ] {
            row.push(us(mean));
            lat.extend(each);
        }

        echo.harrow.push(stream_echo(&child, p, s.items).await?);
        echo.baseline.push(raw.echo(s.items)?);
    }
    child.cancel().await;
    Ok([rtt, echo])
}

/// One batch of `calls` round trips to `child`'s function `echo`: their mean and each one's
/// latency (µs).
///
/// The RPC row runs two such batches per round, taking turns with the baseline's two (free,
/// then held on one CPU: [`RawTransport::free_batch`]), and counts the faster, as the baseline
/// counts the faster of its two: each side takes the better of two. With one batch against the
/// baseline's best of two, a machine busy with CPU hogs tipped the ratio whenever the
/// scheduler's placement changed between them: beside two hogs a batch of thread calls took
/// about 6 µs per call while the hogs shared one CPU and the caller and its actor had the
/// other, and 13-19 µs while a hog shared their CPU, and the baseline's two batches had two
/// chances to meet the better placement to harrow's one.
async fn rpc_batch(
    child: &ChildHandle,
    echo: &str,
    calls: usize,
) -> anyhow::Result<(Duration, Samples)> {
    let mut lat = Samples::default();
    let t = Instant::now();
    for i in 0..calls {
        let one = Instant::now();
        child.run(echo, Value::Int(i as i64)).await?;
        lat.push(us(one.elapsed()));
    }
    Ok((t.elapsed() / calls.max(1) as u32, lat))
}

/// `n` round trips to one actor of `p` (to its `async def` echo with `async_def`), after 50
/// warm-up calls: each one's latency (µs).
pub(super) async fn rpc_only(
    n: &ActorNursery,
    p: &Plan,
    calls: usize,
    async_def: bool,
    prog: &Progress,
) -> anyhow::Result<Samples> {
    let (echo, what) = if async_def {
        let echo = p
            .async_echo
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("the {} backend runs no async def functions", p.name))?;
        (echo, "async def round trips")
    } else {
        (p.echo.as_str(), "RPC round trips")
    };
    prog.step(&format!("{}: {calls} {what}", p.name));
    let child = start(n, p, format!("{}-rpc", p.name)).await?;
    for i in 0..50 {
        child.run(echo, Value::Int(i)).await?;
    }
    let (_, lat) = rpc_batch(&child, echo, calls).await?;
    child.cancel().await;
    Ok(lat)
}

/// `calls` failing calls (`divide [1, 0]`) and as many succeeding ones (`divide [1, 1]`) on
/// one actor of `p`, taking turns call by call as in the suite's row (after 50 of each): the
/// latency of every failing call, then of every succeeding one. (This section ran batches of
/// 1,000 of each kind before: there a Python process actor's failing calls read 0.94-1.23x its
/// succeeding ones at the p50 while the suite's row, taking turns, missed its 2x target in some
/// runs. The turns are part of what the row measures.)
pub(super) async fn fail_only(
    n: &ActorNursery,
    p: &Plan,
    calls: usize,
    prog: &Progress,
) -> anyhow::Result<(Samples, Samples)> {
    prog.step(&format!(
        "{}: {calls} failing calls, interleaved with as many succeeding ones",
        p.name
    ));
    let child = start(n, p, format!("{}-fail", p.name)).await?;
    let fails = Value::List(vec![Value::Int(1), Value::Int(0)]);
    let works = Value::List(vec![Value::Int(1), Value::Int(1)]);
    // The warm-up's samples are dropped.
    let (mut failing, mut succeeding) = (Samples::default(), Samples::default());
    for (i, turns) in [50, calls].into_iter().enumerate() {
        if i == 1 {
            (failing, succeeding) = (Samples::default(), Samples::default());
        }
        for _ in 0..turns {
            let one = Instant::now();
            let failed = child.run(&p.divide, fails.clone()).await.is_err();
            anyhow::ensure!(failed, "{}: {} [1, 0] did not fail", p.name, p.divide);
            failing.push(us(one.elapsed()));
            let one = Instant::now();
            child.run(&p.divide, works.clone()).await?;
            succeeding.push(us(one.elapsed()));
        }
    }
    child.cancel().await;
    Ok((failing, succeeding))
}

/// `rounds` stream echoes of `items` items each through one actor of `p` (after one warm-up
/// echo): each round's items per second.
pub(super) async fn stream_only(
    n: &ActorNursery,
    p: &Plan,
    items: i64,
    rounds: usize,
    prog: &Progress,
) -> anyhow::Result<Samples> {
    prog.step(&format!(
        "{}: {rounds} stream echoes of {items} items",
        p.name
    ));
    let child = start(n, p, format!("{}-stream", p.name)).await?;
    stream_echo(&child, p, items.min(2_000)).await?;
    let mut rates = Samples::default();
    for _ in 0..rounds {
        rates.push(stream_echo(&child, p, items).await?);
    }
    child.cancel().await;
    Ok(rates)
}

/// An `async def` call's round trip beside a plain `def` call's, on one actor, interleaved.
async fn async_round_trip(
    n: &ActorNursery,
    p: &Plan,
    aecho: &str,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Row> {
    let per_batch = (s.round_trips / s.reps).max(1);
    prog.step(&format!(
        "{}: {} rounds of {per_batch} async def round trips, interleaved with plain def ones",
        p.name, s.reps
    ));
    let mut r = row(
        p,
        "async_def_round_trip",
        "async def round trip",
        Unit::Us,
        "plain def round trip (same actor)",
    );
    let child = start(n, p, format!("{}-async", p.name)).await?;
    for i in 0..50 {
        child.run(aecho, Value::Int(i)).await?;
    }
    for _ in 0..s.reps {
        let t = Instant::now();
        for i in 0..per_batch {
            let one = Instant::now();
            child.run(aecho, Value::Int(i as i64)).await?;
            r.harrow_lat.push(us(one.elapsed()));
        }
        r.harrow.push(us(t.elapsed() / per_batch as u32));
        let t = Instant::now();
        for i in 0..per_batch {
            let one = Instant::now();
            child.run(&p.echo, Value::Int(i as i64)).await?;
            r.baseline_lat.push(us(one.elapsed()));
        }
        r.baseline.push(us(t.elapsed() / per_batch as u32));
    }
    child.cancel().await;
    Ok(r)
}

/// A call that fails (`divide [1, 0]`, the callee raises) beside one that succeeds (`divide
/// [1, 1]`), on one actor, the two taking turns call by call: what an error costs over a reply.
/// (In batches of their own, a change of the actor's speed between two batches fell on one side
/// only: a process actor's calls went from about 10 µs to about 4 between the failing batch and
/// the succeeding one of a pair, and the ratio of the medians showed 2.16x where the other four
/// pairs of batches said 1.04-1.15x.)
async fn failing_call(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Row> {
    let per_batch = (s.round_trips / s.reps).max(1);
    prog.step(&format!(
        "{}: {} rounds of {per_batch} failing calls, each beside a succeeding one",
        p.name, s.reps
    ));
    let mut r = row(
        p,
        "failing_call_round_trip",
        "failing call round trip",
        Unit::Us,
        "succeeding call (same fn, same actor)",
    );
    let child = start(n, p, format!("{}-fail", p.name)).await?;
    let fails = Value::List(vec![Value::Int(1), Value::Int(0)]);
    let works = Value::List(vec![Value::Int(1), Value::Int(1)]);
    for _ in 0..10 {
        anyhow::ensure!(
            child.run(&p.divide, fails.clone()).await.is_err(),
            "{}: {} [1, 0] did not fail",
            p.name,
            p.divide
        );
        child.run(&p.divide, works.clone()).await?;
    }
    for _ in 0..s.reps {
        let (mut failing, mut succeeding) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..per_batch {
            let one = Instant::now();
            let failed = child.run(&p.divide, fails.clone()).await.is_err();
            let took = one.elapsed();
            anyhow::ensure!(failed, "{}: {} [1, 0] did not fail", p.name, p.divide);
            failing += took;
            r.harrow_lat.push(us(took));
            let one = Instant::now();
            child.run(&p.divide, works.clone()).await?;
            let took = one.elapsed();
            succeeding += took;
            r.baseline_lat.push(us(took));
        }
        r.harrow.push(us(failing / per_batch as u32));
        r.baseline.push(us(succeeding / per_batch as u32));
    }
    child.cancel().await;
    Ok(r)
}

/// A call over a peer portal (found through the registrar: in memory for in-process backends,
/// the child process's unix socket after the peer handshake otherwise) beside the same call
/// over the parent-child link, to the same actor, interleaved.
async fn peer_round_trip(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Row> {
    let per_batch = (s.round_trips / s.reps).max(1);
    prog.step(&format!(
        "{}: {} rounds of {per_batch} peer-portal round trips, interleaved with parent-child ones",
        p.name, s.reps
    ));
    let mut r = row(
        p,
        "peer_round_trip",
        "peer round trip",
        Unit::Us,
        "parent-child round trip (same actor)",
    );
    let name = format!("{}-peer", p.name);
    let child = start(n, p, name.clone()).await?;
    let peer = n
        .actor()
        .find_actor(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name} is not registered"))?;
    for i in 0..50 {
        peer.run(&p.echo, Value::Int(i)).await?;
        child.run(&p.echo, Value::Int(i)).await?;
    }
    for _ in 0..s.reps {
        let t = Instant::now();
        for i in 0..per_batch {
            peer.run(&p.echo, Value::Int(i as i64)).await?;
        }
        r.harrow.push(us(t.elapsed() / per_batch as u32));
        let t = Instant::now();
        for i in 0..per_batch {
            child.run(&p.echo, Value::Int(i as i64)).await?;
        }
        r.baseline.push(us(t.elapsed() / per_batch as u32));
    }
    child.cancel().await;
    Ok(r)
}

/// Items per second through one bidirectional echo stream of `items` items.
async fn stream_echo(child: &ChildHandle, p: &Plan, items: i64) -> anyhow::Result<f64> {
    let (mut ctx, _) = child.open_context(&p.stream, Value::Null).await?;
    let (tx, mut rx) = ctx.open_stream().await?.split();
    let t = Instant::now();
    let send = async {
        for i in 0..items {
            tx.send(Value::Int(i)).await?;
        }
        tx.close().await
    };
    let recv = async {
        let mut k = 0i64;
        while rx.recv().await?.is_some() {
            k += 1;
        }
        Ok::<_, harrow::portal::Error>(k)
    };
    let (sent, got) = futures_lite::future::zip(send, recv).await;
    let took = t.elapsed();
    sent?;
    let got = got?;
    ctx.result().await?;
    anyhow::ensure!(got == items, "{}: {got} of {items} items came back", p.name);
    Ok(got as f64 / took.as_secs_f64())
}

/// `s.reps` rounds of: the teardown of an idle child (the baseline), then of a stuck one.
async fn teardown(n: &ActorNursery, p: &Plan, s: Sizes, prog: &Progress) -> anyhow::Result<Row> {
    prog.step(&format!(
        "{}: teardown of an idle and of a stuck child x{}",
        p.name, s.reps
    ));
    let mut r = row(
        p,
        "stuck_child_teardown",
        "stuck-child teardown",
        Unit::Ms,
        "teardown of an idle child",
    );
    let mut outcomes: Vec<String> = Vec::new();
    for i in 0..s.reps {
        let child = start(n, p, format!("{}-idle-{i}", p.name)).await?;
        child.run(&p.echo, Value::Null).await?;
        let t = Instant::now();
        child.cancel().await;
        r.baseline.push(ms(t.elapsed()));

        let (took, outcome) = stuck_teardown(p, i).await?;
        r.harrow.push(ms(took));
        let outcome = describe(&outcome);
        if !outcomes.contains(&outcome) {
            outcomes.push(outcome);
        }
    }
    r.note = outcomes.join(" / ");
    Ok(r)
}

/// Starts a child on a call that never yields, then times its cancellation. In a nursery of
/// its own: a stuck Rust thread is leaked (reported), and a leak fails the nursery it was in.
async fn stuck_teardown(p: &Plan, i: usize) -> anyhow::Result<(Duration, ChildOutcome)> {
    let got = std::sync::Mutex::new(None);
    let nested = harrow::open_nursery(|n2| {
        let got = &got;
        async move {
            let child = start(&n2, p, format!("{}-stuck-{i}", p.name)).await?;
            let (ctx, _) = child.open_context(&p.spin, Value::Null).await?;
            crate::util::pause(Duration::from_millis(50)).await;
            let t = Instant::now();
            let o = child.cancel().await;
            *got.lock().unwrap_or_else(|p| p.into_inner()) = Some((t.elapsed(), o));
            drop(ctx);
            Ok(())
        }
    })
    .await;
    // A stuck Rust thread is detached by the hard kill; let it go now.
    crate::fns::release_spinners();
    if let Err(e) = nested {
        anyhow::ensure!(
            e.body_error().is_none() && e.failures().iter().all(|f| f.is_leak()),
            "{}: stuck-child teardown: {e}",
            p.name
        );
    }
    got.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| anyhow::anyhow!("{}: the stuck child's teardown was not measured", p.name))
}

fn describe(o: &ChildOutcome) -> String {
    match o {
        ChildOutcome::Exited => "exited (interrupted)".into(),
        ChildOutcome::Killed => "killed".into(),
        ChildOutcome::Leaked(_) => "leaked (detached, reported)".into(),
        other => format!("{other:?}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
