//! `harrow bench`: the benchmark suite. Every harrow figure is printed beside a baseline measured
//! in the same run, as a ratio; progress goes to stderr; `--json` prints the same data as JSON.
//!
//! Every figure is a distribution: each measurement is repeated (5 times in a default run) and
//! reported as its median and spread (min–max); ratios are taken between medians. Each harrow
//! measurement alternates with its baseline's, so drift in a shared machine's load hits both.
//!
//! - [`backend`]: per backend, spawn-to-first-reply, RPC round trip, stream throughput and the
//!   teardown of a stuck child;
//! - [`parallel`]: the parallel-Python table (own-GIL and legacy subinterpreters, Python's
//!   `multiprocessing`) and the cores the machine actually gave while it ran;
//! - [`pool`]: `ActorPool::map` throughput beside `multiprocessing.Pool.map`;
//! - [`baseline`]: the bare operations the figures are compared with;
//! - [`placement`]: how far apart two CPUs are, before and after a run (on a VM, the host's
//!   placement of its CPUs moves every figure that passes work between two threads);
//! - [`report`]: the tables and the JSON.

mod backend;
mod baseline;
mod parallel;
mod placement;
mod pool;
#[cfg(all(feature = "remote", feature = "process"))]
mod remote;
mod report;
mod scale;
mod stats;

use std::time::{Duration, Instant};

use harrow::{ActorNursery, RootConfig, Timeouts, run_root};

pub(crate) use baseline::child_mode;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Repetitions of every figure that is measured in rounds.
    reps: usize,
    /// Spawns (each one a sample, alternating with a bare spawn).
    spawns: usize,
    /// Round trips in all, split over `reps` batches: for the rows that compare harrow with
    /// harrow (failing and succeeding calls, peer and parent-child, `async def` and `def`).
    round_trips: usize,
    /// Round trips in each of the RPC row's two series, harrow's and the raw ping-pong's, split
    /// over `reps` rounds; each round runs two batches of that size on each side and counts the
    /// faster (`backend::rpc_batch`). Its batches are longer than the others: beside CPU hogs,
    /// a batch must outlast many of their time slices for its mean to be the exchange's steady
    /// cost (docs/performance-log.md, "Loaded RPC batches that outlast a time slice").
    rpc_round_trips: usize,
    /// Items per stream echo (one per round).
    items: i64,
    /// The parallel-Python job's size.
    cpu_n: i64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                reps: 2,
                spawns: 3,
                round_trips: 200,
                rpc_round_trips: 200,
                items: 2_000,
                cpu_n: 200_000,
            }
        } else {
            Sizes {
                reps: 5,
                spawns: 20,
                round_trips: 2_000,
                rpc_round_trips: 20_000,
                items: 100_000,
                cpu_n: 3_000_000,
            }
        }
    }
}

/// Progress on stderr.
struct Progress {
    t0: Instant,
}

impl Progress {
    fn step(&self, what: &str) {
        eprintln!("[bench {:>6.2}s] {what}", self.t0.elapsed().as_secs_f64());
    }
}

/// Runs the suite (`scale`: only the scale table, see [`scale`]); returns the exit code.
pub(crate) fn run(as_json: bool, quick: bool, scale: bool) -> i32 {
    let ran = if scale {
        run_scale(as_json, quick)
    } else {
        run_inner(as_json, quick)
    };
    match ran {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("harrow bench: {e:#}");
            1
        }
    }
}

/// `harrow bench --only SECTION`: one section of the suite alone (`pool`; `pool-small`: only
/// its small items' batched rows, more rounds, for profiling; `rpc-BACKEND`: that backend's
/// RPC round trips alone; `async-BACKEND`: its `async def` round trips alone (Python
/// backends); `stream-BACKEND`: its stream echo alone; `fail-BACKEND`: its failing calls taking
/// turns with succeeding ones; the last four for profiling; `spawn-BACKEND`: its
/// spawn-to-first-reply beside the bare spawn, many more times than in the suite); returns the
/// exit code.
pub(crate) fn run_only(section: &str, as_json: bool, quick: bool) -> i32 {
    let ran = match section {
        "pool" => run_pool_only(as_json, quick, false),
        "pool-small" => run_pool_only(as_json, quick, true),
        other => {
            if let Some(backend) = other.strip_prefix("rpc-") {
                run_rpc_only(backend, as_json, quick, false)
            } else if let Some(backend) = other.strip_prefix("async-") {
                run_rpc_only(backend, as_json, quick, true)
            } else if let Some(backend) = other.strip_prefix("stream-") {
                run_stream_only(backend, as_json, quick)
            } else if let Some(backend) = other.strip_prefix("fail-") {
                run_fail_only(backend, as_json, quick)
            } else if let Some(backend) = other.strip_prefix("spawn-") {
                run_spawn_only(backend, as_json, quick)
            } else {
                Err(anyhow::anyhow!(
                    "no bench section {other:?} (known: pool, pool-small, rpc-BACKEND, \
                     async-BACKEND, stream-BACKEND, fail-BACKEND, spawn-BACKEND)"
                ))
            }
        }
    };
    match ran {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("harrow bench: {e:#}");
            1
        }
    }
}

/// The pool table alone.
fn run_pool_only(as_json: bool, quick: bool, small_only: bool) -> anyhow::Result<()> {
    let s = Sizes::new(quick);
    let prog = Progress { t0: Instant::now() };
    let py = match harrow::subint_status() {
        Ok(()) => crate::pymod::PyDir::create()?,
        Err(why) => anyhow::bail!("the pool table needs the subint backend: {why}"),
    };
    let pool = pool::measure(Some(&py), s, &prog, small_only)?;
    drop(py);
    prog.step("done");
    let Some(pool) = pool else {
        anyhow::bail!("the pool table needs the subint backend (a build without it)");
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&pool.to_json())?);
    } else {
        pool.print();
    }
    Ok(())
}

/// The plan of the backend called `backend`, or an error naming the ones this build has.
fn plan_named<'a>(plans: &'a [backend::Plan], backend: &str) -> anyhow::Result<&'a backend::Plan> {
    plans.iter().find(|p| p.name == backend).ok_or_else(|| {
        let known: Vec<_> = plans.iter().map(|p| p.name).collect();
        anyhow::anyhow!(
            "no backend {backend:?} in this build (here: {})",
            known.join(", ")
        )
    })
}

/// Runs `body` on the plan of the backend called `backend`, in a tree of its own with nothing
/// else measured (the `--only rpc-`, `stream-` and `fail-BACKEND` sections); `tree` names the
/// tree in its error.
fn on_one_backend<T>(
    backend: &str,
    tree: &str,
    body: impl AsyncFnOnce(&ActorNursery, &backend::Plan, &Progress) -> anyhow::Result<T>,
) -> anyhow::Result<(T, placement::Placement)> {
    let prog = Progress { t0: Instant::now() };
    let py = py_dir_or_skip()?;
    let plans = backend::plans(py.as_ref());
    let plan = plan_named(&plans, backend)?;
    let before = placement::probe();
    let out = run_root(RootConfig::default(), |nursery| {
        let prog = &prog;
        async move { Ok(body(&nursery, plan, prog).await?) }
    })
    .map_err(|e| anyhow::anyhow!("the {tree} tree failed: {e}"))?;
    drop(py);
    let placement = placement::Placement {
        before,
        after: placement::probe(),
    };
    Ok((out, placement))
}

/// One backend's RPC round trips alone (to an `async def` function with `async_def`): no
/// baseline and no other rows, so that a profiler sees only them (`quick`: 2,000 round trips
/// instead of 200,000).
fn run_rpc_only(backend: &str, as_json: bool, quick: bool, async_def: bool) -> anyhow::Result<()> {
    let n = if quick { 2_000 } else { 200_000 };
    let what = if async_def { "async def" } else { "RPC" };
    let (lat, placement) = on_one_backend(backend, what, async |nursery, plan, prog| {
        backend::rpc_only(nursery, plan, n, async_def, prog).await
    })?;
    let (p50, p99, mean) = (lat.median(), lat.quantile(0.99), lat.mean());
    if as_json {
        let out = serde_json::json!({
            "backend": backend,
            "function": if async_def { "async def" } else { "def" },
            "round_trips": n,
            "mean_us": stats::round(mean),
            "p50_us": stats::round(p50),
            "p99_us": stats::round(p99),
            "cpu_placement": placement.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{backend} {what} round trip, {n} calls: mean {mean:.2} µs, p50 {p50:.2} µs, \
             p99 {p99:.2} µs"
        );
        println!("{}", placement.line());
    }
    Ok(())
}

/// One backend's stream echo alone, as the suite's stream row runs it but longer: no baseline
/// and no other rows, for a profiler (`quick`: 2 echoes of 20,000 items instead of 10 of
/// 200,000).
fn run_stream_only(backend: &str, as_json: bool, quick: bool) -> anyhow::Result<()> {
    let (items, rounds) = if quick { (20_000, 2) } else { (200_000, 10) };
    let (rates, placement) = on_one_backend(backend, "stream", async |nursery, plan, prog| {
        backend::stream_only(nursery, plan, items, rounds, prog).await
    })?;
    if as_json {
        let out = serde_json::json!({
            "backend": backend,
            "items_per_echo": items,
            "echoes": rounds,
            "items_per_s": stats::round(rates.median()),
            "items_per_s_samples": rates.summary(),
            "cpu_placement": placement.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{backend} stream echo, {rounds} x {items} items: median {:.3} M items/s \
             ({:.3}–{:.3})",
            rates.median() / 1e6,
            rates.min() / 1e6,
            rates.max() / 1e6
        );
        println!("{}", placement.line());
    }
    Ok(())
}

/// One backend's failing calls beside as many succeeding ones, interleaved in batches: no
/// baseline and no other rows, for a profiler (`quick`: 2,000 of each instead of 100,000).
fn run_fail_only(backend: &str, as_json: bool, quick: bool) -> anyhow::Result<()> {
    let n = if quick { 2_000 } else { 100_000 };
    let ((failing, succeeding), placement) =
        on_one_backend(backend, "failing-call", async |nursery, plan, prog| {
            backend::fail_only(nursery, plan, n, prog).await
        })?;
    let ratio = failing.median() / succeeding.median();
    if as_json {
        let one = |s: &stats::Samples| {
            serde_json::json!({
                "mean_us": stats::round(s.mean()),
                "p50_us": stats::round(s.median()),
                "p99_us": stats::round(s.quantile(0.99)),
            })
        };
        let out = serde_json::json!({
            "backend": backend,
            "calls_each": n,
            "failing": one(&failing),
            "succeeding": one(&succeeding),
            "p50_ratio": stats::round(ratio),
            "cpu_placement": placement.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (what, s) in [("failing", &failing), ("succeeding", &succeeding)] {
            println!(
                "{backend} {what} call, {n} calls: mean {:.2} µs, p50 {:.2} µs, p99 {:.2} µs",
                s.mean(),
                s.median(),
                s.quantile(0.99)
            );
        }
        println!("{backend} failing / succeeding call, p50: {ratio:.2}x");
        println!("{}", placement.line());
    }
    Ok(())
}

/// One backend's spawn-to-first-reply beside the bare spawn of its baseline, alternating, as
/// the suite's row runs it but many more times (400 thread spawns, 100 process spawns, 50 of
/// the Python backends; `quick`: 10), so that the spread of one spawn shows.
fn run_spawn_only(backend: &str, as_json: bool, quick: bool) -> anyhow::Result<()> {
    let mut sizes = Sizes::new(quick);
    sizes.spawns = match (quick, backend) {
        (true, _) => 10,
        (false, "thread") => 400,
        (false, "process") => 100,
        (false, _) => 50,
    };
    let (row, placement) = on_one_backend(backend, "spawn", async |nursery, plan, prog| {
        backend::spawn_to_first_reply(nursery, plan, sizes, prog).await
    })?;
    let spread = |s: &stats::Samples| {
        serde_json::json!({
            "p10_ms": stats::round(s.quantile(0.1)),
            "p50_ms": stats::round(s.median()),
            "p90_ms": stats::round(s.quantile(0.9)),
            "samples": s.summary(),
        })
    };
    if as_json {
        let out = serde_json::json!({
            "backend": backend,
            "spawns": sizes.spawns,
            "harrow": spread(&row.harrow),
            "baseline_label": row.baseline_label,
            "baseline": spread(&row.baseline),
            "p50_ratio": stats::round(row.ratio()),
            "cpu_placement": placement.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let line = |what: &str, s: &stats::Samples| {
            println!(
                "{what}: p50 {:.3} ms (p10 {:.3}, p90 {:.3})",
                s.median(),
                s.quantile(0.1),
                s.quantile(0.9)
            )
        };
        let n = sizes.spawns;
        line(
            &format!("{backend} spawn-to-first-reply, {n} spawns"),
            &row.harrow,
        );
        line(&format!("{}, as many", row.baseline_label), &row.baseline);
        println!(
            "{backend} spawn-to-first-reply / baseline, p50: {:.2}x",
            row.ratio()
        );
        println!("{}", placement.line());
    }
    Ok(())
}

fn run_inner(as_json: bool, quick: bool) -> anyhow::Result<()> {
    let s = Sizes::new(quick);
    let prog = Progress { t0: Instant::now() };
    let load_before = report::load_average();
    let placement_before = placement::probe();
    let subint = harrow::subint_status();
    if let Err(why) = &subint {
        eprintln!("[bench] the subint rows are skipped: {why}");
    }
    let py = match &subint {
        Ok(()) => Some(crate::pymod::PyDir::create()?),
        Err(_) => None,
    };
    let (rows, parallel) = measure(py.as_ref(), s, &prog)?;
    let pool = pool::measure(py.as_ref(), s, &prog, false)?;
    drop(py);
    prog.step("done");
    let report = report::Report {
        quick,
        sizes: s,
        rows,
        parallel,
        subint,
        load: (load_before, report::load_average()),
        placement: placement::Placement {
            before: placement_before,
            after: placement::probe(),
        },
        took: prog.t0.elapsed(),
    };
    if as_json {
        let mut json = report.to_json();
        if let (Some(p), Some(obj)) = (&pool, json.as_object_mut()) {
            obj.insert("pool_throughput".into(), p.to_json());
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        report.print();
        if let Some(p) = &pool {
            p.print();
        }
    }
    Ok(())
}

/// The Python module's directory when the subint backend is available here; otherwise says on
/// stderr why its rows are skipped.
fn py_dir_or_skip() -> anyhow::Result<Option<crate::pymod::PyDir>> {
    match harrow::subint_status() {
        Ok(()) => Ok(Some(crate::pymod::PyDir::create()?)),
        Err(why) => {
            eprintln!("[bench] the subint rows are skipped: {why}");
            Ok(None)
        }
    }
}

/// `harrow bench --scale`: the scale table alone (`quick`: one tiny tree per backend).
fn run_scale(as_json: bool, quick: bool) -> anyhow::Result<()> {
    let prog = Progress { t0: Instant::now() };
    let load_before = report::load_average();
    let py = py_dir_or_skip()?;
    let plans = backend::plans(py.as_ref());
    let rows = run_root(RootConfig::default(), |n| {
        let plans = &plans;
        let prog = &prog;
        async move { Ok(scale::measure(&n, plans, quick, prog).await?) }
    })
    .map_err(|e| anyhow::anyhow!("the scale tree failed: {e}"))?;
    drop(py);
    let load = (load_before, report::load_average());
    let show = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
    if as_json {
        let out = serde_json::json!({
            "quick": quick,
            "load_average_before": load.0,
            "load_average_after": load.1,
            "took_s": stats::round(prog.t0.elapsed().as_secs_f64()),
            "scale": scale::to_json(&rows),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "harrow bench --scale ({}; load average {} before, {} after; {:.0} s)",
            if quick {
                "--quick: one tiny tree"
            } else {
                "10, 100 and the full size"
            },
            show(load.0),
            show(load.1),
            prog.t0.elapsed().as_secs_f64()
        );
        scale::print(&rows);
    }
    Ok(())
}

/// Measures everything in one actor tree: every backend's rows, then the parallel-Python
/// rounds (`None` without the subint backend).
fn measure(
    py: Option<&crate::pymod::PyDir>,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<(Vec<backend::Row>, Option<parallel::Parallel>)> {
    let plans = backend::plans(py);
    #[cfg(all(feature = "remote", feature = "process"))]
    let remote = match remote::target() {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("[bench] the remote (ssh) rows are skipped: {why}");
            None
        }
    };
    // Short rungs: the stuck-child teardowns take the whole ladder on some backends.
    let timeouts = Timeouts {
        cancel_ack: Duration::from_millis(200),
        graceful_exit: Duration::from_millis(300),
        hard_kill: Duration::from_millis(300),
    };
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| {
        let plans = &plans;
        async move {
            let mut rows = Vec::new();
            for p in plans {
                rows.extend(backend::measure(&n, p, s, prog).await?);
            }
            #[cfg(all(feature = "remote", feature = "process"))]
            if let Some(t) = &remote {
                rows.extend(remote::measure(&n, t, s, prog).await?);
            }
            let parallel = match py {
                #[cfg(feature = "subint")]
                Some(dir) => Some(parallel::measure(&n, dir, s, prog).await?),
                _ => None,
            };
            Ok((rows, parallel))
        }
    });
    crate::fns::release_spinners();
    result.map_err(|e| anyhow::anyhow!("the benchmark tree failed: {e}"))
}
