//! Smoke tests of the `harrow` command: each runs the built binary as a child process with a
//! bound (killed on timeout) and checks its exit code and output.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

const HARROW: &str = env!("CARGO_BIN_EXE_harrow");

/// What a finished child left.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Collects a child's output; returns once it has closed both pipes (it exited) or `bound`
/// passed, in which case it is killed and this fails.
fn finish(mut child: Child, bound: Duration, what: &str) -> Result<Run> {
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            let _ = tx.send((i, s));
        }));
    }
    drop(tx);
    let mut out = [String::new(), String::new()];
    let deadline = std::time::Instant::now() + bound;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, s)) => out[i] = s,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what}: still running after {bound:?}; killed");
            }
        }
    }
    let status = child.wait()?;
    let [stdout, stderr] = out;
    Ok(Run {
        status,
        stdout,
        stderr,
    })
}

fn run(program: &Path, args: &[&str], bound: Duration) -> Result<Run> {
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    finish(child, bound, &format!("{} {args:?}", program.display()))
}

fn harrow(args: &[&str]) -> Result<Run> {
    run(Path::new(HARROW), args, Duration::from_secs(90))
}

/// `harrow ARGS`, which must succeed and print JSON: the run and the JSON.
fn harrow_json(args: &[&str]) -> Result<(Run, serde_json::Value)> {
    let r = harrow(args)?;
    ensure!(r.status.success(), "harrow {} failed: {r}", args.join(" "));
    let v = serde_json::from_str(&r.stdout).with_context(|| format!("not JSON: {r}"))?;
    Ok((r, v))
}

/// A temporary directory with `tiny.py`, removed on drop.
struct PyDir(PathBuf);

impl PyDir {
    fn new(tag: &str) -> Result<PyDir> {
        let dir = std::env::temp_dir().join(format!("harrow-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("tiny.py"),
            "import os, harrow\n\
             def double(x):\n    return x * 2\n\
             def describe(d):\n    return {'keys': sorted(d), 'n': len(d)}\n\
             def boom():\n    raise RuntimeError('nope')\n\
             def wait_forever():\n    os.write(1, b'ready\\n')\n    while True:\n        harrow.sleep(0.05)\n",
        )?;
        std::fs::write(
            dir.join("hostile.py"),
            "import os, harrow\n\
             def exit():\n    os._exit(0)\n\
             def fail_with(msg):\n    raise ValueError(msg)\n\
             def empty():\n    raise ValueError()\n\
             def group():\n    with harrow.open_nursery() as n:\n        n.run_in_actor('hostile:fail_with', 'from c', name='c', modules=['hostile'])\n\
             def floats():\n    return [float('nan'), float('inf'), -float('inf'), 1.5]\n\
             def use_asyncio():\n    import asyncio\n    return asyncio.run(asyncio.sleep(0, 'ran'))\n\
             async def scaled(x, *, by=1, label=''):\n    import asyncio\n    await asyncio.sleep(0)\n    return [x * by, label]\n",
        )?;
        std::fs::write(
            dir.join("broken.py"),
            "import no_such_module_for_harrow_cli\ndef f():\n    return 1\n",
        )?;
        Ok(PyDir(dir))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for PyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn demo_exits_0_and_shows_every_backend_and_a_summary() -> Result<()> {
    let r = harrow(&["demo"])?;
    ensure!(r.status.success(), "demo failed: {r}");
    let mut backends = vec!["thread", "process"];
    if harrow::subint_status().is_ok() {
        backends.push("subint");
        ensure!(
            r.stdout.contains("ZeroDivisionError"),
            "no Python error shown: {r}"
        );
    } else {
        ensure!(
            r.stdout.contains("skipped"),
            "no word on the missing subint backend: {r}"
        );
    }
    for b in backends {
        ensure!(
            r.stdout.lines().any(|l| l.contains(&format!(" {b} "))),
            "no {b} actor in the demo: {r}"
        );
    }
    for needle in ["summary", "killed", "leaked", "every outcome as expected"] {
        ensure!(
            r.stdout.contains(needle),
            "demo output lacks {needle:?}: {r}"
        );
    }
    Ok(())
}

#[test]
fn bench_scale_quick_json_has_a_row_per_backend() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--scale", "--quick", "--json"])?;
    let rows = v
        .pointer("/scale")
        .and_then(serde_json::Value::as_array)
        .with_context(|| format!("no scale rows: {r}"))?;
    let mut backends = vec!["thread", "process"];
    if harrow::subint_status().is_ok() {
        backends.push("subint");
    }
    for b in backends {
        let row = rows
            .iter()
            .find(|row| row["backend"] == b)
            .with_context(|| format!("no scale row for {b}: {r}"))?;
        ensure!(row["actors"] == 5, "--quick builds trees of 5: {r}");
        for field in ["spawn_ms_per_actor", "teardown_ms_per_actor"] {
            ensure!(
                row[field].as_f64().is_some_and(|ms| ms > 0.0),
                "{b}: no {field}: {r}"
            );
        }
        ensure!(
            row["rss_delta_kib_per_actor"].is_number(),
            "{b}: no RSS: {r}"
        );
        // In-process actors' memory without their stacks; process actors are in the children.
        ensure!(
            row["rss_beyond_stacks_kib_per_actor"].is_number() == (b != "process"),
            "{b}: RSS beyond the stacks: {r}"
        );
    }
    Ok(())
}

/// The CPU placement probe of a bench's JSON: the two CPUs and a round trip before and after
/// the run, each a time or null (not measured: fewer than two CPUs, or a machine too busy for
/// the probe's budget, which a test run beside other tests can be).
fn placement_is_reported(v: &serde_json::Value, out: &str) -> Result<()> {
    let p = &v["cpu_placement"];
    ensure!(p.is_object(), "no cpu_placement: {out}");
    let times = ["before_ns", "after_ns"].map(|at| &p[at]);
    for t in times {
        ensure!(
            t.is_null() || t.as_f64().is_some_and(|ns| ns > 0.0 && ns < 1e6),
            "{t}: {out}"
        );
    }
    match p["cpus"].as_array() {
        Some(cpus) => ensure!(cpus.len() == 2 && cpus[0] != cpus[1], "cpus: {out}"),
        None => ensure!(times.iter().all(|t| t.is_null()), "times, no CPUs: {out}"),
    }
    Ok(())
}

#[test]
fn bench_only_rpc_times_one_backend_and_names_unknown_ones() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--only", "rpc-thread", "--quick", "--json"])?;
    ensure!(v["backend"] == "thread" && v["round_trips"] == 2_000, "{r}");
    let p50 = v["p50_us"]
        .as_f64()
        .with_context(|| format!("no p50: {r}"))?;
    let p99 = v["p99_us"]
        .as_f64()
        .with_context(|| format!("no p99: {r}"))?;
    ensure!(p50 > 0.0 && p99 >= p50, "p50 {p50}, p99 {p99}: {r}");
    placement_is_reported(&v, &r.stdout)?;
    // A backend this build does not have is named, with the ones it has.
    if harrow::subint_status().is_err() {
        let r = harrow(&["bench", "--only", "rpc-subint", "--quick"])?;
        ensure!(!r.status.success(), "no subint here, yet it ran: {r}");
        ensure!(
            r.stderr.contains("thread"),
            "the known backends are not named: {r}"
        );
    }
    Ok(())
}

#[test]
fn bench_scale_and_only_together_are_a_usage_error() -> Result<()> {
    // Each picks what the run measures; together one would be ignored without a word.
    let r = harrow(&["bench", "--scale", "--only", "rpc-thread", "--quick"])?;
    ensure!(r.status.code() == Some(2), "{r}");
    ensure!(
        r.stderr.contains("--scale") && r.stderr.contains("--only"),
        "the conflicting flags are not named: {r}"
    );
    Ok(())
}

#[test]
fn bench_only_async_times_async_def_calls_of_a_python_backend() -> Result<()> {
    if harrow::subint_status().is_err() {
        let r = harrow(&["bench", "--only", "async-subint", "--quick"])?;
        ensure!(!r.status.success(), "no subint here, yet it ran: {r}");
        return Ok(());
    }
    let (r, v) = harrow_json(&["bench", "--only", "async-subint", "--quick", "--json"])?;
    ensure!(
        v["backend"] == "subint" && v["function"] == "async def" && v["round_trips"] == 2_000,
        "{r}"
    );
    let p50 = v["p50_us"].as_f64();
    let p99 = v["p99_us"].as_f64();
    ensure!(
        p50.is_some_and(|p50| p50 > 0.0 && p99.is_some_and(|p99| p99 >= p50)),
        "{r}"
    );
    ensure!(r.stderr.contains("async def round trips"), "{r}");
    placement_is_reported(&v, &r.stdout)?;
    // A backend with no async def functions is not a section.
    let r = harrow(&["bench", "--only", "async-thread", "--quick"])?;
    ensure!(!r.status.success(), "async-thread ran: {r}");
    Ok(())
}

#[test]
fn bench_only_fail_times_failing_calls_beside_succeeding_ones() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--only", "fail-thread", "--quick", "--json"])?;
    ensure!(v["backend"] == "thread" && v["calls_each"] == 2_000, "{r}");
    for side in ["failing", "succeeding"] {
        let p50 = v[side]["p50_us"].as_f64();
        let p99 = v[side]["p99_us"].as_f64();
        ensure!(
            p50.is_some_and(|p50| p50 > 0.0 && p99.is_some_and(|p99| p99 >= p50)),
            "{side}: {r}"
        );
    }
    ensure!(v["p50_ratio"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    placement_is_reported(&v, &r.stdout)?;
    Ok(())
}

#[test]
fn bench_only_spawn_times_spawns_beside_bare_ones() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--only", "spawn-thread", "--quick", "--json"])?;
    ensure!(v["backend"] == "thread" && v["spawns"] == 10, "{r}");
    for side in ["harrow", "baseline"] {
        let s = &v[side];
        let at = |q: &str| s[q].as_f64().filter(|x| *x > 0.0);
        let spread = (at("p10_ms"), at("p50_ms"), at("p90_ms"));
        ensure!(
            matches!(spread, (Some(p10), Some(p50), Some(p90)) if p10 <= p50 && p50 <= p90),
            "{side}: {r}"
        );
        ensure!(s["samples"]["n"] == 10, "{side}: {r}");
    }
    ensure!(v["p50_ratio"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    placement_is_reported(&v, &r.stdout)?;
    Ok(())
}

#[test]
fn bench_only_stream_echoes_through_one_backend() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--only", "stream-thread", "--quick", "--json"])?;
    ensure!(
        v["backend"] == "thread" && v["items_per_echo"] == 20_000 && v["echoes"] == 2,
        "{r}"
    );
    let rates = v["items_per_s_samples"]["samples"]
        .as_array()
        .with_context(|| format!("no rates: {r}"))?;
    ensure!(
        rates.len() == 2 && rates.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
        "{r}"
    );
    ensure!(v["items_per_s"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    placement_is_reported(&v, &r.stdout)?;
    // An unknown section is refused, with the known ones named.
    let r = harrow(&["bench", "--only", "stream-nosuch", "--quick"])?;
    ensure!(!r.status.success(), "an unknown section ran: {r}");
    ensure!(
        r.stderr.contains("stream-thread"),
        "the known sections are not named: {r}"
    );
    Ok(())
}

#[test]
fn bench_quick_json_has_the_documented_fields() -> Result<()> {
    let (r, v) = harrow_json(&["bench", "--quick", "--json"])?;
    let num = |path: &str| -> Result<f64> {
        v.pointer(path)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no number at {path} in {}", r.stdout))
    };
    placement_is_reported(&v, &r.stdout)?;
    let mut backends = vec!["thread", "process"];
    if harrow::subint_status().is_ok() {
        backends.push("subint");
    }
    for b in backends {
        num(&format!("/backends/{b}/spawn_to_first_reply/harrow_ms"))?;
        num(&format!("/backends/{b}/spawn_to_first_reply/baseline_ms"))?;
        num(&format!("/backends/{b}/rpc_round_trip/harrow_us"))?;
        num(&format!("/backends/{b}/rpc_round_trip/ratio_vs_baseline"))?;
        num(&format!("/backends/{b}/peer_round_trip/harrow_us"))?;
        num(&format!("/backends/{b}/peer_round_trip/baseline_us"))?;
        num(&format!(
            "/backends/{b}/stream_echo_throughput/harrow_items_per_s"
        ))?;
        num(&format!(
            "/backends/{b}/stream_echo_throughput/baseline_items_per_s"
        ))?;
        num(&format!("/backends/{b}/stuck_child_teardown/harrow_ms"))?;
        // Round trips carry the latency distribution of single calls; a failing call is timed
        // beside a succeeding one.
        for rt in ["rpc_round_trip", "failing_call_round_trip"] {
            let (p50, p99) = (
                num(&format!("/backends/{b}/{rt}/harrow_us_p50"))?,
                num(&format!("/backends/{b}/{rt}/harrow_us_p99"))?,
            );
            ensure!(p50 > 0.0 && p50 <= p99, "bad p50/p99 in {rt}: {}", r.stdout);
            num(&format!("/backends/{b}/{rt}/baseline_us_p99"))?;
            num(&format!("/backends/{b}/{rt}/p99_ratio_vs_baseline"))?;
        }
        num(&format!(
            "/backends/{b}/failing_call_round_trip/ratio_vs_baseline"
        ))?;
        // Every figure is a distribution: its samples' summary rides along, one sample per
        // repetition, the figure being their median.
        let reps = num("/repetitions")?;
        // The batch sizes ride along: the RPC row's (against a raw ping-pong) and the others'.
        ensure!(
            num("/rpc_round_trips_per_repetition")? >= 1.0
                && num("/round_trips_per_repetition")? >= 1.0,
            "no batch sizes: {}",
            r.stdout
        );
        ensure!(
            v.pointer("/rpc_batches_per_repetition")
                .is_some_and(serde_json::Value::is_string),
            "the RPC row's batches are not described: {}",
            r.stdout
        );
        for figure in [
            "rpc_round_trip/harrow_us",
            "rpc_round_trip/baseline_us",
            "stream_echo_throughput/harrow_items_per_s",
            "stuck_child_teardown/baseline_ms",
        ] {
            let at = format!("/backends/{b}/{figure}");
            let (median, min, max) = (
                num(&format!("{at}_samples/median"))?,
                num(&format!("{at}_samples/min"))?,
                num(&format!("{at}_samples/max"))?,
            );
            ensure!(
                num(&format!("{at}_samples/n"))? == reps && min <= median && median <= max,
                "bad samples at {at}: {}",
                r.stdout
            );
            ensure!(num(&at)? == median, "{at} is not the median: {}", r.stdout);
        }
        ensure!(
            v.pointer(&format!("/backends/{b}/stuck_child_teardown/outcome"))
                .is_some_and(serde_json::Value::is_string),
            "no teardown outcome for {b}"
        );
    }
    if harrow::subint_status().is_ok() {
        for mode in ["own_gil", "legacy", "multiprocessing"] {
            for field in ["t1_ms", "t2_ms", "speedup"] {
                num(&format!("/parallel_python/{mode}/{field}"))?;
            }
        }
        num("/python_call_round_trip/subint_call_us")?;
        num("/python_call_round_trip/multiprocessing_pool_apply_us_samples/median")?;
        for mode in ["own_gil", "legacy", "multiprocessing"] {
            num(&format!("/parallel_python/{mode}/cores_during_t2"))?;
            num(&format!("/parallel_python/{mode}/speedup_samples/min"))?;
        }
        let cores = num("/cores_during_parallel/cores")?;
        ensure!(
            cores > 0.0 && v.pointer("/low_cores_warning").is_some(),
            "{}",
            r.stdout
        );
    } else {
        ensure!(
            v.pointer("/backends/subint/unavailable").is_some(),
            "{}",
            r.stdout
        );
    }
    ensure!(!r.stderr.is_empty(), "no progress on stderr");
    Ok(())
}

#[test]
fn run_py_prints_each_actors_result_as_json() -> Result<()> {
    if let Err(why) = harrow::subint_status() {
        // Nothing to run without Python: check the refusal is clear instead.
        let r = harrow(&["run-py", "tiny:double", "--args", "1"])?;
        ensure!(
            r.status.code() == Some(2) && r.stderr.contains("unavailable"),
            "{why}: {r}"
        );
        return Ok(());
    }
    let dir = PyDir::new("ok")?;
    let r = harrow(&[
        "run-py",
        "tiny:double",
        "--actors",
        "3",
        "--args",
        "21",
        "--path",
        dir.path(),
    ])?;
    ensure!(r.status.success(), "{r}");
    for i in 0..3 {
        ensure!(r.stdout.contains(&format!("py-{i}: 42")), "{r}");
    }
    let r = harrow(&[
        "run-py",
        "tiny:describe",
        "--args",
        r#"{"b": [1, 2.5, null], "a": "x"}"#,
        "--path",
        dir.path(),
    ])?;
    ensure!(r.status.success(), "{r}");
    ensure!(
        r.stdout.trim() == r#"py-0: {"keys":["a","b"],"n":2}"#,
        "{r}"
    );
    Ok(())
}

#[test]
fn run_py_errors_are_clear() -> Result<()> {
    let dir = PyDir::new("err")?;
    let p = dir.path();
    let usage: [(&[&str], &str); 4] = [
        (&["run-py", "tiny", "--path", p], "MODULE:FUNCTION"),
        (
            &["run-py", "tiny:double", "--actors", "0", "--path", p],
            "--actors must be at least 1",
        ),
        (
            &["run-py", "tiny:double", "--args", "{bad", "--path", p],
            "bad --args JSON",
        ),
        (
            &["run-py", "tiny:double", "--path", "/nonexistent/dir"],
            "not a directory",
        ),
    ];
    for (args, needle) in usage {
        let r = harrow(args)?;
        ensure!(r.status.code() == Some(2), "{args:?}: {r}");
        ensure!(r.stderr.contains(needle), "{args:?}: no {needle:?} in {r}");
    }
    if harrow::subint_status().is_err() {
        return Ok(());
    }
    let failing: [(&[&str], &str); 3] = [
        (
            &["run-py", "nomodule:f", "--path", p],
            "ModuleNotFoundError",
        ),
        (
            &["run-py", "tiny:nofunction", "--path", p],
            "has no function",
        ),
        (&["run-py", "tiny:boom", "--path", p], "RuntimeError: nope"),
    ];
    for (args, needle) in failing {
        let r = harrow(args)?;
        ensure!(r.status.code() == Some(1), "{args:?}: {r}");
        ensure!(r.stdout.contains(needle), "{args:?}: no {needle:?} in {r}");
    }
    Ok(())
}

#[test]
fn run_py_hostile_input_is_reported_never_lost() -> Result<()> {
    let dir = PyDir::new("hostile")?;
    let p = dir.path();
    // An integer beyond 64 bits is refused, not read as a float.
    let r = harrow(&[
        "run-py",
        "tiny:double",
        "--args",
        "[1, 99999999999999999999999]",
        "--path",
        p,
    ])?;
    ensure!(r.status.code() == Some(2), "{r}");
    ensure!(r.stderr.contains("does not fit in 64 signed bits"), "{r}");
    if harrow::subint_status().is_err() {
        return Ok(());
    }
    // os._exit() ends that actor only (the command goes on), which its nursery reports as a
    // crash naming the call.
    let r = harrow(&["run-py", "hostile:exit", "--actors", "2", "--path", p])?;
    ensure!(r.status.code() == Some(1), "{r}");
    ensure!(r.stderr.contains("crashed"), "{r}");
    ensure!(
        r.stderr.contains("os._exit(0) was called in hostile:exit"),
        "{r}"
    );
    // A nursery's failure shows its members, each with its source; an empty message shows the
    // type alone.
    let r = harrow(&["run-py", "hostile:group", "--path", p])?;
    ensure!(r.status.code() == Some(1), "{r}");
    ensure!(
        r.stdout.contains("py-0: error: ErrorGroup: 1 failure"),
        "{r}"
    );
    ensure!(r.stdout.contains("+-- 1: ValueError: from c (in c["), "{r}");
    let r = harrow(&["run-py", "hostile:empty", "--path", p])?;
    ensure!(r.stdout.trim_end() == "py-0: error: ValueError", "{r}");
    // Non-finite floats are explicit.
    let r = harrow(&["run-py", "hostile:floats", "--path", p])?;
    ensure!(r.status.success(), "{r}");
    ensure!(
        r.stdout.trim() == "py-0: [NaN,Infinity,-Infinity,1.5]",
        "{r}"
    );
    // A module that is found but whose own import fails is not reported as missing.
    let r = harrow(&["run-py", "broken:f", "--path", p])?;
    ensure!(r.status.code() == Some(1), "{r}");
    ensure!(r.stdout.contains("no_such_module_for_harrow_cli"), "{r}");
    ensure!(
        r.stdout.contains("while importing module \"broken\""),
        "{r}"
    );
    ensure!(!r.stderr.contains("was looked for"), "{r}");
    // Keyword arguments, to an async function.
    let r = harrow(&[
        "run-py",
        "hostile:scaled",
        "--args",
        "3",
        "--kwargs",
        r#"{"by": 2, "label": "x"}"#,
        "--path",
        p,
    ])?;
    ensure!(r.status.success(), "{r}");
    ensure!(r.stdout.trim() == r#"py-0: [6,"x"]"#, "{r}");
    let r = harrow(&["run-py", "hostile:scaled", "--kwargs", "[1]", "--path", p])?;
    ensure!(r.status.code() == Some(2), "{r}");
    ensure!(r.stderr.contains("--kwargs must be a JSON object"), "{r}");
    // Actors that used asyncio end quietly.
    let r = harrow(&[
        "run-py",
        "hostile:use_asyncio",
        "--actors",
        "3",
        "--path",
        p,
    ])?;
    ensure!(r.status.success(), "{r}");
    ensure!(r.stdout.contains("py-2: \"ran\""), "{r}");
    ensure!(!r.stderr.contains("Exception ignored"), "{r}");
    Ok(())
}

#[test]
fn run_py_ctrl_c_cancels_and_exits_130() -> Result<()> {
    if harrow::subint_status().is_err() {
        return Ok(());
    }
    let dir = PyDir::new("sigint")?;
    let mut child = Command::new(HARROW)
        .args([
            "run-py",
            "tiny:wait_forever",
            "--actors",
            "2",
            "--path",
            dir.path(),
        ])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Wait (bounded) until both actors run the function: each writes `ready` (one write(2)
    // each, so that the two lines cannot interleave).
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = tx.send(());
            } else {
                rest.push_str(&line);
                rest.push('\n');
            }
        }
        rest
    });
    for _ in 0..2 {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the actors did not start within 60 s");
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    ensure!(kill.success(), "kill -INT failed");
    let r = finish(child, Duration::from_secs(30), "run-py after SIGINT")?;
    let _ = reader.join();
    ensure!(r.status.code() == Some(130), "{r}");
    ensure!(r.stderr.contains("interrupted"), "{r}");
    Ok(())
}

/// `harrow demo --remote ssh://...` adds a remote worker (and a stuck remote actor, killed in
/// the teardown) to the live tree, over ssh to a private sshd on 127.0.0.1.
#[cfg(feature = "remote")]
#[test]
fn demo_remote_over_ssh_adds_a_remote_actor() -> Result<()> {
    let sshd = match harrow_testkit::sshd::Sshd::shared() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED demo_remote_over_ssh_adds_a_remote_actor: no sshd: {why}");
            return Ok(());
        }
    };
    let url = format!("ssh://{}@{}:{}", sshd.user(), sshd.host(), sshd.port());
    let mut args = vec!["demo".to_owned(), "--remote".to_owned(), url];
    args.push("--ssh-option".into());
    args.push(format!("IdentityFile={}", sshd.identity().display()));
    args.push("--ssh-option".into());
    args.push("IdentitiesOnly=yes".into());
    for o in sshd.ssh_options() {
        args.push("--ssh-option".into());
        args.push(o);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = harrow(&args)?;
    ensure!(r.status.success(), "demo --remote failed: {r}");
    for needle in ["worker-remote", "stuck-remote", "every outcome as expected"] {
        ensure!(
            r.stdout.contains(needle),
            "demo output lacks {needle:?}: {r}"
        );
    }
    ensure!(
        r.stdout.lines().any(|l| l.contains(" remote ")),
        "no remote actor in the demo: {r}"
    );
    Ok(())
}

/// Flags that only mean something beside another are refused alone, naming it; a negative
/// number is an argument, not an unknown flag.
#[test]
fn flags_need_what_they_qualify_and_negative_args_are_values() -> Result<()> {
    for flag in [
        &["demo", "--upload"][..],
        &["demo", "--remote-path", "/x"],
        &["demo", "--ssh-option", "Port=22"],
    ] {
        let r = harrow(flag)?;
        ensure!(r.status.code() == Some(2), "{r}");
        ensure!(r.stderr.contains("--remote"), "{r}");
    }
    if harrow::subint_status().is_err() {
        return Ok(());
    }
    let dir = PyDir::new("negative")?;
    let r = harrow(&[
        "run-py",
        "tiny:double",
        "--args",
        "-5",
        "--path",
        dir.path(),
    ])?;
    ensure!(r.status.success(), "{r}");
    ensure!(r.stdout.trim_end() == "py-0: -10", "{r}");
    Ok(())
}
