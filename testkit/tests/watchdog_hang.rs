//! The watchdog turns a hang into a prompt failure with a stack dump: the `hang_fixture` binary
//! arms a 1 s watchdog and hangs; it must die by abort, print the dump's path, and the dump must
//! hold every thread's stack (gdb's, or the kernel's view when gdb is missing) and the registered
//! section.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use harrow_testkit::watchdog::{DUMP_LINE_PREFIX, GDB_ENV};

/// Generous: the fixture's bound is 1 s, gdb's own bound is 30 s.
const EXIT_BOUND: Duration = Duration::from_secs(90);

struct Run {
    status: ExitStatus,
    stderr: String,
    dump: PathBuf,
    text: String,
}

/// Waits for `child` to exit for at most `bound`, killing it if it does not.
///
/// Polls `try_wait`: std offers no wait with a timeout.
fn wait_bounded(child: &mut Child, bound: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("the hung fixture was not ended by its watchdog within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_fixture(gdb: Option<&str>) -> anyhow::Result<Run> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hang_fixture"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(gdb) = gdb {
        cmd.env(GDB_ENV, gdb);
    }
    let mut child = cmd.spawn()?;
    let mut pipe = child.stderr.take().expect("piped");
    // Read stderr on a thread so a full pipe can never stall the child.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, EXIT_BOUND)?;
    let stderr = reader.join().expect("reader panicked");
    let dump = stderr
        .lines()
        .find_map(|l| l.strip_prefix(DUMP_LINE_PREFIX))
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("no dump path on stderr:\n{stderr}"))?;
    let text = std::fs::read_to_string(&dump)?;
    Ok(Run {
        status,
        stderr,
        dump,
        text,
    })
}

fn assert_common(run: &Run) {
    use std::os::unix::process::ExitStatusExt;
    assert!(!run.status.success(), "{:?}", run.status);
    assert_eq!(
        run.status.signal(),
        Some(6),
        "expected SIGABRT: {:?}",
        run.status
    );
    assert!(
        run.stderr.contains("\"hang_fixture::stuck\" HUNG"),
        "{}",
        run.stderr
    );
    let dir = run.dump.parent().and_then(|d| d.file_name());
    assert_eq!(dir, Some("hang-dumps".as_ref()), "{}", run.dump.display());
    let name = run
        .dump
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(name.starts_with("hang_fixture__stuck-"), "{name}");
    // The kernel's view names both hung threads.
    assert!(
        run.text.contains("\"stuck-worker\" state S"),
        "{}",
        run.text
    );
    assert!(
        run.text.contains("\"hang_fixture\" state S"),
        "{}",
        run.text
    );
    assert!(
        run.text
            .contains("== fixture section ==\nfixture section says hi"),
        "{}",
        run.text
    );
}

#[test]
fn hung_fixture_is_aborted_with_gdb_stacks() -> anyhow::Result<()> {
    let run = run_fixture(None)?;
    assert_common(&run);
    // gdb's `thread apply all bt`: one "Thread N (... "name")" header per thread, with frames.
    assert!(run.text.contains("Thread "), "{}", run.text);
    assert!(run.text.contains("\"stuck-worker\")"), "{}", run.text);
    assert!(run.text.contains("hang_fixture::main"), "{}", run.text);
    std::fs::remove_file(&run.dump)?;
    Ok(())
}

#[test]
fn hung_fixture_without_gdb_still_dumps_the_kernel_view() -> anyhow::Result<()> {
    let run = run_fixture(Some("/nonexistent/harrow-no-such-gdb"))?;
    assert_common(&run);
    assert!(run.text.contains("gdb is missing"), "{}", run.text);
    std::fs::remove_file(&run.dump)?;
    Ok(())
}
