//! `harrow bench --scale`: how costs grow with the size of the tree. Per backend, for a few tree
//! sizes (10, 100 and the full size: 1,000 thread, 200 process, 100 subint actors), the root
//! starts that many idle actors one after the other, measures its memory, then cancels them one
//! after the other. Reported per actor: spawn time, teardown time, and memory (this process's
//! RSS delta / actors; for process actors also the children's own proportional set size).
//! Flat per-actor figures across the sizes are the goal.

use std::time::{Duration, Instant};

use harrow::{ActorNursery, Value};
use serde_json::json;

use super::Progress;
use super::backend::{Plan, start};
use super::stats::round;

/// One backend at one tree size.
pub(super) struct ScaleRow {
    backend: &'static str,
    actors: usize,
    spawn_ms: f64,
    teardown_ms: f64,
    /// This process's RSS after the spawns minus before, per actor (KiB); `None` where
    /// `/proc` is unreadable.
    rss_kib: Option<f64>,
    /// The children's proportional set size per actor (KiB), for backends whose actors are
    /// processes.
    child_pss_kib: Option<f64>,
}

/// The tree sizes of one backend (`quick`: only a tiny one).
fn sizes(backend: &str, quick: bool) -> Vec<usize> {
    if quick {
        return vec![5];
    }
    match backend {
        "thread" => vec![10, 100, 1_000],
        "process" => vec![10, 100, 200],
        _ => vec![10, 100],
    }
}

/// Every backend's rows, in one actor tree (the root's nursery `n`).
pub(super) async fn measure(
    n: &ActorNursery,
    plans: &[Plan],
    quick: bool,
    prog: &Progress,
) -> anyhow::Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    for p in plans {
        for size in sizes(p.name, quick) {
            prog.step(&format!(
                "{}: scale: start {size} idle actors, then cancel them",
                p.name
            ));
            rows.push(one(n, p, size).await?);
        }
    }
    Ok(rows)
}

async fn one(n: &ActorNursery, p: &Plan, size: usize) -> anyhow::Result<ScaleRow> {
    let rss0 = rss_kib();
    let pss0 = children_pss_kib();
    let mut children = Vec::with_capacity(size);
    let t = Instant::now();
    for i in 0..size {
        children.push(start(n, p, format!("{}-scale{size}-{i}", p.name)).await?);
    }
    let spawn = t.elapsed();
    // Every actor answers (it is up and serving), then all sit idle while memory is read.
    for c in &children {
        c.run(&p.echo, Value::Null).await?;
    }
    crate::util::pause(Duration::from_millis(200)).await;
    let rss1 = rss_kib();
    let pss1 = children_pss_kib();
    let t = Instant::now();
    for c in &children {
        c.cancel().await;
    }
    let teardown = t.elapsed();
    drop(children);
    let per = |d: Duration| d.as_secs_f64() * 1e3 / size as f64;
    let delta = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / size as f64);
    Ok(ScaleRow {
        backend: p.name,
        actors: size,
        spawn_ms: per(spawn),
        teardown_ms: per(teardown),
        rss_kib: delta(rss0, rss1),
        child_pss_kib: if p.backend_in_process() {
            None
        } else {
            delta(pss0, pss1)
        },
    })
}

/// This process's resident set size (KiB), from `/proc/self/status`.
fn rss_kib() -> Option<f64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// The summed proportional set size (KiB) of this process's child processes (shared pages are
/// split between the processes sharing them), from `/proc`.
fn children_pss_kib() -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        let Ok(kids) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in kids.split_whitespace() {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
                total += kib_field(&s, "Pss:").unwrap_or(0.0);
            }
        }
    }
    Some(total)
}

fn kib_field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn print(rows: &[ScaleRow]) {
    println!(
        "scale: N idle actors started one after the other under the root, then cancelled one after the other; per actor:"
    );
    println!(
        "{:<8} {:>7} {:>16} {:>16} {:>22} {:>26}",
        "backend", "actors", "spawn", "teardown", "RSS delta / actor", "children's PSS / actor"
    );
    let kib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} KiB"));
    for r in rows {
        println!(
            "{:<8} {:>7} {:>13.3} ms {:>13.3} ms {:>22} {:>26}",
            r.backend,
            r.actors,
            r.spawn_ms,
            r.teardown_ms,
            kib(r.rss_kib),
            kib(r.child_pss_kib)
        );
    }
}

pub(super) fn to_json(rows: &[ScaleRow]) -> serde_json::Value {
    json!(
        rows.iter()
            .map(|r| json!({
                "backend": r.backend,
                "actors": r.actors,
                "spawn_ms_per_actor": round(r.spawn_ms),
                "teardown_ms_per_actor": round(r.teardown_ms),
                "rss_delta_kib_per_actor": r.rss_kib.map(round),
                "children_pss_kib_per_actor": r.child_pss_kib.map(round),
            }))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_is_read_in_kib() {
        let status = "Name:\tharrow\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(12345.0));
        assert_eq!(kib_field(status, "Pss:"), None);
        assert!(rss_kib().is_some_and(|v| v > 0.0));
    }
}
