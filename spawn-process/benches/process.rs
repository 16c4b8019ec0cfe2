//! Process backend benchmarks, each beside a baseline measured in the same run:
//!
//! - spawn-to-first-reply (start a process actor, one call) vs a bare spawn of this same binary
//!   that exits at once — target within 3x; then the same with 1 GiB more memory in the parent
//!   (a spawn's cost should not grow with the parent's memory);
//! - RPC round trip to a process actor vs a raw socketpair ping-pong between two processes —
//!   target within 2x;
//! - the same RPC round trip vs Python's `multiprocessing` `Pool.apply` — target >= 5x faster.
//!
//! `cargo bench -p harrow-spawn-process`. This binary is its own child: `main` first hands
//! control to the runtime in a child actor (`maybe_run_child`) — exactly what a user program does.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::FnRegistry;
use harrow_runtime_core::{ActorSpec, RootConfig, run_root};
use harrow_spawn_process::{ProcessBackend, maybe_run_child};

const MODE_ENV: &str = "HARROW_BENCH_MODE";
const PONG_FD_ENV: &str = "HARROW_BENCH_PONG_FD";

const SPAWNS: usize = 30;
const BATCHES: usize = 9;
const PER_BATCH: usize = 2000;

fn registry() -> Arc<FnRegistry> {
    let mut reg = FnRegistry::new();
    reg.unary("bench:echo", |v| async move { Ok(v) })
        .expect("a valid path");
    Arc::new(reg)
}

fn main() -> anyhow::Result<()> {
    match std::env::var(MODE_ENV).as_deref() {
        Ok("bare") => return Ok(()),
        Ok("pong") => return pong(),
        _ => {}
    }
    maybe_run_child(registry);
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` / nextest listing: nothing to list.
        return Ok(());
    }

    spawn_line("spawn-to-first-reply:", " (target <= 3x)")?;
    // The same with the parent holding (and having touched) more memory: a spawn that forked
    // the parent would copy its page tables, and grow with it.
    let ballast = ballast(BALLAST_MIB);
    spawn_line(
        &format!("spawn-to-first-reply, parent holding {BALLAST_MIB} MiB more:"),
        "",
    )?;
    drop(ballast);

    let raw = median(raw_ping_pong()?);
    let rpc = median(rpc_round_trips()?);
    println!(
        "RPC round trip:       harrow {:>8.2} us | raw socketpair ping-pong {:>8.2} us | ratio {:.2}x (target <= 2x)",
        us(rpc),
        us(raw),
        rpc.as_secs_f64() / raw.as_secs_f64()
    );
    match python_pool_apply() {
        Ok(py) => println!(
            "RPC round trip:       harrow {:>8.2} us | python multiprocessing Pool.apply {:>8.2} us | harrow {:.1}x faster (target >= 5x)",
            us(rpc),
            us(py),
            py.as_secs_f64() / rpc.as_secs_f64()
        ),
        Err(e) => println!("python multiprocessing baseline skipped: {e}"),
    }
    Ok(())
}

/// Measures spawn-to-first-reply beside bare spawns and prints it as a line `label ...`.
fn spawn_line(label: &str, target: &str) -> anyhow::Result<()> {
    let bare = median(bare_spawns()?);
    let first_reply = median(spawn_to_first_reply()?);
    println!(
        "{label} harrow {:>8.2} ms | bare spawn+exit {:>8.2} ms | ratio {:.2}x{target}",
        ms(first_reply),
        ms(bare),
        first_reply.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

/// How much memory the second spawn-to-first-reply line holds in the parent.
const BALLAST_MIB: usize = 1024;

/// `mib` MiB allocated and written to (every page present).
fn ballast(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spawning this binary in a mode that exits at once, and waiting for it.
fn bare_spawns() -> anyhow::Result<Vec<Duration>> {
    let exe = std::env::current_exe()?;
    let mut out = Vec::new();
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let status = Command::new(&exe)
            .env(MODE_ENV, "bare")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        out.push(t.elapsed());
        anyhow::ensure!(status.success(), "bare child failed: {status}");
    }
    Ok(out)
}

/// `start_actor` plus one call, per actor (the teardown is not timed).
fn spawn_to_first_reply() -> anyhow::Result<Vec<Duration>> {
    run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let backend = ProcessBackend::shared();
        let mut out = Vec::new();
        for i in 0..SPAWNS {
            let t = Instant::now();
            let child = n
                .start_actor(&format!("bench-{i}"), backend.clone(), ActorSpec::new())
                .await?;
            let v = child.run("bench:echo", Value::Int(1)).await?;
            out.push(t.elapsed());
            assert_eq!(v, Value::Int(1));
            child.cancel().await;
        }
        Ok(out)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Per-round-trip time of each batch of sequential calls to one process actor.
fn rpc_round_trips() -> anyhow::Result<Vec<Duration>> {
    run_root(RootConfig::default().handle_sigint(false), |n| async move {
        let child = n
            .start_actor("echo", ProcessBackend::shared(), ActorSpec::new())
            .await?;
        for i in 0..500 {
            child.run("bench:echo", Value::Int(i)).await?;
        }
        let mut out = Vec::new();
        for _ in 0..BATCHES {
            let t = Instant::now();
            for i in 0..PER_BATCH as i64 {
                child.run("bench:echo", Value::Int(i)).await?;
            }
            out.push(t.elapsed() / PER_BATCH as u32);
        }
        Ok(out)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Per-round-trip time of each batch of 8-byte ping-pongs with a child process over a
/// socketpair (blocking reads and writes: the floor any IPC between two processes pays).
fn raw_ping_pong() -> anyhow::Result<Vec<Duration>> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    // The child's end without close-on-exec, so that the child inherits it; nothing else spawns
    // processes in this benchmark meanwhile.
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::empty(),
        None,
    )?;
    rustix::io::fcntl_setfd(&mine, rustix::io::FdFlags::CLOEXEC)?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(MODE_ENV, "pong")
        .env(PONG_FD_ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()?;
    drop(theirs);
    let mut sock = UnixStream::from(mine);
    let mut buf = [0u8; 8];
    let mut round_trip = |i: u64| -> std::io::Result<()> {
        sock.write_all(&i.to_le_bytes())?;
        sock.read_exact(&mut buf)
    };
    for i in 0..500 {
        round_trip(i)?;
    }
    let mut out = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for i in 0..PER_BATCH as u64 {
            round_trip(i)?;
        }
        out.push(t.elapsed() / PER_BATCH as u32);
    }
    drop(sock);
    child.wait()?;
    Ok(out)
}

/// The ping-pong peer: echoes 8-byte messages until EOF.
#[allow(unsafe_code)]
fn pong() -> anyhow::Result<()> {
    let fd: i32 = std::env::var(PONG_FD_ENV)?.parse()?;
    // SAFETY: the parent passed this open descriptor for our exclusive use (see raw_ping_pong).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sock = UnixStream::from(owned);
    let mut buf = [0u8; 8];
    while sock.read_exact(&mut buf).is_ok() {
        sock.write_all(&buf)?;
    }
    Ok(())
}

const PY_SCRIPT: &str = r#"
import multiprocessing as mp, sys, time

def echo(x):
    return x

if __name__ == "__main__":
    batches, per_batch = int(sys.argv[1]), int(sys.argv[2])
    with mp.Pool(1) as pool:
        for i in range(500):
            pool.apply(echo, (i,))
        times = []
        for _ in range(batches):
            t = time.perf_counter()
            for i in range(per_batch):
                pool.apply(echo, (i,))
            times.append((time.perf_counter() - t) / per_batch)
    times.sort()
    print(times[len(times) // 2])
"#;

/// Median per-call time of `Pool.apply` round trips to a one-process pool.
fn python_pool_apply() -> anyhow::Result<Duration> {
    let python = std::env::var("HARROW_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = std::env::temp_dir().join(format!("harrow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("pool_apply.py");
    std::fs::write(&script, PY_SCRIPT)?;
    let out = Command::new(&python)
        .arg(&script)
        .arg(BATCHES.to_string())
        .arg((PER_BATCH / 2).to_string())
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{python} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(secs))
}
