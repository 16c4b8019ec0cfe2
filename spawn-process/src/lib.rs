//! `ProcessBackend`: harrow actors in child processes (the same binary re-executed).
//!
//! Spawning an actor re-executes a program — by default the running binary
//! ([`std::env::current_exe`]), or one set with [`ProcessBackend::with_program`] — with the
//! child's end of a fresh socketpair inherited as fd 3, a shared-memory segment as fd 4 (the
//! channel's frames go through two rings in it, the socket carrying only wake-ups and the
//! hang-up: see [`harrow_runtime_core::ipc::shm`]; [`ProcessBackend::with_shared_memory`] or
//! [`PROCESS_SHM_ENV`]`=0` keep them on the socket) and the actor's spec in the environment.
//! There is no listening socket, so nothing else can connect. The child's `main` hands control
//! to the runtime with one call, [`maybe_run_child`], which returns at once in a parent:
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
//! - **Orphan safety**: a child gets the parent-death signal SIGKILL before it executes anything,
//!   and exits by itself when its channel to the parent breaks. (Linux sends the parent-death
//!   signal when the *thread* that spawned the child ends; harrow spawns from the actor's own
//!   thread, which outlives its children.)
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
mod output;
#[cfg(feature = "python")]
mod python;
mod spec;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_io::Async;
use harrow_runtime_core::ipc::codec::CodecConfig;
use harrow_runtime_core::ipc::{shm, unix};
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, HardKill, SpawnBackend, SpawnError, SpawnSpec,
};

pub use bootstrap::{
    ChildBootstrap, EXIT_BOOTSTRAP_FAILED, EXIT_HANDSHAKE_FAILED, IntoResolver, is_child,
    maybe_run_child, run_child, take_bootstrap,
};
pub use error::{Error, Result};
/// What the Python code of a Python process actor can start children on, by name (see
/// [`maybe_run_child_offering`]).
#[cfg(feature = "python")]
pub use harrow_python::nest::Offers as PyOffers;
#[cfg(feature = "python")]
pub use python::{PyProcessBackend, maybe_run_child_offering};
pub use spec::{
    CHILD_FD, CHILD_FD_ENV, CHILD_PYTHON_ENV, CHILD_SHM_FD, CHILD_SHM_FD_ENV, CHILD_SPEC_ENV,
    PARENT_PID_ENV, PROCESS_SHM_ENV,
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
        let mut cmd = Command::new(&program);
        cmd.env(CHILD_FD_ENV, CHILD_FD.to_string())
            .env(CHILD_SPEC_ENV, encoded)
            .env(PARENT_PID_ENV, parent_pid.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // Set after the caller's variables: only the parent decides the transport.
        cmd.env_remove(CHILD_SHM_FD_ENV);
        if segment.is_some() {
            cmd.env(CHILD_SHM_FD_ENV, CHILD_SHM_FD.to_string());
        }
        cmd.stdin(Stdio::null());
        if self.output_prefix {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let child_fd = child_sock.as_raw_fd();
        set_pre_exec(
            &mut cmd,
            child_fd,
            segment.as_ref().map(|(_, high)| high.as_raw_fd()),
            parent_pid,
        );
        let mut std_child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", program.display())))?;
        // Only the child holds its end now: its exit is EOF on ours.
        drop(child_sock);
        let pid = std_child.id();
        let (stdout, stderr) = (std_child.stdout.take(), std_child.stderr.take());
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .and_then(|fd| Async::new(fd).ok());
        // From here on, dropping `child` kills and reaps the process.
        let mut child = ProcessChild {
            id: id.clone(),
            channel: None,
            child: Some(std_child),
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
            Some((segment, _)) => shm::channel(
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

impl ProcessBackend {
    /// The shared-memory segment for a child's channel, and a copy of its descriptor numbered
    /// above every descriptor the child is given (so that placing the channel's socket at
    /// [`CHILD_FD`] cannot overwrite it); `None` for the socket alone.
    fn segment(&self, id: &impl std::fmt::Display) -> Option<(shm::Segment, std::os::fd::OwnedFd)> {
        if !self.uses_shared_memory() {
            return None;
        }
        let made = shm::Segment::new().and_then(|segment| {
            let high = rustix::io::fcntl_dupfd_cloexec(&segment, 64)?;
            Ok((segment, high))
        });
        match made {
            Ok(made) => Some(made),
            Err(e) => {
                tracing::debug!(actor = %id, error = %e, "no shared-memory segment: the socket alone");
                None
            }
        }
    }
}

/// Prepares the forked child before it executes the program: the parent-death signal, the
/// orphan check, the channel at fd [`CHILD_FD`] and the shared-memory segment (if any) at fd
/// [`CHILD_SHM_FD`], both without close-on-exec.
#[allow(unsafe_code)]
fn set_pre_exec(cmd: &mut Command, child_fd: RawFd, shm_fd: Option<RawFd>, parent_pid: i32) {
    let setup = move || -> io::Result<()> {
        // SAFETY: between fork and exec only async-signal-safe calls are allowed: these are
        // plain system calls on integers (prctl, getppid, fcntl, dup2), and the errors are built
        // from errno without allocating. `shm_fd` is a plain integer captured by copy.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed: then give up now.
            if libc::getppid() != parent_pid {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if child_fd == CHILD_FD {
                let flags = libc::fcntl(child_fd, libc::F_GETFD);
                if flags == -1
                    || libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, CHILD_FD) == -1 {
                // dup2 leaves the new descriptor without close-on-exec.
                return Err(io::Error::last_os_error());
            }
            // The segment's copy is numbered above 63, so the dup2 above left it alone.
            if let Some(shm_fd) = shm_fd {
                if libc::dup2(shm_fd, CHILD_SHM_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: `setup` runs in the forked child and only makes async-signal-safe system calls
    // (see above); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(setup);
    }
}
