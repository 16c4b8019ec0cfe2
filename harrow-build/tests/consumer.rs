//! A crate outside the workspace that depends on harrow by path, made exactly as the README's
//! "Using harrow from your own crate" section says: its files are that section's code blocks
//! (each starts with a comment naming its file), with `/path/to/harrow` replaced by this checkout
//! and `/path/to/python3` by the Python this workspace builds with. It is built with `cargo run`
//! and must print what the section says it prints (one thread, one process and one Python actor);
//! then the built binary is run again directly with a minimal environment (no
//! `LD_LIBRARY_PATH`), as it would run when deployed, and once more with `PYTHONHOME` pointing
//! nowhere (a deployment without the standard library), where it must fail with harrow's error.
//!
//! Build time: the crate is built into this workspace's target directory, with the same flags and
//! dependency versions (the section's optional `Cargo.lock` copy), so cargo reuses the
//! workspace's registry-crate artifacts. harrow's own crates are compiled once more for it (cargo
//! hashes path packages relative to the consuming workspace's root), then reused by later runs,
//! which build only the crate (seconds): the crate's directory is the same on every run. Offline:
//! the registry cache that `scripts/setup` filled is enough.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

const SECTION: &str = "### Using harrow from your own crate";
/// Bound on the consumer's build and run: seconds when warm, about a minute on a fresh clone of a
/// loaded 2-core machine (harrow's crates are compiled again for the consumer). nextest's
/// backstop for this test is 240 s (.config/nextest.toml).
const CARGO_BOUND: Duration = Duration::from_secs(230);
/// Bound on one direct run of the built binary.
const RUN_BOUND: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harrow-build lives in the workspace root")
        .to_owned()
}

/// This workspace's target directory (`CARGO_TARGET_TMPDIR` is its `tmp/` subdirectory).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .to_owned()
}

/// The README section's text, up to the next heading of the same or a higher level.
fn readme_section() -> Result<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let start = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no {SECTION:?} section"))?;
    let body = &readme[start + SECTION.len()..];
    let end = body
        .find("\n### ")
        .into_iter()
        .chain(body.find("\n## "))
        .min()
        .unwrap_or(body.len());
    Ok(body[..end].to_owned())
}

/// One fenced code block: its info string and its lines.
struct Block {
    lang: String,
    text: String,
}

fn code_blocks(section: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in section.lines() {
        if let Some(info) = line.strip_prefix("```") {
            match current.take() {
                Some(b) => blocks.push(b),
                None => {
                    current = Some(Block {
                        lang: info.trim().to_owned(),
                        text: String::new(),
                    })
                }
            }
        } else if let Some(b) = current.as_mut() {
            b.text.push_str(line);
            b.text.push('\n');
        }
    }
    ensure!(
        current.is_none(),
        "an unterminated code block in {SECTION:?}"
    );
    Ok(blocks)
}

/// The file a block is, from its first line (`# Cargo.toml`, `// src/main.rs`).
fn file_name(block: &Block) -> Option<&str> {
    let first = block.text.lines().next()?;
    let name = first
        .strip_prefix("# ")
        .or_else(|| first.strip_prefix("// "))?
        .trim();
    (!name.contains(' ') && name.contains('.')).then_some(name)
}

/// The environment the consumer's cargo sees: this process's, less what cargo (or nextest) sets
/// for a test and what this workspace's `.cargo/config.toml` adds (a consumer has none of it).
/// Other `CARGO_*` settings the developer exported stay, as they applied to the workspace build.
fn consumer_env() -> Vec<(OsString, OsString)> {
    const SET_FOR_TESTS: [&str; 9] = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_BIN_",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_TARGET_DIR",
        "OUT_DIR",
    ];
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !(k == "CARGO"
                || SET_FOR_TESTS.iter().any(|p| k.starts_with(p))
                || k.starts_with("HARROW_")
                || k.starts_with("PYO3_")
                || k == "LD_LIBRARY_PATH")
        })
        .collect()
}

/// Runs `cmd` to completion within `bound` (killed after it), stdout and stderr in files of
/// `dir`; returns (success, stdout, stderr).
fn run_bounded(
    mut cmd: Command,
    dir: &Path,
    what: &str,
    bound: Duration,
) -> Result<(bool, String, String)> {
    let out_path = dir.join(format!("{what}.stdout"));
    let err_path = dir.join(format!("{what}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {bound:?}; its output: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((
        status.success(),
        std::fs::read_to_string(&out_path)?,
        std::fs::read_to_string(&err_path)?,
    ))
}

#[test]
fn a_crate_outside_the_workspace_follows_the_readme() -> Result<()> {
    // The Python this workspace builds with (scripts/setup records it); the README's step names
    // it in the consumer's .cargo/config.toml.
    let python = match (option_env!("PYO3_PYTHON"), option_env!("HARROW_NO_PYTHON")) {
        (Some(p), None | Some("" | "0")) if !p.is_empty() => p,
        _ => {
            println!(
                "SKIPPED a_crate_outside_the_workspace_follows_the_readme: this build has no \
                 CPython >= 3.12 with a shared libpython (PYO3_PYTHON unset or HARROW_NO_PYTHON=1)"
            );
            return Ok(());
        }
    };
    let root = repo_root();
    let root_str = root.to_str().context("the checkout's path is not UTF-8")?;
    // Build flags in this checkout's cargo config do not reach the consumer (its config is its
    // own), so none of the workspace's artifacts could be shared and the build would outgrow its
    // bound: say so plainly instead. (Flags exported as RUSTFLAGS reach both builds: fine.)
    let config = std::fs::read_to_string(root.join(".cargo/config.toml")).unwrap_or_default();
    ensure!(
        !config
            .lines()
            .any(|l| l.trim_start().starts_with("rustflags")),
        "{}/.cargo/config.toml sets rustflags (an older scripts/setup wrote \
         --cfg pyo3_disable_reference_pool): run scripts/setup again",
        root.display()
    );

    let section = readme_section()?;
    let blocks = code_blocks(&section)?;
    let mut files = BTreeMap::new();
    for b in &blocks {
        if let Some(name) = file_name(b) {
            let text = b
                .text
                .replace("/path/to/harrow", root_str)
                .replace("/path/to/python3", python);
            ensure!(
                files.insert(name.to_owned(), text).is_none(),
                "{name} appears twice"
            );
        }
    }
    for needed in [
        "Cargo.toml",
        ".cargo/config.toml",
        "build.rs",
        "src/main.rs",
        "py/tasks.py",
    ] {
        ensure!(
            files.contains_key(needed),
            "{SECTION:?} has no code block for {needed} (found: {:?})",
            files.keys().collect::<Vec<_>>()
        );
    }
    ensure!(
        section.contains("`cp /path/to/harrow/Cargo.lock .`"),
        "{SECTION:?} no longer suggests copying Cargo.lock"
    );
    let expected = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .find_map(|b| {
            b.text
                .lines()
                .find(|l| l.trim_start().starts_with("cargo run"))
                .and_then(|l| l.split_once("# prints:"))
                .map(|(_, out)| out.trim().to_owned())
        })
        .context("no `cargo run    # prints: ...` line in a sh block")?;

    // A fixed directory per checkout (same package path, so rebuilds reuse the last build's
    // artifacts), outside the workspace, recreated from scratch.
    let hash = root_str.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = std::env::temp_dir().join(format!("harrow-consumer-{hash:016x}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))?;
        std::fs::write(&path, text)?;
    }
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;

    let env = consumer_env();
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()));
    cargo
        .args(["run", "--offline"])
        .current_dir(&dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_TERM_COLOR", "never");
    let (ok, stdout, stderr) = run_bounded(cargo, &dir, "cargo-run", CARGO_BOUND)?;
    ensure!(
        ok,
        "`cargo run` in {} failed:\n{stderr}\n{stdout}",
        dir.display()
    );
    ensure!(
        stdout.trim_end().lines().last() == Some(expected.as_str()),
        "`cargo run` printed {stdout:?}, the README says {expected:?}; cargo said:\n{stderr}"
    );
    for bad in ["UNAVAILABLE", "harrow-build:", "cannot host"] {
        ensure!(
            !stderr.contains(bad),
            "the build warned ({bad:?}):\n{stderr}"
        );
    }

    // The binary alone, as deployed on this machine: no cargo, no LD_LIBRARY_PATH.
    let exe = target_dir().join("debug").join("my-app");
    let mut direct = Command::new(&exe);
    direct.current_dir(&dir).env_clear();
    for keep in ["PATH", "HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            direct.env(keep, v);
        }
    }
    let (ok, stdout, stderr) = run_bounded(direct, &dir, "direct-run", RUN_BOUND)?;
    ensure!(
        ok && stdout.trim_end() == expected,
        "{} alone printed {stdout:?} (README: {expected:?}), stderr:\n{stderr}",
        exe.display()
    );

    // Deployed where its Python's standard library is not found (the README's deploying notes):
    // starting the Python actor fails with an error that says what to do, and the program ends
    // through its own error path (anyhow's `Error: ...`), not by CPython ending the process.
    let mut no_stdlib = Command::new(&exe);
    no_stdlib
        .current_dir(&dir)
        .env_clear()
        .env("PYTHONHOME", dir.join("no-such-python-home"));
    if let Some(v) = std::env::var_os("PATH") {
        no_stdlib.env("PATH", v);
    }
    let (ok, _, stderr) = run_bounded(no_stdlib, &dir, "no-stdlib-run", RUN_BOUND)?;
    ensure!(
        !ok && stderr.starts_with("Error: ")
            && stderr.contains("Python initialisation failed")
            && stderr.contains("PYTHONHOME")
            && !stderr.contains("Fatal Python error"),
        "without its standard library the binary should fail with harrow's error, got:\n{stderr}"
    );

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
