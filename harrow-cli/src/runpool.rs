//! `harrow run-py MODULE:FUNCTION --actors N --inputs FILE|-`: maps a Python function over the
//! items of FILE (or standard input), one JSON value a line, on a pool of N Python actors (subint, or process with `--backend process`). Each
//! result is printed as it comes, as one JSON line
//! (`{"index": I, "ok": VALUE}` or `{"index": I, "error": {"type": T, "message": M}}`, a group
//! with its members under `"errors"`, each with its `"source"` too), in input
//! order unless `--unordered`; progress goes to stderr. `--batch N` sends N items per call
//! through the batch runner every Python actor serves (`harrow:run_batch`). Ctrl-C cancels the
//! pool (exit code 130).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harrow::{FnPath, Value};

use crate::util::human;

/// The items, read and checked before anything starts: a bad line is a usage error naming it.
pub(crate) fn read_inputs(source: &str) -> Result<Vec<Value>, String> {
    let reader: Box<dyn BufRead> = if source == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(PathBuf::from(source))
            .map_err(|e| format!("--inputs {source}: {e}"))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut items = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("--inputs {source}: line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("--inputs {source}: line {}: bad JSON: {e}", n + 1))?;
        crate::json::check_int_literals(&line)
            .map_err(|e| format!("--inputs {source}: line {}: {e}", n + 1))?;
        items.push(
            crate::json::from_json(&j)
                .map_err(|e| format!("--inputs {source}: line {}: {e}", n + 1))?,
        );
    }
    Ok(items)
}

/// One result as a JSON line.
fn result_line(index: u64, r: &harrow::PoolResult) -> String {
    match r {
        Ok(v) => format!(
            "{{\"index\":{index},\"ok\":{}}}",
            crate::json::to_json_text(v)
        ),
        Err(e) => {
            let error = match e.remote_error() {
                Some(remote) => {
                    // Which worker raised it is left out at the top, so that a run's lines
                    // do not depend on which worker took the item.
                    let mut j = error_json(remote);
                    if let Some(o) = j.as_object_mut() {
                        o.remove("source");
                    }
                    j
                }
                None => serde_json::json!({"type": "harrow.PoolError", "message": e.to_string()}),
            };
            format!("{{\"index\":{index},\"error\":{error}}}")
        }
    }
}

/// A remote error as JSON: its type, message and source, and a group's members (`errors`),
/// each the same way (members of a group raised in a worker: their sources tell them apart).
fn error_json(e: &harrow::RemoteError) -> serde_json::Value {
    let mut j = serde_json::json!({
        "type": e.type_name,
        "message": e.message,
        "source": e.source.to_string(),
    });
    if !e.children.is_empty() {
        j["errors"] = e.children.iter().map(error_json).collect();
    }
    j
}

/// Runs the pool; returns the exit code (1 if any item failed).
#[cfg(feature = "subint")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pool(
    backend: std::sync::Arc<dyn harrow::SpawnBackend>,
    venv: Option<&std::path::Path>,
    func: &FnPath,
    actors: usize,
    kwargs: &[(String, Value)],
    paths: &[PathBuf],
    inputs: Vec<Value>,
    ordered: bool,
    batch: usize,
) -> i32 {
    use futures_lite::StreamExt;
    use harrow::{ActorPool, ActorSpec, PoolConfig, RootConfig, run_root};

    let total = inputs.len();
    let module = func.module().to_owned();
    let func = func.to_string();
    let t0 = Instant::now();
    let items: Vec<Value> = inputs
        .into_iter()
        .map(|v| {
            kwargs
                .iter()
                .fold(harrow::PyArgs::new(v), |a, (k, v)| {
                    a.kwarg(k.clone(), v.clone())
                })
                .into_value()
        })
        .collect();
    let result = run_root(RootConfig::default(), |n| {
        let (module, func) = (&module, &func);
        async move {
            let mut config = harrow::InterpConfig::new("py").expose(module.as_str());
            for p in paths {
                config = config.sys_path(p);
            }
            if let Some(v) = venv {
                config = config.venv(v);
            }
            let spec = ActorSpec::new().params(config.to_params());
            let pool =
                ActorPool::start(&n, backend.clone(), spec, PoolConfig::new("py", actors)).await?;
            eprintln!("{actors} actor(s) up in {}", human(t0.elapsed()));
            let mut results =
                pool.map_batched(func, items, ordered, crate::pymod::POOL_RUNNER, batch);
            let (mut done, mut failed) = (0usize, 0usize);
            let mut last_progress = Instant::now();
            let stdout = std::io::stdout();
            while let Some((i, r)) = results.next().await {
                done += 1;
                failed += usize::from(r.is_err());
                let mut out = stdout.lock();
                // A closed stdout (a pipe to `head`) ends the run as a failure, not a panic.
                writeln!(out, "{}", result_line(i, &r))
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the results: {e}"))?;
                if last_progress.elapsed() >= Duration::from_millis(500) || done == total {
                    last_progress = Instant::now();
                    let secs = t0.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "[run-py] {done}/{total} done, {failed} failed, {:.0} items/s",
                        done as f64 / secs
                    );
                }
            }
            pool.cancel().await;
            Ok(failed)
        }
    });
    match result {
        Ok(failed) => {
            eprintln!(
                "{total} item(s) on {actors} actor(s) in {}; {failed} failed",
                human(t0.elapsed())
            );
            i32::from(failed > 0)
        }
        Err(e) if e.is_interrupted() => {
            eprintln!(
                "harrow run-py: interrupted (SIGINT): the pool was cancelled ({} after start)",
                human(t0.elapsed())
            );
            130
        }
        Err(e) => {
            eprintln!("harrow run-py: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_json() {
        let ok = result_line(3, &Ok(Value::Int(9)));
        let j: serde_json::Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(j["index"], 3);
        assert_eq!(j["ok"], 9);
        let err = result_line(4, &Err(harrow::PoolError::Cancelled));
        let j: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(j["index"], 4);
        assert_eq!(j["error"]["type"], "harrow.PoolError");
        // A group's members, each with its source.
        let actor = |name: &str| harrow::ActorId::new(name);
        let mut group = harrow::RemoteError::new(
            harrow::ErrorKind::Group,
            "ErrorGroup",
            "2 failures",
            actor("w"),
        );
        for name in ["c", "d"] {
            group.children.push(harrow::RemoteError::new(
                harrow::ErrorKind::Raised,
                "ValueError",
                format!("from {name}"),
                actor(name),
            ));
        }
        let err = result_line(
            5,
            &Err(harrow::PoolError::Call(harrow::portal::Error::from(group))),
        );
        let j: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(j["error"]["type"], "ErrorGroup");
        assert!(j["error"].get("source").is_none(), "{j}");
        assert_eq!(j["error"]["errors"][1]["message"], "from d");
        assert!(
            j["error"]["errors"][1]["source"]
                .as_str()
                .unwrap()
                .starts_with("d[")
        );
    }

    #[test]
    fn bad_input_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("harrow-runpool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inputs.jsonl");
        std::fs::write(&file, "1\n\n[2, 3]\n{oops\n").unwrap();
        let err = read_inputs(file.to_str().unwrap()).unwrap_err();
        assert!(err.contains("line 4"), "{err}");
        std::fs::write(&file, "1\n\n\"x\"\n").unwrap();
        let items = read_inputs(file.to_str().unwrap()).unwrap();
        assert_eq!(items, vec![Value::Int(1), Value::from("x")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
