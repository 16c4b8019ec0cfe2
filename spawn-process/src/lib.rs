//! `ProcessBackend`: harrow actors in child processes (the same binary re-executed).
//!
//! Spawning an actor re-executes a program — by default the running binary
//! ([`std::env::current_exe`]), or one set with [`ProcessBackend::with_program`] — with the
//! child's end of a fresh socketpair inherited as fd 3, a shared-memory segment as fd 4 (the
//! channel's frames go through two rings in it, the socket carrying only wake-ups and the
//! hang-up: see [`harrow_runtime_core::ipc::shm`]; [`ProcessBackend::with_shared_memory`] or
//! [`PROCESS_SHM_ENV`]`=0` keep them on the socket), the actor's spec in the environment, and,
//! in a tree whose root has discovery data, that data (its secret included) in a sealed `memfd`
//! (a pipe where `memfd_create` is not allowed) at fd 5 ([`CHILD_TREE_FD`]), which the child
//! reads and closes before its actor runs: it listens for its peers before its `Hello`, and its
//! parent sends it no call for the tree. There is no listening socket for the channel, so
//! nothing else can connect to it. The child's `main` hands control to the runtime with one
//! call, [`maybe_run_child`], which returns at once in a parent:
//!
//! ```no_run
//! use std::sync::Arc;
//! use harrow_runtime_core::{run_root, ActorSpec, RootConfig};
//! use harrow_runtime_core::portal::FnRegistry;
//! use harrow_runtime_core::ipc::Value;
//! use harrow_spawn_process::ProcessBackend;
//!
//! fn registry() -> Arc<FnRegistry> {
//!     let mut reg = FnRegistry::new();
//!     reg.unary("math:double", |v: Value| async move {
//!         Ok(Value::Int(v.as_i64().unwrap_or(0) * 2))
//!     }).unwrap();
//!     Arc::new(reg)
//! }
//!
//! fn main() {
//!     // In a child: serve `registry()` until cancelled, then exit. In the parent: return.
//!     harrow_spawn_process::maybe_run_child(registry);
//!
//!     let out = run_root(RootConfig::default(), |n| async move {
//!         let child = n.start_actor("doubler", ProcessBackend::shared(), ActorSpec::new()).await?;
//!         Ok(child.run("math:double", Value::Int(21)).await?)
//!     }).unwrap();
//!     assert_eq!(out, Value::Int(42));
//! }
//! ```
//!
//! What the backend guarantees:
//!
//! - **Hard kill** is SIGKILL; every child is reaped (exit is awaited through a pidfd, without
//!   polling), so no zombie is ever left, even for a child whose handle is dropped.
//! - **Orphan safety**: a child arms the parent-death signal SIGKILL first thing, before its
//!   actor starts, then checks that the parent that started it is still there (and exits if not),
//!   and exits by itself when its channel to the parent breaks. (Linux sends the parent-death
//!   signal when the *thread* that spawned the child ends; harrow spawns from the actor's own
//!   thread, which outlives its children.)
//! - **Spawning** uses `posix_spawn(3)`, which places the socket and the segment at their
//!   numbers itself: the parent is not forked, so a spawn's cost does not grow with the parent's
//!   memory, and no code of ours runs between the spawn and the program's start.
//! - **Output**: each line a child writes to stdout or stderr reaches the parent's, prefixed with
//!   `[actor-name] ` (nested actors stack their prefixes); [`ProcessBackend::with_output_prefix`]
//!   `(false)` lets children inherit the parent's stdout and stderr instead.
//! - **Tracing**: with the `child-log` feature and `RUST_LOG` set, a child logs to stderr, inside
//!   its actor's span.
//! - A child that crashes, exits before `Hello`, writes garbage or speaks another protocol
//!   version fails `start_actor` with an error naming the actor (the runtime's bounded
//!   handshake), and is killed and reaped.
//!
//! The resolver in an [`ActorSpec`](harrow_runtime_core::ActorSpec) is not used: a child serves
//! what its own `main` passes to [`maybe_run_child`]. Spec `params` reach the child
//! ([`ChildBootstrap::spec`]).
//!
//! With the `python` feature, `PyProcessBackend` (`ProcessBackend::python()`) starts Python
//! actors the same way: the child runs the `harrow` Python API in CPython's main interpreter.
#![deny(unsafe_code)]

mod bootstrap;
mod child;
mod error;
mod launch;
mod output;
#[cfg(feature = "python")]
mod python;
mod spec;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use async_io::Async;
use harrow_runtime_core::ipc::codec::CodecConfig;
use harrow_runtime_core::ipc::{shm, unix};
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, HardKill, SpawnBackend, SpawnError, SpawnSpec,
};

pub use bootstrap::{
    ChildBootstrap, EXIT_BOOTSTRAP_FAILED, EXIT_HANDSHAKE_FAILED, EXIT_PYTHON_EXIT, IntoResolver,
    is_child, maybe_run_child, run_child, take_bootstrap,
};
pub use error::{Error, Result};
/// What the Python code of a Python process actor can start children on, by name (see
/// [`maybe_run_child_offering`]).
#[cfg(feature = "python")]
pub use harrow_python::nest::Offers as PyOffers;
#[cfg(feature = "python")]
pub use python::{PyProcessBackend, maybe_run_child_offering};
pub use spec::{
    CHILD_CORES_SPARE_ENV, CHILD_FD, CHILD_FD_ENV, CHILD_PYTHON_ENV, CHILD_SHM_FD,
    CHILD_SHM_FD_ENV, CHILD_SPEC_ENV, CHILD_TREE_FD, CHILD_TREE_FD_ENV, PARENT_PID_ENV,
    PROCESS_SHM_ENV,
};

use crate::child::ProcessChild;
use crate::output::Forwarder;

/// Actors in child processes, running Rust functions. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    program: Option<PathBuf>,
    output_prefix: bool,
    env: Vec<(OsString, OsString)>,
    shared_memory: Option<bool>,
}

impl Default for ProcessBackend {
    fn default() -> Self {
        ProcessBackend {
            program: None,
            output_prefix: true,
            env: Vec::new(),
            shared_memory: None,
        }
    }
}

impl ProcessBackend {
    /// Re-executes the running binary, with prefixed output.
    pub fn new() -> Self {
        ProcessBackend::default()
    }

    /// A new default backend, ready to hand to a nursery.
    pub fn shared() -> Arc<dyn SpawnBackend> {
        Arc::new(ProcessBackend::new())
    }

    /// Starts children from `program` instead of the running binary. Its `main` must call
    /// [`maybe_run_child`] first.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Whether each line of a child's stdout and stderr is prefixed with `[actor-name] `
    /// (default `true`); with `false` children write straight to the parent's stdout and stderr.
    pub fn with_output_prefix(mut self, on: bool) -> Self {
        self.output_prefix = on;
        self
    }

    /// Sets an environment variable for every child (they otherwise inherit the parent's).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Whether a child's channel runs through a shared-memory segment beside its socket
    /// ([`shm`]; the default, unless [`PROCESS_SHM_ENV`] is `0`)
    /// or through the socket alone. Where a segment cannot be made (no `memfd`), the socket
    /// alone is used either way.
    pub fn with_shared_memory(mut self, on: bool) -> Self {
        self.shared_memory = Some(on);
        self
    }

    fn uses_shared_memory(&self) -> bool {
        self.shared_memory.unwrap_or_else(shm::enabled_by_env)
    }

    /// The program children are started from, if set.
    pub fn program(&self) -> Option<&std::path::Path> {
        self.program.as_deref()
    }

    /// Wraps this backend for a nursery.
    pub fn into_shared(self) -> Arc<dyn SpawnBackend> {
        Arc::new(self)
    }
}

impl SpawnBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_hard_kill(HardKill::Kills)
            .with_in_process(false)
            .with_nested(true)
            .with_tree_at_spawn(true)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        let result = self.spawn_now(spec);
        Box::pin(async move { result })
    }
}

impl ProcessBackend {
    pub(crate) fn spawn_now(&self, spec: SpawnSpec) -> Result<Box<dyn Child>, SpawnError> {
        let id = spec.id.clone();
        let failed = |reason: String| SpawnError::Failed {
            actor: id.clone(),
            reason,
        };
        if crate::bootstrap::is_child() {
            // Started as a child actor, and its program went on to its own work instead of
            // running it: each generation would start the next, without end.
            return Err(SpawnError::Unavailable {
                actor: id.clone(),
                backend: "process",
                reason: format!(
                    "this process ({}) was started as a harrow child actor, but its program \
                     never ran the actor: call harrow::maybe_run_child first thing in main",
                    std::process::id()
                ),
            });
        }
        let program = match &self.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| SpawnError::Unavailable {
                actor: id.clone(),
                backend: "process",
                reason: format!("cannot find the running executable to re-execute: {e}"),
            })?,
        };
        let encoded = spec.encode().map_err(|e| SpawnError::BadSpec {
            actor: id.clone(),
            reason: e.to_string(),
        })?;
        let (parent_sock, child_sock) =
            UnixStream::pair().map_err(|e| failed(format!("cannot make a socketpair: {e}")))?;
        let segment = self.segment(&id);
        let parent_pid = rustix::process::getpid().as_raw_pid();
        let mut set_env: Vec<(OsString, OsString)> = vec![
            (CHILD_FD_ENV.into(), CHILD_FD.to_string().into()),
            (CHILD_SPEC_ENV.into(), encoded.into()),
            (PARENT_PID_ENV.into(), parent_pid.to_string().into()),
        ];
        set_env.extend(self.env.iter().cloned());
        // Set after the caller's variables: it is this process's reading of this machine.
        set_env.retain(|(k, _)| k != CHILD_CORES_SPARE_ENV);
        let spare = harrow_runtime_core::ipc::park::spin::others_leave_a_core();
        set_env.push((
            CHILD_CORES_SPARE_ENV.into(),
            u8::from(spare).to_string().into(),
        ));
        // Set after the caller's variables: only the parent decides the transport, and whether
        // it hands over the tree.
        // The tree's data goes in a descriptor only the child inherits: it holds the secret.
        let grant = match spec.tree_grant() {
            Some(grant) => Some(
                grant_fd(&grant).map_err(|e| failed(format!("cannot hand over the tree: {e}")))?,
            ),
            None => None,
        };
        set_env.retain(|(k, _)| k != CHILD_SHM_FD_ENV && k != CHILD_TREE_FD_ENV);
        let mut remove_env = Vec::new();
        let mut fds = vec![(child_sock.as_fd(), CHILD_FD)];
        match &segment {
            Some(segment) => {
                set_env.push((CHILD_SHM_FD_ENV.into(), CHILD_SHM_FD.to_string().into()));
                fds.push((segment.as_fd(), CHILD_SHM_FD));
            }
            None => remove_env.push(CHILD_SHM_FD_ENV.into()),
        }
        match &grant {
            Some(grant) => {
                set_env.push((CHILD_TREE_FD_ENV.into(), CHILD_TREE_FD.to_string().into()));
                fds.push((grant.as_fd(), CHILD_TREE_FD));
            }
            None => remove_env.push(CHILD_TREE_FD_ENV.into()),
        }
        let launched = launch::launch(&launch::Launch {
            program: &program,
            set_env,
            remove_env,
            fds,
            pipe_output: self.output_prefix,
        })
        .map_err(|e| failed(format!("cannot start {}: {e}", program.display())))?;
        // Only the child holds its end now: its exit is EOF on ours.
        drop(child_sock);
        let process = launched.process;
        let pid = process.id();
        let (stdout, stderr) = (launched.stdout, launched.stderr);
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .and_then(|fd| Async::new(fd).ok());
        // From here on, dropping `child` kills and reaps the process.
        let mut child = ProcessChild {
            id: id.clone(),
            channel: None,
            child: Some(process),
            pid,
            pidfd,
            forwarder: None,
            program: program.display().to_string(),
            status: None,
            killed: false,
        };
        if stdout.is_some() || stderr.is_some() {
            let fwd = Forwarder::start(&id.name, stdout, stderr)
                .map_err(|e| failed(format!("cannot start its output thread: {e}")))?;
            child.forwarder = Some(fwd);
        }
        let channel = match segment {
            Some(segment) => shm::channel(
                parent_sock,
                segment,
                shm::Side::First,
                CodecConfig::default(),
            ),
            None => unix::from_stream(parent_sock, CodecConfig::default()),
        }
        .map_err(|e| failed(format!("cannot register its channel: {e}")))?;
        child.channel = Some(channel);
        tracing::debug!(actor = %id, pid, program = %child.program, "process actor started");
        Ok(Box::new(child))
    }
}

/// A descriptor holding `grant`, close-on-exec (the spawn places it at [`CHILD_TREE_FD`]): a
/// sealed `memfd`, or where `memfd_create` is not allowed, the read end of a pipe that holds it
/// whole, its write end closed.
fn grant_fd(grant: &harrow_runtime_core::TreeGrant) -> std::io::Result<std::os::fd::OwnedFd> {
    let bytes = grant.to_bytes().map_err(std::io::Error::other)?;
    grant_memfd(&bytes).or_else(|e| {
        tracing::debug!(error = %e, "no memfd for the tree grant: a pipe");
        grant_pipe(&bytes)
    })
}

pub(crate) fn grant_memfd(bytes: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    use std::io::Write;
    let fd = rustix::fs::memfd_create(
        "harrow-tree",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(file.into())
}

/// The grant in a pipe: written without blocking, so a grant larger than the pipe holds is an
/// error rather than a hang (a pipe holds at least a page; a grant is a few hundred bytes).
pub(crate) fn grant_pipe(bytes: &[u8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::pipe::PipeFlags;
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let written = rustix::io::write(&write, bytes)?;
    if written != bytes.len() {
        return Err(std::io::Error::other(format!(
            "a tree grant of {} bytes does not fit in a pipe",
            bytes.len()
        )));
    }
    // The reader must block as usual (it reads to the end, which closing `write` marks).
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::empty())?;
    Ok(read)
}

impl ProcessBackend {
    /// The shared-memory segment for a child's channel; `None` for the socket alone.
    fn segment(&self, id: &impl std::fmt::Display) -> Option<shm::Segment> {
        if !self.uses_shared_memory() {
            return None;
        }
        match shm::Segment::new() {
            Ok(segment) => Some(segment),
            Err(e) => {
                tracing::debug!(actor = %id, error = %e, "no shared-memory segment: the socket alone");
                None
            }
        }
    }
}
