//! Forwarding a child's stdout and stderr to the parent's, each line prefixed with the actor's
//! name.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use harrow_runtime_core::{DedicatedThread, Joined};
use rustix::event::{PollFd, PollFlags, poll};

/// A line longer than this is written out in pieces.
const MAX_LINE: usize = 64 * 1024;

/// One forwarding thread per child: it ends at EOF on both pipes, that is once the child and
/// everything that inherited its output have exited.
#[derive(Debug)]
pub(crate) struct Forwarder {
    thread: DedicatedThread<()>,
}

impl Forwarder {
    /// Starts forwarding `stdout` and `stderr` (either may be absent) with `[name] ` prefixes.
    pub(crate) fn start(
        name: &str,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    ) -> io::Result<Forwarder> {
        let prefix = format!("[{name}] ").into_bytes();
        let thread = DedicatedThread::spawn(format!("hw-out-{name}"), move || {
            let mut streams = Vec::new();
            if let Some(s) = stdout {
                streams.push(Stream::new(Box::new(File::from(s)), Target::Stdout));
            }
            if let Some(s) = stderr {
                streams.push(Stream::new(Box::new(File::from(s)), Target::Stderr));
            }
            forward(&prefix, streams);
        })?;
        Ok(Forwarder { thread })
    }

    /// Waits for the thread to end; `false` if it did not within `bound`. Cancel-safe.
    pub(crate) async fn finish(&mut self, bound: std::time::Duration) -> bool {
        !matches!(self.thread.join(bound).await, Joined::Running)
    }
}

trait Source: Read + AsFd + Send {}
impl<T: Read + AsFd + Send> Source for T {}

#[derive(Clone, Copy)]
enum Target {
    Stdout,
    Stderr,
}

struct Stream {
    src: Box<dyn Source>,
    target: Target,
    pending: Vec<u8>,
    open: bool,
}

impl Stream {
    fn new(src: Box<dyn Source>, target: Target) -> Self {
        Stream {
            src,
            target,
            pending: Vec::new(),
            open: true,
        }
    }

    /// Writes every complete line (all of `pending` when `all`), prefixed.
    fn flush_lines(&mut self, prefix: &[u8], all: bool) {
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            out.extend_from_slice(prefix);
            out.extend_from_slice(&self.pending[start..=start + pos]);
            start += pos + 1;
        }
        let rest = self.pending.len() - start;
        if rest > 0 && (all || rest >= MAX_LINE) {
            out.extend_from_slice(prefix);
            out.extend_from_slice(&self.pending[start..]);
            out.push(b'\n');
            start = self.pending.len();
        }
        self.pending.drain(..start);
        if !out.is_empty() {
            // Our own stdout or stderr failing (closed) must not stop the draining of the child's.
            let _ = match self.target {
                Target::Stdout => io::stdout().lock().write_all(&out),
                Target::Stderr => io::stderr().lock().write_all(&out),
            };
        }
    }
}

fn forward(prefix: &[u8], mut streams: Vec<Stream>) {
    let mut buf = vec![0u8; 8192];
    while streams.iter().any(|s| s.open) {
        let ready: Vec<bool> = {
            let open: Vec<&Stream> = streams.iter().filter(|s| s.open).collect();
            let mut fds: Vec<PollFd<'_>> = open
                .iter()
                .map(|s| PollFd::new(&s.src, PollFlags::IN))
                .collect();
            // No timeout: this thread's wait ends when the child's pipes end (its exit).
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        let mut ready = ready.into_iter();
        for s in streams.iter_mut().filter(|s| s.open) {
            if !ready.next().unwrap_or(false) {
                continue;
            }
            match s.src.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => {
                    s.open = false;
                    s.flush_lines(prefix, true);
                }
                Ok(n) => {
                    s.pending.extend_from_slice(&buf[..n]);
                    s.flush_lines(prefix, false);
                }
            }
        }
    }
}
