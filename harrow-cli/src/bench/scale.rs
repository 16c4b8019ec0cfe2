//! `harrow bench --scale`: how costs grow with the size of the tree. Per backend, for a few tree
//! sizes (10, 100 and the full size: 1,000 thread, 200 process, 100 subint actors), the root
//! starts that many idle actors one after the other, measures its memory, then cancels them one
//! after the other. Reported per actor: spawn time, teardown time, and memory (this process's
//! RSS delta / actors; for in-process actors also that delta without their threads' stacks, for
//! process actors the children's own proportional set size). Flat per-actor figures across the
//! sizes are the goal.

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
    /// For in-process actors, the same without what their threads' stacks added (KiB): what
    /// an idle actor costs beyond its stack.
    beyond_stacks_kib: Option<f64>,
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
    let stacks0 = stacks_rss_kib();
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
    let stacks1 = stacks_rss_kib();
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
        beyond_stacks_kib: if p.backend_in_process() {
            let stacks = delta(stacks0, stacks1);
            delta(rss0, rss1)
                .zip(stacks)
                .map(|(rss, stacks)| rss - stacks)
        } else {
            None
        },
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

/// The resident size (KiB) of this process's thread stacks: each mapping that holds the stack
/// pointer of one of its blocked threads (an idle actor's thread is blocked), counted once.
/// The stack pointers come from `/proc/self/task/*/syscall`, the mappings from
/// `/proc/self/smaps`. A thread running at that moment (the one reading) has no stack pointer
/// there and is left out, alike in two readings made by the same thread.
fn stacks_rss_kib() -> Option<f64> {
    let mut sps = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        if let Ok(s) = std::fs::read_to_string(task.path().join("syscall")) {
            sps.extend(stack_pointer(&s));
        }
    }
    // None rather than 0 where no stack pointer is readable (a kernel that does not show them).
    if sps.is_empty() {
        return None;
    }
    Some(rss_holding(
        &std::fs::read_to_string("/proc/self/smaps").ok()?,
        &sps,
    ))
}

/// The stack pointer in a `/proc/.../syscall` line: `nr args... sp pc` or `-1 sp pc` for a
/// blocked thread, `running` otherwise.
fn stack_pointer(syscall: &str) -> Option<u64> {
    let fields: Vec<&str> = syscall.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    u64::from_str_radix(fields[fields.len() - 2].strip_prefix("0x")?, 16).ok()
}

/// The summed `Rss:` (KiB) of the mappings in `smaps` that contain one of `addrs`.
fn rss_holding(smaps: &str, addrs: &[u64]) -> f64 {
    let mut total = 0.0;
    let mut holds = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            holds = match (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                (Ok(start), Ok(end)) => addrs.iter().any(|a| (start..end).contains(a)),
                _ => false,
            };
        } else if holds && first == "Rss:" {
            total += kib_field(line, "Rss:").unwrap_or(0.0);
        }
    }
    total
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
        "{:<8} {:>7} {:>16} {:>16} {:>22} {:>22} {:>26}",
        "backend",
        "actors",
        "spawn",
        "teardown",
        "RSS delta / actor",
        "beyond stacks / actor",
        "children's PSS / actor"
    );
    let kib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} KiB"));
    for r in rows {
        println!(
            "{:<8} {:>7} {:>13.3} ms {:>13.3} ms {:>22} {:>22} {:>26}",
            r.backend,
            r.actors,
            r.spawn_ms,
            r.teardown_ms,
            kib(r.rss_kib),
            kib(r.beyond_stacks_kib),
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
                "rss_beyond_stacks_kib_per_actor": r.beyond_stacks_kib.map(round),
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

    #[test]
    fn a_blocked_threads_stack_pointer_is_read() {
        let blocked = "202 0x7f0000001000 0x80 0x0 0x0 0x0 0x0 0x7f12345678f0 0x7f1234000000\n";
        assert_eq!(stack_pointer(blocked), Some(0x7f12_3456_78f0));
        assert_eq!(
            stack_pointer("-1 0x7ffd0000aa00 0x55aa00001234\n"),
            Some(0x7ffd_0000_aa00)
        );
        assert_eq!(stack_pointer("running\n"), None);
    }

    #[test]
    fn only_the_mappings_holding_an_address_count() {
        let smaps = "1000-3000 rw-p 00000000 00:00 0 \nSize:  8 kB\nRss:   8 kB\n\
                     3000-5000 rw-p 00000000 00:00 0 \nSize:  8 kB\nRss:   4 kB\n\
                     5000-9000 r--p 00000000 fe:00 12 /usr/bin/x\nSize: 16 kB\nRss:  16 kB\n";
        assert_eq!(rss_holding(smaps, &[0x2000]), 8.0);
        // Two addresses in one mapping count it once; an address in no mapping adds nothing.
        assert_eq!(rss_holding(smaps, &[0x1000, 0x2fff, 0x6000, 0xa000]), 24.0);
        assert_eq!(rss_holding(smaps, &[]), 0.0);
    }

    #[test]
    fn an_idle_threads_stack_is_found() {
        // A thread blocked on a channel has its stack pointer in /proc, in a mapping of ours
        // that holds the stack it touched, and the sum over all blocked threads includes it.
        // (Only this thread is looked at by itself: the other threads of a test binary block
        // and run as their tests go, so sums taken at two moments cannot be compared.)
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::path::PathBuf>();
        let t = std::thread::spawn(move || {
            let touched = [1u8; 64 * 1024];
            std::hint::black_box(&touched);
            // `/proc/thread-self` is this thread's task directory.
            let task = std::fs::read_link("/proc/thread-self").unwrap_or_default();
            ready_tx.send(task).ok();
            rx.recv().ok();
        });
        let task = ready_rx.recv().expect("the thread runs");
        let syscall = std::path::Path::new("/proc").join(task).join("syscall");
        // Bounded: the thread blocks in recv at once after its send.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut sp = None;
        while sp.is_none() && std::time::Instant::now() < give_up {
            std::thread::yield_now();
            sp = std::fs::read_to_string(&syscall)
                .ok()
                .and_then(|s| stack_pointer(&s));
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let all = stacks_rss_kib().unwrap_or(0.0);
        tx.send(()).ok();
        t.join().expect("the thread ends");
        let sp = sp.expect("the blocked thread's stack pointer is shown");
        let mine = rss_holding(&smaps, &[sp]);
        assert!(
            mine >= 64.0,
            "its mapping holds {mine} KiB, not the 64 KiB it touched"
        );
        assert!(all >= mine, "the sum {all} KiB misses its {mine} KiB");
    }
}
