//! `RemoteBackend`: harrow actors on other hosts, started through the launchers clusters already
//! run and trust — OpenSSH, `kubectl exec -i`, `srun`, `docker exec -i` — speaking the wire over
//! the launched program's stdin and stdout.
//!
//! harrow adds no daemon, no cluster manager and no authentication of its own: authentication,
//! encryption and placement belong to the launcher. The child is **the same binary as the
//! parent** (the process backend's re-exec contract), found at a configurable path on the remote
//! host and optionally uploaded there over the same launcher when it is missing or differs (by
//! SHA-256). Its `main` hands control to the runtime with [`maybe_run_child`] (which returns at
//! once anywhere else):
//!
//! ```no_run
//! use std::sync::Arc;
//! use harrow_runtime_core::{run_root, ActorSpec, RootConfig};
//! use harrow_runtime_core::portal::{FnRegistry, Resolver};
//! use harrow_runtime_core::ipc::Value;
//! use harrow_spawn_remote::RemoteBackend;
//!
//! fn registry() -> Arc<dyn Resolver> {
//!     let mut reg = FnRegistry::new();
//!     reg.unary("math:double", |v: Value| async move {
//!         Ok(Value::Int(v.as_i64().unwrap_or(0) * 2))
//!     }).unwrap();
//!     Arc::new(reg)
//! }
//!
//! fn main() {
//!     harrow_spawn_remote::maybe_run_child(registry);
//!     let backend = RemoteBackend::ssh("gpu-node-7").user("alice").upload(true).into_shared();
//!     let out = run_root(RootConfig::default(), |n| async move {
//!         let child = n.start_actor("doubler", backend, ActorSpec::new()).await?;
//!         Ok(child.run("math:double", Value::Int(21)).await?)
//!     }).unwrap();
//!     assert_eq!(out, Value::Int(42));
//! }
//! ```
//!
//! How a child starts: the parent runs the launcher with the remote command
//! `exec <remote path> --harrow-remote-child <heartbeat timeout ms>` (through `sh -c` for a generic launcher), writes
//! the encoded [`ChildSpec`](harrow_runtime_core::bootstrap::ChildSpec) as the first line of its
//! stdin, and reads its stdout up to the line `HARROW-REMOTE-CHILD <protocol> <pid>`, which the
//! child prints once it has moved its own stdout aside (to stderr, so that what the actor prints
//! cannot corrupt the wire). From there both pipes carry frames
//! ([`harrow_runtime_core::ipc::stream`]), and the runtime's `Hello` exchange follows.
//!
//! What the backend guarantees:
//!
//! - **Errors** name the actor and quote the launcher's stderr: a launcher that exits at once,
//!   prints something else than the start line, is refused by the host, or finds no binary,
//!   fails `start_actor` with [`SpawnError`] within
//!   [`RemoteBackend::start_timeout`].
//! - **Hard kill** kills the launcher (the remote child sees end of input and exits as an orphan
//!   does) and, for ssh (or with [`RemoteBackend::remote_kill`]), also kills the remote process
//!   through a second launcher run. The child is reported `Killed` once that run succeeded;
//!   when it failed, or did not finish within the hard-kill bound plus a second, the child is
//!   reported leaked, with the reason: its launcher is dead, its remote program perhaps not.
//!   A remote child whose input ended also exits by itself once its teardown bound has passed,
//!   even if its actor is stuck: no remote orphans.
//! - **Liveness**: idle links send heartbeats (`LinkConfig::heartbeat_interval`); a parent that sets
//!   `LinkConfig::heartbeat_timeout` (in `RootConfig::link_config`) detects a silent partition
//!   within it, and the remote child always watches its parent
//!   ([`RemoteBackend::child_heartbeat_timeout`], 30 s by default) and exits when cut off.
//! - **Output**: the remote child's stdout and stderr reach the parent's stderr, each line
//!   prefixed with `[actor-name] `.
//! - **Discovery**: a remote child begins a host domain of its own
//!   ([`Capabilities::other_host`](harrow_runtime_core::Capabilities::other_host)), with its own
//!   runtime directory on its host; it and its subtree find any actor of the tree and reach those
//!   of other domains through the tree's links (routed peer links), never over a socket of
//!   another host.
#![deny(unsafe_code)]

mod child;
mod launch;
mod remote;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use harrow_runtime_core::portal::LinkConfig;
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, HardKill, SpawnBackend, SpawnError, SpawnSpec,
};

/// How long, by default, a parent waits for a sign of life from a remote child before it ends
/// the link as broken (see [`RemoteBackend::heartbeat_timeout`]).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

pub use remote::{EXIT_BOOTSTRAP_FAILED, REMOTE_CHILD_ARG, START_LINE, is_child, maybe_run_child};

/// How a [`RemoteBackend`] reaches the other host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Launcher {
    /// OpenSSH's client.
    Ssh(SshTarget),
    /// Any program that runs a command elsewhere with its stdin and stdout connected, given as
    /// the argument prefix the remote command is appended to (as `sh -c <script>`).
    Command(Vec<OsString>),
}

/// Where and how `ssh` connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host name or address.
    pub host: String,
    /// The remote user (`-l`), if not the default.
    pub user: Option<String>,
    /// The port (`-p`), if not the default.
    pub port: Option<u16>,
    /// The private key (`-i`), if not the default ones.
    pub identity: Option<PathBuf>,
    /// Extra `-o` options (`"Name=value"`), after harrow's own.
    pub options: Vec<String>,
}

/// Actors on other hosts, started through a launcher. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct RemoteBackend {
    launcher: Launcher,
    remote_path: Option<String>,
    local_program: Option<PathBuf>,
    upload: bool,
    remote_kill: bool,
    start_timeout: Duration,
    upload_timeout: Duration,
    child_heartbeat_timeout: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
}

impl RemoteBackend {
    /// Actors on `host` over OpenSSH: `ssh -T -o BatchMode=yes host <command>`. No password or
    /// passphrase is ever asked (BatchMode): the key must be usable non-interactively (an agent,
    /// an unencrypted key, [`identity`](Self::identity)). The hard kill also kills the remote
    /// process through a second ssh run.
    pub fn ssh(host: impl Into<String>) -> Self {
        RemoteBackend::with_launcher(Launcher::Ssh(SshTarget {
            host: host.into(),
            user: None,
            port: None,
            identity: None,
            options: Vec::new(),
        }))
        .remote_kill(true)
    }

    /// Actors started by any launcher that connects stdio: `argv` is the prefix the remote
    /// command is appended to, for example `["kubectl", "exec", "-i", "my-pod", "--"]`,
    /// `["srun", "--nodes=1", "--ntasks=1"]` or `["docker", "exec", "-i", "box"]`. The remote
    /// side must have a POSIX `sh`.
    pub fn command<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        RemoteBackend::with_launcher(Launcher::Command(
            argv.into_iter().map(Into::into).collect(),
        ))
    }

    fn with_launcher(launcher: Launcher) -> Self {
        RemoteBackend {
            launcher,
            remote_path: None,
            local_program: None,
            upload: false,
            remote_kill: false,
            start_timeout: Duration::from_secs(4),
            upload_timeout: Duration::from_secs(60),
            child_heartbeat_timeout: Some(Duration::from_secs(30)),
            heartbeat_timeout: Some(DEFAULT_HEARTBEAT_TIMEOUT),
        }
    }

    fn ssh_target(&mut self) -> Option<&mut SshTarget> {
        match &mut self.launcher {
            Launcher::Ssh(t) => Some(t),
            Launcher::Command(_) => None,
        }
    }

    /// ssh: the remote user. Ignored for other launchers.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        if let Some(t) = self.ssh_target() {
            t.user = Some(user.into());
        }
        self
    }

    /// ssh: the port. Ignored for other launchers.
    pub fn port(mut self, port: u16) -> Self {
        if let Some(t) = self.ssh_target() {
            t.port = Some(port);
        }
        self
    }

    /// ssh: the private key file. Ignored for other launchers.
    pub fn identity(mut self, key: impl Into<PathBuf>) -> Self {
        if let Some(t) = self.ssh_target() {
            t.identity = Some(key.into());
        }
        self
    }

    /// ssh: one more `-o` option, such as `"UserKnownHostsFile=/path"`. Ignored for other
    /// launchers.
    pub fn ssh_option(mut self, option: impl Into<String>) -> Self {
        if let Some(t) = self.ssh_target() {
            t.options.push(option.into());
        }
        self
    }

    /// Where the binary is on the remote host (default: the local binary's own absolute path,
    /// as on a shared file system). A leading `~/` means the remote user's home.
    pub fn remote_path(mut self, path: impl Into<String>) -> Self {
        self.remote_path = Some(path.into());
        self
    }

    /// The local binary the child runs (uploaded, and hashed, from here; default: the running
    /// executable). Its `main` must call [`maybe_run_child`] first.
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.local_program = Some(path.into());
        self
    }

    /// Whether to upload the binary over the launcher before each start when the remote copy is
    /// missing or its SHA-256 differs (default false). A matching copy costs one launcher run.
    pub fn upload(mut self, on: bool) -> Self {
        self.upload = on;
        self
    }

    /// Whether the hard kill also runs `kill -KILL <pid>` on the remote side through the
    /// launcher (default: true for ssh, false otherwise; turn it on for `kubectl exec` and
    /// `docker exec`, where a second run reaches the same machine, not for `srun`, which may
    /// place it elsewhere).
    pub fn remote_kill(mut self, on: bool) -> Self {
        self.remote_kill = on;
        self
    }

    /// How long a start may take, from running the launcher to the child's start line
    /// (default 4 s). The nursery's bound on this backend's spawns and handshakes is raised to
    /// at least this plus a second (see [`SpawnBackend::link_config`]), so a slow launcher
    /// needs only this. ssh gets it as its `ConnectTimeout` too.
    pub fn start_timeout(mut self, bound: Duration) -> Self {
        self.start_timeout = bound;
        self
    }

    /// How long an upload's transfer may take, from the first byte sent to the remote side
    /// having stored the binary (default 60 s); the check before it (the launcher's start and
    /// the remote hash) is bounded by [`start_timeout`](Self::start_timeout). With
    /// [`upload`](Self::upload) on, the nursery's bound on this backend's spawns is raised by
    /// this much too.
    pub fn upload_timeout(mut self, bound: Duration) -> Self {
        self.upload_timeout = bound;
        self
    }

    /// How long a remote child waits for any sign of life (a message, a heartbeat) from its
    /// parent before it ends its link and exits (default 30 s; `None`: never). This is what
    /// keeps a child cut off by a partition from running on. The parent side's bound is its
    /// own `LinkConfig::heartbeat_timeout` (`RootConfig::link_config`).
    pub fn child_heartbeat_timeout(mut self, bound: Option<Duration>) -> Self {
        self.child_heartbeat_timeout = bound;
        self
    }

    /// How long the parent waits for any sign of life (a message, a heartbeat) from a remote
    /// child before it ends the link as broken and tears the child down (default
    /// [`DEFAULT_HEARTBEAT_TIMEOUT`]; `None`: never). Applied when the parent's own
    /// `LinkConfig::heartbeat_timeout` is unset; a parent that set one keeps it. A remote actor
    /// whose thread is blocked (a Rust function that never yields) sends no heartbeats either:
    /// keep the bound well above the longest such stretch.
    pub fn heartbeat_timeout(mut self, bound: Option<Duration>) -> Self {
        self.heartbeat_timeout = bound;
        self
    }

    /// The launcher.
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// Wraps this backend for a nursery.
    pub fn into_shared(self) -> Arc<dyn SpawnBackend> {
        Arc::new(self)
    }

    /// Uploads the binary now if the remote copy is missing or differs; returns whether it
    /// sent it. For starting many actors without checking each time. Bounded as the upload of a
    /// start is ([`upload_timeout`](Self::upload_timeout)).
    ///
    /// # Errors
    ///
    /// When the launcher fails or the remote side cannot store the file (or does not answer in
    /// time), with its stderr.
    pub async fn upload_now(&self) -> Result<bool, String> {
        launch::upload(self).await
    }

    /// Parses `ssh://[user@]host[:port]` into an ssh backend.
    ///
    /// # Errors
    ///
    /// When `url` is not of that form.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| format!("{url:?}: expected ssh://[user@]host[:port]"))?;
        let rest = rest.trim_end_matches('/');
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let port_of = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: {p:?} is not a port"))
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            // An IPv6 address: `[addr]` or `[addr]:port`.
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: a `[` without its `]`"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (host, Some(port_of(p)?)),
                    None => return Err(format!("{url:?}: {after:?} after the address")),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(format!(
                        "{url:?}: an IPv6 address goes in brackets (ssh://[::1]:22)"
                    ));
                }
                Some((h, p)) => (h, Some(port_of(p)?)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || user.is_some_and(str::is_empty) {
            return Err(format!("{url:?}: expected ssh://[user@]host[:port]"));
        }
        let mut b = RemoteBackend::ssh(host);
        if let Some(u) = user {
            b = b.user(u);
        }
        if let Some(p) = port {
            b = b.port(p);
        }
        Ok(b)
    }
}

impl SpawnBackend for RemoteBackend {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_hard_kill(HardKill::Kills)
            .with_in_process(false)
            .with_nested(true)
            .with_other_host(true)
    }

    fn link_config(&self, parent: &LinkConfig) -> LinkConfig {
        let mut config = parent.clone();
        // The nursery's bound on a spawn and its Hello: never shorter than this backend's own
        // start bound (a launcher that is allowed 20 s to start is not cut off at 5 s).
        let mut own = self.start_timeout.saturating_add(Duration::from_secs(1));
        if self.upload {
            // The upload's check and transfer come before the start.
            own = own
                .saturating_add(self.start_timeout)
                .saturating_add(self.upload_timeout);
        }
        config.hello_timeout = config.hello_timeout.max(own);
        if config.heartbeat_timeout.is_none()
            && let Some(bound) = self.heartbeat_timeout
        {
            config.heartbeat_timeout = Some(bound);
            // The child sends heartbeats on its own schedule (every second by default); this
            // side's only need to reach a child whose timeout is set (30 s by default).
            config.heartbeat_interval = config.heartbeat_interval.or(Some(Duration::from_secs(1)));
        }
        config
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        Box::pin(launch::spawn(self, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_watches_remote_children_unless_it_chose_its_own_bound() {
        let quiet = LinkConfig::default().heartbeat(None, None);
        let b = RemoteBackend::ssh("h");
        let c = b.link_config(&quiet);
        assert_eq!(c.heartbeat_timeout, Some(DEFAULT_HEARTBEAT_TIMEOUT));
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(1)));
        let own = LinkConfig::default().heartbeat(
            Some(Duration::from_millis(100)),
            Some(Duration::from_millis(500)),
        );
        let c = b.link_config(&own);
        assert_eq!(c.heartbeat_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.heartbeat_interval, Some(Duration::from_millis(100)));
        let off = RemoteBackend::ssh("h").heartbeat_timeout(None);
        assert_eq!(off.link_config(&quiet).heartbeat_timeout, None);
        // The spawn bound follows a longer start bound, and never shrinks.
        assert_eq!(c.hello_timeout, LinkConfig::default().hello_timeout);
        let slow = RemoteBackend::ssh("h").start_timeout(Duration::from_secs(20));
        assert_eq!(
            slow.link_config(&quiet).hello_timeout,
            Duration::from_secs(21)
        );
    }

    #[test]
    fn ssh_urls_parse() {
        let b = RemoteBackend::from_url("ssh://bob@example.org:2222").unwrap();
        let Launcher::Ssh(t) = b.launcher() else {
            panic!("not ssh")
        };
        assert_eq!(t.host, "example.org");
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!(t.port, Some(2222));
        let b = RemoteBackend::from_url("ssh://localhost").unwrap();
        let Launcher::Ssh(t) = b.launcher() else {
            panic!("not ssh")
        };
        assert_eq!(
            (t.host.as_str(), t.user.as_deref(), t.port),
            ("localhost", None, None)
        );
        for (url, host, port) in [
            ("ssh://[::1]", "::1", None),
            ("ssh://[::1]:2222", "::1", Some(2222)),
            ("ssh://al@[fe80::1%eth0]:22", "fe80::1%eth0", Some(22)),
        ] {
            let b = RemoteBackend::from_url(url).unwrap();
            let Launcher::Ssh(t) = b.launcher() else {
                panic!("not ssh")
            };
            assert_eq!((t.host.as_str(), t.port), (host, port), "{url}");
        }
        for bad in [
            "localhost",
            "ssh://",
            "ssh://@h",
            "ssh://h:notaport",
            "http://h",
            "ssh://::1",
            "ssh://fe80::1",
            "ssh://[::1",
            "ssh://[::1]x",
            "ssh://[]",
        ] {
            assert!(RemoteBackend::from_url(bad).is_err(), "{bad}");
        }
    }
}
