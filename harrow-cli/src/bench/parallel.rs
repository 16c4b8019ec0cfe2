//! The parallel-Python table: a CPU-bound pure-Python job on one worker (T1), then two jobs on
//! two workers at once (T2), for own-GIL subinterpreters, legacy (shared-GIL) subinterpreters
//! and Python's `multiprocessing.Pool(2)`. The three modes take turns round by round (own GIL,
//! legacy, multiprocessing, own GIL, ...), so drift in the machine's load hits them alike.
//!
//! During every T2 it also records how many cores the work actually got: CPU time over wall
//! time (this process's for the subinterpreters, the two pool workers' for `multiprocessing`).
//! On a shared machine that is often well under 2, and it caps every speedup.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harrow::{ActorNursery, Value};

use super::stats::Samples;
use super::{Progress, Sizes};

/// Fewer cores than this given to a T2 flags the run: its speedups describe the machine's
/// load, not the runtime.
pub(super) const ENOUGH_CORES: f64 = 1.8;

/// One mode's samples, one per round.
pub(super) struct Mode {
    /// The JSON key: `own_gil`, `legacy`, `multiprocessing`.
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    /// Milliseconds.
    pub(super) t1: Samples,
    /// Milliseconds.
    pub(super) t2: Samples,
    /// 2 × T1 / T2 of each round.
    pub(super) speedups: Samples,
    /// CPU time / wall time during each T1 (at most 1: one worker).
    pub(super) cores_t1: Samples,
    /// CPU time / wall time during each T2 (at most 2: two workers).
    pub(super) cores: Samples,
}

impl Mode {
    pub(super) fn new(key: &'static str, label: &'static str) -> Mode {
        Mode {
            key,
            label,
            t1: Samples::default(),
            t2: Samples::default(),
            speedups: Samples::default(),
            cores_t1: Samples::default(),
            cores: Samples::default(),
        }
    }

    fn record(&mut self, r: Round) {
        let (t1, t2) = (r.t1.as_secs_f64(), r.t2.as_secs_f64());
        self.t1.push(t1 * 1e3);
        self.t2.push(t2 * 1e3);
        self.speedups.push(2.0 * t1 / t2);
        self.cores_t1.push(r.t1_cpu.as_secs_f64() / t1);
        self.cores.push(r.t2_cpu.as_secs_f64() / t2);
    }

    /// 2 × median T1 / median T2.
    pub(super) fn speedup(&self) -> f64 {
        2.0 * self.t1.median() / self.t2.median()
    }
}

/// What the parallel-Python rounds measured.
pub(super) struct Parallel {
    pub(super) n: i64,
    /// Own GIL, legacy, and multiprocessing when it ran.
    pub(super) modes: Vec<Mode>,
    /// Why `multiprocessing` did not run (or stopped), if it did not.
    pub(super) mp_skipped: Option<String>,
    /// Mean µs of an own-GIL subint call and of a `Pool.apply`, one sample each per round.
    pub(super) calls: Option<(Samples, Samples)>,
}

impl Parallel {
    pub(super) fn mode(&self, key: &str) -> Option<&Mode> {
        self.modes.iter().find(|m| m.key == key)
    }

    /// The cores the machine gave during the parallel measurement (median over rounds): the
    /// `multiprocessing` figure when it ran (it does not depend on harrow), else own GIL's.
    pub(super) fn cores_given(&self) -> Option<(f64, &'static str)> {
        ["multiprocessing", "own_gil"]
            .iter()
            .find_map(|k| self.mode(k))
            .map(|m| (m.cores.median(), m.key))
    }
}

/// One round of one mode.
struct Round {
    t1: Duration,
    t1_cpu: Duration,
    t2: Duration,
    t2_cpu: Duration,
}

/// Runs `s.reps` rounds of every mode, interleaved.
#[cfg(feature = "subint")]
pub(super) async fn measure(
    n: &ActorNursery,
    dir: &crate::pymod::PyDir,
    s: Sizes,
    prog: &Progress,
) -> anyhow::Result<Parallel> {
    prog.step(&format!(
        "parallel Python: {} rounds of sum_squares({}) on 1 then 2 workers: own-GIL subint, \
         legacy subint, multiprocessing.Pool(2), and a batch of calls",
        s.reps, s.cpu_n
    ));
    let own = Pair::start(n, dir, false).await?;
    let legacy = Pair::start(n, dir, true).await?;
    let mut mp = MpDriver::start(dir.path(), s.cpu_n);
    let mut out = Parallel {
        n: s.cpu_n,
        modes: vec![
            Mode::new("own_gil", "subint, own GIL (2 actors)"),
            Mode::new("legacy", "subint, legacy shared GIL (2 actors)"),
        ],
        mp_skipped: None,
        calls: None,
    };
    let mut mp_mode = Mode::new("multiprocessing", "multiprocessing.Pool(2)");
    let (mut subint_call, mut mp_apply) = (Samples::default(), Samples::default());
    let calls = (s.round_trips / s.reps).max(1);
    for round in 0..s.reps {
        out.modes[0].record(own.round(s.cpu_n).await?);
        out.modes[1].record(legacy.round(s.cpu_n).await?);
        let Ok(driver) = &mut mp else { continue };
        let measured = driver
            .round()
            .and_then(|r| Ok((r, driver.apply(calls)?)))
            .map_err(|e| format!("round {}: {e}", round + 1));
        match measured {
            Ok((r, apply)) => {
                mp_mode.record(r);
                subint_call.push(own.calls(calls).await?.as_secs_f64() * 1e6);
                mp_apply.push(apply.as_secs_f64() * 1e6);
            }
            Err(e) => mp = Err(e),
        }
    }
    own.cancel().await;
    legacy.cancel().await;
    match mp {
        Ok(_) => {
            out.modes.push(mp_mode);
            out.calls = Some((subint_call, mp_apply));
        }
        Err(why) => out.mp_skipped = Some(why),
    }
    Ok(out)
}

/// Two subint actors exposing the bench's module (own GIL unless legacy).
#[cfg(feature = "subint")]
struct Pair {
    actors: [harrow::ChildHandle; 2],
    sum_squares: String,
    echo: String,
}

#[cfg(feature = "subint")]
impl Pair {
    async fn start(
        n: &ActorNursery,
        dir: &crate::pymod::PyDir,
        legacy: bool,
    ) -> anyhow::Result<Pair> {
        let mode = if legacy { "legacy" } else { "owngil" };
        let mut actors = Vec::new();
        for i in 0..2 {
            let name = format!("cpu-{mode}-{i}");
            let spec = harrow::ActorSpec::new().params(dir.params(&name, legacy));
            actors.push(
                n.start_actor(&name, harrow::SubintBackend::shared(), spec)
                    .await?,
            );
        }
        let actors: [harrow::ChildHandle; 2] = actors
            .try_into()
            .map_err(|_| anyhow::anyhow!("two actors were started"))?;
        let m = crate::pymod::MODULE;
        let pair = Pair {
            actors,
            sum_squares: format!("{m}:sum_squares"),
            echo: format!("{m}:echo"),
        };
        for a in &pair.actors {
            a.run(&pair.sum_squares, Value::Int(1000)).await?;
            for i in 0..20 {
                a.run(&pair.echo, Value::Int(i)).await?;
            }
        }
        Ok(pair)
    }

    /// T1 on the first actor, then T2 on both at once, with this process's CPU time during
    /// each.
    async fn round(&self, n: i64) -> anyhow::Result<Round> {
        let f = &self.sum_squares;
        let cpu = process_cpu();
        let t = Instant::now();
        self.actors[0].run(f, Value::Int(n)).await?;
        let t1 = t.elapsed();
        let t1_cpu = process_cpu().saturating_sub(cpu);
        let cpu = process_cpu();
        let t = Instant::now();
        let (a, b) = futures_lite::future::zip(
            self.actors[0].run(f, Value::Int(n)),
            self.actors[1].run(f, Value::Int(n)),
        )
        .await;
        let t2 = t.elapsed();
        let t2_cpu = process_cpu().saturating_sub(cpu);
        a?;
        b?;
        Ok(Round {
            t1,
            t1_cpu,
            t2,
            t2_cpu,
        })
    }

    /// The mean time of `k` calls to the first actor.
    async fn calls(&self, k: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for i in 0..k {
            self.actors[0].run(&self.echo, Value::Int(i as i64)).await?;
        }
        Ok(t.elapsed() / k.max(1) as u32)
    }

    async fn cancel(&self) {
        for a in &self.actors {
            a.cancel().await;
        }
    }
}

/// This process's CPU time (all threads).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The `multiprocessing` side: one Python process holding a `Pool(2)` for the whole run,
/// measuring a round or a batch of `Pool.apply` calls on request, one JSON line per answer.
const MP_SCRIPT: &str = r#"
import json, multiprocessing as mp, sys, time

def sum_squares(n):
    c = time.process_time()
    s = 0
    for i in range(n):
        s += i * i
    return time.process_time() - c

def echo(x):
    return x

def answer(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

if __name__ == "__main__":
    n = int(sys.argv[1])
    with mp.Pool(2) as pool:
        pool.map(echo, [1, 2], chunksize=1)
        pool.map(sum_squares, [1000, 1000], chunksize=1)
        for i in range(50):
            pool.apply(echo, (i,))
        answer(ready=True)
        for line in sys.stdin:
            cmd = line.split()
            if cmd == ["round"]:
                s = time.perf_counter(); cpu1 = pool.apply(sum_squares, (n,)); t1 = time.perf_counter() - s
                s = time.perf_counter(); cpu2 = pool.map(sum_squares, [n, n], chunksize=1); t2 = time.perf_counter() - s
                answer(t1_s=t1, t1_cpu_s=cpu1, t2_s=t2, t2_cpu_s=sum(cpu2))
            elif len(cmd) == 2 and cmd[0] == "apply":
                k = int(cmd[1])
                s = time.perf_counter()
                for i in range(k):
                    pool.apply(echo, (i,))
                answer(apply_s=(time.perf_counter() - s) / k)
            else:
                break
"#;

/// How long one answer from the `multiprocessing` script may take.
const MP_BOUND: Duration = Duration::from_secs(120);

/// The running `multiprocessing` script (killed on drop).
struct MpDriver {
    child: Child,
    stdin: ChildStdin,
    /// The script's stdout, line by line (read by a thread, so waits on it are bounded).
    lines: mpsc::Receiver<std::io::Result<String>>,
    /// The script's whole stderr, once it closed it.
    stderr: mpsc::Receiver<String>,
}

impl MpDriver {
    /// Starts the script with the Python recorded at build time and waits until its pool is
    /// warm. `Err` says why `multiprocessing` is skipped.
    fn start(dir: &std::path::Path, n: i64) -> Result<MpDriver, String> {
        let python = option_env!("HARROW_PYTHON").ok_or(
            "no Python was recorded at build time (HARROW_PYTHON unset): run scripts/setup",
        )?;
        let script = dir.join("harrow_bench_mp.py");
        std::fs::write(&script, MP_SCRIPT).map_err(|e| format!("cannot write the script: {e}"))?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg(n.to_string())
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
        let mut this = MpDriver {
            child,
            stdin,
            lines,
            stderr: err,
        };
        this.answer()?;
        Ok(this)
    }

    /// One round: T1, T2 and the pool workers' CPU time during each.
    fn round(&mut self) -> Result<Round, String> {
        let v = self.request("round")?;
        Ok(Round {
            t1: secs(&v, "t1_s")?,
            t1_cpu: secs(&v, "t1_cpu_s")?,
            t2: secs(&v, "t2_s")?,
            t2_cpu: secs(&v, "t2_cpu_s")?,
        })
    }

    /// The mean time of `k` `Pool.apply` calls.
    fn apply(&mut self, k: usize) -> Result<Duration, String> {
        let v = self.request(&format!("apply {}", k.max(1)))?;
        secs(&v, "apply_s")
    }

    fn request(&mut self, cmd: &str) -> Result<serde_json::Value, String> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("cannot write to the multiprocessing script: {e}"))?;
        self.answer()
    }

    /// The next JSON line, within [`MP_BOUND`].
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
                // It closed its stdout (it exited): its stderr says why.
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

impl Drop for MpDriver {
    /// Asks the script to end (it terminates its pool), and kills it if it has not exited
    /// within a bound.
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

fn secs(v: &serde_json::Value, key: &str) -> Result<Duration, String> {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("no {key} in {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A mode whose rounds all took T1 = 1 s on a full core and T2 = 1.25 s with `cores` cores.
    fn mode(key: &'static str, cores: &[f64]) -> Mode {
        let mut m = Mode::new(key, key);
        for c in cores {
            m.record(Round {
                t1: secs(1.0),
                t1_cpu: secs(1.0),
                t2: secs(1.25),
                t2_cpu: secs(1.25 * c),
            });
        }
        m
    }

    #[test]
    fn a_round_gives_its_speedup_and_the_cores_used() {
        let m = mode("own_gil", &[1.5, 1.9, 1.6]);
        assert!((m.speedup() - 1.6).abs() < 1e-9);
        assert!((m.speedups.median() - 1.6).abs() < 1e-9);
        assert!((m.cores.median() - 1.6).abs() < 1e-9);
        assert!((m.cores_t1.median() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_cores_given_come_from_multiprocessing_when_it_ran() {
        let mut p = Parallel {
            n: 1,
            modes: vec![mode("own_gil", &[1.9]), mode("legacy", &[1.0])],
            mp_skipped: None,
            calls: None,
        };
        assert_eq!(p.cores_given().map(|(_, k)| k), Some("own_gil"));
        p.modes.push(mode("multiprocessing", &[0.7, 0.5, 0.9]));
        let (cores, from) = p.cores_given().expect("multiprocessing ran");
        assert_eq!(from, "multiprocessing");
        assert!((cores - 0.7).abs() < 1e-9);
    }
}
