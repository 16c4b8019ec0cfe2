//! The SIGINT harness: run a scenario binary as a subprocess, send SIGINT at a named phase, and
//! check how it ends.
//!
//! A scenario binary prints phase markers on stdout, one per line: `harrow-phase: <name>`. The
//! harness waits (bounded) for the marker it was told, sends SIGINT, optionally waits for a second
//! marker (on stdout or stderr) and sends a second SIGINT, then waits (bounded) for the process to
//! exit and for every process it started to be gone.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The prefix of a phase marker line.
pub const PHASE_PREFIX: &str = "harrow-phase: ";

/// Prints a phase marker (and flushes stdout) for the harness to see.
pub fn phase(name: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PHASE_PREFIX}{name}");
    let _ = out.flush();
}

/// When to send SIGINT.
#[derive(Clone, Debug)]
pub struct SigintPlan {
    /// Send the first SIGINT once this phase marker was printed.
    pub first_at: String,
    /// Send a second SIGINT once a line containing this text appeared (stdout or stderr).
    pub second_at: Option<String>,
    /// Bound on waiting for each marker.
    pub marker_bound: Duration,
    /// Bound on waiting for the exit after the last SIGINT.
    pub exit_bound: Duration,
    /// Signal the whole process group, as a terminal's Ctrl-C does (the scenario runs in a
    /// group of its own), rather than the scenario's process alone.
    pub to_group: bool,
}

impl SigintPlan {
    /// One SIGINT at `phase`; generous bounds.
    pub fn at(phase: &str) -> Self {
        SigintPlan {
            first_at: phase.to_owned(),
            second_at: None,
            marker_bound: Duration::from_secs(60),
            exit_bound: Duration::from_secs(30),
            to_group: false,
        }
    }

    /// Every SIGINT goes to the scenario's whole process group (its children included), as
    /// from a terminal.
    pub fn to_group(mut self) -> Self {
        self.to_group = true;
        self
    }

    /// A second SIGINT once a line containing `text` appeared.
    pub fn then_at(mut self, text: &str) -> Self {
        self.second_at = Some(text.to_owned());
        self
    }
}

/// How a SIGINT run ended.
#[derive(Debug)]
pub struct SigintRun {
    /// The exit code, if it exited (rather than died by a signal).
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Time from the first SIGINT to the exit.
    pub exit_after_first: Duration,
    /// Time from the last SIGINT to the exit.
    pub exit_after_last: Duration,
    /// Descendant processes seen while it ran that were still alive after the settle.
    pub left_behind: Vec<u32>,
    /// Everything it printed (stdout and stderr lines, interleaved as read).
    pub output: Vec<String>,
}

/// Why a SIGINT run could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigintError {
    /// The program could not be started.
    #[error("cannot start the scenario: {0}")]
    Spawn(std::io::Error),
    /// A marker never appeared within its bound.
    #[error("marker {marker:?} did not appear within {bound:?}; output so far:\n{output}")]
    NoMarker {
        /// The marker.
        marker: String,
        /// The bound.
        bound: Duration,
        /// What was printed.
        output: String,
    },
    /// The process did not exit within the bound after SIGINT (it was SIGKILLed).
    #[error("no exit within {bound:?} after SIGINT (killed); output:\n{output}")]
    NoExit {
        /// The bound.
        bound: Duration,
        /// What was printed.
        output: String,
    },
    /// A signal could not be sent.
    #[error("cannot signal the scenario: {0}")]
    Signal(std::io::Error),
}

fn descendants_of(root: u32) -> BTreeSet<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the parenthesised comm: state, ppid, ...
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("");
            let ppid = fields
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            if state != "Z" {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && out.insert(pid) {
                frontier.push(pid);
            }
        }
    }
    out
}

/// Waits at most `bound` for process `pid` (not necessarily ours) to end; true once it has.
/// Woken by the process's exit itself (a pidfd), without polling; on a kernel without pidfds
/// (before 5.3), it checks every 50 ms instead.
pub fn wait_gone(pid: u32, bound: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    let deadline = Instant::now() + bound;
    match pidfd_open(p, PidfdFlags::empty()) {
        Err(rustix::io::Errno::SRCH) => true,
        Ok(fd) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) if !fds[0].revents().is_empty() => return true,
                Err(rustix::io::Errno::INTR) => {}
                _ if Instant::now() >= deadline => return !alive(pid),
                _ => {}
            }
        },
        Err(_) => {
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            !alive(pid)
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .map(|i| !s[i + 1..].trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn sigint(child: &Child, to_group: bool) -> Result<(), SigintError> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32)
        .ok_or_else(|| SigintError::Signal(std::io::Error::other("pid 0")))?;
    let sent = if to_group {
        // The scenario leads a group of its own (`run_with_sigint`), whose id is its pid.
        rustix::process::kill_process_group(pid, rustix::process::Signal::INT)
    } else {
        rustix::process::kill_process(pid, rustix::process::Signal::INT)
    };
    sent.map_err(|e| SigintError::Signal(e.into()))
}

/// Runs `cmd`, sending SIGINT as `plan` says, and reports how it ended. Never waits unbounded:
/// a process that outlives a bound is SIGKILLed and reported.
pub fn run_with_sigint(mut cmd: Command, plan: &SigintPlan) -> Result<SigintRun, SigintError> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    if plan.to_group {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(SigintError::Spawn)?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut output = Vec::new();
    let mut seen = BTreeSet::new();
    let pid = child.id();

    let mut wait_for = |needle: &str, output: &mut Vec<String>, bound: Duration| {
        let deadline = Instant::now() + bound;
        loop {
            seen.extend(descendants_of(pid));
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    output.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => return false,
            }
        }
    };
    let kill = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };

    let marker = format!("{PHASE_PREFIX}{}", plan.first_at);
    if !wait_for(&marker, &mut output, plan.marker_bound) {
        kill(&mut child);
        return Err(SigintError::NoMarker {
            marker,
            bound: plan.marker_bound,
            output: output.join("\n"),
        });
    }
    sigint(&child, plan.to_group)?;
    let first = Instant::now();
    let mut last = first;
    if let Some(second) = &plan.second_at {
        if !wait_for(second, &mut output, plan.marker_bound) {
            kill(&mut child);
            return Err(SigintError::NoMarker {
                marker: second.clone(),
                bound: plan.marker_bound,
                output: output.join("\n"),
            });
        }
        sigint(&child, plan.to_group)?;
        last = Instant::now();
    }
    let deadline = last + plan.exit_bound;
    let status = loop {
        seen.extend(descendants_of(pid));
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(10)) {
                    output.push(line);
                }
            }
            _ => break None,
        }
    };
    let exit_after_first = first.elapsed();
    let exit_after_last = last.elapsed();
    let Some(status) = status else {
        kill(&mut child);
        return Err(SigintError::NoExit {
            bound: plan.exit_bound,
            output: output.join("\n"),
        });
    };
    for r in readers {
        let _ = r.join();
    }
    output.extend(rx.try_iter());
    // Descendants get a short settle to finish dying (parent-death signal, channel EOF).
    let settle = Instant::now() + Duration::from_secs(2);
    let mut left_behind: Vec<u32> = seen.iter().copied().filter(|p| alive(*p)).collect();
    while !left_behind.is_empty() && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(20));
        left_behind.retain(|p| alive(*p));
    }
    Ok(SigintRun {
        exit_code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        exit_after_first,
        exit_after_last,
        left_behind,
        output,
    })
}
