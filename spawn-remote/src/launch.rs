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
use harrow_runtime_core::{Child, DedicatedThread, SpawnError, SpawnSpec, move_on_after};

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

    /// The command that runs `script` (POSIX shell text) on the remote side.
    pub(crate) fn command_for(&self, script: &str) -> Command {
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
        Some(backend.command_for(&format!("kill -KILL {remote_pid} 2>/dev/null; exit 0")))
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

/// Uploads the binary when the remote copy is missing or differs; returns whether it was sent.
pub(crate) async fn upload(backend: &RemoteBackend) -> Result<bool, String> {
    let local = backend.local_program()?;
    let hash = sha256_file(&local)?;
    let path = sh_quote(&backend.remote_binary()?);
    // The file is written beside its target and renamed, so a running copy is never modified
    // and a broken transfer leaves no half binary.
    let script = format!(
        "p={path}; h=$(sha256sum \"$p\" 2>/dev/null | cut -d' ' -f1); \
         if [ \"$h\" = {hash} ]; then echo HARROW-UPLOAD-SAME; exit 0; fi; \
         echo HARROW-UPLOAD-SEND; d=$(dirname \"$p\"); mkdir -p \"$d\" || exit 1; \
         t=\"$p.upload.$$\"; cat > \"$t\" && chmod 755 \"$t\" && mv -f \"$t\" \"$p\" \
         && echo HARROW-UPLOAD-DONE"
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
    let mut buf = [0u8; 256];
    // The answer to the hash check.
    let first = loop {
        let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break None;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
        if out.contains("HARROW-UPLOAD-SAME") {
            break Some(false);
        }
        if out.contains("HARROW-UPLOAD-SEND") {
            break Some(true);
        }
    };
    let sent = match first {
        None => {
            let status = launched.wait_briefly(STDERR_GRACE).await;
            launched.finish_stderr(STDERR_GRACE).await;
            return Err(format!(
                "the launcher `{launcher}` ended ({status}) before the upload check answered; \
                 launcher stderr: {}",
                tail.text()
            ));
        }
        Some(false) => false,
        Some(true) => {
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
                stdin.write_all(&chunk[..n]).await.map_err(|e| {
                    format!(
                        "sending {} failed: {e}; launcher stderr: {}",
                        local.display(),
                        tail.text()
                    )
                })?;
            }
            true
        }
    };
    drop(stdin);
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .await
        .map_err(|e| e.to_string())?;
    out.push_str(&rest);
    let status = launched.wait_briefly(Duration::from_secs(30)).await;
    launched.finish_stderr(STDERR_GRACE).await;
    if sent && !out.contains("HARROW-UPLOAD-DONE") {
        return Err(format!(
            "the remote side did not store the binary ({status}); launcher stderr: {}",
            tail.text()
        ));
    }
    tracing::debug!(%launcher, sent, "upload check done");
    Ok(sent)
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
