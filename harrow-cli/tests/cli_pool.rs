//! `harrow run-py --inputs`: a Python function mapped over input lines on a pool of subint
//! actors, results as JSON lines. Runs the built binary as a child process with a bound.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

const HARROW: &str = env!("CARGO_BIN_EXE_harrow");

/// Runs `harrow args` with `stdin` as its input; killed (and failed) after 90 s.
fn harrow(args: &[&str], stdin: &str) -> Result<(Option<i32>, String, String)> {
    let mut child = Command::new(HARROW)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting harrow")?;
    let mut input = child.stdin.take().context("stdin")?;
    // A run that rejects its arguments exits before it reads its input: the write then meets a
    // closed pipe, which is that run's outcome, not the test's failure (the exit code says).
    match input.write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    drop(input);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => {
            let out = out?;
            Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
        Err(_) => {
            // The waiting thread owns the child: end it by its pid so the thread returns.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("harrow {args:?}: still running after 90 s; killed")
        }
    }
}

/// A temporary directory with `pooled.py`, removed on drop.
struct PyDir(std::path::PathBuf);

impl PyDir {
    fn new(tag: &str) -> Result<PyDir> {
        let dir =
            std::env::temp_dir().join(format!("harrow-cli-pool-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("pooled.py"),
            "def square(x, *, plus=0):\n    if x == 7:\n        raise ValueError('seven')\n    return x * x + plus\n",
        )?;
        Ok(PyDir(dir))
    }
}

impl Drop for PyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_py_maps_inputs_on_a_pool_in_order() -> Result<()> {
    if harrow::subint_status().is_err() {
        return Ok(()); // run_py_errors_are_clear (tests/cli.rs) covers a build without Python
    }
    let dir = PyDir::new("map")?;
    let p = dir.0.to_str().unwrap_or_default();
    let input: String = (0..30).map(|i| format!("{i}\n")).collect();
    let args = [
        "run-py",
        "pooled:square",
        "--actors",
        "3",
        "--inputs",
        "-",
        "--kwargs",
        r#"{"plus": 1}"#,
        "--path",
        p,
    ];
    let (code, out, err) = harrow(&args, &input)?;
    ensure!(
        code == Some(1),
        "one item fails, so exit 1: {code:?}\n{out}\n{err}"
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("every stdout line is JSON:\n{out}"))?;
    ensure!(lines.len() == 30, "{out}");
    for (i, l) in lines.iter().enumerate() {
        ensure!(l["index"] == i, "in input order: {out}");
        if i == 7 {
            ensure!(l["error"]["type"] == "ValueError", "{l}");
            ensure!(l["error"]["message"] == "seven", "{l}");
        } else {
            ensure!(l["ok"] == i * i + 1, "{l}");
        }
    }
    ensure!(
        err.contains("30/30 done, 1 failed"),
        "progress on stderr: {err}"
    );

    // Batched: the same lines.
    let batched = [
        "run-py",
        "pooled:square",
        "--actors",
        "3",
        "--inputs",
        "-",
        "--kwargs",
        r#"{"plus": 1}"#,
        "--batch",
        "4",
        "--path",
        p,
    ];
    let (code2, out2, err2) = harrow(&batched, &input)?;
    ensure!(
        code2 == Some(1) && out2 == out,
        "batched:\n{out2}\n{err2}\nunbatched:\n{out}"
    );

    // Unordered: every index once.
    let args = [
        "run-py",
        "pooled:square",
        "--actors",
        "2",
        "--inputs",
        "-",
        "--unordered",
        "--path",
        p,
    ];
    let (code, out, err) = harrow(&args, "1\n2\n3\n")?;
    ensure!(code == Some(0), "{out}\n{err}");
    let mut idx: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["index"].as_u64()))
        .collect::<Result<Option<Vec<_>>, _>>()?
        .context("every line has an index")?;
    idx.sort_unstable();
    ensure!(idx == [0, 1, 2], "{out}");
    Ok(())
}

#[test]
fn run_py_pool_bad_input_is_a_usage_error() -> Result<()> {
    let dir = PyDir::new("bad")?;
    let p = dir.0.to_str().unwrap_or_default();
    let (code, _, err) = harrow(
        &["run-py", "pooled:square", "--inputs", "-", "--path", p],
        "1\n{oops\n",
    )?;
    ensure!(code == Some(2) && err.contains("line 2"), "{err}");
    let (code, _, err) = harrow(
        &[
            "run-py",
            "pooled:square",
            "--inputs",
            "-",
            "--args",
            "1",
            "--path",
            p,
        ],
        "1\n",
    )?;
    ensure!(code == Some(2) && err.contains("exclude"), "{err}");
    // The same rejection with more input than a pipe holds: harrow exits without reading it.
    let big = "1\n".repeat(1 << 20);
    let (code, _, err) = harrow(
        &[
            "run-py",
            "pooled:square",
            "--inputs",
            "-",
            "--args",
            "1",
            "--path",
            p,
        ],
        &big,
    )?;
    ensure!(code == Some(2) && err.contains("exclude"), "{err}");
    let (code, _, err) = harrow(
        &["run-py", "pooled:square", "--inputs", "/no/such/file"],
        "",
    )?;
    ensure!(code == Some(2) && err.contains("/no/such/file"), "{err}");
    Ok(())
}
