//! The remote side: a binary started by a launcher reads its spec from stdin, moves its stdout
//! aside, announces itself and runs the actor over its stdin and stdout.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use async_io::Async;
use harrow_runtime_core::ipc::codec::CodecConfig;
use harrow_runtime_core::ipc::{PROTOCOL_VERSION, stream};
use harrow_runtime_core::portal::Resolver;
use harrow_runtime_core::{ActorExit, ActorInit, SpawnSpec, run_actor};
use rustix::event::{PollFd, PollFlags, poll};

/// The argument (the first after the program) that makes [`maybe_run_child`] run the actor. An
/// argument rather than an environment variable, so that the programs the child starts (its own
/// process children, re-executing the same binary) do not inherit it.
pub const REMOTE_CHILD_ARG: &str = "--harrow-remote-child";

/// The start of the line a remote child writes on its stdout once the wire can start:
/// `HARROW-REMOTE-CHILD <protocol> <pid>`.
pub const START_LINE: &str = "HARROW-REMOTE-CHILD";

/// The exit status of a remote child whose bootstrap failed (no spec on stdin, bad spec).
pub const EXIT_BOOTSTRAP_FAILED: i32 = 2;
/// The exit status of a remote child whose `Hello` exchange failed.
const EXIT_HANDSHAKE_FAILED: i32 = 3;

/// The longest first line (the encoded spec) a child accepts.
const MAX_SPEC_LINE: usize = 1 << 20;

/// Whether this process was started by a [`RemoteBackend`](crate::RemoteBackend).
pub fn is_child() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == REMOTE_CHILD_ARG)
}

/// Set once [`maybe_run_child`] runs the actor in this process.
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process was started as a remote child but its program went on without running
/// the actor (it never called [`maybe_run_child`]).
pub(crate) fn started_but_not_run() -> bool {
    !RUNNING.load(std::sync::atomic::Ordering::SeqCst) && is_child()
}

/// Hands control to the harrow runtime when this process is a remote child actor; returns at
/// once otherwise. Call it first thing in `main` (beside the process backend's
/// `maybe_run_child`, when the program uses both).
///
/// In a child, the actor serves what `resolver` builds until it is cancelled or its parent is
/// gone, and the process exits: status 0 after a cancel or a lost parent, 3 if the `Hello`
/// exchange failed, [`EXIT_BOOTSTRAP_FAILED`] (with a message on stderr) if no usable spec
/// arrived.
pub fn maybe_run_child<F>(resolver: F)
where
    F: FnOnce() -> Arc<dyn Resolver>,
{
    if !is_child() {
        return;
    }
    RUNNING.store(true, std::sync::atomic::Ordering::SeqCst);
    let code = match run(resolver) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("harrow remote child {}: {e}", std::process::id());
            EXIT_BOOTSTRAP_FAILED
        }
    };
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

fn run<F>(resolver: F) -> Result<i32, String>
where
    F: FnOnce() -> Arc<dyn Resolver>,
{
    ignore_sigint();
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot use stdin: {e}"))?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot use stdout: {e}"))?;
    let mut input = File::from(stdin);
    let line = read_line(&mut input)?;
    let spec = SpawnSpec::decode(&line).map_err(|e| format!("the first line of stdin: {e}"))?;
    // What the actor prints must not reach the wire: fd 1 becomes a copy of stderr, fd 0 reads
    // nothing.
    rustix::stdio::dup2_stdout(std::io::stderr())
        .map_err(|e| format!("cannot move stdout to stderr: {e}"))?;
    if let Ok(null) = File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    let mut output = File::from(stdout);
    writeln!(
        output,
        "{START_LINE} {PROTOCOL_VERSION} {}",
        std::process::id()
    )
    .map_err(|e| format!("cannot write the start line: {e}"))?;
    watch_input(&input, &spec)?;
    // `stream::Reader`: the actor thread (in `park::block_on`) waits for stdin in its own epoll.
    let reader = stream::Reader::new(input).map_err(|e| format!("cannot register stdin: {e}"))?;
    let writer = Async::new(output).map_err(|e| format!("cannot register stdout: {e}"))?;
    let channel = stream::channel(reader, writer, CodecConfig::default());
    let name = spec.id.clone();
    let mut init = ActorInit::from_spec(spec, "remote").with_resolver(resolver());
    // The parent's silence ends the link (and this child) within this bound: a partitioned
    // remote child does not run on as an orphan.
    init.link_config.heartbeat_timeout = heartbeat_timeout_arg();
    let exit = run_actor(channel, init);
    Ok(match exit {
        ActorExit::HandshakeFailed(why) => {
            eprintln!("harrow remote child {name}: handshake with the parent failed: {why}");
            EXIT_HANDSHAKE_FAILED
        }
        _ => 0,
    })
}

/// The heartbeat timeout the parent passed after [`REMOTE_CHILD_ARG`], in milliseconds (0 or
/// missing: none).
fn heartbeat_timeout_arg() -> Option<Duration> {
    std::env::args()
        .nth(2)
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Reads the first line byte by byte, so that nothing after it (the frames) is consumed.
fn read_line(input: &mut File) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "stdin ended before the actor spec line ({} bytes read); this program is \
                     started by harrow's remote backend",
                    line.len()
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read stdin: {e}")),
        }
        if line.len() > MAX_SPEC_LINE {
            return Err(format!(
                "the spec line is longer than {MAX_SPEC_LINE} bytes"
            ));
        }
    }
    String::from_utf8(line).map_err(|_| "the spec line is not text".to_owned())
}

/// No remote orphans: once stdin hangs up (the launcher, or the connection, is gone), the actor
/// normally notices and exits; should it be stuck, this thread ends the process after the
/// actor's whole teardown bound.
fn watch_input(input: &File, spec: &SpawnSpec) -> Result<(), String> {
    let fd: OwnedFd = input
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot watch stdin: {e}"))?;
    let grace = spec
        .timeouts()
        .ladder_bound()
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(2));
    std::thread::Builder::new()
        .name("hw-remote-watch".into())
        .spawn(move || {
            loop {
                let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
                match poll(&mut fds, None) {
                    Ok(_) => {
                        let ev = fds[0].revents();
                        if ev.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                            break;
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
            }
            std::thread::sleep(grace);
            // Not `eprintln!`: stderr is most likely the same gone connection, and a failed
            // write would panic this thread, leaving a busy actor running for ever (it did).
            let _ = writeln!(
                std::io::stderr(),
                "harrow remote child {}: the parent's connection ended {grace:?} ago and the \
                 actor has not exited: exiting now",
                std::process::id()
            );
            std::process::exit(0);
        })
        .map(drop)
        .map_err(|e| format!("cannot start the input watch thread: {e}"))
}

/// A Ctrl-C is the root's to answer (it cancels the tree gracefully); a remote child that a
/// local launcher runs in the terminal's process group must not die of it. (The parent starts
/// its launchers in process groups of their own; this covers launchers that pass the signal on.)
fn ignore_sigint() {
    // SAFETY: `signal` with SIG_IGN installs no handler (no code runs on the signal); nothing
    // else in this process looks at SIGINT's disposition yet.
    #[allow(unsafe_code)]
    let ignored = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if ignored == libc::SIG_ERR {
        // Not fatal: the child then ends on a Ctrl-C that reaches it, as before.
        eprintln!(
            "harrow remote child {}: cannot ignore SIGINT: {}",
            std::process::id(),
            std::io::Error::last_os_error()
        );
    }
}
