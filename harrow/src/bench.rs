//! `harrow bench`: the benchmark suite. Every harrow figure is printed beside a baseline measured
//! in the same run, as a ratio; progress goes to stderr; `--json` prints the same data as JSON.
//!
//! Per backend: spawn-to-first-reply, RPC round trip, stream throughput (a bidirectional echo)
//! and the teardown of a stuck child. Then the parallel-Python table: a CPU-bound pure-Python
//! job on 1 and 2 workers, for own-GIL subinterpreters, legacy (shared GIL) subinterpreters and
//! Python's `multiprocessing`.

use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harrow::{ActorNursery, ActorSpec, RootConfig, SpawnBackend, Timeouts, Value, run_root};
use serde_json::json;

use crate::util::ms;

/// Set in a child this benchmark starts as a baseline: `bare` exits at once, `echo` echoes its
/// stdin socket back until EOF.
const CHILD_ENV: &str = "HARROW_BENCH_CHILD";

/// The baseline modes of this binary (checked by `main` right after `maybe_run_child`).
pub(crate) fn child_mode() -> Option<ExitCode> {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("bare") => Some(ExitCode::SUCCESS),
        Ok("echo") => Some(match echo_stdin() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }),
        _ => None,
    }
}

/// Echoes what arrives on the socket that is our stdin, chunk by chunk, until EOF.
fn echo_stdin() -> std::io::Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut sock = UnixStream::from(fd);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        sock.write_all(&buf[..n])?;
    }
}

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    spawns: usize,
    round_trips: usize,
    items: i64,
    teardowns: usize,
    cpu_n: i64,
    cpu_reps: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                spawns: 3,
                round_trips: 200,
                items: 2_000,
                teardowns: 1,
                cpu_n: 200_000,
                cpu_reps: 1,
            }
        } else {
            Sizes {
                spawns: 20,
                round_trips: 2_000,
                items: 20_000,
                teardowns: 2,
                cpu_n: 3_000_000,
                cpu_reps: 3,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ms,
    Us,
    ItemsPerS,
}

impl Unit {
    fn key(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Us => "us",
            Unit::ItemsPerS => "items_per_s",
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Unit::Ms => format!("{v:.2} ms"),
            Unit::Us => format!("{v:.1} µs"),
            Unit::ItemsPerS if v >= 1e6 => format!("{:.2} M items/s", v / 1e6),
            Unit::ItemsPerS => format!("{:.1} k items/s", v / 1e3),
        }
    }
}

/// One harrow figure beside its baseline.
struct Row {
    backend: &'static str,
    key: &'static str,
    label: &'static str,
    unit: Unit,
    harrow: f64,
    note: String,
    baseline_label: String,
    baseline: f64,
}

impl Row {
    /// How many times slower than the baseline: time / baseline time, or baseline throughput /
    /// throughput.
    fn ratio(&self) -> f64 {
        match self.unit {
            Unit::ItemsPerS => self.baseline / self.harrow,
            _ => self.harrow / self.baseline,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let u = self.unit.key();
        let mut m = serde_json::Map::new();
        m.insert(format!("harrow_{u}"), round(self.harrow).into());
        if !self.note.is_empty() {
            m.insert("outcome".into(), self.note.clone().into());
        }
        m.insert("baseline".into(), self.baseline_label.clone().into());
        m.insert(format!("baseline_{u}"), round(self.baseline).into());
        m.insert("ratio_vs_baseline".into(), round(self.ratio()).into());
        serde_json::Value::Object(m)
    }
}

fn round(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
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

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() / 2]
}

/// The functions a backend's actors serve, by role.
struct Plan {
    name: &'static str,
    backend: Arc<dyn SpawnBackend>,
    spec: ActorSpec,
    echo: String,
    stream: String,
    spin: String,
}

fn plans(py: Option<&crate::pymod::PyDir>) -> Vec<Plan> {
    let mut v = Vec::new();
    let rust = |name, backend, spec| Plan {
        name,
        backend,
        spec,
        echo: "demo:echo".into(),
        stream: "demo:echo_stream".into(),
        spin: "demo:spin".into(),
    };
    #[cfg(feature = "thread")]
    v.push(rust(
        "thread",
        harrow::ThreadBackend::shared(),
        ActorSpec::with_resolver(crate::fns::registry()),
    ));
    #[cfg(feature = "process")]
    v.push(rust(
        "process",
        harrow::ProcessBackend::shared(),
        ActorSpec::new(),
    ));
    #[cfg(feature = "subint")]
    if let Some(dir) = py {
        let m = crate::pymod::MODULE;
        v.push(Plan {
            name: "subint",
            backend: harrow::SubintBackend::shared(),
            spec: ActorSpec::new().params(dir.params("bench", false)),
            echo: format!("{m}:echo"),
            stream: format!("{m}:echo_stream"),
            spin: format!("{m}:spin"),
        });
    }
    let _ = (py, rust);
    v
}

/// Harrow's own figures for one backend: (spawn-to-first-reply, round trip, items/s, stuck
/// teardown, its outcome, idle teardown).
struct Measured {
    spawn: Duration,
    rtt: Duration,
    items_per_s: f64,
    stuck: Duration,
    stuck_outcome: String,
    idle: Duration,
}

async fn measure_backend(
    n: &ActorNursery,
    p: &Plan,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Measured> {
    prog.step(&format!("{}: spawn-to-first-reply x{}", p.name, s.spawns));
    let mut spawns = Vec::new();
    for i in 0..s.spawns {
        let t = Instant::now();
        let child = start(n, p, format!("{}-spawn-{i}", p.name)).await?;
        child.run(&p.echo, Value::Int(1)).await?;
        spawns.push(t.elapsed());
        child.cancel().await;
    }

    prog.step(&format!("{}: RPC round trip x{}", p.name, s.round_trips));
    let child = start(n, p, format!("{}-rpc", p.name)).await?;
    for i in 0..50 {
        child.run(&p.echo, Value::Int(i)).await?;
    }
    let mut batches = Vec::new();
    let per_batch = (s.round_trips / 5).max(1);
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..per_batch {
            child.run(&p.echo, Value::Int(i as i64)).await?;
        }
        batches.push(t.elapsed() / per_batch as u32);
    }

    prog.step(&format!("{}: stream echo of {} items", p.name, s.items));
    let (mut ctx, _) = child.open_context(&p.stream, Value::Null).await?;
    let (tx, mut rx) = ctx.open_stream().await?.split();
    let t = Instant::now();
    let send = async {
        for i in 0..s.items {
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
    sent?;
    let got = got?;
    let took = t.elapsed();
    ctx.result().await?;
    anyhow::ensure!(
        got == s.items,
        "{}: {got} of {} items came back",
        p.name,
        s.items
    );
    let items_per_s = got as f64 / took.as_secs_f64();
    child.cancel().await;

    prog.step(&format!(
        "{}: teardown of an idle and of a stuck child x{}",
        p.name, s.teardowns
    ));
    let mut idle = Vec::new();
    let mut stuck = Vec::new();
    let mut outcome = String::new();
    for i in 0..s.teardowns {
        let child = start(n, p, format!("{}-idle-{i}", p.name)).await?;
        child.run(&p.echo, Value::Null).await?;
        let t = Instant::now();
        child.cancel().await;
        idle.push(t.elapsed());

        // In a nursery of its own: a stuck Rust thread is leaked (reported), and a leak fails
        // the nursery it was in.
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
        let Some((took, o)) = got.into_inner().unwrap_or_else(|p| p.into_inner()) else {
            anyhow::bail!("{}: the stuck child's teardown was not measured", p.name);
        };
        stuck.push(took);
        outcome = match o {
            harrow::ChildOutcome::Exited => "exited (interrupted)".into(),
            harrow::ChildOutcome::Killed => "killed".into(),
            harrow::ChildOutcome::Leaked(_) => "leaked (detached, reported)".into(),
            other => format!("{other:?}"),
        };
    }
    Ok(Measured {
        spawn: median(spawns),
        rtt: median(batches),
        items_per_s,
        stuck: median(stuck),
        stuck_outcome: outcome,
        idle: median(idle),
    })
}

async fn start(n: &ActorNursery, p: &Plan, name: String) -> anyhow::Result<harrow::ChildHandle> {
    Ok(n.start_actor(&name, p.backend.clone(), p.spec.clone())
        .await?)
}

/// (T1, T2) of `sum_squares(n)` on one subint actor, then on two at once.
#[cfg(feature = "subint")]
async fn parallel_subint(
    n: &ActorNursery,
    dir: &crate::pymod::PyDir,
    legacy: bool,
    s: Sizes,
) -> anyhow::Result<(Duration, Duration)> {
    let mode = if legacy { "legacy" } else { "owngil" };
    let mut actors = Vec::new();
    for i in 0..2 {
        let name = format!("cpu-{mode}-{i}");
        let spec = ActorSpec::new().params(dir.params(&name, legacy));
        actors.push(
            n.start_actor(&name, harrow::SubintBackend::shared(), spec)
                .await?,
        );
    }
    let f = format!("{}:sum_squares", crate::pymod::MODULE);
    for a in &actors {
        a.run(&f, Value::Int(1000)).await?;
    }
    let (mut t1, mut t2) = (Vec::new(), Vec::new());
    for _ in 0..s.cpu_reps {
        let t = Instant::now();
        actors[0].run(&f, Value::Int(s.cpu_n)).await?;
        t1.push(t.elapsed());
        let t = Instant::now();
        let (a, b) = futures_lite::future::zip(
            actors[0].run(&f, Value::Int(s.cpu_n)),
            actors[1].run(&f, Value::Int(s.cpu_n)),
        )
        .await;
        t2.push(t.elapsed());
        a?;
        b?;
    }
    for a in &actors {
        a.cancel().await;
    }
    Ok((median(t1), median(t2)))
}

const MP_SCRIPT: &str = r#"
import json, multiprocessing as mp, statistics, sys, time

def sum_squares(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def echo(x):
    return x

if __name__ == "__main__":
    n, reps, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with mp.Pool(2) as pool:
        pool.map(echo, [1, 2], chunksize=1)
        t1, t2 = [], []
        for _ in range(reps):
            s = time.perf_counter(); pool.apply(sum_squares, (n,)); t1.append(time.perf_counter() - s)
            s = time.perf_counter(); pool.map(sum_squares, [n, n], chunksize=1); t2.append(time.perf_counter() - s)
        for i in range(50):
            pool.apply(echo, (i,))
        s = time.perf_counter()
        for i in range(calls):
            pool.apply(echo, (i,))
        apply_s = (time.perf_counter() - s) / calls
    print(json.dumps({"t1_s": statistics.median(t1), "t2_s": statistics.median(t2), "apply_s": apply_s}))
"#;

/// What Python's multiprocessing measured: (T1, T2, Pool.apply round trip).
struct Mp {
    t1: Duration,
    t2: Duration,
    apply: Duration,
}

/// Runs the embedded multiprocessing script with the Python recorded at build time, bounded.
fn multiprocessing(dir: &std::path::Path, s: Sizes) -> Result<Mp, String> {
    let python = option_env!("HARROW_PYTHON")
        .ok_or("no Python was recorded at build time (HARROW_PYTHON unset): run scripts/setup")?;
    let script = dir.join("harrow_bench_mp.py");
    std::fs::write(&script, MP_SCRIPT).map_err(|e| format!("cannot write the script: {e}"))?;
    let mut child = Command::new(python)
        .arg(&script)
        .arg(s.cpu_n.to_string())
        .arg(s.cpu_reps.to_string())
        .arg(s.round_trips.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let bound = Duration::from_secs(120);
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if t0.elapsed() < bound => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{python} did not finish within {bound:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for {python}: {e}")),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!("{python} failed ({status}): {}", err.trim()));
    }
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("bad output {out:?}: {e}"))?;
    let secs = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map(Duration::from_secs_f64)
            .ok_or(format!("no {k} in {out:?}"))
    };
    Ok(Mp {
        t1: secs("t1_s")?,
        t2: secs("t2_s")?,
        apply: secs("apply_s")?,
    })
}

fn bare_thread_spawns(k: usize) -> Duration {
    median(
        (0..k)
            .map(|_| {
                let t = Instant::now();
                let _ = std::thread::spawn(|| {}).join();
                t.elapsed()
            })
            .collect(),
    )
}

fn bare_process_spawns(k: usize) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe()?;
    let mut v = Vec::new();
    for _ in 0..k {
        let t = Instant::now();
        let status = Command::new(&exe)
            .env(CHILD_ENV, "bare")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        v.push(t.elapsed());
        anyhow::ensure!(status.success(), "bare child failed: {status}");
    }
    Ok(median(v))
}

/// The median, over 5 batches of `k / 5`, of the mean time of `f` in a batch.
fn batched(k: usize, mut f: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let per_batch = (k / 5).max(1);
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..per_batch as u64 {
            f(i)?;
        }
        v.push(t.elapsed() / per_batch as u32);
    }
    Ok(median(v))
}

/// Median round trip of a raw flume ping-pong between two threads.
fn flume_ping_pong(k: usize) -> Duration {
    let (to_tx, to_rx) = flume::bounded::<u64>(1);
    let (back_tx, back_rx) = flume::bounded::<u64>(1);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let rt = |i: u64| to_tx.send(i).is_ok() && back_rx.recv().is_ok();
    for i in 0..50 {
        rt(i);
    }
    let took = batched(k, |i| {
        rt(i);
        Ok(())
    })
    .unwrap_or_default();
    drop(to_tx);
    let _ = echo.join();
    took
}

/// Items per second echoed through a thread over raw flume channels (pipelined).
fn flume_stream(items: i64) -> f64 {
    let (to_tx, to_rx) = flume::bounded::<i64>(256);
    let (back_tx, back_rx) = flume::bounded::<i64>(256);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..items {
            if to_tx.send(i).is_err() {
                break;
            }
        }
    });
    let mut got = 0i64;
    while got < items && back_rx.recv().is_ok() {
        got += 1;
    }
    let rate = got as f64 / t.elapsed().as_secs_f64();
    let _ = sender.join();
    let _ = echo.join();
    rate
}

/// An echo child (this binary, `HARROW_BENCH_CHILD=echo`) on a socketpair as its stdin.
fn echo_child() -> anyhow::Result<(std::process::Child, UnixStream)> {
    let (mine, theirs) = UnixStream::pair()?;
    let child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, "echo")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()?;
    mine.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok((child, mine))
}

/// Median round trip of 8-byte ping-pongs with a child process over a socketpair.
fn socket_ping_pong(k: usize) -> anyhow::Result<Duration> {
    let (mut child, mut sock) = echo_child()?;
    let mut buf = [0u8; 8];
    let mut rt = |i: u64| -> std::io::Result<()> {
        sock.write_all(&i.to_le_bytes())?;
        sock.read_exact(&mut buf)
    };
    for i in 0..50 {
        rt(i)?;
    }
    let took = batched(k, |i| rt(i).map_err(Into::into))?;
    drop(sock);
    child.wait()?;
    Ok(took)
}

/// Items per second echoed by a child process over a socketpair: one 8-byte write per item
/// from a writer thread, read back through a buffer.
fn socket_stream(items: i64) -> anyhow::Result<f64> {
    let (mut child, sock) = echo_child()?;
    let mut w = sock.try_clone()?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for i in 0..items {
            w.write_all(&i.to_le_bytes())?;
        }
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut r = BufReader::new(sock);
    let mut buf = [0u8; 8];
    let mut got = 0i64;
    while got < items {
        r.read_exact(&mut buf)?;
        got += 1;
    }
    let rate = got as f64 / t.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    drop(r);
    child.wait()?;
    Ok(rate)
}

/// Runs the suite; returns the exit code.
pub(crate) fn run(as_json: bool, quick: bool) -> i32 {
    match run_inner(as_json, quick) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("harrow bench: {e:#}");
            1
        }
    }
}

fn run_inner(as_json: bool, quick: bool) -> anyhow::Result<()> {
    let s = Sizes::new(quick);
    let prog = Progress { t0: Instant::now() };
    let subint = harrow::subint_status();
    if let Err(why) = &subint {
        eprintln!("[bench] the subint rows are skipped: {why}");
    }
    let py = match subint {
        Ok(()) => Some(crate::pymod::PyDir::create()?),
        Err(_) => None,
    };
    let plans = plans(py.as_ref());
    let timeouts = Timeouts {
        cancel_ack: Duration::from_millis(200),
        graceful_exit: Duration::from_millis(300),
        hard_kill: Duration::from_millis(300),
    };

    // Harrow's figures, all in one actor tree.
    let py_ref = py.as_ref();
    let result = run_root(RootConfig::default().timeouts(timeouts), |n| {
        let (plans, prog) = (&plans, &prog);
        async move {
            let mut measured = Vec::new();
            for p in plans {
                measured.push(
                    measure_backend(&n, p, s, prog)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            #[allow(unused_mut)]
            let mut cpu: Vec<(&str, Duration, Duration)> = Vec::new();
            #[cfg(feature = "subint")]
            if let Some(dir) = py_ref {
                for (legacy, key) in [(false, "own_gil"), (true, "legacy")] {
                    prog.step(&format!(
                        "parallel Python, {key}: sum_squares({}) on 1 then 2 subint actors x{}",
                        s.cpu_n, s.cpu_reps
                    ));
                    let (t1, t2) = parallel_subint(&n, dir, legacy, s)
                        .await
                        .map_err(|e| e.to_string())?;
                    cpu.push((key, t1, t2));
                }
            }
            let _ = py_ref;
            Ok((measured, cpu))
        }
    });
    crate::fns::release_spinners();
    let (measured, cpu) = match result {
        Ok(v) => v,
        Err(e) => {
            anyhow::bail!("the benchmark tree failed: {e}");
        }
    };

    // Baselines, in the same run.
    let mut rows = Vec::new();
    for (p, m) in plans.iter().zip(&measured) {
        let (spawn_label, spawn_base) = match p.name {
            "thread" => {
                prog.step("baseline: bare std::thread spawn+join");
                (
                    "bare std::thread spawn+join".to_owned(),
                    bare_thread_spawns(s.spawns.max(20)),
                )
            }
            "process" => {
                prog.step("baseline: bare spawn+exit of this binary");
                (
                    "bare spawn+exit of this binary".to_owned(),
                    bare_process_spawns(s.spawns)?,
                )
            }
            _ => {
                prog.step("baseline: bare subinterpreter create+end");
                (
                    "bare subinterpreter create+end".to_owned(),
                    bare_subint(s.spawns)?,
                )
            }
        };
        rows.push(Row {
            backend: p.name,
            key: "spawn_to_first_reply",
            label: "spawn-to-first-reply",
            unit: Unit::Ms,
            harrow: ms(m.spawn),
            note: String::new(),
            baseline_label: spawn_label,
            baseline: ms(spawn_base),
        });
        let in_process = p.backend.capabilities().in_process;
        prog.step(&format!(
            "baseline for {}: raw transport ping-pong and echo",
            p.name
        ));
        let (rtt_label, rtt_base, stream_label, stream_base) = if in_process {
            (
                "raw flume ping-pong, 2 threads",
                flume_ping_pong(s.round_trips),
                "raw flume echo, 3 threads",
                flume_stream(s.items),
            )
        } else {
            (
                "raw socketpair ping-pong, 2 processes",
                socket_ping_pong(s.round_trips)?,
                "raw socketpair echo, 2 processes",
                socket_stream(s.items)?,
            )
        };
        rows.push(Row {
            backend: p.name,
            key: "rpc_round_trip",
            label: "RPC round trip",
            unit: Unit::Us,
            harrow: m.rtt.as_secs_f64() * 1e6,
            note: String::new(),
            baseline_label: rtt_label.into(),
            baseline: rtt_base.as_secs_f64() * 1e6,
        });
        rows.push(Row {
            backend: p.name,
            key: "stream_echo_throughput",
            label: "stream echo (both ways)",
            unit: Unit::ItemsPerS,
            harrow: m.items_per_s,
            note: String::new(),
            baseline_label: stream_label.into(),
            baseline: stream_base,
        });
        rows.push(Row {
            backend: p.name,
            key: "stuck_child_teardown",
            label: "stuck-child teardown",
            unit: Unit::Ms,
            harrow: ms(m.stuck),
            note: m.stuck_outcome.clone(),
            baseline_label: "teardown of an idle child".into(),
            baseline: ms(m.idle),
        });
    }

    let mp = match py.as_ref() {
        Some(dir) => {
            prog.step(&format!(
                "baseline: Python multiprocessing.Pool(2), sum_squares({}) x{} and Pool.apply x{}",
                s.cpu_n, s.cpu_reps, s.round_trips
            ));
            multiprocessing(dir.path(), s)
        }
        None => Err("the subint backend is unavailable".to_owned()),
    };
    let subint_rtt = plans
        .iter()
        .zip(&measured)
        .find(|(p, _)| p.name == "subint")
        .map(|(_, m)| m.rtt);
    drop(py);
    prog.step("done");

    let speedup = |t1: Duration, t2: Duration| 2.0 * t1.as_secs_f64() / t2.as_secs_f64();
    let mp_speedup = mp.as_ref().ok().map(|m| speedup(m.t1, m.t2));

    if as_json {
        let mut backends = serde_json::Map::new();
        for r in &rows {
            let entry = backends
                .entry(r.backend)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(o) = entry.as_object_mut() {
                o.insert(r.key.into(), r.to_json());
            }
        }
        if let Err(why) = harrow::subint_status() {
            backends.insert("subint".into(), json!({ "unavailable": why }));
        }
        let mut par = serde_json::Map::new();
        par.insert(
            "job".into(),
            json!(format!(
                "pure-Python sum of i*i for i in range({})",
                s.cpu_n
            )),
        );
        par.insert("n".into(), s.cpu_n.into());
        par.insert(
            "speedup_definition".into(),
            json!("2 * t1 / t2: t1 = one job on one worker, t2 = two jobs on two workers at once; 2.0 = perfectly parallel, 1.0 = serialised"),
        );
        for (key, t1, t2) in &cpu {
            let sp = speedup(*t1, *t2);
            par.insert(
                (*key).into(),
                json!({
                    "t1_ms": round(ms(*t1)),
                    "t2_ms": round(ms(*t2)),
                    "speedup": round(sp),
                    "speedup_vs_multiprocessing": mp_speedup.map(|m| round(sp / m)),
                }),
            );
        }
        match &mp {
            Ok(m) => {
                par.insert(
                    "multiprocessing".into(),
                    json!({
                        "t1_ms": round(ms(m.t1)),
                        "t2_ms": round(ms(m.t2)),
                        "speedup": round(speedup(m.t1, m.t2)),
                    }),
                );
            }
            Err(why) => {
                par.insert("multiprocessing".into(), json!({ "skipped": why }));
            }
        }
        let python_calls = match (&mp, subint_rtt) {
            (Ok(m), Some(rtt)) => json!({
                "subint_call_us": round(rtt.as_secs_f64() * 1e6),
                "multiprocessing_pool_apply_us": round(m.apply.as_secs_f64() * 1e6),
                "subint_faster_by": round(m.apply.as_secs_f64() / rtt.as_secs_f64()),
            }),
            _ => json!({ "skipped": "needs the subint backend and Python's multiprocessing" }),
        };
        let out = json!({
            "quick": quick,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "python": python_version(),
            "ratio_definition": "how many times slower than the baseline: harrow time / baseline time, or baseline items_per_s / harrow items_per_s",
            "backends": backends,
            "parallel_python": par,
            "python_call_round_trip": python_calls,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!(
        "harrow bench ({}; {} cpus; Python {})",
        if quick {
            "--quick: smoke sizes, rough figures"
        } else {
            "default sizes"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        python_version()
    );
    println!(
        "ratio = how many times slower than the baseline measured in this run (time / baseline time; baseline items/s / items/s)"
    );
    println!();
    println!(
        "{:<8} {:<24} {:>16}  {:<38} {:>16} {:>8}",
        "backend", "measure", "harrow", "baseline (same run)", "baseline", "ratio"
    );
    for r in &rows {
        println!(
            "{:<8} {:<24} {:>16}  {:<38} {:>16} {:>7.2}x{}",
            r.backend,
            r.label,
            r.unit.show(r.harrow),
            r.baseline_label,
            r.unit.show(r.baseline),
            r.ratio(),
            if r.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.note)
            }
        );
    }
    if let Err(why) = harrow::subint_status() {
        println!("subint   (skipped: {why})");
    }
    if let (Ok(m), Some(rtt)) = (&mp, subint_rtt) {
        println!(
            "{:<8} {:<24} {:>16}  {:<38} {:>16}   subint {:.1}x faster",
            "subint",
            "Python call round trip",
            Unit::Us.show(rtt.as_secs_f64() * 1e6),
            "multiprocessing Pool.apply",
            Unit::Us.show(m.apply.as_secs_f64() * 1e6),
            m.apply.as_secs_f64() / rtt.as_secs_f64()
        );
    }
    println!();
    println!(
        "parallel Python: pure-Python sum of i*i for i in range({}); T1 = one job on one worker, T2 = two jobs on two workers at once;",
        s.cpu_n
    );
    println!(
        "speedup = 2*T1/T2 (2.0 = perfectly parallel, 1.0 = serialised); baseline: multiprocessing.Pool(2) in this run"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>18}",
        "mode", "T1", "T2", "speedup", "vs multiprocessing"
    );
    for (key, t1, t2) in &cpu {
        let label = if *key == "own_gil" {
            "subint, own GIL (2 actors)"
        } else {
            "subint, legacy shared GIL (2 actors)"
        };
        let sp = speedup(*t1, *t2);
        println!(
            "{label:<34} {:>10} {:>10} {:>7.2}x {:>17}",
            Unit::Ms.show(ms(*t1)),
            Unit::Ms.show(ms(*t2)),
            sp,
            mp_speedup.map_or("-".into(), |m| format!("{:.2}x", sp / m))
        );
    }
    match &mp {
        Ok(m) => println!(
            "{:<34} {:>10} {:>10} {:>7.2}x {:>17}",
            "multiprocessing.Pool(2)",
            Unit::Ms.show(ms(m.t1)),
            Unit::Ms.show(ms(m.t2)),
            speedup(m.t1, m.t2),
            "1.00x"
        ),
        Err(why) => println!("multiprocessing: skipped: {why}"),
    }
    Ok(())
}

fn python_version() -> String {
    #[cfg(feature = "subint")]
    if harrow::subint_status().is_ok() {
        return harrow::backends::subint::python_version().to_owned();
    }
    option_env!("HARROW_PYTHON_VERSION")
        .unwrap_or("none")
        .to_owned()
}

#[cfg(feature = "subint")]
fn bare_subint(k: usize) -> anyhow::Result<Duration> {
    let cfg = harrow::InterpConfig::new("bare");
    let mut v = Vec::new();
    for _ in 0..k {
        v.push(harrow::backends::subint::bare_create_end(&cfg)?);
    }
    Ok(median(v))
}

#[cfg(not(feature = "subint"))]
fn bare_subint(_k: usize) -> anyhow::Result<Duration> {
    anyhow::bail!("the subint feature is off")
}
