//! Benchmarks of the subint layer, printed as ratios (run: `cargo bench -p harrow-spawn-subint --features bench-internals`).
//!
//! - CPU-bound pure Python on 1 and 2 interpreters (own GIL, legacy) and on
//!   `multiprocessing.Pool(2)`: speedup = 2 x T1 / T2.
//! - Bare interpreter create+end vs spawn-to-first-reply (InterpThread::spawn + first call).
//! - Call round trip of a trivial function vs `multiprocessing` `Pool.apply`, and of the same
//!   function as `async def` (a task of the interpreter's event loop) vs plain `def`.
//! - A whole actor (`SubintBackend` in a root nursery, what `harrow bench` measures): its
//!   spawn-to-first-reply interleaved with a bare create+end, and its RPC round trip through the
//!   portal interleaved with a raw flume ping-pong between two threads.
//! - The interpreter thread's own cost of a call, without the hand-offs: calls queued all at once
//!   and run back to back, in CPU time of that thread per call (less sensitive to the machine's
//!   load than any round trip).
//!
//! One part alone (for `perf`): `cargo bench -p harrow-spawn-subint --features bench-internals
//! -- NAME`, NAME one of `cpu`, `spawn`, `call`, `burst`, `actor-spawn`, `actor-rpc`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use harrow_ipc::{CallKind, FnPath, Value};
use harrow_runtime_core::{ActorSpec, RootConfig, run_root};
use harrow_spawn_subint::__bench::{bare_create_end, reply_spin_stats};
use harrow_spawn_subint::{InterpConfig, InterpHandle, InterpThread, SubintBackend};

const N: i64 = 3_000_000;
const BOUND: Duration = Duration::from_secs(60);

fn pyfns() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pyfns")
}

fn config(name: &str, legacy: bool) -> InterpConfig {
    InterpConfig::new(name)
        .expose("harrow_testfns")
        .expose("harrow_testfns.aio")
        .sys_path(pyfns())
        .legacy(legacy)
}

fn call(h: &InterpHandle, f: &str, args: Value) -> Result<Value> {
    let fut = h.call(FnPath::parse(f)?, CallKind::Unary, args, None);
    futures_lite::future::block_on(fut).map_err(|e| anyhow!("{f}: {e:?}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// (T1, T2): one CPU job on one interpreter; two jobs on two interpreters at once.
fn cpu_speedup(legacy: bool) -> Result<(Duration, Duration)> {
    let a = InterpThread::spawn(config("bench-a", legacy))?;
    let b = InterpThread::spawn(config("bench-b", legacy))?;
    let (ha, hb) = (a.handle(), b.handle());
    call(&ha, "harrow_testfns:cpu", Value::Int(1000))?;
    call(&hb, "harrow_testfns:cpu", Value::Int(1000))?;
    let mut t1 = Vec::new();
    let mut t2 = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        call(&ha, "harrow_testfns:cpu", Value::Int(N))?;
        t1.push(s.elapsed());
        let s = Instant::now();
        let fa = ha.call(
            FnPath::parse("harrow_testfns:cpu")?,
            CallKind::Unary,
            Value::Int(N),
            None,
        );
        let fb = hb.call(
            FnPath::parse("harrow_testfns:cpu")?,
            CallKind::Unary,
            Value::Int(N),
            None,
        );
        let ra = futures_lite::future::block_on(fa);
        let rb = futures_lite::future::block_on(fb);
        t2.push(s.elapsed());
        ra.map_err(|e| anyhow!("{e:?}"))?;
        rb.map_err(|e| anyhow!("{e:?}"))?;
    }
    a.shutdown(BOUND);
    b.shutdown(BOUND);
    Ok((median(t1), median(t2)))
}

const MP_SCRIPT: &str = r#"
import multiprocessing as mp, time, statistics, sys
def cpu(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
def noop(x):
    return x
if __name__ == "__main__":
    N = int(sys.argv[1])
    with mp.Pool(2) as pool:
        pool.apply(noop, (1,))
        t1, t2 = [], []
        for _ in range(3):
            s = time.perf_counter(); pool.apply(cpu, (N,)); t1.append(time.perf_counter() - s)
            s = time.perf_counter(); pool.map(cpu, [N, N], chunksize=1); t2.append(time.perf_counter() - s)
        rt = []
        for _ in range(500):
            s = time.perf_counter(); pool.apply(noop, (1,)); rt.append(time.perf_counter() - s)
    print(statistics.median(t1), statistics.median(t2), statistics.median(rt))
"#;

fn multiprocessing(n: i64) -> Result<(f64, f64, f64)> {
    let py = env!("HARROW_SUBINT_PYTHON");
    let out = Command::new(py)
        .arg("-c")
        .arg(MP_SCRIPT)
        .arg(n.to_string())
        .output()
        .with_context(|| format!("running {py}"))?;
    if !out.status.success() {
        return Err(anyhow!("{}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8(out.stdout)?;
    let v: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b, c] => Ok((*a, *b, *c)),
        _ => Err(anyhow!("unexpected output {text:?}")),
    }
}

fn main() -> Result<()> {
    if !harrow_spawn_subint::available() {
        println!(
            "subint backend unavailable (Python {}); nothing to bench",
            harrow_spawn_subint::python_version()
        );
        return Ok(());
    }
    println!("Python {} , N = {N}", harrow_spawn_subint::python_version());
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
    if want("cpu") {
        cpu_table()?;
    }
    if want("spawn") {
        spawn_table()?;
    }
    if want("call") {
        call_table()?;
    }
    if want("burst") {
        burst_table()?;
    }
    if want("actor-spawn") || want("actor-rpc") {
        actor_table(want("actor-spawn"), want("actor-rpc"))?;
    }
    Ok(())
}

fn cpu_table() -> Result<()> {
    let (t1, t2) = cpu_speedup(false)?;
    println!(
        "own GIL:   T1 {:.3}s  T2 {:.3}s  speedup 2*T1/T2 = {:.2}x",
        secs(t1),
        secs(t2),
        2.0 * secs(t1) / secs(t2)
    );
    let (l1, l2) = cpu_speedup(true)?;
    println!(
        "legacy:    T1 {:.3}s  T2 {:.3}s  speedup 2*T1/T2 = {:.2}x",
        secs(l1),
        secs(l2),
        2.0 * secs(l1) / secs(l2)
    );
    let (m1, m2, _) = multiprocessing(N)?;
    println!(
        "mp.Pool(2): T1 {m1:.3}s  T2 {m2:.3}s  speedup 2*T1/T2 = {:.2}x",
        2.0 * m1 / m2
    );
    Ok(())
}

fn spawn_table() -> Result<()> {
    let mut bare = Vec::new();
    let mut first = Vec::new();
    let mut ends = Vec::new();
    for i in 0..21 {
        bare.push(bare_create_end(&config("bare", false))?);
        let s = Instant::now();
        let t = InterpThread::spawn(config(&format!("spawn-{i}"), false))?;
        call(&t.handle(), "harrow_testfns:echo", Value::Null)?;
        first.push(s.elapsed());
        let s = Instant::now();
        t.shutdown(BOUND);
        ends.push(s.elapsed());
    }
    let (bare, first, ends) = (median(bare), median(first), median(ends));
    println!(
        "spawn: bare create+end {:.2} ms; spawn-to-first-reply {:.2} ms (ratio {:.2}x); shutdown {:.2} ms",
        secs(bare) * 1e3,
        secs(first) * 1e3,
        secs(first) / secs(bare),
        secs(ends) * 1e3
    );
    Ok(())
}

fn call_table() -> Result<()> {
    // A trivial CPU job: only the round trip is wanted here.
    let (_, _, mrt) = multiprocessing(1_000)?;
    let t = InterpThread::spawn(config("rt", false))?;
    let h = t.handle();
    call(&h, "harrow_testfns:echo", Value::Int(1))?;
    let mut rt = Vec::new();
    for _ in 0..2000 {
        let s = Instant::now();
        call(&h, "harrow_testfns:echo", Value::Int(1))?;
        rt.push(s.elapsed());
    }
    let rt = median(rt);
    call(&h, "harrow_testfns.aio:echo", Value::Int(1))?;
    let mut art = Vec::new();
    for _ in 0..2000 {
        let s = Instant::now();
        call(&h, "harrow_testfns.aio:echo", Value::Int(1))?;
        art.push(s.elapsed());
    }
    let art = median(art);
    t.shutdown(BOUND);
    println!(
        "round trip: async def {:.1} us vs plain def {:.1} us (async costs {:.2}x)",
        secs(art) * 1e6,
        secs(rt) * 1e6,
        secs(art) / secs(rt)
    );
    println!(
        "round trip: subint call {:.1} us; mp Pool.apply {:.1} us; subint is {:.1}x faster",
        secs(rt) * 1e6,
        mrt * 1e6,
        mrt / secs(rt)
    );
    Ok(())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A thread echoing `u64`s over two bounded(1) flume channels (`harrow bench`'s baseline).
struct PingPong {
    to: flume::Sender<u64>,
    back: flume::Receiver<u64>,
}

impl PingPong {
    fn new() -> PingPong {
        let (to, to_rx) = flume::bounded::<u64>(1);
        let (back_tx, back) = flume::bounded::<u64>(1);
        std::thread::spawn(move || {
            while let Ok(v) = to_rx.recv() {
                if back_tx.send(v).is_err() {
                    break;
                }
            }
        });
        PingPong { to, back }
    }

    fn once(&self, i: u64) -> Result<()> {
        self.to.send(i)?;
        anyhow::ensure!(self.back.recv()? == i, "ping-pong lost its value");
        Ok(())
    }
}

/// CPU time (ns) and context switches so far of this process's main thread (the root), and of
/// the threads named `rt-rpc` (the actor's runtime) and `subint-rpc` (its interpreter), from
/// `/proc/self/task/*/{schedstat,status}`.
fn thread_cpu() -> [(u64, u64); 3] {
    let mut out = [(0u64, 0u64); 3];
    let main = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let slot = match comm.trim() {
            _ if t.file_name().to_string_lossy() == main => 0,
            "rt-rpc" => 1,
            "subint-rpc" => 2,
            _ => continue,
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let switches: u64 = std::fs::read_to_string(dir.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out[slot].0 += ns;
        out[slot].1 += switches;
    }
    out
}

/// Through the runtime: a subint actor started by a root nursery, as `harrow bench` does.
fn actor_table(spawn: bool, rpc: bool) -> Result<()> {
    const SPAWNS: usize = 15;
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 2_000;
    let spec = || {
        let mut spec = ActorSpec::new();
        spec.params = config("unused", false).to_params();
        spec
    };
    println!("load average before the actor table: {}", load());
    run_root(RootConfig::default().handle_sigint(false), |n| async move {
        if spawn {
            let (mut first, mut bare) = (Vec::new(), Vec::new());
            for i in 0..SPAWNS {
                let t = Instant::now();
                let child = n
                    .start_actor(&format!("spawn-{i}"), SubintBackend::shared(), spec())
                    .await?;
                child.run("harrow_testfns:echo", Value::Int(1)).await?;
                first.push(t.elapsed());
                child.cancel().await;
                bare.push(bare_create_end(&config("bare", false))?);
            }
            let (first, bare) = (median(first), median(bare));
            println!(
                "actor spawn-to-first-reply {:.2} ms vs bare create+end {:.2} ms: {:.2}x",
                secs(first) * 1e3,
                secs(bare) * 1e3,
                secs(first) / secs(bare)
            );
        }
        if rpc {
            let child = n
                .start_actor("rpc", SubintBackend::shared(), spec())
                .await?;
            let pp = PingPong::new();
            for i in 0..200 {
                child.run("harrow_testfns:echo", Value::Int(i)).await?;
                pp.once(i as u64)?;
            }
            let (mut h_mean, mut b_mean) = (Vec::new(), Vec::new());
            let (mut h_one, mut b_one) = (Vec::new(), Vec::new());
            let mut cpu = [(0u64, 0u64); 3];
            let spins = reply_spin_stats();
            for _ in 0..ROUNDS {
                let before = thread_cpu();
                let t = Instant::now();
                for i in 0..PER_ROUND {
                    let one = Instant::now();
                    child
                        .run("harrow_testfns:echo", Value::Int(i as i64))
                        .await?;
                    h_one.push(one.elapsed());
                }
                h_mean.push(t.elapsed() / PER_ROUND as u32);
                let after = thread_cpu();
                for k in 0..3 {
                    cpu[k].0 += after[k].0.saturating_sub(before[k].0);
                    cpu[k].1 += after[k].1.saturating_sub(before[k].1);
                }
                let t = Instant::now();
                for i in 0..PER_ROUND {
                    let one = Instant::now();
                    pp.once(i as u64)?;
                    b_one.push(one.elapsed());
                }
                b_mean.push(t.elapsed() / PER_ROUND as u32);
            }
            let (h, b) = (median(h_mean), median(b_mean));
            println!(
                "actor RPC round trip {:.1} us (p50 {:.1}, p99 {:.1}) vs flume ping-pong {:.1} us \
                 (p50 {:.1}, p99 {:.1}): {:.2}x",
                secs(h) * 1e6,
                secs(pct(&mut h_one, 0.5)) * 1e6,
                secs(pct(&mut h_one, 0.99)) * 1e6,
                secs(b) * 1e6,
                secs(pct(&mut b_one, 0.5)) * 1e6,
                secs(pct(&mut b_one, 0.99)) * 1e6,
                secs(h) / secs(b)
            );
            let n = (ROUNDS * PER_ROUND) as f64;
            let now = reply_spin_stats();
            println!(
                "actor RPC reply spins (HARROW_PY_REPLY_SPIN_US={:?}): {} caught, {} ran out, {} \
                 skipped",
                harrow_spawn_subint::reply_spin(),
                now.0 - spins.0,
                now.1 - spins.1,
                now.2 - spins.2
            );
            println!(
                "actor RPC per round trip, CPU / context switches: caller (root) {:.1} us / \
                 {:.2}, actor runtime thread {:.1} us / {:.2}, interpreter thread {:.1} us / {:.2}",
                cpu[0].0 as f64 / 1e3 / n,
                cpu[0].1 as f64 / n,
                cpu[1].0 as f64 / 1e3 / n,
                cpu[1].1 as f64 / n,
                cpu[2].0 as f64 / 1e3 / n,
                cpu[2].1 as f64 / n,
            );
            child.cancel().await;
        }
        Ok(())
    })
    .map_err(|e| anyhow!("{e}"))?;
    println!("load average after the actor table: {}", load());
    Ok(())
}

/// Calls queued all at once, run back to back: the interpreter thread's CPU time per call.
fn burst_table() -> Result<()> {
    const CALLS: usize = 20_000;
    let t = InterpThread::spawn(config("burst", false))?;
    let h = t.handle();
    call(&h, "harrow_testfns:echo", Value::Int(1))?;
    let f = FnPath::parse("harrow_testfns:echo")?;
    let mut per = Vec::new();
    for _ in 0..5 {
        let before = named_cpu("subint-burst");
        let s = Instant::now();
        let calls: Vec<_> = (0..CALLS)
            .map(|i| h.call(f.clone(), CallKind::Unary, Value::Int(i as i64), None))
            .collect();
        for c in calls {
            futures_lite::future::block_on(c).map_err(|e| anyhow!("{e:?}"))?;
        }
        let wall = s.elapsed();
        let cpu = named_cpu("subint-burst").saturating_sub(before);
        per.push(Duration::from_nanos(cpu / CALLS as u64));
        println!(
            "burst: {CALLS} calls in {:.1} ms, interpreter thread CPU {:.2} us per call",
            secs(wall) * 1e3,
            cpu as f64 / 1e3 / CALLS as f64
        );
    }
    println!(
        "burst: median interpreter thread CPU per call {:.2} us (load {})",
        secs(median(per)) * 1e6,
        load()
    );
    t.shutdown(BOUND);
    Ok(())
}

/// CPU time (ns) so far of this process's threads named `name`.
fn named_cpu(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}
