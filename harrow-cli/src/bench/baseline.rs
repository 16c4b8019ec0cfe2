//! The baselines harrow's figures are compared with, each measured in the same run and
//! interleaved with the harrow figure it belongs to: bare spawns, raw channel and socket
//! ping-pongs and echoes. The socket baselines talk to this binary re-executed in a plain mode
//! (`HARROW_BENCH_CHILD=bare|echo`).

use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::stats::Samples;

/// Set in a child this benchmark starts as a baseline: `bare` exits at once, `echo` echoes its
/// stdin socket back until EOF.
const CHILD_ENV: &str = "HARROW_BENCH_CHILD";

/// The baseline modes of this binary (checked by `main` right after `maybe_run_child`).
pub(crate) fn child_mode() -> Option<ExitCode> {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("bare") => Some(ExitCode::SUCCESS),
        Ok("echo") => Some(match echo_stdin() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }),
        _ => None,
    }
}

/// Echoes what arrives on the socket that is our stdin, chunk by chunk, until EOF.
fn echo_stdin() -> std::io::Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut sock = UnixStream::from(fd);
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        sock.write_all(&buf[..n])?;
    }
}

/// The baseline of a backend's spawn-to-first-reply: the bare thing the backend wraps.
#[derive(Clone, Copy, Debug)]
pub(super) enum BareSpawn {
    /// `std::thread::spawn` + join of an empty closure.
    Thread,
    /// Spawn and wait for this binary in its `bare` mode (exits at once).
    Process,
    /// Create and end one bare subinterpreter on a fresh thread.
    Subint,
    /// Spawn and wait for `python -c pass` (the Python recorded at build time): a process
    /// starting and ending CPython, as a `multiprocessing` spawn does.
    Python,
}

impl BareSpawn {
    pub(super) fn label(self) -> &'static str {
        match self {
            BareSpawn::Thread => "bare std::thread spawn+join",
            BareSpawn::Process => "bare spawn+exit of this binary",
            BareSpawn::Subint => "bare subinterpreter create+end",
            BareSpawn::Python => "bare `python -c pass` spawn+exit",
        }
    }

    /// One bare spawn, timed.
    pub(super) fn once(self) -> anyhow::Result<Duration> {
        match self {
            BareSpawn::Thread => {
                let t = Instant::now();
                std::thread::spawn(|| {})
                    .join()
                    .map_err(|_| anyhow::anyhow!("an empty thread panicked"))?;
                Ok(t.elapsed())
            }
            BareSpawn::Process => {
                let exe = std::env::current_exe()?;
                let t = Instant::now();
                let status = Command::new(&exe)
                    .env(CHILD_ENV, "bare")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()?;
                let took = t.elapsed();
                anyhow::ensure!(status.success(), "bare child failed: {status}");
                Ok(took)
            }
            BareSpawn::Subint => bare_subint(),
            BareSpawn::Python => {
                let python = option_env!("HARROW_PYTHON").ok_or_else(|| {
                    anyhow::anyhow!("no Python was recorded at build time: run scripts/setup")
                })?;
                let t = Instant::now();
                let status = Command::new(python)
                    .args(["-c", "pass"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()?;
                let took = t.elapsed();
                anyhow::ensure!(status.success(), "{python} -c pass failed: {status}");
                Ok(took)
            }
        }
    }
}

#[cfg(feature = "subint")]
fn bare_subint() -> anyhow::Result<Duration> {
    Ok(harrow_spawn_subint::__bench::bare_create_end(
        &harrow::InterpConfig::new("bare"),
    )?)
}

#[cfg(not(feature = "subint"))]
fn bare_subint() -> anyhow::Result<Duration> {
    anyhow::bail!("the subint feature is off")
}

/// The raw transport a backend's RPC and stream figures are compared with: flume between
/// threads for in-process backends, a socketpair to a child process for the others.
pub(super) enum RawTransport {
    Flume(FlumePingPong),
    Socket(SocketEcho),
}

impl RawTransport {
    /// Sets up the raw transport matching a backend (`in_process`: its actors share our
    /// address space), warmed up.
    pub(super) fn new(in_process: bool) -> anyhow::Result<RawTransport> {
        Ok(if in_process {
            RawTransport::Flume(FlumePingPong::new())
        } else {
            RawTransport::Socket(SocketEcho::new()?)
        })
    }

    pub(super) fn ping_pong_label(&self) -> &'static str {
        match self {
            RawTransport::Flume(_) => "raw flume ping-pong, 2 threads, best placement",
            RawTransport::Socket(_) => "raw socketpair ping-pong, 2 processes, best placement",
        }
    }

    pub(super) fn echo_label(&self) -> String {
        match self {
            RawTransport::Flume(_) => format!(
                "raw flume echo, 3 threads, {} items in flight each way",
                flume_echo_capacity()
            ),
            RawTransport::Socket(_) => "raw socketpair echo, 2 processes".to_owned(),
        }
    }

    /// A batch of `k` ping-pongs with both ends placed by the scheduler: the mean round trip
    /// and each one's latency (µs). With [`pinned_batch`](Self::pinned_batch), one of the two
    /// batches of which the faster is the baseline's ([`faster`]).
    ///
    /// A blocking ping-pong's speed depends on where the scheduler puts its two ends far more
    /// than on the channel: on a virtual machine whose idle CPUs halt, a round trip between two
    /// CPUs pays two wake-ups of a halted CPU (about 40 µs in all here), and one on a single
    /// CPU two context switches (about 1.6 µs), and the scheduler picks either from one run to
    /// the next. Where waking another CPU is cheap (halt polling, bare metal), the free
    /// placement wins instead. Either way the faster of the two is the best the raw transport
    /// does on this machine, stable from run to run.
    pub(super) fn free_batch(&mut self, k: usize) -> anyhow::Result<(Duration, Samples)> {
        let mut lat = Samples::default();
        let mean = self.batch(k, &mut lat)?;
        Ok((mean, lat))
    }

    /// A batch of `k` ping-pongs with both ends held on the CPU this thread is on; `None` where
    /// they cannot be held there (see [`free_batch`](Self::free_batch)).
    pub(super) fn pinned_batch(&mut self, k: usize) -> anyhow::Result<Option<(Duration, Samples)>> {
        let peer = match self {
            RawTransport::Flume(f) => f.peer,
            RawTransport::Socket(s) => s.child.id(),
        };
        let Some(held) = OnOneCpu::hold(peer) else {
            return Ok(None);
        };
        let mut lat = Samples::default();
        let mean = self.batch(k, &mut lat);
        drop(held);
        Ok(Some((mean?, lat)))
    }

    fn batch(&mut self, k: usize, each: &mut Samples) -> anyhow::Result<Duration> {
        match self {
            RawTransport::Flume(f) => f.batch(k, Some(each)),
            RawTransport::Socket(s) => s.batch(k, Some(each)),
        }
    }

    /// Items per second echoed back, `items` of them.
    pub(super) fn echo(&mut self, items: i64) -> anyhow::Result<f64> {
        match self {
            RawTransport::Flume(_) => flume_stream(items),
            RawTransport::Socket(s) => s.stream(items),
        }
    }
}

/// The faster of two batches (mean, latencies); the first where the second is missing.
pub(super) fn faster(
    a: (Duration, Samples),
    b: Option<(Duration, Samples)>,
) -> (Duration, Samples) {
    match b {
        Some(b) if b.0 < a.0 => b,
        _ => a,
    }
}

/// This thread and a peer (a thread or a single-threaded process, by its id) held on the CPU
/// this thread runs on, until dropped; then both get their affinity back.
struct OnOneCpu {
    peer: rustix::process::Pid,
    mine: rustix::thread::CpuSet,
    theirs: rustix::thread::CpuSet,
}

impl OnOneCpu {
    /// `None` (nothing changed) where the CPU or an affinity cannot be read or set.
    fn hold(peer: u32) -> Option<OnOneCpu> {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
        let peer = rustix::process::Pid::from_raw(i32::try_from(peer).ok()?)?;
        let cpu = sched_getcpu();
        if cpu >= CpuSet::MAX_CPU {
            return None;
        }
        let mine = sched_getaffinity(None).ok()?;
        let theirs = sched_getaffinity(Some(peer)).ok()?;
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).ok()?;
        let held = OnOneCpu { peer, mine, theirs };
        // On failure the drop gives this thread its affinity back.
        sched_setaffinity(Some(peer), &one).ok()?;
        Some(held)
    }
}

impl Drop for OnOneCpu {
    fn drop(&mut self) {
        use rustix::thread::sched_setaffinity;
        let _ = sched_setaffinity(Some(self.peer), &self.theirs);
        let _ = sched_setaffinity(None, &self.mine);
    }
}

/// A thread that echoes `u64`s back over two bounded(1) flume channels.
pub(super) struct FlumePingPong {
    to: Option<flume::Sender<u64>>,
    back: flume::Receiver<u64>,
    echo: Option<std::thread::JoinHandle<()>>,
    /// The echo thread's id (for its affinity).
    peer: u32,
}

impl FlumePingPong {
    fn new() -> FlumePingPong {
        let (to_tx, to_rx) = flume::bounded::<u64>(1);
        let (back_tx, back_rx) = flume::bounded::<u64>(1);
        let echo = std::thread::spawn(move || {
            // Its id first, then the echo.
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            if back_tx.send(u64::from(tid.unsigned_abs())).is_err() {
                return;
            }
            while let Ok(v) = to_rx.recv() {
                if back_tx.send(v).is_err() {
                    break;
                }
            }
        });
        // 0 (no such thread: `OnOneCpu` then changes nothing) if it died before saying.
        let peer = back_rx.recv().map_or(0, |tid| tid as u32);
        let mut this = FlumePingPong {
            to: Some(to_tx),
            back: back_rx,
            echo: Some(echo),
            peer,
        };
        let _ = this.batch(50, None);
        this
    }

    fn batch(&mut self, k: usize, mut each: Option<&mut Samples>) -> anyhow::Result<Duration> {
        let to = self
            .to
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the echo thread is gone"))?;
        let k = k.max(1);
        let t = Instant::now();
        for i in 0..k as u64 {
            let one = Instant::now();
            to.send(i)?;
            self.back.recv()?;
            if let Some(each) = each.as_deref_mut() {
                each.push(one.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(t.elapsed() / k as u32)
    }
}

impl Drop for FlumePingPong {
    fn drop(&mut self) {
        // Closing the channel ends the echo thread's loop.
        drop(self.to.take());
        if let Some(h) = self.echo.take() {
            let _ = h.join();
        }
    }
}

/// Items per second echoed through a thread over raw flume channels (pipelined: a sender
/// thread, the echo thread, and this thread receiving). Each channel holds as many items as a
/// harrow stream's default window lets be in flight for these items, so both sides of the
/// comparison buffer alike.
fn flume_stream(items: i64) -> anyhow::Result<f64> {
    let cap = flume_echo_capacity();
    let (to_tx, to_rx) = flume::bounded::<i64>(cap);
    let (back_tx, back_rx) = flume::bounded::<i64>(cap);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..items {
            if to_tx.send(i).is_err() {
                break;
            }
        }
    });
    let mut got = 0i64;
    while got < items && back_rx.recv().is_ok() {
        got += 1;
    }
    let rate = got as f64 / t.elapsed().as_secs_f64();
    let _ = sender.join();
    drop(back_rx);
    let _ = echo.join();
    anyhow::ensure!(
        got == items,
        "raw flume echo: {got} of {items} items came back"
    );
    Ok(rate)
}

/// The capacity of each raw flume echo channel: the window a harrow stream with the default
/// link settings settles at for the bench's items (`Value::Int`).
pub(super) fn flume_echo_capacity() -> usize {
    let item = harrow::Value::Int(0).approx_size(usize::MAX);
    harrow::portal::LinkConfig::default().grown_window(item) as usize
}

/// This binary re-executed as an echo child (`HARROW_BENCH_CHILD=echo`) with one end of a
/// socketpair as its stdin; kept for all the repetitions of a backend.
pub(super) struct SocketEcho {
    child: std::process::Child,
    sock: Option<UnixStream>,
}

impl SocketEcho {
    fn new() -> anyhow::Result<SocketEcho> {
        let (mine, theirs) = UnixStream::pair()?;
        let child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, "echo")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        // Bounds every read below: a dead or wedged child fails the run instead of hanging it.
        mine.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut this = SocketEcho {
            child,
            sock: Some(mine),
        };
        this.batch(50, None)?;
        Ok(this)
    }

    fn sock(&self) -> anyhow::Result<&UnixStream> {
        self.sock
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the echo socket is closed"))
    }

    /// The mean round trip of `k` 8-byte ping-pongs.
    fn batch(&mut self, k: usize, mut each: Option<&mut Samples>) -> anyhow::Result<Duration> {
        let mut sock = self.sock()?;
        let mut buf = [0u8; 8];
        let k = k.max(1);
        let t = Instant::now();
        for i in 0..k as u64 {
            let one = Instant::now();
            sock.write_all(&i.to_le_bytes())?;
            sock.read_exact(&mut buf)?;
            if let Some(each) = each.as_deref_mut() {
                each.push(one.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(t.elapsed() / k as u32)
    }

    /// Items per second echoed: one 8-byte write per item from a writer thread, read back
    /// through a buffer on this thread.
    fn stream(&mut self, items: i64) -> anyhow::Result<f64> {
        let sock = self.sock()?;
        let mut w = sock.try_clone()?;
        let t = Instant::now();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for i in 0..items {
                w.write_all(&i.to_le_bytes())?;
            }
            Ok(())
        });
        let mut r = BufReader::with_capacity(64 * 1024, sock);
        let mut buf = [0u8; 8];
        let mut got = 0i64;
        let read = (|| -> std::io::Result<()> {
            while got < items {
                r.read_exact(&mut buf)?;
                got += 1;
            }
            Ok(())
        })();
        let rate = got as f64 / t.elapsed().as_secs_f64();
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
        read?;
        Ok(rate)
    }
}

impl Drop for SocketEcho {
    fn drop(&mut self) {
        // EOF ends the child's echo loop; kill it if it does not exit within a bound.
        drop(self.sock.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(mean_us: u64, lat: &[f64]) -> (Duration, Samples) {
        let mut s = Samples::default();
        for &v in lat {
            s.push(v);
        }
        (Duration::from_micros(mean_us), s)
    }

    #[test]
    fn the_faster_batch_counts_with_its_own_latencies() {
        let (mean, lat) = faster(batch(9, &[9.0, 9.5]), Some(batch(4, &[4.0])));
        assert_eq!((mean, lat.len()), (Duration::from_micros(4), 1));
        let (mean, lat) = faster(batch(4, &[4.0, 4.5]), Some(batch(9, &[9.0])));
        assert_eq!((mean, lat.len()), (Duration::from_micros(4), 2));
        // A tie keeps the first; a missing second batch leaves the first.
        let (_, lat) = faster(batch(5, &[5.0, 5.0]), Some(batch(5, &[5.0])));
        assert_eq!(lat.len(), 2);
        let (mean, _) = faster(batch(7, &[7.0]), None);
        assert_eq!(mean, Duration::from_micros(7));
    }
}
