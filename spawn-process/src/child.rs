//! The parent's handle on one child process: reaping, the hard kill, the bounded join.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use harrow_runtime_core::ipc::{ActorId, Channel};
use harrow_runtime_core::{BoxFuture, Child, Exit, move_on_after};

use crate::output::Forwarder;

/// How often the fallback wait (no pidfd: a kernel older than 5.3) checks the child.
const FALLBACK_POLL: Duration = Duration::from_millis(5);

/// The longest a join waits for the output forwarder after the child was reaped, when the join's
/// own bound is shorter. Output from a dead child is at most a pipe buffer away.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct ProcessChild {
    pub(crate) id: ActorId,
    pub(crate) channel: Option<Channel>,
    /// `Some` until dropped.
    pub(crate) child: Option<crate::launch::Process>,
    pub(crate) pid: u32,
    /// Readable once the child has exited (a wake-up without polling); `None` on old kernels.
    pub(crate) pidfd: Option<Async<OwnedFd>>,
    pub(crate) forwarder: Option<Forwarder>,
    pub(crate) program: String,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) killed: bool,
}

impl ProcessChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the child if it has exited.
    fn try_reap(&mut self) -> Option<ExitStatus> {
        if let (None, Some(child)) = (self.status, self.child.as_mut()) {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::debug!(actor = %self.id, pid = self.pid(), %status, "child process reaped");
                    self.status = Some(status);
                }
                Ok(None) => {}
                Err(e) => {
                    // ECHILD: someone else reaped it (a SIGCHLD set to SIG_IGN); it is gone.
                    tracing::warn!(actor = %self.id, error = %e, "cannot wait for child process");
                    self.status = Some(std::os::unix::process::ExitStatusExt::from_raw(0));
                }
            }
        }
        self.status
    }

    /// Waits (without polling, when a pidfd is there) until the child can be reaped or `deadline`.
    async fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap() {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let left = deadline - now;
            match &self.pidfd {
                Some(pidfd) => {
                    let readable = move_on_after(left, pidfd.readable())
                        .await
                        .is_some_and(|r| r.is_ok());
                    if !readable && Instant::now() >= deadline {
                        return self.try_reap();
                    }
                }
                None => {
                    Timer::after(FALLBACK_POLL.min(left)).await;
                }
            }
        }
    }

    fn exit_of(&self, status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        if status.success() {
            return Exit::Exited;
        }
        if self.killed && status.signal() == Some(libc::SIGKILL) {
            return Exit::Killed;
        }
        Exit::Failed(format!(
            "process {} ({}) {}",
            self.pid(),
            self.program,
            describe_status(status)
        ))
    }
}

pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        format!(
            "was killed by signal {sig} ({}){}",
            signal_name(sig),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        )
    } else {
        format!("ended with {status}")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

impl Child for ProcessChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        let result = if self.try_reap().is_some() {
            Ok(())
        } else {
            // The pid cannot have been reused: it is ours until we reap it.
            self.killed = true;
            tracing::debug!(actor = %self.id, pid = self.pid(), "SIGKILL");
            match self.child.as_mut() {
                Some(child) => child.kill(),
                None => Ok(()),
            }
            .map_err(|e| format!("cannot SIGKILL process {}: {e}", self.pid()))
        };
        Box::pin(async move { result })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let deadline = harrow_runtime_core::ipc::wait::instant_after(bound);
            let Some(status) = self.wait_exit(deadline).await else {
                return Exit::Running;
            };
            if let Some(fwd) = &mut self.forwarder {
                // The child is gone; its last output is in the pipes: let it through first.
                let left = deadline.saturating_duration_since(Instant::now());
                if fwd.finish(left.max(OUTPUT_GRACE)).await {
                    self.forwarder = None;
                } else {
                    tracing::debug!(actor = %self.id, "output pipes still open after exit (inherited by a descendant?)");
                }
            }
            self.exit_of(status)
        })
    }

    fn describe(&self) -> String {
        format!(
            "process actor {} (pid {}, {}{})",
            self.id,
            self.pid(),
            self.program,
            if self.killed { ", SIGKILLed" } else { "" }
        )
    }
}

impl Drop for ProcessChild {
    fn drop(&mut self) {
        if self.try_reap().is_some() {
            return;
        }
        // Dropped while running (the runtime gave up on it, or a spawn was abandoned): no
        // process outlives its handle, and none is left a zombie.
        tracing::warn!(actor = %self.id, pid = self.pid(), "process actor dropped while running; SIGKILL");
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        if self.try_reap().is_some() {
            return;
        }
        // SIGKILL is not instant (a process in uninterruptible sleep): reap it on a thread of its
        // own, which ends as soon as the kernel has ended the process.
        let Some(mut child) = self.child.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("harrow-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
        if spawned.is_err() {
            tracing::warn!(actor = %self.id, "cannot start a reaper thread; the process may stay a zombie");
        }
    }
}
