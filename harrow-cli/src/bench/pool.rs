//! The pool table: `ActorPool::map` over subint workers beside Python's
//! `multiprocessing.Pool.map` with the same number of workers, for small items (`echo`) and
//! CPU-bound ones (`sum_squares`), in items per second. Each side runs two ways: in batches
//! chosen by `Pool.map`'s own rule (`chunksize = ceil(items / (4 × workers))`; harrow through
//! the built-in batch runner `harrow:run_batch`, and for comparison through the Python runner
//! `harrow_pool.run_batch`) and one item per call (`chunksize=1`). Each round runs
//! harrow's maps, then multiprocessing's, so drift in a shared machine's load hits them alike,
//! then times pool start-up; a round begins once the warm interpreters that took are made
//! again, so that no interpreter creation of harrow's own runs beside its maps. Pool start-up
//! is not counted in the maps on either side (both pools are warm).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::stats::{Samples, round};
use super::{Progress, Sizes};

/// The pool size on both sides.
const WORKERS: usize = 2;

/// One kind of item: its throughput on each side, one sample per round (items per second).
pub(super) struct PoolRow {
    key: &'static str,
    label: String,
    items: usize,
    harrow: Samples,
    /// Batched through the Python runner (`harrow_pool.run_batch`) instead of the built-in one.
    harrow_pyrunner: Samples,
    harrow_chunk1: Samples,
    mp: Samples,
    mp_chunk1: Samples,
}

/// `multiprocessing.Pool.map`'s default chunk size for `items` items.
fn chunk_size(items: usize) -> usize {
    items.div_ceil(4 * WORKERS).max(1)
}

/// The pool table, or why it was skipped.
pub(super) struct PoolBench {
    rows: Vec<PoolRow>,
    /// Milliseconds to start a pool of [`WORKERS`]: on fresh interpreters, on warm ones.
    start_cold: Samples,
    start_warm: Samples,
    mp_skipped: Option<String>,
    load: String,
}

/// The item counts and the CPU-bound job's size.
fn sizes(s: Sizes) -> (usize, usize, i64) {
    if s.reps <= 2 {
        (2_000, 20, 20_000)
    } else {
        (20_000, 200, 50_000)
    }
}

/// Measures the pool table in its own actor tree (`None` without the subint backend).
#[cfg(feature = "subint")]
pub(super) fn measure(
    dir: Option<&crate::pymod::PyDir>,
    s: Sizes,
    prog: &Progress,
    small_only: bool,
) -> anyhow::Result<Option<PoolBench>> {
    use futures_lite::StreamExt;
    use harrow::{ActorPool, ActorSpec, PoolConfig, RootConfig, Value, run_root};

    let Some(dir) = dir else { return Ok(None) };
    let (small_n, cpu_items, cpu_n) = sizes(s);
    prog.step(&format!(
        "pool throughput: {} rounds of {small_n} echo items and {cpu_items} sum_squares({cpu_n}) \
         items on {WORKERS} subint workers, then on multiprocessing.Pool({WORKERS})",
        s.reps
    ));
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut mp = MpPool::start(dir.path());
    let m = crate::pymod::MODULE;
    let (echo, sum_squares) = (format!("{m}:echo"), format!("{m}:sum_squares"));
    let mut rows = vec![
        PoolRow {
            key: "small",
            label: format!("small items: echo(x), {small_n} items"),
            items: small_n,
            harrow: Samples::default(),
            harrow_pyrunner: Samples::default(),
            harrow_chunk1: Samples::default(),
            mp: Samples::default(),
            mp_chunk1: Samples::default(),
        },
        PoolRow {
            key: "cpu",
            label: format!("CPU-bound: sum_squares({cpu_n}), {cpu_items} items"),
            items: cpu_items,
            harrow: Samples::default(),
            harrow_pyrunner: Samples::default(),
            harrow_chunk1: Samples::default(),
            mp: Samples::default(),
            mp_chunk1: Samples::default(),
        },
    ];
    let (mut start_cold, mut start_warm) = (Samples::default(), Samples::default());
    let mut warm_backend = None;
    let result = run_root(RootConfig::default(), |n| {
        let rows = &mut rows;
        let (start_cold, start_warm) = (&mut start_cold, &mut start_warm);
        let warm_backend = &mut warm_backend;
        let mp = &mut mp;
        let (echo, sum_squares) = (&echo, &sum_squares);
        async move {
            crate::pymod::write_pool_module(dir.path())?;
            let config = harrow::InterpConfig::new("pool")
                .expose(m)
                .expose(crate::pymod::POOL_MODULE)
                .sys_path(dir.path());
            let spec = ActorSpec::new().params(config.to_params());
            let warm = harrow::WarmSubintBackend::start(config.clone(), WORKERS);
            *warm_backend = Some(warm.clone());
            let pool = ActorPool::start(
                &n,
                harrow::SubintBackend::shared(),
                spec.clone(),
                PoolConfig::new("pool", WORKERS).queue(4 * WORKERS),
            )
            .await?;
            // Warm both workers (imports, first calls).
            let warmed: Vec<_> = pool
                .map(echo, (0..50).map(Value::Int), false)
                .collect()
                .await;
            if let Some((_, Err(e))) = warmed.iter().find(|(_, r)| r.is_err()) {
                return Err(format!("warming the pool: {e}").into());
            }
            // `small_only` (`harrow bench --only pool-small`, for profiling): the small items'
            // batched rows only, four times as many rounds.
            let (rounds, starts, kinds) = if small_only {
                (s.reps * 4, &[][..], &[0][..])
            } else {
                (s.reps, &[false, true][..], &[0, 1][..])
            };
            for _ in 0..rounds {
                // Nothing of harrow's own runs beside the maps: the warm interpreters the
                // previous round's start measurement took are made again first (the filler's
                // interpreter creations would compete with the maps for the cores).
                if !warm.wait_ready(WORKERS, Duration::from_secs(60)).await {
                    return Err(
                        format!("warm interpreters not ready: {:?}", warm.last_error()).into(),
                    );
                }
                for &row in kinds {
                    let (func, arg) = [(echo, None), (sum_squares, Some(cpu_n))][row];
                    let count = rows[row].items;
                    let native = crate::pymod::POOL_RUNNER;
                    let python = crate::pymod::POOL_PY_RUNNER;
                    let batched = chunk_size(count);
                    let runs = [(native, batched), (python, batched), (native, 1)];
                    let runs = if small_only { &runs[..2] } else { &runs[..] };
                    for &(runner, chunk) in runs {
                        let inputs = (0..count as i64).map(move |i| Value::Int(arg.unwrap_or(i)));
                        let t = Instant::now();
                        let mut results = pool.map_batched(func, inputs, true, runner, chunk);
                        let mut got = 0;
                        while let Some((_, r)) = results.next().await {
                            r.map_err(|e| format!("pool item: {e}"))?;
                            got += 1;
                        }
                        let took = t.elapsed().as_secs_f64();
                        if got != count {
                            return Err(format!("the map gave {got} of {count} results").into());
                        }
                        let samples = if chunk == 1 {
                            &mut rows[row].harrow_chunk1
                        } else if runner == python {
                            &mut rows[row].harrow_pyrunner
                        } else {
                            &mut rows[row].harrow
                        };
                        samples.push(count as f64 / took);
                    }
                    let Ok(driver) = mp else { continue };
                    let which = if row == 0 { "small" } else { "cpu" };
                    let measured = driver.map(which, count, cpu_n, false).and_then(|a| {
                        let a1 = (!small_only)
                            .then(|| driver.map(which, count, cpu_n, true))
                            .transpose()?;
                        Ok((a, a1))
                    });
                    match measured {
                        Ok((secs, secs1)) => {
                            rows[row].mp.push(count as f64 / secs);
                            if let Some(secs1) = secs1 {
                                rows[row].mp_chunk1.push(count as f64 / secs1);
                            }
                        }
                        Err(e) => *mp = Err(e),
                    }
                }
                // Pool start-up, after the maps: fresh interpreters, then warm ones (made ahead, off
                // the path).
                for &warm_start in starts {
                    let backend = if warm_start {
                        if !warm.wait_ready(WORKERS, Duration::from_secs(60)).await {
                            return Err(format!(
                                "warm interpreters not ready: {:?}",
                                warm.last_error()
                            )
                            .into());
                        }
                        warm.shared()
                    } else {
                        harrow::SubintBackend::shared()
                    };
                    let t = Instant::now();
                    let p = ActorPool::start(
                        &n,
                        backend,
                        spec.clone(),
                        PoolConfig::new("start", WORKERS),
                    )
                    .await?;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    p.cancel().await;
                    if warm_start {
                        &mut *start_warm
                    } else {
                        &mut *start_cold
                    }
                    .push(ms);
                }
            }
            pool.cancel().await;
            Ok(())
        }
    });
    if let Some(w) = warm_backend {
        w.shutdown(Duration::from_secs(2));
    }
    result.map_err(|e| anyhow::anyhow!("the pool benchmark failed: {e}"))?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(Some(PoolBench {
        rows,
        start_cold,
        start_warm,
        mp_skipped: mp.err(),
        load: format!(
            "before: {}; after: {}",
            load_before.trim(),
            load_after.trim()
        ),
    }))
}

#[cfg(not(feature = "subint"))]
pub(super) fn measure(
    _dir: Option<&crate::pymod::PyDir>,
    _s: Sizes,
    _prog: &Progress,
    _small_only: bool,
) -> anyhow::Result<Option<PoolBench>> {
    Ok(None)
}

fn ratio(a: &Samples, b: &Samples) -> Option<f64> {
    (a.len() > 0 && b.len() > 0 && b.median() > 0.0).then(|| a.median() / b.median())
}

fn rate(s: &Samples) -> String {
    if s.len() == 0 {
        return "-".into();
    }
    format!("{:.0}/s ({:.0}–{:.0})", s.median(), s.min(), s.max())
}

impl PoolBench {
    /// The table, on stdout.
    pub(super) fn print(&self) {
        println!();
        println!(
            "pool throughput: ActorPool::map on {WORKERS} subint workers vs multiprocessing.Pool({WORKERS}).map, \
             items per second, median (min–max) of the rounds; batched = Pool.map's default chunk size \
             on both sides (harrow: the built-in runner; py runner = the Python runner \
             harrow_pool.run_batch), 1 = one item per call; ratio = harrow / multiprocessing"
        );
        println!("/proc/loadavg {}", self.load);
        let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}x"));
        for r in &self.rows {
            println!("{} (batches of {})", r.label, chunk_size(r.items));
            println!(
                "  {:<10} {:>28} {:>28} {:>8}",
                "", "harrow pool", "multiprocessing", "ratio"
            );
            println!(
                "  {:<10} {:>28} {:>28} {:>8}",
                "batched",
                rate(&r.harrow),
                rate(&r.mp),
                show(ratio(&r.harrow, &r.mp)),
            );
            println!(
                "  {:<10} {:>28} {:>28} {:>8}",
                "py runner",
                rate(&r.harrow_pyrunner),
                rate(&r.mp),
                show(ratio(&r.harrow_pyrunner, &r.mp)),
            );
            println!(
                "  {:<10} {:>28} {:>28} {:>8}",
                "1 per call",
                rate(&r.harrow_chunk1),
                rate(&r.mp_chunk1),
                show(ratio(&r.harrow_chunk1, &r.mp_chunk1)),
            );
        }
        if let Some(why) = &self.mp_skipped {
            println!("(multiprocessing skipped: {why})");
        }
        let ms = |s: &Samples| {
            if s.len() == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} ms ({:.1}–{:.1})", s.median(), s.min(), s.max())
            }
        };
        println!(
            "pool start ({WORKERS} workers): fresh interpreters {}; warm interpreters (WarmSubintBackend) {}",
            ms(&self.start_cold),
            ms(&self.start_warm)
        );
    }

    /// The same as JSON.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "key": r.key,
                    "label": r.label,
                    "items": r.items,
                    "chunk_size": chunk_size(r.items),
                    "harrow_items_per_s": r.harrow.summary(),
                    "harrow_py_runner_items_per_s": r.harrow_pyrunner.summary(),
                    "harrow_chunksize1_items_per_s": r.harrow_chunk1.summary(),
                    "mp_items_per_s": r.mp.summary(),
                    "mp_chunksize1_items_per_s": r.mp_chunk1.summary(),
                    "ratio_vs_mp": ratio(&r.harrow, &r.mp).map(round),
                    "ratio_py_runner_vs_mp": ratio(&r.harrow_pyrunner, &r.mp).map(round),
                    "ratio_chunksize1": ratio(&r.harrow_chunk1, &r.mp_chunk1).map(round),
                })
            })
            .collect();
        json!({
            "workers": WORKERS,
            "rows": rows,
            "start_ms_cold": self.start_cold.summary(),
            "start_ms_warm": self.start_warm.summary(),
            "mp_skipped": self.mp_skipped,
            "loadavg": self.load,
        })
    }
}

/// The `multiprocessing` side: one Python process holding a warm `Pool(2)`, timing one
/// `Pool.map` per request, one JSON line per answer.
const MP_SCRIPT: &str = r#"
import json, multiprocessing as mp, sys, time

def echo(x):
    return x

def sum_squares(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

if __name__ == "__main__":
    workers = int(sys.argv[1])
    with mp.Pool(workers) as pool:
        pool.map(echo, range(100))
        pool.map(sum_squares, [1000] * workers, chunksize=1)
        sys.stdout.write(json.dumps({"ready": True}) + "\n"); sys.stdout.flush()
        for line in sys.stdin:
            cmd = line.split()
            if len(cmd) != 5 or cmd[0] != "map":
                break
            which, count, n, chunk1 = cmd[1], int(cmd[2]), int(cmd[3]), cmd[4] == "1"
            f, items = (echo, range(count)) if which == "small" else (sum_squares, [n] * count)
            kw = {"chunksize": 1} if chunk1 else {}
            s = time.perf_counter()
            out = pool.map(f, items, **kw)
            took = time.perf_counter() - s
            assert len(out) == count
            sys.stdout.write(json.dumps({"secs": took}) + "\n"); sys.stdout.flush()
"#;

/// How long one answer from the script may take.
const MP_BOUND: Duration = Duration::from_secs(120);

/// The running script (killed on drop).
struct MpPool {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<std::io::Result<String>>,
    stderr: mpsc::Receiver<String>,
}

impl MpPool {
    fn start(dir: &std::path::Path) -> Result<MpPool, String> {
        let python = option_env!("HARROW_PYTHON").ok_or(
            "no Python was recorded at build time (HARROW_PYTHON unset): run scripts/setup",
        )?;
        let script = dir.join("harrow_bench_mp_pool.py");
        std::fs::write(&script, MP_SCRIPT).map_err(|e| format!("cannot write the script: {e}"))?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg(WORKERS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{python}: no pipes"));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (err_tx, err) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut all);
            let _ = err_tx.send(all);
        });
        let mut this = MpPool {
            child,
            stdin,
            lines,
            stderr: err,
        };
        this.answer()?;
        Ok(this)
    }

    /// One timed `Pool.map`: its seconds.
    fn map(&mut self, which: &str, count: usize, n: i64, chunk1: bool) -> Result<f64, String> {
        writeln!(self.stdin, "map {which} {count} {n} {}", u8::from(chunk1))
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("cannot write to the multiprocessing script: {e}"))?;
        let v = self.answer()?;
        v.get("secs")
            .and_then(serde_json::Value::as_f64)
            .filter(|s| *s > 0.0)
            .ok_or_else(|| format!("bad answer {v}"))
    }

    fn answer(&mut self) -> Result<serde_json::Value, String> {
        let line = match self.lines.recv_timeout(MP_BOUND) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(format!("reading the multiprocessing script: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the multiprocessing script did not answer within {MP_BOUND:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let err = self
                    .stderr
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                return Err(format!("the multiprocessing script failed: {}", err.trim()));
            }
        };
        serde_json::from_str(line.trim()).map_err(|e| format!("bad output {line:?}: {e}"))
    }
}

impl Drop for MpPool {
    /// Asks the script to end, and kills it if it has not exited within a bound.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}
