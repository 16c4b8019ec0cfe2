//! `cargo bench -p harrow-portal`: unary RPC round trip and one-way stream throughput over mem and
//! unix, beside raw ping-pong baselines measured in the same run (bare flume pair between two
//! threads; bare blocking socketpair with 64-byte frames).

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use harrow_portal::ipc::{self, ActorId, Channel, Value};
use harrow_portal::{Executor, FnRegistry, Link, LinkConfig, LocalInfo};

const ROUNDS: usize = 5;
const RPC_N: usize = 20_000;
const STREAM_N: i64 = 300_000;
const ECHO_N: i64 = 100_000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median per-round-trip time (µs) of a raw flume ping-pong between two threads.
fn flume_ping_pong() -> f64 {
    let (to_b, b_rx) = flume::unbounded::<u64>();
    let (to_a, a_rx) = flume::unbounded::<u64>();
    let echo = std::thread::spawn(move || {
        while let Ok(v) = b_rx.recv() {
            if to_a.send(v).is_err() {
                break;
            }
        }
    });
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        for i in 0..RPC_N as u64 {
            to_b.send(i).unwrap();
            assert_eq!(a_rx.recv().unwrap(), i);
        }
        rounds.push(t0.elapsed().as_secs_f64() * 1e6 / RPC_N as f64);
    }
    drop(to_b);
    echo.join().unwrap();
    median(rounds)
}

/// Median per-round-trip time (µs) of a blocking socketpair ping-pong with 64-byte frames.
fn socket_ping_pong() -> f64 {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [7u8; 64];
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        for _ in 0..RPC_N {
            a.write_all(&buf).unwrap();
            a.read_exact(&mut buf).unwrap();
        }
        rounds.push(t0.elapsed().as_secs_f64() * 1e6 / RPC_N as f64);
    }
    drop(a);
    echo.join().unwrap();
    median(rounds)
}

/// A link whose streams keep a window of `window` items (no growth).
fn config(window: u32) -> LinkConfig {
    let mut c = LinkConfig::default();
    c.credit_window = window;
    c.credit_window_max = window;
    c
}

/// Median per-round-trip time (µs) of a flume ping-pong between two async executors, each
/// driven by `async_io::block_on` on its own thread (what the portal runs on).
fn flume_async_ping_pong() -> f64 {
    let (to_b, b_rx) = flume::unbounded::<u64>();
    let (to_a, a_rx) = flume::unbounded::<u64>();
    let echo = std::thread::spawn(move || {
        let exec = async_executor::Executor::new();
        async_io::block_on(exec.run(async move {
            while let Ok(v) = b_rx.recv_async().await {
                if to_a.send(v).is_err() {
                    break;
                }
            }
        }))
    });
    let exec = async_executor::Executor::new();
    let rounds = async_io::block_on(exec.run(async {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            for i in 0..RPC_N as u64 {
                to_b.send(i).unwrap();
                assert_eq!(a_rx.recv_async().await.unwrap(), i);
            }
            rounds.push(t0.elapsed().as_secs_f64() * 1e6 / RPC_N as f64);
        }
        rounds
    }));
    drop(to_b);
    echo.join().unwrap();
    median(rounds)
}

/// Median per-round-trip time (µs) of a flume ping-pong between two async executors, each
/// driven by `futures_lite::future::block_on` (thread parking, no reactor) on its own thread (what the portal runs on).
fn flume_async_ping_pong_parking() -> f64 {
    let (to_b, b_rx) = flume::unbounded::<u64>();
    let (to_a, a_rx) = flume::unbounded::<u64>();
    let echo = std::thread::spawn(move || {
        let exec = async_executor::Executor::new();
        futures_lite::future::block_on(exec.run(async move {
            while let Ok(v) = b_rx.recv_async().await {
                if to_a.send(v).is_err() {
                    break;
                }
            }
        }))
    });
    let exec = async_executor::Executor::new();
    let rounds = futures_lite::future::block_on(exec.run(async {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            for i in 0..RPC_N as u64 {
                to_b.send(i).unwrap();
                assert_eq!(a_rx.recv_async().await.unwrap(), i);
            }
            rounds.push(t0.elapsed().as_secs_f64() * 1e6 / RPC_N as f64);
        }
        rounds
    }));
    drop(to_b);
    echo.join().unwrap();
    median(rounds)
}

fn registry() -> FnRegistry {
    let mut reg = FnRegistry::new();
    reg.unary("b:echo", |v| async move { Ok(v) }).unwrap();
    reg.context("b:produce", |ctx, v| async move {
        let n = v.as_i64().unwrap_or(0);
        ctx.started(Value::Null).await?;
        let s = ctx.open_stream().await?;
        for i in 0..n {
            s.send(Value::Int(i)).await?;
        }
        s.close().await?;
        Ok(Value::Int(n))
    })
    .unwrap();
    // What `harrow bench`'s stream row runs in its child: every item sent back as it comes.
    reg.context("b:echo_stream", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        let mut n = 0;
        while let Some(item) = s.recv().await? {
            s.send(item).await?;
            n += 1;
        }
        s.close().await?;
        Ok(Value::Int(n))
    })
    .unwrap();
    reg
}

/// Whether the link threads of [`setup`] park in an epoll instance of their own
/// (`harrow_ipc::park::block_on`, what process actors and the root run on) rather than in
/// async-io's reactor (`async_io::block_on`). Set by `rpc-unix` and `stream-unix`; the
/// `-reactor` variants and the `mem` measurements leave it off.
static PARK_IN_EPOLL: AtomicBool = AtomicBool::new(false);

/// The `block_on` of a link thread that does not park on a futex; see [`PARK_IN_EPOLL`].
fn side_block_on<F: std::future::Future>(fut: F) -> F::Output {
    if PARK_IN_EPOLL.load(Ordering::Relaxed) {
        ipc::park::block_on(fut)
    } else {
        async_io::block_on(fut)
    }
}

/// A callee link on its own thread and executor; the caller link on this thread's executor.
struct Setup {
    caller_exec: Executor,
    caller: Link,
    stop: async_channel::Sender<()>,
    callee_thread: std::thread::JoinHandle<()>,
}

/// `futex_callee`: the callee's thread parks on a futex (`futures_lite::future::block_on`, as
/// in-process actors do) instead of in the reactor (`async_io::block_on`).
fn setup(transport: &str, window: u32, futex_callee: bool) -> Setup {
    let (ca, cb): (Channel, Channel) = match transport {
        "mem" => ipc::mem::pair(),
        _ => ipc::unix::pair().unwrap(),
    };
    let (stop, stop_rx) = async_channel::bounded::<()>(1);
    let callee_thread = std::thread::spawn(move || {
        let exec: Executor = Arc::new(async_executor::Executor::new());
        let e2 = exec.clone();
        let serve = exec.run(async move {
            let local = LocalInfo {
                id: ActorId::new("callee"),
                backend: "bench".into(),
            };
            let link = Link::establish(cb, local, Some(Arc::new(registry())), &e2, config(window))
                .await
                .expect("callee link");
            let _ = stop_rx.recv().await;
            drop(link);
        });
        if futex_callee {
            futures_lite::future::block_on(serve);
        } else {
            side_block_on(serve);
        }
    });
    let caller_exec: Executor = Arc::new(async_executor::Executor::new());
    let local = LocalInfo {
        id: ActorId::new("caller"),
        backend: "bench".into(),
    };
    let caller = side_block_on(caller_exec.run(Link::establish(
        ca,
        local,
        None,
        &caller_exec,
        config(window),
    )))
    .expect("caller link");
    Setup {
        caller_exec,
        caller,
        stop,
        callee_thread,
    }
}

impl Setup {
    fn finish(self) {
        drop(self.caller);
        let _ = self.stop.try_send(());
        self.callee_thread.join().unwrap();
    }
}

/// Median per-call time (µs) of a unary RPC round trip.
fn portal_rpc(transport: &str, window: u32, futex_callee: bool) -> f64 {
    let s = setup(transport, window, futex_callee);
    let portal = s.caller.portal();
    let rounds = side_block_on(s.caller_exec.run(async {
        for _ in 0..1000 {
            portal.run("b:echo", Value::Int(1)).await.unwrap();
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            for i in 0..RPC_N as i64 {
                let v = portal.run("b:echo", Value::Int(i)).await.unwrap();
                debug_assert_eq!(v, Value::Int(i));
            }
            rounds.push(t0.elapsed().as_secs_f64() * 1e6 / RPC_N as f64);
        }
        rounds
    }));
    s.finish();
    median(rounds)
}

/// Median items per second of a one-way stream of small items (callee -> caller).
fn portal_stream(transport: &str, window: u32) -> f64 {
    let s = setup(transport, window, false);
    let portal = s.caller.portal();
    let rounds = side_block_on(s.caller_exec.run(async {
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let (mut ctx, _) = portal
                .open_context("b:produce", Value::Int(STREAM_N))
                .await
                .unwrap();
            let mut st = ctx.open_stream().await.unwrap();
            let mut n = 0i64;
            while let Some(v) = st.recv().await.unwrap() {
                debug_assert_eq!(v, Value::Int(n));
                n += 1;
            }
            assert_eq!(n, STREAM_N);
            assert_eq!(ctx.result().await.unwrap(), Value::Int(STREAM_N));
            rounds.push(STREAM_N as f64 / t0.elapsed().as_secs_f64());
        }
        rounds
    }));
    s.finish();
    median(rounds)
}

/// Items per second echoed through a thread over raw flume channels, pipelined (a sender thread,
/// the echo thread, this thread receiving): the baseline of `harrow bench`'s stream row.
fn flume_echo() -> f64 {
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let (to_tx, to_rx) = flume::bounded::<i64>(256);
        let (back_tx, back_rx) = flume::bounded::<i64>(256);
        let echo = std::thread::spawn(move || {
            while let Ok(v) = to_rx.recv() {
                if back_tx.send(v).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let sender = std::thread::spawn(move || {
            for i in 0..ECHO_N {
                if to_tx.send(i).is_err() {
                    break;
                }
            }
        });
        let mut got = 0i64;
        while got < ECHO_N && back_rx.recv().is_ok() {
            got += 1;
        }
        rounds.push(got as f64 / t0.elapsed().as_secs_f64());
        sender.join().unwrap();
        drop(back_rx);
        echo.join().unwrap();
        assert_eq!(got, ECHO_N);
    }
    median(rounds)
}

/// Items per second through one bidirectional echo stream (caller sends, callee echoes each
/// item back, caller receives; send and receive run concurrently on the caller's executor), the
/// callee parked on a futex as in-process actors are: what `harrow bench`'s stream row measures.
fn portal_echo(transport: &str, window: u32) -> f64 {
    let s = setup(transport, window, true);
    let portal = s.caller.portal();
    let rounds = async_io::block_on(s.caller_exec.run(async {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let (mut ctx, _) = portal
                .open_context("b:echo_stream", Value::Null)
                .await
                .unwrap();
            let (tx, mut rx) = ctx.open_stream().await.unwrap().split();
            let t0 = Instant::now();
            let send = async {
                for i in 0..ECHO_N {
                    tx.send(Value::Int(i)).await.unwrap();
                }
                tx.close().await.unwrap();
            };
            let recv = async {
                let mut n = 0i64;
                while let Some(v) = rx.recv().await.unwrap() {
                    debug_assert_eq!(v, Value::Int(n));
                    n += 1;
                }
                n
            };
            let ((), n) = futures_lite::future::zip(send, recv).await;
            rounds.push(n as f64 / t0.elapsed().as_secs_f64());
            assert_eq!(n, ECHO_N);
            assert_eq!(ctx.result().await.unwrap(), Value::Int(ECHO_N));
        }
        rounds
    }));
    s.finish();
    median(rounds)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        println!("portal bench: run with `cargo bench -p harrow-portal` for figures");
        return;
    }
    // `cargo bench -p harrow-portal -- NAME` runs only the measurement called
    // NAME exactly (flume, exec-reactor, exec-futex, socket, rpc-mem, rpc-mem-futex, rpc-unix,
    // rpc-unix-reactor, flume-echo, echo-mem, stream-mem, stream-unix, stream-unix-reactor): one
    // phase alone, for `perf stat` / `perf record` (docs/PERFORMANCE.md).
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut flume_rt = f64::NAN;
    let mut exec_rt = f64::NAN;
    let mut sock_rt = f64::NAN;
    if want("flume") {
        flume_rt = flume_ping_pong();
        println!("baseline  flume ping-pong, bare threads      {flume_rt:8.2} µs/round trip");
    }
    if want("exec-reactor") {
        exec_rt = flume_async_ping_pong();
        println!(
            "baseline  flume ping-pong, executors (async_io::block_on)      {exec_rt:8.2} µs/round trip"
        );
    }
    if want("exec-futex") {
        let park_rt = flume_async_ping_pong_parking();
        println!(
            "baseline  flume ping-pong, executors (futures_lite::block_on)  {park_rt:8.2} µs/round trip"
        );
    }
    if want("socket") {
        sock_rt = socket_ping_pong();
        println!("baseline  socketpair 64-byte ping-pong       {sock_rt:8.2} µs/round trip");
    }
    if want("rpc-mem") {
        let mem_rpc = portal_rpc("mem", 64, false);
        println!(
            "portal    unary RPC over mem   {mem_rpc:8.2} µs/call  ({:.2}x bare flume [target <= 2x]; {:.2}x flume between the same executors)",
            mem_rpc / flume_rt,
            mem_rpc / exec_rt
        );
    }
    if want("rpc-mem-futex") {
        let futex_rpc = portal_rpc("mem", 64, true);
        println!(
            "portal    unary RPC over mem, callee parked on a futex  {futex_rpc:8.2} µs/call  ({:.2}x bare flume)",
            futex_rpc / flume_rt
        );
    }
    if want("rpc-unix") {
        PARK_IN_EPOLL.store(true, Ordering::Relaxed);
        let unix_rpc = portal_rpc("unix", 64, false);
        PARK_IN_EPOLL.store(false, Ordering::Relaxed);
        println!(
            "portal    unary RPC over unix  {unix_rpc:8.2} µs/call  ({:.2}x socketpair ping-pong)",
            unix_rpc / sock_rt
        );
    }
    if want("rpc-unix-reactor") {
        let unix_rpc = portal_rpc("unix", 64, false);
        println!(
            "portal    unary RPC over unix, both sides parked in async-io's reactor  {unix_rpc:8.2} µs/call  ({:.2}x socketpair ping-pong)",
            unix_rpc / sock_rt
        );
    }
    let mut flume_echo_rate = f64::NAN;
    if want("flume-echo") {
        flume_echo_rate = flume_echo();
        println!(
            "baseline  flume echo through a thread, bounded 256  {flume_echo_rate:10.0} items/s"
        );
    }
    if want("echo-mem") {
        let echo = portal_echo("mem", 64);
        println!(
            "portal    echo stream over mem, window 64, callee on a futex  {echo:10.0} items/s  ({:.2}x slower than the flume echo [target <= 1.5x, >= 1,500,000])",
            flume_echo_rate / echo
        );
    }
    for window in [64, 1024] {
        if want("stream-mem") {
            let mem_stream = portal_stream("mem", window);
            println!(
                "portal    stream over mem,  window {window:4}  {mem_stream:10.0} items/s  (target >= 1,000,000)"
            );
        }
        if want("stream-unix") {
            PARK_IN_EPOLL.store(true, Ordering::Relaxed);
            let unix_stream = portal_stream("unix", window);
            PARK_IN_EPOLL.store(false, Ordering::Relaxed);
            println!(
                "portal    stream over unix, window {window:4}  {unix_stream:10.0} items/s  (target >= 300,000)"
            );
        }
        if want("stream-unix-reactor") {
            let unix_stream = portal_stream("unix", window);
            println!(
                "portal    stream over unix, window {window:4}, parked in async-io's reactor  {unix_stream:10.0} items/s"
            );
        }
    }
}
