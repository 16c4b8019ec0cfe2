//! Starting a child process with `posix_spawn(3)`, its descriptors placed by the spawn itself.
//!
//! `std::process::Command` can only place descriptors other than stdin, stdout and stderr
//! through a `pre_exec` hook, and a hook makes it `fork` the parent: the kernel then copies the
//! parent's page tables, a cost that grows with the parent's memory (0.7 ms of a 2.6 ms process
//! spawn-to-first-reply in `harrow bench`, whose parent holds Python interpreters). glibc's
//! `posix_spawn` starts the child in the parent's memory until it executes the program
//! (`CLONE_VM | CLONE_VFORK`), so no page table is copied, and its file actions put the
//! channel's socket and segment at their numbers in the child. Nothing of ours runs between the
//! spawn and the exec; the child arms its parent-death signal itself, first thing, and checks
//! that its parent is still there (`take_bootstrap`).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use harrow_runtime_core::ipc::park::spin::{CountedChild, count_child_as_ours};
use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};

/// Descriptors this process hands to a child are first copied at or above this number, below
/// which every number the child is given lies (0-4): so no file action of the spawn can overwrite
/// a descriptor a later one copies.
const HIGH_FD: RawFd = 64;

/// What to start.
pub(crate) struct Launch<'a> {
    /// The program; looked up in `PATH` when it has no `/`.
    pub(crate) program: &'a Path,
    /// Variables set for the child, over the inherited environment (later ones win).
    pub(crate) set_env: Vec<(OsString, OsString)>,
    /// Inherited variables the child does not get.
    pub(crate) remove_env: Vec<OsString>,
    /// Descriptors of this process to give the child, each at a number above 2.
    pub(crate) fds: Vec<(BorrowedFd<'a>, RawFd)>,
    /// Whether the child's stdout and stderr are pipes to this process (else inherited).
    pub(crate) pipe_output: bool,
}

/// A started child: the process and, when asked for, the read ends of its output pipes.
pub(crate) struct Launched {
    pub(crate) process: Process,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

/// A child process of ours, until reaped: its pid cannot be reused before that.
#[derive(Debug)]
pub(crate) struct Process {
    pid: Pid,
    status: Option<ExitStatus>,
    /// The child counts as part of this process's family for the spin gate until reaped: an
    /// actor child spins for its parent as the parent spins for it.
    counted: Option<CountedChild>,
}

impl Process {
    pub(crate) fn id(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// Reaps the child if it has exited; its status from then on.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.wait_with(WaitOptions::NOHANG)
    }

    /// Waits until the child has exited, and reaps it.
    pub(crate) fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.wait_with(WaitOptions::empty())? {
                return Ok(status);
            }
        }
    }

    fn wait_with(&mut self, options: WaitOptions) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        match waitpid(Some(self.pid), options) {
            Ok(Some((_, status))) => {
                self.status = Some(ExitStatus::from_raw(status.as_raw()));
                self.counted = None;
                Ok(self.status)
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILL, unless the child was reaped already (its pid may be another process's then).
    pub(crate) fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        kill_process(self.pid, Signal::KILL).map_err(Into::into)
    }
}

/// Starts `l.program` with no arguments but its name, stdin on `/dev/null`, the given
/// descriptors at their numbers, a cleared signal mask and SIGPIPE at its default action (as
/// `std::process::Command` leaves them).
///
/// # Errors
///
/// A program or variable with a NUL byte in it (`InvalidInput`), descriptors that cannot be
/// copied or pipes made, and the spawn's own error: a program that is missing or not
/// executable fails here, not in the child.
pub(crate) fn launch(l: &Launch<'_>) -> io::Result<Launched> {
    let program = c_string(l.program.as_os_str().as_bytes(), "the program")?;
    let env = environment(&l.set_env, &l.remove_env)?;
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|v| v.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    let argv: [*mut libc::c_char; 2] = [program.as_ptr().cast_mut(), std::ptr::null_mut()];

    let (stdout, stderr, out_ends) = if l.pipe_output {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        (Some(out_r), Some(err_r), vec![(out_w, 1), (err_w, 2)])
    } else {
        (None, None, Vec::new())
    };
    // Every source copied high (close-on-exec, so the child keeps only the placed copies).
    let mut high = Vec::with_capacity(out_ends.len() + l.fds.len());
    for (fd, at) in &out_ends {
        high.push((rustix::io::fcntl_dupfd_cloexec(fd, HIGH_FD)?, *at));
    }
    for (fd, at) in &l.fds {
        if *at <= 2 || *at >= HIGH_FD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor number {at} for the child is not within 3..{HIGH_FD}"),
            ));
        }
        high.push((rustix::io::fcntl_dupfd_cloexec(fd, HIGH_FD)?, *at));
    }
    drop(out_ends);

    let mut actions = FileActions::new()?;
    actions.open_dev_null(0)?;
    for (fd, at) in &high {
        actions.dup2(fd.as_fd(), *at)?;
    }
    let attr = Attributes::new()?;
    let pid = attr.spawn(&actions, &program, &argv, &envp)?;
    Ok(Launched {
        process: Process {
            pid,
            status: None,
            counted: Some(count_child_as_ours(
                pid.as_raw_nonzero().get().unsigned_abs(),
            )),
        },
        stdout,
        stderr,
    })
}

/// The child's environment: ours, without `remove`, with `set` over it, as `KEY=value`.
fn environment(set: &[(OsString, OsString)], remove: &[OsString]) -> io::Result<Vec<CString>> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !remove.contains(k) && !set.iter().any(|(s, _)| s == k))
        .collect();
    for (k, v) in set {
        vars.retain(|(have, _)| have != k);
        vars.push((k.clone(), v.clone()));
    }
    vars.iter()
        .map(|(k, v)| {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(&kv, "an environment variable")
        })
        .collect()
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} has a NUL byte in it"),
        )
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

/// A `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<libc::posix_spawn_file_actions_t>);

#[allow(unsafe_code)]
impl FileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is a valid place for `init` to write to; it is initialized
        // before any other use, and boxed so that it never moves after.
        let mut actions =
            Box::new(unsafe { std::mem::zeroed::<libc::posix_spawn_file_actions_t>() });
        // SAFETY: `actions` points to writable memory of the right type.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut *actions) })?;
        Ok(FileActions(actions))
    }

    fn open_dev_null(&mut self, at: RawFd) -> io::Result<()> {
        // SAFETY: initialized in `new`; the path is a NUL-terminated literal that outlives the
        // call (glibc copies it).
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                &mut *self.0,
                at,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            )
        })
    }

    fn dup2(&mut self, fd: BorrowedFd<'_>, at: RawFd) -> io::Result<()> {
        // SAFETY: initialized in `new`; `fd` is open, and stays open until the spawn (its owner
        // outlives `launch`'s spawn call).
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut *self.0, fd.as_raw_fd(), at) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        #[allow(unsafe_code)]
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut *self.0);
        }
    }
}

/// A `posix_spawnattr_t` that clears the child's signal mask and puts SIGPIPE back to its
/// default action (Rust programs ignore it), destroyed on drop.
struct Attributes(Box<libc::posix_spawnattr_t>);

#[allow(unsafe_code)]
impl Attributes {
    fn new() -> io::Result<Self> {
        // SAFETY: as for `FileActions::new`.
        let mut attr = Box::new(unsafe { std::mem::zeroed::<libc::posix_spawnattr_t>() });
        // SAFETY: `attr` points to writable memory of the right type.
        check(unsafe { libc::posix_spawnattr_init(&mut *attr) })?;
        let mut attr = Attributes(attr);
        // SAFETY: `sigset_t` values are plain data, set up by `sigemptyset`/`sigaddset` before
        // they are read; `attr` was initialized above.
        unsafe {
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            let mut pipe = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut *attr.0, &none))?;
            check(libc::posix_spawnattr_setsigdefault(&mut *attr.0, &pipe))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut *attr.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attr)
    }

    fn spawn(
        &self,
        actions: &FileActions,
        program: &CString,
        argv: &[*mut libc::c_char; 2],
        envp: &[*mut libc::c_char],
    ) -> io::Result<Pid> {
        let mut pid: libc::pid_t = 0;
        // A program without a `/` is looked up in `PATH`; both take the same arguments.
        let spawn = if program.as_bytes().contains(&b'/') {
            libc::posix_spawn
        } else {
            libc::posix_spawnp
        };
        // SAFETY: `actions` and `self` are initialized; `program`, `argv` and `envp` are
        // NUL-terminated C strings and NULL-terminated arrays of them, all alive for the call.
        let rc = unsafe {
            spawn(
                &mut pid,
                program.as_ptr(),
                &*actions.0,
                &*self.0,
                argv.as_ptr(),
                envp.as_ptr(),
            )
        };
        check(rc)?;
        Pid::from_raw(pid).ok_or_else(|| io::Error::other("posix_spawn returned no pid"))
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        #[allow(unsafe_code)]
        unsafe {
            libc::posix_spawnattr_destroy(&mut *self.0);
        }
    }
}

/// A `posix_spawn*` return value (an error number, not `errno`) as a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Held for writing while a test writes a script, for reading while a test spawns. A child
    /// spawned by one test thread while another holds a script open for writing inherits that
    /// descriptor until it executes its program, and executing the script then fails with
    /// `ETXTBSY` ("Text file busy"): under `cargo test`, whose tests share one process, that
    /// failed `a_killed_child_reports_the_signal` once. `posix_spawn` returns once the child has
    /// executed its program, so a spawn holds the lock for no longer than that.
    static SPAWNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

    /// [`launch`], never while a test writes a script.
    fn launch_held(l: &Launch<'_>) -> io::Result<Launched> {
        let _spawning = SPAWNS.read().unwrap_or_else(|p| p.into_inner());
        launch(l)
    }

    /// A shell script in a fresh directory, executable; the directory goes with the guard.
    fn script(body: &str) -> (std::path::PathBuf, impl Drop) {
        struct Gone(std::path::PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "harrow-launch-{}-{}",
            std::process::id(),
            body.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("child.sh");
        let writing = SPAWNS.write().unwrap_or_else(|p| p.into_inner());
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        drop(writing);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (path, Gone(dir))
    }

    /// Blocks SIGUSR2 in this thread; the mask before.
    #[allow(unsafe_code)]
    fn block_sigusr2() -> libc::sigset_t {
        // SAFETY: plain data set up by `sigemptyset`/`sigaddset` before it is read; the calls
        // change this thread's mask only.
        unsafe {
            let mut usr2 = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut usr2);
            libc::sigaddset(&mut usr2, libc::SIGUSR2);
            let mut before = std::mem::zeroed::<libc::sigset_t>();
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &usr2, &mut before),
                0
            );
            before
        }
    }

    #[allow(unsafe_code)]
    fn restore_sigmask(before: libc::sigset_t) {
        // SAFETY: `before` came from `pthread_sigmask`.
        unsafe {
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()),
                0
            );
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut out = String::new();
        std::fs::File::from(fd).read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_child_counts_as_ours_for_the_spin_gate_until_reaped() {
        use harrow_runtime_core::ipc::park::spin::testing::counted_children;
        let (program, _dir) = script("exit 0 # a child the spin gate counts");
        let launched = launch_held(&Launch {
            program: &program,
            set_env: Vec::new(),
            remove_env: Vec::new(),
            fds: Vec::new(),
            pipe_output: false,
        })
        .unwrap();
        let mut process = launched.process;
        let pid = process.id();
        assert!(counted_children().contains(&pid), "counted while it runs");
        // Until reaped, an ended child keeps its pid (a zombie) and still counts.
        let status = process.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(!counted_children().contains(&pid), "forgotten once reaped");
    }

    #[test]
    fn the_child_gets_its_descriptors_environment_and_signals_as_asked() {
        // The child reports what it got on stdout, answers on fd 3 and writes to fd 4. Its
        // signal mask is read by the shell's own `read` (no fork: the shell blocks every signal
        // around a fork for a moment, which a forked `grep` could see).
        let (program, _dir) = script(
            "echo \"stdin $(readlink /proc/$$/fd/0)\"\n\
             while read -r k v; do case $k in Sig[BI]*) echo \"$k$v\";; esac; done < /proc/$$/status\n\
             echo \"var $HARROW_LAUNCH_TEST pkg ${CARGO_PKG_NAME:-unset}\"\n\
             for f in /proc/$$/fd/*; do [ \"${f##*/}\" -ge 64 ] && echo \"high $(readlink $f)\"; done\n\
             echo to-socket >&3\n\
             echo to-pipe >&4\n\
             echo on-stderr >&2",
        );
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (pipe_r, pipe_w) = pipe().unwrap();
        // `CARGO_PKG_NAME` (set by the test runner) stands for an inherited variable the child
        // must not get.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        // A signal this thread blocks (the child must start with none blocked); SIGPIPE is
        // ignored by every Rust program, tests included.
        let blocked = block_sigusr2();
        let launched = launch_held(&Launch {
            program: &program,
            set_env: vec![
                ("HARROW_LAUNCH_TEST".into(), "first".into()),
                ("HARROW_LAUNCH_TEST".into(), "second".into()),
            ],
            remove_env: vec!["CARGO_PKG_NAME".into()],
            fds: vec![(theirs.as_fd(), 3), (pipe_w.as_fd(), 4)],
            pipe_output: true,
        })
        .unwrap();
        restore_sigmask(blocked);
        let ino = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).unwrap().st_ino.to_string();
        let (sock_ino, pipe_ino) = (ino(theirs.as_fd()), ino(pipe_w.as_fd()));
        drop((theirs, pipe_w));
        let mut process = launched.process;
        let (out, err) = (launched.stdout.unwrap(), launched.stderr.unwrap());
        let (out_ino, err_ino) = (ino(out.as_fd()), ino(err.as_fd()));
        let stdout = read_all(out);
        let stderr = read_all(err);
        let status = process.wait().unwrap();
        assert!(status.success(), "{status:?}, stderr {stderr:?}");
        assert!(stdout.contains("stdin /dev/null\n"), "{stdout}");
        // No signal blocked; SIGPIPE (13, bit 0x1000) not ignored, though this test ignores it.
        let blocked = stdout.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
        assert!(
            blocked
                .trim_start_matches("SigBlk:")
                .trim()
                .chars()
                .all(|c| c == '0'),
            "{stdout}"
        );
        let ignored = stdout.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
        let ignored =
            u64::from_str_radix(ignored.trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(
            ignored & (1 << 12),
            0,
            "SIGPIPE ignored in the child: {stdout}"
        );
        assert!(stdout.contains("var second pkg unset\n"), "{stdout}");
        // The copies made for the spawn stay in this process: the child's descriptors above 63
        // (the test harness may hand it some) are none of ours.
        for ino in [&sock_ino, &pipe_ino, &out_ino, &err_ino] {
            assert!(
                !stdout
                    .lines()
                    .any(|l| l.starts_with("high ") && l.contains(&format!("[{ino}]"))),
                "a copy of one of ours leaked: {stdout}"
            );
        }

        assert_eq!(stderr, "on-stderr\n");
        let mut got = String::new();
        let mut ours = ours;
        ours.read_to_string(&mut got).unwrap();
        assert_eq!(got, "to-socket\n");
        assert_eq!(read_all(pipe_r), "to-pipe\n");
        // Reaped once; its status stays, and a kill after the reap is a no-op.
        assert_eq!(process.try_wait().unwrap(), Some(status));
        process.kill().unwrap();
    }

    #[test]
    fn a_missing_program_fails_the_spawn_and_bad_text_is_refused() {
        let err = launch_held(&Launch {
            program: Path::new("/nonexistent/harrow-launch-test"),
            set_env: Vec::new(),
            remove_env: Vec::new(),
            fds: Vec::new(),
            pipe_output: false,
        })
        .err()
        .expect("a missing program must fail the spawn");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

        let err = launch_held(&Launch {
            program: Path::new("/bin/true"),
            set_env: vec![("HARROW_LAUNCH_TEST".into(), "a\0b".into())],
            remove_env: Vec::new(),
            fds: Vec::new(),
            pipe_output: false,
        })
        .err()
        .expect("a NUL byte must be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn a_program_without_a_slash_is_looked_up_in_path() {
        let mut process = launch_held(&Launch {
            program: Path::new("true"),
            set_env: Vec::new(),
            remove_env: Vec::new(),
            fds: Vec::new(),
            pipe_output: false,
        })
        .expect("`true` is on the PATH")
        .process;
        assert!(process.wait().unwrap().success());
    }

    #[test]
    fn a_killed_child_reports_the_signal() {
        let (program, _dir) = script("exec sleep 30");
        let mut process = launch_held(&Launch {
            program: &program,
            set_env: Vec::new(),
            remove_env: Vec::new(),
            fds: Vec::new(),
            pipe_output: false,
        })
        .unwrap()
        .process;
        assert_eq!(process.try_wait().unwrap(), None);
        process.kill().unwrap();
        let status = process.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
