//! Ping-pong round trips of a small `Msg` over `mem` (between two threads) and over `unix`
//! (between two processes, as the process backend uses it; and, for reference, between two
//! threads of one process), each beside its raw baseline measured in the same run: a bare flume
//! pair and a bare blocking Unix socket with fixed 64-byte frames. Prints median round-trip times
//! and the ratios.
//!
//! Run with `cargo bench -p harrow-ipc`. Targets: mem <= 1.5x raw flume, unix <= 2x raw socketpair.
//! The four setups run interleaved, sample by sample, so that load from other processes hits
//! each about equally; ratios are the medians of per-sample ratios.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use harrow_ipc::{Channel, Cid, Msg, Value, mem, unix};

const ROUNDS: u32 = 1_000;
const SAMPLES: usize = 31;

fn msg() -> Msg {
    Msg::Yield {
        cid: Cid(42),
        value: Value::Int(7),
    }
}

/// One ping-pong setup: `sample` times `ROUNDS` round trips; `stop` ends the echo thread.
struct Setup {
    name: &'static str,
    sample: Box<dyn FnMut() -> Duration>,
    stop: Box<dyn FnOnce()>,
}

fn timed(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    start.elapsed() / ROUNDS
}

fn raw_flume() -> Setup {
    let (ping_tx, ping_rx) = flume::unbounded::<Msg>();
    let (pong_tx, pong_rx) = flume::unbounded::<Msg>();
    let echo = thread::spawn(move || {
        while let Ok(m) = ping_rx.recv() {
            if pong_tx.send(m).is_err() {
                break;
            }
        }
    });
    let tx = ping_tx.clone();
    Setup {
        name: "raw flume pair",
        sample: Box::new(move || {
            timed(|| {
                tx.send(msg()).unwrap();
                pong_rx.recv().unwrap();
            })
        }),
        stop: Box::new(move || {
            drop(ping_tx);
            echo.join().unwrap();
        }),
    }
}

/// For reference: flume's own async receive under the same executor as the mem channel (what
/// `mem` avoids, see `mem.rs`).
fn flume_async(block_on: BlockOn) -> Setup {
    let (ping_tx, ping_rx) = flume::unbounded::<Msg>();
    let (pong_tx, pong_rx) = flume::unbounded::<Msg>();
    let echo = thread::spawn(move || {
        block_on(Box::pin(async move {
            while let Ok(m) = ping_rx.recv_async().await {
                if pong_tx.send(m).is_err() {
                    break;
                }
            }
        }))
    });
    let tx = ping_tx.clone();
    Setup {
        name: "(ref: flume recv_async)",
        sample: Box::new(move || {
            let start = Instant::now();
            block_on(Box::pin(async {
                for _ in 0..ROUNDS {
                    tx.send(msg()).unwrap();
                    pong_rx.recv_async().await.unwrap();
                }
            }));
            start.elapsed() / ROUNDS
        }),
        stop: Box::new(move || {
            drop(ping_tx);
            echo.join().unwrap();
        }),
    }
}

fn raw_socketpair() -> Setup {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = thread::spawn(move || {
        let mut frame = [0u8; 64];
        while b.read_exact(&mut frame).is_ok() {
            if b.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let closer = a.try_clone().unwrap();
    let mut frame = [7u8; 64];
    Setup {
        name: "raw socketpair (64 B)",
        sample: Box::new(move || {
            timed(|| {
                a.write_all(&frame).unwrap();
                a.read_exact(&mut frame).unwrap();
            })
        }),
        stop: Box::new(move || {
            closer.shutdown(std::net::Shutdown::Write).unwrap();
            echo.join().unwrap();
        }),
    }
}

type BlockOn = fn(Pin<Box<dyn Future<Output = ()> + '_>>);

/// A channel ping-pong; `block_on` drives both threads (async-io's for sockets, so each thread
/// waits on the reactor itself).
fn channel(name: &'static str, (a, b): (Channel, Channel), block_on: BlockOn) -> Setup {
    let echo: JoinHandle<()> = thread::spawn(move || {
        block_on(Box::pin(async move {
            while let Ok(m) = b.recv().await {
                if b.send(m).await.is_err() {
                    break;
                }
            }
        }))
    });
    let a = std::rc::Rc::new(a);
    let a2 = a.clone();
    Setup {
        name,
        sample: Box::new(move || {
            let start = Instant::now();
            block_on(Box::pin(async {
                for _ in 0..ROUNDS {
                    a.send(msg()).await.unwrap();
                    a.recv().await.unwrap();
                }
            }));
            start.elapsed() / ROUNDS
        }),
        stop: Box::new(move || {
            a2.close();
            echo.join().unwrap();
        }),
    }
}

fn lite_block_on(f: Pin<Box<dyn Future<Output = ()> + '_>>) {
    futures_lite::future::block_on(f)
}

/// Wakes a thread blocked in [`park_block_on`].
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark()
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark()
    }
}

/// The leanest executor: poll, `thread::park` until woken (the same futex wake flume's blocking
/// `recv` uses). futures-lite's `block_on` parks on a mutex and condvar instead, which costs extra
/// context switches per wake on a busy machine.
fn park_block_on(f: Pin<Box<dyn Future<Output = ()> + '_>>) {
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = f;
    while f.as_mut().poll(&mut cx).is_pending() {
        thread::park();
    }
}

fn io_block_on(f: Pin<Box<dyn Future<Output = ()> + '_>>) {
    async_io::block_on(f)
}

/// What process actors and the root park in: an epoll instance of the thread's own, watching
/// the sockets its unix channels read.
fn epoll_block_on(f: Pin<Box<dyn Future<Output = ()> + '_>>) {
    harrow_ipc::park::block_on(f)
}

/// The environment variable that makes this binary the echo peer of a cross-process setup:
/// `raw:<path>` or `channel:<path>`.
const ECHO_ENV: &str = "HARROW_IPC_BENCH_ECHO";

/// The echo peer, in a child process: connects to `path` and echoes until the parent closes.
fn echo_peer(spec: &str) {
    let Some((kind, path)) = spec.split_once(':') else {
        return;
    };
    match kind {
        "raw" => {
            let Ok(mut s) = UnixStream::connect(path) else {
                return;
            };
            let mut frame = [0u8; 64];
            while s.read_exact(&mut frame).is_ok() {
                if s.write_all(&frame).is_err() {
                    break;
                }
            }
        }
        "channel" => harrow_ipc::park::block_on(async {
            let Ok(ch) = unix::connect(path).await else {
                return;
            };
            while let Ok(m) = ch.recv().await {
                if ch.send(m).await.is_err() {
                    break;
                }
            }
        }),
        _ => {}
    }
}

fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "harrow-ipc-bench-{}-{tag}.sock",
        std::process::id()
    ))
}

fn echo_child(spec: String) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .env(ECHO_ENV, spec)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The raw baseline across processes: blocking 64-byte frames over a Unix socket.
fn raw_socket_processes() -> Setup {
    let path = socket_path("raw");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut child = echo_child(format!("raw:{}", path.display()));
    let (mut a, _) = listener.accept().unwrap();
    let _ = std::fs::remove_file(&path);
    let closer = a.try_clone().unwrap();
    let mut frame = [7u8; 64];
    Setup {
        name: "raw socket, 2 processes",
        sample: Box::new(move || {
            timed(|| {
                a.write_all(&frame).unwrap();
                a.read_exact(&mut frame).unwrap();
            })
        }),
        stop: Box::new(move || {
            closer.shutdown(std::net::Shutdown::Write).unwrap();
            child.wait().unwrap();
        }),
    }
}

/// A unix channel across processes, each with its own reactor (the process backend's case).
fn unix_channel_processes() -> Setup {
    let path = socket_path("channel");
    let _ = std::fs::remove_file(&path);
    let listener = unix::bind(&path).unwrap();
    let mut child = echo_child(format!("channel:{}", path.display()));
    let a = async_io::block_on(listener.accept()).unwrap();
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let a = std::rc::Rc::new(a);
    let a2 = a.clone();
    Setup {
        name: "unix channel, 2 processes",
        sample: Box::new(move || {
            let start = Instant::now();
            epoll_block_on(Box::pin(async {
                for _ in 0..ROUNDS {
                    a.send(msg()).await.unwrap();
                    a.recv().await.unwrap();
                }
            }));
            start.elapsed() / ROUNDS
        }),
        stop: Box::new(move || {
            a2.close();
            child.wait().unwrap();
        }),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        echo_peer(&spec);
        return;
    }
    let mut setups = [
        raw_flume(),
        channel("mem channel", mem::pair(), park_block_on),
        raw_socketpair(),
        channel("unix channel", unix::pair().unwrap(), epoll_block_on),
        channel("(mem, futures-lite exec)", mem::pair(), lite_block_on),
        flume_async(park_block_on),
        raw_socket_processes(),
        unix_channel_processes(),
        channel(
            "(unix, async-io reactor)",
            unix::pair().unwrap(),
            io_block_on,
        ),
    ];
    // Warm up, then interleave the samples.
    for s in setups.iter_mut() {
        (s.sample)();
    }
    let mut times = vec![Vec::new(); setups.len()];
    for _ in 0..SAMPLES {
        for (s, t) in setups.iter_mut().zip(times.iter_mut()) {
            t.push((s.sample)().as_secs_f64());
        }
    }
    println!("ping-pong round trip of Msg::Yield {{ cid, Int }}");
    println!("({SAMPLES} interleaved samples of {ROUNDS} round trips each; medians)");
    for (s, t) in setups.iter().zip(&times) {
        println!(
            "  {:<24}{:>9.2?}",
            s.name,
            Duration::from_secs_f64(median(t.clone()))
        );
    }
    let ratio = |x: usize, base: usize| {
        median(
            times[x]
                .iter()
                .zip(&times[base])
                .map(|(x, b)| x / b)
                .collect(),
        )
    };
    let (mem_ratio, unix_ratio, unix_threads) = (ratio(1, 0), ratio(7, 6), ratio(3, 2));
    let verdict = |r: f64, target: f64| if r <= target { "ok" } else { "MISSED" };
    println!(
        "mem  / raw flume                      = {mem_ratio:.2}x (target <= 1.5x) {}",
        verdict(mem_ratio, 1.5)
    );
    println!(
        "unix / raw socket, 2 processes        = {unix_ratio:.2}x (target <= 2.0x) {}",
        verdict(unix_ratio, 2.0)
    );
    println!(
        "unix / raw socketpair, 2 threads      = {unix_threads:.2}x (both threads parked in epoll \
         instances of their own, as process actors are; in async-io's shared reactor: {:.2}x)",
        ratio(8, 2)
    );
    for Setup { sample, stop, .. } in setups {
        // The sampler holds senders too: drop it first so the echo thread sees the end.
        drop(sample);
        stop();
    }
}
