//! The parent's handle on one remote child: the launcher process (killed and reaped, never left
//! behind), the optional remote kill, the bounded join.

use std::os::fd::OwnedFd;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use harrow_runtime_core::ipc::{ActorId, Channel};
use harrow_runtime_core::{BoxFuture, Child, DedicatedThread, Exit, move_on_after};

use crate::launch::StderrTail;

/// Without a pidfd (kernels before 5.3), how often a wait looks at the launcher.
const NO_PIDFD_POLL: Duration = Duration::from_millis(10);
/// The longest a join waits for the stderr thread after the launcher ended.
const STDERR_GRACE: Duration = Duration::from_millis(500);
/// How long past its bound a join after a hard kill waits for the remote kill (a second
/// launcher run: an ssh connection takes about a second). With [`STDERR_GRACE`] it stays
/// within the overrun the runtime allows a join (the larger of its bound and 2 s).
const KILL_OVERRUN: Duration = Duration::from_secs(1);

/// One launcher process: killed and reaped when dropped (a reaper thread waits for it, so a drop
/// never blocks).
#[derive(Debug)]
pub(crate) struct Launched {
    proc: Option<std::process::Child>,
    pid: u32,
    pidfd: Option<Async<OwnedFd>>,
    status: Option<ExitStatus>,
    stderr: Option<DedicatedThread<()>>,
    killed: bool,
}

impl Launched {
    pub(crate) fn new(proc: std::process::Child) -> Self {
        let pid = proc.id();
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .and_then(|fd| Async::new(fd).ok());
        Launched {
            proc: Some(proc),
            pid,
            pidfd,
            status: None,
            stderr: None,
            killed: false,
        }
    }

    pub(crate) fn set_stderr_thread(&mut self, thread: DedicatedThread<()>) {
        self.stderr = Some(thread);
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(proc) = self.proc.as_mut()
        {
            match proc.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) => {}
                // Reaped elsewhere (SIGCHLD ignored): it is gone.
                Err(_) => self.status = Some(std::os::unix::process::ExitStatusExt::from_raw(0)),
            }
        }
        self.status
    }

    /// Waits until the launcher has ended (and is reaped) or `deadline`.
    pub(crate) async fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
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
                Some(fd) => {
                    let _ = move_on_after(left, fd.readable()).await;
                }
                None => {
                    Timer::after(NO_PIDFD_POLL.min(left)).await;
                }
            }
        }
    }

    /// Waits at most `bound` for the launcher to end; says how it ended, for error messages.
    pub(crate) async fn wait_briefly(&mut self, bound: Duration) -> String {
        match self
            .wait_until(harrow_runtime_core::ipc::wait::instant_after(bound))
            .await
        {
            Some(status) => status.to_string(),
            None => format!("still running after {bound:?}"),
        }
    }

    /// Waits at most `bound` for the stderr thread (it ends when every holder of the launcher's
    /// stderr has exited).
    pub(crate) async fn finish_stderr(&mut self, bound: Duration) -> bool {
        match self.stderr.as_mut() {
            Some(t) => !matches!(t.join(bound).await, harrow_runtime_core::Joined::Running),
            None => true,
        }
    }

    /// SIGKILLs the launcher unless it has already been reaped. Never blocks.
    pub(crate) fn kill(&mut self) {
        if self.try_reap().is_some() {
            return;
        }
        if let Some(proc) = self.proc.as_mut() {
            let _ = proc.kill();
            self.killed = true;
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.try_reap().is_some() {
            return;
        }
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.kill();
            // After SIGKILL the wait is short; a thread takes it so that a drop never blocks.
            let _ = std::thread::Builder::new()
                .name("hw-remote-reap".into())
                .spawn(move || {
                    let _ = proc.wait();
                });
        }
        if let Some(mut t) = self.stderr.take() {
            t.detach();
        }
    }
}

/// The parent's handle on a remote child.
#[derive(Debug)]
pub(crate) struct RemoteChild {
    id: ActorId,
    channel: Option<Channel>,
    launched: Launched,
    launcher: String,
    remote_pid: u32,
    /// The command that kills the remote process through the launcher, if enabled.
    kill_cmd: Option<Command>,
    /// That command, once run.
    killer: Option<Launched>,
    /// Why the remote kill could not run, when it could not.
    kill_error: Option<String>,
    tail: Arc<StderrTail>,
}

impl RemoteChild {
    pub(crate) fn new(
        id: ActorId,
        channel: Channel,
        launched: Launched,
        launcher: String,
        remote_pid: u32,
        kill_cmd: Option<Command>,
        tail: Arc<StderrTail>,
    ) -> Self {
        RemoteChild {
            id,
            channel: Some(channel),
            launched,
            launcher,
            remote_pid,
            kill_cmd,
            killer: None,
            kill_error: None,
            tail,
        }
    }

    async fn join_inner(&mut self, bound: Duration) -> Exit {
        let deadline = harrow_runtime_core::ipc::wait::instant_after(bound);
        let Some(status) = self.launched.wait_until(deadline).await else {
            return Exit::Running;
        };
        // Whether the remote kill, if there was one, is known to have run.
        let unconfirmed = match self.killer.as_mut() {
            None => self.kill_error.clone(),
            Some(killer) => match killer.wait_until(deadline + KILL_OVERRUN).await {
                Some(status) if status.success() => None,
                Some(status) => Some(format!("the remote kill ended with {status}")),
                None => {
                    killer.kill();
                    Some(format!(
                        "the remote kill did not finish within {:?}",
                        bound + KILL_OVERRUN
                    ))
                }
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.launched.finish_stderr(left.max(STDERR_GRACE)).await;
        // Killed by this side's SIGKILL, not ended by itself just before it (a child that died
        // before its `Hello`: its launcher's status and stderr say why, not "killed").
        let killed_here = self.launched.killed
            && std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
        if killed_here {
            match unconfirmed {
                None => Exit::Killed,
                // The launcher is gone, the remote process perhaps not: said so, not `Killed`.
                Some(why) => Exit::Leaked(format!(
                    "remote pid {} via `{}`: its launcher was killed, but {why}; the remote \
                     program ends by itself once it finds its input closed (within its \
                     teardown bound and grace)",
                    self.remote_pid, self.launcher
                )),
            }
        } else if status.success() {
            Exit::Exited
        } else {
            // OpenSSH's 255 is its own failure, or a remote program ended by a signal (the
            // signal is not passed on): say both, so that a SIGKILLed remote actor does not
            // read as a broken ssh alone.
            let hint = if status.code() == Some(255) && self.launcher.contains("ssh") {
                " (ssh exits with 255 when its connection failed or when the remote program \
                 was killed by a signal)"
            } else {
                ""
            };
            Exit::Failed(format!(
                "the launcher `{}` ended with {status}{hint}; its stderr: {}",
                self.launcher,
                self.tail.text()
            ))
        }
    }
}

impl Child for RemoteChild {
    fn id(&self) -> &ActorId {
        &self.id
    }

    fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    fn hard_kill(&mut self) -> BoxFuture<'_, Result<(), String>> {
        self.launched.kill();
        if let Some(mut cmd) = self.kill_cmd.take() {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match cmd.spawn() {
                Ok(p) => self.killer = Some(Launched::new(p)),
                Err(e) => {
                    tracing::warn!(actor = %self.id, error = %e, "cannot run the remote kill");
                    self.kill_error = Some(format!("the remote kill could not run: {e}"));
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn join(&mut self, bound: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(self.join_inner(bound))
    }

    fn describe(&self) -> String {
        format!(
            "remote actor {} via `{}` (launcher pid {}, remote pid {})",
            self.id,
            self.launcher,
            self.launched.pid(),
            self.remote_pid
        )
    }
}
