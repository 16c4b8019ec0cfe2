//! The child side: reading what the parent left in the environment and handing control to the
//! actor runtime.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use harrow_runtime_core::ipc::codec::CodecConfig;
use harrow_runtime_core::ipc::{shm, unix};
use harrow_runtime_core::portal::Resolver;
use harrow_runtime_core::{ActorExit, SpawnSpec, TreeGrant};

use crate::error::{Error, Result};
use crate::spec::{
    CHILD_CORES_SPARE_ENV, CHILD_FD_ENV, CHILD_SHM_FD_ENV, CHILD_SPEC_ENV, CHILD_TREE_FD_ENV,
    PARENT_PID_ENV,
};

/// The exit status of a child whose bootstrap failed (bad environment, parent already gone).
pub const EXIT_BOOTSTRAP_FAILED: i32 = 2;
/// The exit status of a child whose `Hello` exchange with its parent failed.
pub const EXIT_HANDSHAKE_FAILED: i32 = 3;
/// The exit status of a Python process actor whose Python code called `os._exit()` (which
/// `harrow` turns into `harrow.ActorExit` for the call, then ends the actor), saying so on
/// stderr: its parent reports it as a failure, as it would any child that ended on its own.
pub const EXIT_PYTHON_EXIT: i32 = 4;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether this process was started by a [`ProcessBackend`](crate::ProcessBackend) as a child
/// actor (and its bootstrap has not been taken yet).
pub fn is_child() -> bool {
    !TAKEN.load(Ordering::SeqCst) && std::env::var_os(CHILD_FD_ENV).is_some()
}

/// What a child process received from its parent: its spec and its end of the channel.
///
/// Most programs never see this: [`maybe_run_child`] takes it and runs the actor. It is public
/// for programs that need to act before the runtime starts (and for tests that play a broken
/// child).
#[derive(Debug)]
#[non_exhaustive]
pub struct ChildBootstrap {
    /// The child's spec.
    pub spec: SpawnSpec,
    /// The child's end of the channel to its parent (close-on-exec).
    pub stream: UnixStream,
    /// The shared-memory segment the channel runs through beside `stream`
    /// ([`shm`](harrow_runtime_core::ipc::shm), the child taking
    /// [`Side::Second`](harrow_runtime_core::ipc::shm::Side::Second)); `None` when the parent
    /// chose the socket alone.
    pub shm: Option<shm::Segment>,
    /// The parent's pid.
    pub parent_pid: i32,
}

/// An `Arc` of a resolver, as [`maybe_run_child`]'s closure returns it (concrete or `dyn`).
pub trait IntoResolver {
    /// The resolver as the runtime holds it.
    fn into_resolver(self) -> Arc<dyn Resolver>;
}

impl<R: Resolver> IntoResolver for Arc<R> {
    fn into_resolver(self) -> Arc<dyn Resolver> {
        self
    }
}

impl IntoResolver for Arc<dyn Resolver> {
    fn into_resolver(self) -> Arc<dyn Resolver> {
        self
    }
}

fn env_var(var: &'static str) -> Result<String> {
    std::env::var(var).map_err(|e| Error::Env {
        var,
        reason: e.to_string(),
    })
}

/// Takes the bootstrap the parent left in this process: `Ok(None)` when this process is not a
/// child actor (or the bootstrap was already taken).
///
/// Sets the parent-death signal (SIGKILL) and checks that the parent is still the one that
/// started this process, so a child can never outlive its parent unnoticed. Removes the
/// bootstrap variables from the environment when this process has a single thread (so other
/// programs it starts do not see them).
///
/// # Errors
///
/// When the bootstrap variables are malformed, the inherited descriptor is not a socket, or
/// the parent is already gone.
pub fn take_bootstrap() -> Result<Option<ChildBootstrap>> {
    if std::env::var_os(CHILD_FD_ENV).is_none() || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let fd_text = env_var(CHILD_FD_ENV)?;
    let fd: i32 = fd_text
        .parse()
        .ok()
        .filter(|fd| *fd > 2)
        .ok_or_else(|| Error::Env {
            var: CHILD_FD_ENV,
            reason: format!("{fd_text:?} is not a descriptor number above 2"),
        })?;
    let parent_text = env_var(PARENT_PID_ENV)?;
    let parent_pid: i32 = parent_text.parse().map_err(|_| Error::Env {
        var: PARENT_PID_ENV,
        reason: format!("{parent_text:?} is not a pid"),
    })?;
    // A terminal's Ctrl-C reaches every process of its foreground group, this child too: the
    // root alone answers it, by cancelling the tree gracefully (this actor's cleanup runs, and
    // a second Ctrl-C makes the root hard-kill it). Ignored here, first thing, and before a
    // Python child's interpreter starts (CPython keeps an ignored SIGINT ignored).
    // SAFETY: `signal` with SIG_IGN installs no handler (no code runs on the signal); nothing
    // else in this process looks at SIGINT's disposition yet.
    #[allow(unsafe_code)]
    let ignored = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if ignored == libc::SIG_ERR {
        // Not fatal: the child then ends on a terminal's Ctrl-C, as before.
        eprintln!(
            "harrow child process {}: cannot ignore SIGINT: {}",
            std::process::id(),
            std::io::Error::last_os_error()
        );
    }
    // Race-free orphan check: set the death signal first, then look at who the parent is. (The
    // parent starts its children with `posix_spawn`, which cannot set it: this is where it is
    // armed. A parent that died before this line is caught by the check.)
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(
        |e| Error::Io {
            what: "cannot set the parent-death signal",
            source: e.into(),
        },
    )?;
    let actual = rustix::process::getppid().map_or(0, |p| p.as_raw_pid());
    if actual != parent_pid {
        return Err(Error::ParentGone {
            expected: parent_pid,
            actual,
        });
    }
    let mut spec = SpawnSpec::decode(&env_var(CHILD_SPEC_ENV)?).map_err(|e| Error::Spec {
        var: CHILD_SPEC_ENV,
        reason: e.to_string(),
    })?;
    let owned = adopt_fd(fd)?;
    let stat = rustix::fs::fstat(&owned).map_err(|e| Error::Fd {
        fd,
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(Error::Fd {
            fd,
            source: std::io::Error::other("not a socket"),
        });
    }
    let shm_fd = fd_from_env(CHILD_SHM_FD_ENV, &[fd])?;
    let shm = match shm_fd {
        None => None,
        Some(shm_fd) => Some(
            shm::Segment::from_fd(adopt_fd(shm_fd)?).map_err(|e| Error::Fd {
                fd: shm_fd,
                source: e,
            })?,
        ),
    };
    let taken: Vec<i32> = [Some(fd), shm_fd].into_iter().flatten().collect();
    if let Some(tree_fd) = fd_from_env(CHILD_TREE_FD_ENV, &taken)? {
        spec = spec.with_tree_grant(read_grant(tree_fd)?);
    }
    match std::env::var(CHILD_CORES_SPARE_ENV).as_deref() {
        Ok("1") => harrow_runtime_core::ipc::park::spin::inherit_others_leave_a_core(true),
        Ok("0") => harrow_runtime_core::ipc::park::spin::inherit_others_leave_a_core(false),
        // A hint only: the child then judges alone.
        _ => {}
    }
    remove_bootstrap_env();
    Ok(Some(ChildBootstrap {
        spec,
        stream: UnixStream::from(owned),
        shm,
        parent_pid,
    }))
}

/// The descriptor number in `var`, if it is set: above 2, and none of `taken`.
fn fd_from_env(var: &'static str, taken: &[i32]) -> Result<Option<i32>> {
    let Ok(text) = std::env::var(var) else {
        return Ok(None);
    };
    text.parse()
        .ok()
        .filter(|n| *n > 2 && !taken.contains(n))
        .map(Some)
        .ok_or_else(|| Error::Env {
            var,
            reason: format!("{text:?} is not a descriptor number above 2 of its own"),
        })
}

/// Reads the tree's discovery data the parent left at `fd` (a sealed `memfd`, or a pipe whose
/// write end the parent closed), and closes it.
fn read_grant(fd: i32) -> Result<TreeGrant> {
    use std::io::{Read, Seek};
    let bad = |reason: String| Error::Grant { fd, reason };
    let mut file = std::fs::File::from(adopt_fd(fd)?);
    // A memfd from its start (the parent's writes moved the offset it shares with this
    // descriptor); a pipe cannot seek, and is read from where it is.
    match file.rewind() {
        Err(e) if e.raw_os_error() != Some(libc::ESPIPE) => return Err(bad(e.to_string())),
        _ => {}
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(TreeGrant::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() > TreeGrant::MAX_BYTES {
        return Err(bad(format!(
            "more than {} bytes: a grant holds at most that",
            TreeGrant::MAX_BYTES
        )));
    }
    TreeGrant::from_bytes(&bytes).map_err(|e| match e {
        harrow_runtime_core::SpecError::Grant(why) => bad(why),
        other => bad(other.to_string()),
    })
}

/// Takes ownership of a descriptor the parent left open for this process, and makes it
/// close-on-exec (programs this child starts must not inherit it).
fn adopt_fd(fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of a descriptor number; it touches no memory.
    #[allow(unsafe_code)]
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(Error::Fd {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process by its parent for the
    // channel alone; `TAKEN` makes sure the bootstrap, and so this adoption, happens once, and
    // nothing else in this process owns it.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| Error::Fd {
        fd,
        source: e.into(),
    })?;
    Ok(owned)
}

fn remove_bootstrap_env() {
    let single_threaded = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() == 1)
        .unwrap_or(false);
    if !single_threaded {
        // Our own spawns set these variables explicitly, so leaving them is harmless to them.
        return;
    }
    for var in [
        CHILD_FD_ENV,
        CHILD_SHM_FD_ENV,
        CHILD_SPEC_ENV,
        PARENT_PID_ENV,
        CHILD_CORES_SPARE_ENV,
        CHILD_TREE_FD_ENV,
        crate::CHILD_PYTHON_ENV,
    ] {
        // SAFETY: this process has a single thread (checked just above), so nothing can read the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(var)
        };
    }
}

/// Hands control to the harrow runtime when this process is a child actor; returns at once
/// otherwise. Call it first thing in `main`, before any thread is started:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use harrow_runtime_core::portal::FnRegistry;
/// # fn build_registry() -> Arc<FnRegistry> { Arc::new(FnRegistry::new()) }
/// fn main() {
///     harrow_spawn_process::maybe_run_child(build_registry);
///     // ... the program proper: run_root(...) and start actors on ProcessBackend
/// }
/// ```
///
/// In a child, `resolver` builds the functions the actor serves (usually the same registry the
/// parent registers), the actor runs until cancelled or orphaned, and the process exits: status
/// 0 after a cancel or a lost parent, [`EXIT_HANDSHAKE_FAILED`] if the `Hello` exchange failed,
/// [`EXIT_BOOTSTRAP_FAILED`] (with a message on stderr) if the bootstrap was unusable, and
/// [`EXIT_PYTHON_EXIT`] for a Python process actor that called `os._exit()`. With the
/// `child-log` feature and `RUST_LOG` set, a `tracing` fmt subscriber writing to stderr is
/// installed; events carry the actor's span.
///
/// A child started by the Python process backend (feature `python`, `PyProcessBackend`) serves
/// Python functions instead (`resolver` is not called); in a binary built without that feature
/// such a child exits with [`EXIT_BOOTSTRAP_FAILED`] and says why.
pub fn maybe_run_child<F, R>(resolver: F)
where
    F: FnOnce() -> R,
    R: IntoResolver,
{
    maybe_run_child_then(resolver, run_python)
}

/// [`maybe_run_child`], with `python` running the child of a Python actor.
pub(crate) fn maybe_run_child_then<F, R>(
    resolver: F,
    python_child: impl FnOnce(ChildBootstrap) -> i32,
) where
    F: FnOnce() -> R,
    R: IntoResolver,
{
    let python = std::env::var_os(crate::CHILD_PYTHON_ENV).is_some_and(|v| v == "1");
    let boot = match take_bootstrap() {
        Ok(None) => return,
        Ok(Some(boot)) => boot,
        Err(e) => {
            eprintln!("harrow child process {}: {e}", std::process::id());
            std::process::exit(EXIT_BOOTSTRAP_FAILED);
        }
    };
    if python {
        std::process::exit(python_child(boot));
    }
    let code = run_child(boot, resolver().into_resolver());
    std::process::exit(code)
}

#[cfg(feature = "python")]
fn run_python(boot: ChildBootstrap) -> i32 {
    crate::python::run_python_child(boot, |_| {})
}

#[cfg(not(feature = "python"))]
fn run_python(boot: ChildBootstrap) -> i32 {
    eprintln!(
        "harrow child {}: started for a Python actor, but this program was built without \
         harrow-spawn-process's `python` feature",
        boot.spec.id
    );
    EXIT_BOOTSTRAP_FAILED
}

/// Runs the actor of `boot` serving `resolver` on this thread until it ends; returns the exit
/// status the process should end with (see [`maybe_run_child`]).
pub fn run_child(boot: ChildBootstrap, resolver: Arc<dyn Resolver>) -> i32 {
    run_child_as(boot, resolver, "process", None)
}

/// [`run_child`] reporting `backend` as the child's backend.
pub(crate) fn run_child_as(
    boot: ChildBootstrap,
    resolver: Arc<dyn Resolver>,
    backend: &str,
    codriver: Option<&harrow_runtime_core::CoDriver>,
) -> i32 {
    init_tracing();
    let name = boot.spec.id.clone();
    let made = match boot.shm {
        Some(segment) => shm::channel(
            boot.stream,
            segment,
            shm::Side::Second,
            CodecConfig::default(),
        ),
        None => unix::from_stream(boot.stream, CodecConfig::default()),
    };
    let channel = match made {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("harrow child {name}: cannot use the inherited channel: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let exit = match codriver {
        Some(co) => harrow_runtime_core::bootstrap::run_child_codriven(
            channel, &boot.spec, backend, resolver, co,
        ),
        None => harrow_runtime_core::bootstrap::run_child(channel, &boot.spec, backend, resolver),
    };
    let code = match exit {
        ActorExit::HandshakeFailed(why) => {
            eprintln!("harrow child {name}: handshake with the parent failed: {why}");
            EXIT_HANDSHAKE_FAILED
        }
        _ => 0,
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    code
}

#[cfg(feature = "child-log")]
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
}

#[cfg(not(feature = "child-log"))]
fn init_tracing() {}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    use super::*;

    /// A `memfd` holding `bytes`, as the parent leaves a grant (unsealed here).
    fn memfd_with(bytes: &[u8]) -> i32 {
        let fd = rustix::fs::memfd_create("harrow-tree-test", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd_create");
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).expect("write");
        OwnedFd::from(file).into_raw_fd()
    }

    /// A grant as the runtime encodes one (bincode's standard configuration: each length one
    /// byte below 251): tree id, secret, runtime directory, root pid, host domain. A change of
    /// that layout fails the test below, as it should: parent and child must agree on it.
    fn grant_bytes() -> Vec<u8> {
        let mut b = vec![32];
        b.extend_from_slice(b"0123456789abcdef0123456789abcdef");
        b.push(32);
        b.extend_from_slice(&[0x5a; 32]);
        let dir = b"/tmp/harrow-0123456789abcdef";
        b.push(dir.len() as u8);
        b.extend_from_slice(dir);
        b.push(42);
        b.push(16);
        b.extend_from_slice(b"fedcba9876543210");
        b
    }

    #[test]
    fn a_grant_goes_through_a_memfd_or_a_pipe() {
        let bytes = grant_bytes();
        TreeGrant::from_bytes(&bytes).expect("a well-formed grant");
        let memfd = crate::grant_memfd(&bytes).expect("memfd");
        let pipe = crate::grant_pipe(&bytes).expect("pipe");
        for (fd, how) in [(memfd, "memfd"), (pipe, "pipe")] {
            let got = read_grant(fd.into_raw_fd()).unwrap_or_else(|e| panic!("{how}: {e}"));
            assert_eq!(got.to_bytes().unwrap(), bytes, "{how}");
        }
    }

    #[test]
    fn a_grant_in_a_pipe_is_read_to_its_end() {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        rustix::io::write(&write, &[7; 40]).expect("write");
        drop(write);
        match read_grant(read.into_raw_fd()) {
            Err(e @ Error::Grant { .. }) => {
                assert!(e.to_string().contains("7 trailing bytes"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let big = vec![0; TreeGrant::MAX_BYTES + 1];
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(write);
            let _ = file.write_all(&big);
        });
        match read_grant(read.into_raw_fd()) {
            Err(e @ Error::Grant { .. }) => assert!(e.to_string().contains("at most"), "{e}"),
            other => panic!("{other:?}"),
        }
        writer
            .join()
            .expect("the writer ends once the reader closed");
    }

    #[test]
    fn a_grant_that_is_not_one_is_an_error_naming_its_descriptor() {
        for (bytes, why) in [
            (vec![], "not a tree grant"),
            (vec![7; 40], "7 trailing bytes"),
            (vec![0; TreeGrant::MAX_BYTES + 1], "at most"),
        ] {
            let fd = memfd_with(&bytes);
            match read_grant(fd) {
                Err(e @ Error::Grant { fd: at, .. }) => {
                    assert_eq!(at, fd);
                    assert!(e.to_string().contains(why), "{e} does not say {why:?}");
                }
                other => panic!("{} bytes: {other:?}", bytes.len()),
            }
        }
    }
}
