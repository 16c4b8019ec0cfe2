//! A private OpenSSH server for tests: `sshd` on 127.0.0.1, on a free port, with host and user
//! keys generated into a temporary directory, its own `sshd_config` (public keys only, no
//! passwords, `AuthorizedKeysFile` in that directory, `StrictModes` off), and a `known_hosts`
//! for the client. Nothing of the machine's own ssh configuration is read or changed; the only
//! thing created outside the directory is sshd's privilege-separation directory `/run/sshd`,
//! when it is missing and the tests run as root.
//!
//! The server runs under a small `sh` guard that kills it when this process's end of the guard's
//! stdin closes, so it never outlives the test process, even one that is killed. The directories
//! of servers whose process has ended are removed by the next start.
//!
//! ```no_run
//! use harrow_testkit::sshd::Sshd;
//! match Sshd::shared() {
//!     Ok(sshd) => println!("ssh -p {} -i {} {}@127.0.0.1", sshd.port(), sshd.identity().display(), sshd.user()),
//!     Err(why) => eprintln!("SKIPPED: {why}"),
//! }
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

/// How long the server may take to say it listens.
const START_BOUND: Duration = Duration::from_secs(10);

/// A running private sshd. Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    host: String,
    port: u16,
    user: String,
    guard: Mutex<Option<std::process::Child>>,
    /// The multiplexing master connection, if it came up.
    master: Mutex<Option<std::process::Child>>,
}

/// Whether the tests must not skip (CI): `CI` set to anything but `false` or `0`.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn find_sshd() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join("sshd"))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the directories of servers whose test process has ended (a server kept for the whole
/// process is never dropped: its process's exit stops it, and the next start cleans up).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("harrow-sshd-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn temp_dir() -> Result<PathBuf, String> {
    remove_stale_dirs();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("harrow-sshd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Stops a guard and what it guards: closing its stdin makes it kill its command and exit (a
/// SIGKILL to the guard would leave the command running).
fn stop_guard(mut guard: std::process::Child) {
    drop(guard.stdin.take());
    let _ = guard.wait();
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

impl Sshd {
    /// The server of this process, started on first use (and stopped when the process exits).
    ///
    /// # Errors
    ///
    /// Why there is no server (sshd not installed, not startable). In CI ([`required`]) this
    /// panics instead: the tests that need it must run there.
    pub fn shared() -> Result<&'static Sshd, String> {
        static SHARED: OnceLock<Result<Sshd, String>> = OnceLock::new();
        let r = SHARED.get_or_init(Sshd::start).as_ref();
        match r {
            Ok(s) => Ok(s),
            Err(e) if required() => panic!("CI is set, so the ssh tests must run, but: {e}"),
            Err(e) => Err(e.clone()),
        }
    }

    /// Starts a new server.
    ///
    /// # Errors
    ///
    /// When sshd or ssh-keygen is missing, or the server does not come up.
    pub fn start() -> Result<Sshd, String> {
        Sshd::start_at(None, "127.0.0.1")
    }

    /// Starts a new server inside the network namespace `netns` (made by the caller with
    /// `ip netns add`), listening on `addr` there; no multiplexing master (every client
    /// connects on its own, as through a real network).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_in_netns(netns: &str, addr: &str) -> Result<Sshd, String> {
        Sshd::start_at(Some(netns), addr)
    }

    fn start_at(netns: Option<&str>, addr: &str) -> Result<Sshd, String> {
        let sshd = find_sshd().ok_or_else(|| {
            "no sshd found (install openssh-server; scripts/setup does as root)".to_owned()
        })?;
        let is_root = rustix::process::geteuid().is_root();
        if is_root && !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd")
                .map_err(|e| format!("cannot create sshd's /run/sshd: {e}"))?;
        }
        let user = run(Command::new("id").arg("-un"))?.trim().to_owned();
        let dir = temp_dir()?;
        let keygen = |file: &str| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "harrow-test", "-f"])
                .arg(dir.join(file)))
        };
        keygen("host_key")?;
        keygen("user_key")?;
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
            .map_err(|e| format!("cannot write authorized_keys: {e}"))?;
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub"))
            .map_err(|e| format!("cannot read the host key: {e}"))?;
        let mut last = String::new();
        for _ in 0..5 {
            // In a fresh namespace nothing listens yet: any port is free there.
            let port = if netns.is_some() { 2222 } else { free_port()? };
            std::fs::write(
                dir.join("known_hosts"),
                format!("[{addr}]:{port} {}", host_pub.trim()),
            )
            .map_err(|e| format!("cannot write known_hosts: {e}"))?;
            let config = format!(
                "ListenAddress {addr}:{port}\n\
                 HostKey {d}/host_key\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 MaxStartups 500\n\
                 MaxSessions 500\n\
                 PrintMotd no\n\
                 LogLevel INFO\n",
                d = dir.display()
            );
            std::fs::write(dir.join("sshd_config"), config)
                .map_err(|e| format!("cannot write sshd_config: {e}"))?;
            match Sshd::launch(&sshd, &dir, port, netns) {
                Ok(guard) => {
                    let sshd = Sshd {
                        dir,
                        host: addr.to_owned(),
                        port,
                        user,
                        guard: Mutex::new(Some(guard)),
                        master: Mutex::new(None),
                    };
                    if netns.is_none() {
                        sshd.start_master();
                    }
                    return Ok(sshd);
                }
                Err(e) => last = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last)
    }

    /// Runs sshd in the foreground under the guard and waits for "Server listening".
    fn launch(
        sshd: &Path,
        dir: &Path,
        port: u16,
        netns: Option<&str>,
    ) -> Result<std::process::Child, String> {
        // `-D -e`: foreground, log to stderr. The guard kills sshd when its stdin closes.
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sh"]);
                c
            }
            None => Command::new("sh"),
        };
        let mut guard = cmd
            .arg("-c")
            .arg("\"$0\" -D -e -f \"$1\" & p=$!; read _ignored; kill $p 2>/dev/null; wait $p")
            .arg(sshd)
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        let Some(stderr) = guard.stderr.take() else {
            return Err("sshd's stderr is missing".into());
        };
        let (tx, rx) = mpsc::channel();
        // Reads sshd's log for good (a full pipe would stall it); reports the start.
        std::thread::Builder::new()
            .name("hw-sshd-log".into())
            .spawn(move || {
                let mut lines = BufReader::new(stderr);
                let mut log = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if line.contains("Server listening") {
                        let _ = tx.send(Ok(()));
                        let mut sink = Vec::new();
                        let _ = lines.read_to_end(&mut sink);
                        return;
                    }
                    log.push_str(&line);
                }
                let _ = tx.send(Err(log));
            })
            .map_err(|e| format!("cannot start the sshd log thread: {e}"))?;
        match rx.recv_timeout(START_BOUND) {
            Ok(Ok(())) => Ok(guard),
            Ok(Err(log)) => {
                stop_guard(guard);
                Err(format!("sshd on port {port} did not start: {}", log.trim()))
            }
            Err(_) => {
                stop_guard(guard);
                Err(format!(
                    "sshd on port {port} did not start within {START_BOUND:?}"
                ))
            }
        }
    }

    /// Starts a multiplexing master connection (`ssh -M -N`), so that the tests' many ssh
    /// sessions share one authenticated connection (a session then costs a few milliseconds,
    /// not a key exchange). Without it (it did not come up) clients connect directly.
    fn start_master(&self) {
        let mux = self.dir.join("mux");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("\"$@\" & p=$!; read _ignored; kill $p 2>/dev/null; wait $p")
            .arg("sh")
            .arg("ssh")
            .args([
                "-M",
                "-N",
                "-T",
                "-o",
                "ControlPersist=no",
                "-o",
                "BatchMode=yes",
            ])
            .arg("-S")
            .arg(&mux)
            .args(["-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(self.identity())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-l")
            .arg(&self.user);
        for o in self.direct_options() {
            cmd.arg("-o").arg(o);
        }
        cmd.arg(self.host())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut master) = cmd.spawn() else {
            return;
        };
        // The control socket appears once the master has authenticated: wait for it, bounded.
        let deadline = std::time::Instant::now() + START_BOUND;
        while !mux.exists() && std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if mux.exists() {
            *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
        } else {
            stop_guard(master);
        }
    }

    /// The address to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the tests log in as (the one running them).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key the server accepts.
    pub fn identity(&self) -> PathBuf {
        self.dir.join("user_key")
    }

    /// The server's directory (keys, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `-o` options a client needs: this server's known_hosts, strict checking, and the
    /// multiplexing master's socket when it is up (sessions then skip authentication: use
    /// [`direct_options`](Self::direct_options) to test authentication itself).
    pub fn ssh_options(&self) -> Vec<String> {
        let mut o = self.direct_options();
        if self
            .master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            o.push(format!("ControlPath={}", self.dir.join("mux").display()));
            o.push("ControlMaster=no".to_owned());
        }
        o
    }

    /// The `-o` options of a client that connects (and authenticates) on its own.
    pub fn direct_options(&self) -> Vec<String> {
        vec![
            format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
        ]
    }

    /// A key the server does not accept (generated on first use), for tests of refusal.
    ///
    /// # Errors
    ///
    /// When ssh-keygen fails.
    pub fn foreign_identity(&self) -> Result<PathBuf, String> {
        let key = self.dir.join("foreign_key");
        if !key.exists() {
            run(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "harrow-foreign",
                    "-f",
                ])
                .arg(&key))?;
        }
        Ok(key)
    }

    /// Stops the server (idempotent).
    pub fn stop(&self) {
        let master = self.master.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(master) = master {
            stop_guard(master);
        }
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(guard) = guard {
            stop_guard(guard);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
