//! The parent side of a start: building the launcher's command, the optional upload, reading the
//! child's start line, and the errors that quote the launcher's stderr.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::Async;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use harrow_runtime_core::ipc::codec::CodecConfig;
use harrow_runtime_core::ipc::{PROTOCOL_VERSION, stream};
use harrow_runtime_core::{Child, DedicatedThread, Joined, SpawnError, SpawnSpec, move_on_after};

use crate::child::{Launched, RemoteChild};
use crate::remote::{REMOTE_CHILD_ARG, START_LINE};
use crate::{Launcher, RemoteBackend};

/// How much of the launcher's stderr an error quotes (its end).
const STDERR_KEEP: usize = 4096;
/// How much unexpected stdout before the start line is tolerated (and quoted).
const MAX_NOISE: usize = 64 * 1024;
/// After the launcher ended, how long its stderr may take to drain into an error message.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// Quotes `s` for a POSIX shell; a leading `~/` stays expandable.
pub(crate) fn sh_quote(s: &str) -> String {
    if let Some(rest) = s.strip_prefix("~/") {
        return format!("\"$HOME\"/{}", sh_quote(rest));
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The end of a launcher's stderr, shared between its reader thread and the error messages.
#[derive(Debug, Default)]
pub(crate) struct StderrTail {
    bytes: Mutex<Vec<u8>>,
}

impl StderrTail {
    fn push(&self, chunk: &[u8]) {
        let mut b = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(chunk);
        if b.len() > 2 * STDERR_KEEP {
            let cut = b.len() - STDERR_KEEP;
            b.drain(..cut);
        }
    }

    pub(crate) fn text(&self) -> String {
        let b = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let start = b.len().saturating_sub(STDERR_KEEP);
        let text = String::from_utf8_lossy(&b[start..]).trim().to_owned();
        if text.is_empty() {
            "(empty)".to_owned()
        } else {
            text
        }
    }
}

/// Reads the launcher's stderr until it ends: keeps its tail and forwards each line to this
/// process's stderr with the actor's prefix.
fn forward_stderr(
    name: &str,
    mut src: std::process::ChildStderr,
    tail: Arc<StderrTail>,
) -> std::io::Result<DedicatedThread<()>> {
    let prefix = format!("[{name}] ");
    DedicatedThread::spawn(format!("hw-rerr-{name}"), move || {
        let mut buf = [0u8; 8192];
        let mut pending: Vec<u8> = Vec::new();
        let emit = |line: &[u8]| {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(prefix.as_bytes());
            let _ = err.write_all(line);
            let _ = err.write_all(b"\n");
        };
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        emit(&pending[..i]);
                        pending.drain(..=i);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            emit(&pending);
        }
    })
}

impl RemoteBackend {
    /// The local binary: set, or the running executable.
    fn local_program(&self) -> Result<PathBuf, String> {
        match &self.local_program {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the running executable: {e}")),
        }
    }

    /// Where the binary is on the remote host.
    fn remote_binary(&self) -> Result<String, String> {
        if let Some(p) = &self.remote_path {
            return Ok(p.clone());
        }
        let local = self.local_program()?;
        local
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the program path {} is not UTF-8", local.display()))
    }

    /// The command that runs `script` (POSIX shell text) on the remote side, in a process group
    /// of its own: a terminal's Ctrl-C reaches the root alone, which cancels its remote
    /// children gracefully through their launchers (an `ssh` in the terminal's group would die
    /// of it at once, and the child with it).
    pub(crate) fn command_for(&self, script: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.launcher_command(script);
        cmd.process_group(0);
        cmd
    }

    fn launcher_command(&self, script: &str) -> Command {
        match &self.launcher {
            Launcher::Ssh(t) => {
                let mut cmd = Command::new("ssh");
                let connect = self.start_timeout.as_secs().max(1);
                cmd.arg("-T")
                    .args(["-o", "BatchMode=yes"])
                    .args(["-o", &format!("ConnectTimeout={connect}")])
                    .args(["-o", "LogLevel=ERROR"]);
                if let Some(user) = &t.user {
                    cmd.arg("-l").arg(user);
                }
                if let Some(port) = t.port {
                    cmd.arg("-p").arg(port.to_string());
                }
                if let Some(key) = &t.identity {
                    cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
                }
                for o in &t.options {
                    cmd.arg("-o").arg(o);
                }
                cmd.arg("--").arg(&t.host).arg(script);
                cmd
            }
            Launcher::Command(argv) => {
                let mut parts = argv.iter();
                let mut cmd = Command::new(parts.next().cloned().unwrap_or_default());
                cmd.args(parts).arg("sh").arg("-c").arg(script);
                cmd
            }
        }
    }

    /// How the launcher is shown in errors and leak reports.
    pub(crate) fn launcher_text(&self) -> String {
        match &self.launcher {
            Launcher::Ssh(t) => {
                let user = t
                    .user
                    .as_deref()
                    .map(|u| format!("{u}@"))
                    .unwrap_or_default();
                let port = t.port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("ssh {user}{}{port}", t.host)
            }
            Launcher::Command(argv) => argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    pub(crate) fn remote_kill_enabled(&self) -> bool {
        self.remote_kill
    }
}

fn async_fd<T: Into<OwnedFd>>(io: T) -> std::io::Result<Async<File>> {
    Async::new(File::from(io.into()))
}

/// Starts one remote child: the launcher, the spec line, the start line.
pub(crate) async fn spawn(
    backend: &RemoteBackend,
    spec: SpawnSpec,
) -> Result<Box<dyn Child>, SpawnError> {
    let id = spec.id.clone();
    let failed = |reason: String| SpawnError::Failed {
        actor: id.clone(),
        reason,
    };
    if crate::remote::started_but_not_run() {
        // Started as a remote child actor, and its program went on to its own work instead of
        // running it: each generation would start the next, without end.
        return Err(SpawnError::Unavailable {
            actor: id.clone(),
            backend: "remote",
            reason: format!(
                "this process ({}) was started as a harrow remote child actor, but its program \
                 never ran the actor: call harrow::remote::maybe_run_child first thing in main",
                std::process::id()
            ),
        });
    }
    let encoded = spec.encode().map_err(|e| SpawnError::BadSpec {
        actor: id.clone(),
        reason: e.to_string(),
    })?;
    if backend.upload {
        upload(backend)
            .await
            .map_err(|e| failed(format!("upload: {e}")))?;
    }
    let path = backend.remote_binary().map_err(&failed)?;
    let heartbeat_ms = backend
        .child_heartbeat_timeout
        .map_or(0, |d| d.as_millis().max(1));
    let script = format!("exec {} {REMOTE_CHILD_ARG} {heartbeat_ms}", sh_quote(&path));
    let launcher = backend.launcher_text();
    let mut cmd = backend.command_for(&script);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run the launcher `{launcher}`: {e}")))?;
    let (stdin, stdout, stderr) = (proc.stdin.take(), proc.stdout.take(), proc.stderr.take());
    // From here on, dropping `launched` kills and reaps the launcher (a dropped spawn included).
    let mut launched = Launched::new(proc);
    let tail = Arc::new(StderrTail::default());
    if let Some(stderr) = stderr {
        let thread = forward_stderr(&id.name, stderr, tail.clone())
            .map_err(|e| failed(format!("cannot start its stderr thread: {e}")))?;
        launched.set_stderr_thread(thread);
    }
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
        return Err(failed("the launcher's stdio pipes are missing".into()));
    };
    let mut stdin = async_fd(stdin)
        .map_err(|e| failed(format!("cannot register the launcher's stdin: {e}")))?;
    let mut stdout = async_fd(stdout)
        .map_err(|e| failed(format!("cannot register the launcher's stdout: {e}")))?;
    let mut noise = Vec::new();
    let start = async {
        match stdin.write_all(format!("{encoded}\n").as_bytes()).await {
            Ok(()) => {}
            // The launcher is gone already: what it printed and how it ended say why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(StartFailure::Io(format!("cannot send the actor spec: {e}"))),
        }
        read_start_line(&mut stdout, &mut noise).await
    };
    let outcome = move_on_after(backend.start_timeout, start).await;
    let noise = String::from_utf8_lossy(&noise).into_owned();
    let remote_pid = match outcome {
        Some(Ok(pid)) => pid,
        other => {
            let what = match other {
                None if noise.is_empty() => format!(
                    "the remote child did not start within {:?} (no start line from `{launcher}`)",
                    backend.start_timeout
                ),
                None => format!(
                    "the remote child did not start within {:?}: `{launcher}` printed {} bytes \
                     that are not the child's start line: {:?}",
                    backend.start_timeout,
                    noise.len(),
                    noise.chars().take(200).collect::<String>()
                ),
                Some(Err(StartFailure::Ended)) => {
                    let status = launched.wait_briefly(STDERR_GRACE).await;
                    let mut s = format!(
                        "the launcher `{launcher}` ended ({status}) before the remote child \
                         started (is `{path}` there, executable, and a harrow program?)"
                    );
                    if !noise.is_empty() {
                        s.push_str(&format!("; its stdout: {noise:?}"));
                    }
                    s
                }
                Some(Err(StartFailure::Noise)) => format!(
                    "the launcher `{launcher}` printed {} bytes that are not the child's start \
                     line: {:?}",
                    noise.len(),
                    noise.chars().take(200).collect::<String>()
                ),
                Some(Err(StartFailure::Version { line })) => format!(
                    "the remote child speaks another protocol version: {line:?} (this side: \
                     {PROTOCOL_VERSION}); upload the same build"
                ),
                Some(Err(StartFailure::Io(e))) => e,
                Some(Ok(_)) => unreachable_text(),
            };
            launched.kill();
            launched.finish_stderr(STDERR_GRACE).await;
            return Err(failed(format!("{what}; launcher stderr: {}", tail.text())));
        }
    };
    let channel = stream::channel(stdout, stdin, CodecConfig::default());
    tracing::debug!(actor = %id, %launcher, remote_pid, "remote actor started");
    let kill = if backend.remote_kill_enabled() {
        // Succeeds when the process is gone: killed now, or ended before (`kill` fails and `ps`
        // no longer lists it); fails when it is still there (a `kill` refused).
        Some(backend.command_for(&format!(
            "kill -KILL {remote_pid} 2>/dev/null && exit 0; \
             ps -p {remote_pid} >/dev/null 2>&1 && exit 1; exit 0"
        )))
    } else {
        None
    };
    Ok(Box::new(RemoteChild::new(
        id, channel, launched, launcher, remote_pid, kill, tail,
    )))
}

fn unreachable_text() -> String {
    "the remote child started".to_owned()
}

enum StartFailure {
    /// Stdout ended before the start line.
    Ended,
    /// Too much output that is not the start line.
    Noise,
    /// A start line of another protocol version.
    Version {
        line: String,
    },
    Io(String),
}

/// Reads stdout byte by byte (nothing after the start line may be consumed: the frames follow)
/// until the start line; returns the remote pid. Lines before it are tolerated (a login script
/// that prints) up to [`MAX_NOISE`], and logged.
async fn read_start_line(
    stdout: &mut Async<File>,
    noise: &mut Vec<u8>,
) -> Result<u32, StartFailure> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stdout
            .read(&mut byte)
            .await
            .map_err(|e| StartFailure::Io(format!("cannot read the launcher's stdout: {e}")))?;
        if n == 0 {
            noise.extend_from_slice(&line);
            return Err(StartFailure::Ended);
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            if noise.len() + line.len() > MAX_NOISE {
                noise.extend_from_slice(&line);
                return Err(StartFailure::Noise);
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some(rest) = text.strip_prefix(START_LINE) {
            let mut parts = rest.split_whitespace();
            let version = parts.next().and_then(|v| v.parse::<u32>().ok());
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            match (version, pid) {
                (Some(v), Some(pid)) if v == PROTOCOL_VERSION => {
                    if !noise.is_empty() {
                        tracing::warn!(
                            output = %String::from_utf8_lossy(noise),
                            "the launcher printed lines before the remote child's start line"
                        );
                    }
                    return Ok(pid);
                }
                _ => return Err(StartFailure::Version { line: text }),
            }
        }
        noise.extend_from_slice(&line);
        noise.push(b'\n');
        line.clear();
    }
}

/// The local binary's SHA-256, in hex.
fn sha256_file(path: &std::path::Path) -> Result<String, String> {
    use sha2::Digest;
    let mut file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A local binary's digest, known for as long as the file keeps its size and modification time.
struct Digest {
    path: PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
    sha256: String,
}

/// The digests taken so far in this process (a program uploads one or two binaries).
static DIGESTS: Mutex<Vec<Digest>> = Mutex::new(Vec::new());

/// The local binary's SHA-256 and size. Hashed once per file version, on a thread of its own:
/// tens of megabytes take a second or more in a debug build, which would stall every task of
/// the executor the start runs on (other starts, heartbeats).
async fn local_digest(path: &std::path::Path, bound: Duration) -> Result<(String, u64), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (len, modified) = (meta.len(), meta.modified().ok());
    let known = |d: &Digest| d.path == path && d.len == len && d.modified == modified;
    if let Some(d) = DIGESTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|d| known(d))
    {
        return Ok((d.sha256.clone(), len));
    }
    let owned = path.to_owned();
    let mut thread = DedicatedThread::spawn("hw-sha256", move || sha256_file(&owned))
        .map_err(|e| format!("cannot start a thread to hash {}: {e}", path.display()))?;
    let sha256 = match thread.join(bound).await {
        Joined::Finished(r) => r?,
        Joined::Running => {
            thread.detach();
            return Err(format!(
                "hashing {} took longer than {bound:?}",
                path.display()
            ));
        }
        other => return Err(format!("hashing {} failed: {other:?}", path.display())),
    };
    let mut digests = DIGESTS.lock().unwrap_or_else(|p| p.into_inner());
    digests.retain(|d| d.path != path);
    digests.push(Digest {
        path: path.to_owned(),
        len,
        modified,
        sha256: sha256.clone(),
    });
    Ok((sha256, len))
}

/// Uploads the binary when the remote copy is missing or differs; returns whether it was sent.
///
/// Bounded: the check (the launcher's start and the remote hash) by the backend's
/// `start_timeout`, the transfer and the remote store by its `upload_timeout`.
pub(crate) async fn upload(backend: &RemoteBackend) -> Result<bool, String> {
    let local = backend.local_program()?;
    let (hash, size) = local_digest(&local, backend.upload_timeout).await?;
    let path = sh_quote(&backend.remote_binary()?);
    // The file is written beside its target, checked for its full size and renamed, so a
    // running copy is never modified and a broken transfer leaves no half binary.
    let script = format!(
        "p={path}; h=$(sha256sum \"$p\" 2>/dev/null | cut -d' ' -f1); \
         if [ \"$h\" = {hash} ]; then echo HARROW-UPLOAD-SAME; exit 0; fi; \
         echo HARROW-UPLOAD-SEND; d=$(dirname \"$p\"); mkdir -p \"$d\" || exit 1; \
         t=\"$p.upload.$$\"; \
         if cat > \"$t\" && [ $(wc -c < \"$t\") -eq {size} ] && chmod 755 \"$t\" \
         && mv -f \"$t\" \"$p\"; then echo HARROW-UPLOAD-DONE; \
         else rm -f \"$t\"; echo HARROW-UPLOAD-INCOMPLETE; exit 1; fi"
    );
    let launcher = backend.launcher_text();
    let mut cmd = backend.command_for(&script);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = cmd
        .spawn()
        .map_err(|e| format!("cannot run the launcher `{launcher}`: {e}"))?;
    let (stdin, stdout, stderr) = (proc.stdin.take(), proc.stdout.take(), proc.stderr.take());
    let mut launched = Launched::new(proc);
    let tail = Arc::new(StderrTail::default());
    if let Some(stderr) = stderr {
        let thread = forward_stderr("upload", stderr, tail.clone())
            .map_err(|e| format!("cannot start its stderr thread: {e}"))?;
        launched.set_stderr_thread(thread);
    }
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
        return Err("the launcher's stdio pipes are missing".into());
    };
    let mut stdin = async_fd(stdin).map_err(|e| e.to_string())?;
    let mut stdout = async_fd(stdout).map_err(|e| e.to_string())?;
    let mut out = String::new();
    // The answer to the hash check.
    let check = async {
        let mut buf = [0u8; 256];
        loop {
            let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<_, String>(None);
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
            if out.contains("HARROW-UPLOAD-SAME") {
                return Ok(Some(false));
            }
            if out.contains("HARROW-UPLOAD-SEND") {
                return Ok(Some(true));
            }
        }
    };
    let first = move_on_after(backend.start_timeout, check).await;
    let send = match first {
        Some(Ok(Some(send))) => send,
        other => {
            let what = match other {
                None => format!(
                    "the launcher `{launcher}` did not answer the upload check within {:?}",
                    backend.start_timeout
                ),
                Some(Err(e)) => format!("cannot read the launcher's stdout: {e}"),
                _ => {
                    let status = launched.wait_briefly(STDERR_GRACE).await;
                    format!(
                        "the launcher `{launcher}` ended ({status}) before the upload check \
                         answered"
                    )
                }
            };
            launched.kill();
            launched.finish_stderr(STDERR_GRACE).await;
            return Err(format!("{what}; launcher stderr: {}", tail.text()));
        }
    };
    let mut sent_bytes = 0u64;
    let transfer = async {
        if send {
            // A regular file cannot be polled: read it in chunks (local disk), write each
            // to the launcher asynchronously.
            let mut file =
                File::open(&local).map_err(|e| format!("cannot open {}: {e}", local.display()))?;
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = file
                    .read(&mut chunk)
                    .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
                if n == 0 {
                    break;
                }
                stdin
                    .write_all(&chunk[..n])
                    .await
                    .map_err(|e| format!("sending {} failed: {e}", local.display()))?;
                sent_bytes += n as u64;
            }
        }
        drop(stdin);
        let mut rest = String::new();
        stdout
            .read_to_string(&mut rest)
            .await
            .map_err(|e| e.to_string())?;
        out.push_str(&rest);
        Ok::<_, String>(())
    };
    let transferred = move_on_after(backend.upload_timeout, transfer).await;
    let failure = match transferred {
        None => Some(format!(
            "the upload did not finish within {:?} ({sent_bytes} of {size} bytes sent; \
             `RemoteBackend::upload_timeout` sets the bound)",
            backend.upload_timeout
        )),
        Some(Err(e)) => Some(e),
        Some(Ok(())) if send && !out.contains("HARROW-UPLOAD-DONE") => {
            let status = launched.wait_briefly(STDERR_GRACE).await;
            Some(format!(
                "the remote side did not store the binary ({status}, {sent_bytes} of {size} \
                 bytes sent)"
            ))
        }
        Some(Ok(())) => None,
    };
    if let Some(what) = failure {
        launched.kill();
        launched.finish_stderr(STDERR_GRACE).await;
        return Err(format!("{what}; launcher stderr: {}", tail.text()));
    }
    launched.wait_briefly(STDERR_GRACE).await;
    launched.finish_stderr(STDERR_GRACE).await;
    tracing::debug!(%launcher, sent = send, "upload check done");
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("~/bin/x"), "\"$HOME\"/'bin/x'");
    }
}
