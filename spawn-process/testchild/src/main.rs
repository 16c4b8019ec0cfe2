//! The helper binary of the process backend's tests.
//!
//! - Started as a child actor (by a `ProcessBackend`), it serves
//!   [`child_registry`](harrow_process_testchild::child_registry) — unless
//!   `HARROW_TESTCHILD_MODE` names a misbehaviour (`crash`, `exit-before-hello`, `garbage`,
//!   `wrong-protocol`).
//! - With `HARROW_TESTCHILD_ROOT=output`, it is a root that starts one child actor of itself
//!   (the zero-configuration `ProcessBackend::new()`), has it print to stdout and stderr, and
//!   exits; the output test reads what reaches its stdout and stderr. `output-plain` does the
//!   same with the output prefix turned off.
//! - Started as a child with `HARROW_TESTCHILD_FORGETS` set, it skips `maybe_run_child` and
//!   runs a root instead, as a program that forgot it would.
//! - Otherwise it says what it is and exits with status 2.

use std::io::{Read, Write};

use harrow_process_testchild::{FORGETS_ENV, MODE_ENV, Mode, ROOT_ENV, child_registry};
use harrow_runtime_core::ipc::codec::{CodecConfig, encode};
use harrow_runtime_core::ipc::{Msg, PROTOCOL_VERSION, Value, shm};
use harrow_runtime_core::{ActorSpec, RootConfig, Timeouts, run_root};
use harrow_spawn_process::{ProcessBackend, is_child, maybe_run_child, take_bootstrap};

fn main() -> anyhow::Result<()> {
    if is_child() {
        if let Some(report) = std::env::var_os(FORGETS_ENV) {
            return forgets_its_actor(report.into());
        }
        if let Some(mode) = std::env::var(MODE_ENV)
            .ok()
            .as_deref()
            .and_then(Mode::parse)
        {
            misbehave(mode)?;
            return Ok(());
        }
    }
    maybe_run_child(child_registry);
    match std::env::var(ROOT_ENV).as_deref() {
        Ok("output") => output_root(true),
        Ok("output-plain") => output_root(false),
        _ => {
            eprintln!(
                "harrow-process-testchild: a helper binary for harrow-spawn-process's tests; \
                 it runs as a child actor (or with {ROOT_ENV}=output)"
            );
            std::process::exit(2);
        }
    }
}

fn misbehave(mode: Mode) -> anyhow::Result<()> {
    if mode == Mode::Crash {
        std::process::abort();
    }
    let Some(boot) = take_bootstrap()? else {
        anyhow::bail!("not a child");
    };
    let mut stream = boot.stream;
    // The bytes go where the parent reads: the shared-memory ring when it made one, else the
    // socket.
    let mut out: Box<dyn Write> = match boot.shm {
        Some(segment) => Box::new(shm::raw_writer(
            stream.try_clone()?,
            segment,
            shm::Side::Second,
            std::time::Duration::from_secs(10),
        )?),
        None => Box::new(stream.try_clone()?),
    };
    match mode {
        Mode::Crash => unreachable!("handled above"),
        Mode::ExitBeforeHello => return Ok(()),
        Mode::Garbage => out.write_all(&[0xff; 64])?,
        Mode::WrongProtocol => {
            let hello = Msg::Hello {
                actor: boot.spec.id.clone(),
                protocol: PROTOCOL_VERSION + 1,
                pid: std::process::id(),
                backend: "process".into(),
            };
            out.write_all(&encode(&hello, &CodecConfig::default())?)?;
        }
    }
    // Wait for the parent to give up on us (it closes the channel or kills this process; the
    // parent-death signal covers a parent that dies). Over shared memory the socket carries
    // only wake-up bytes, read and dropped here.
    drop(out);
    stream.set_nonblocking(false)?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink)? > 0 {}
    Ok(())
}

/// A child actor's program that goes on as a root without running its actor ([`FORGETS_ENV`]).
fn forgets_its_actor(report: std::path::PathBuf) -> anyhow::Result<()> {
    const GRANDCHILD_ENV: &str = "HARROW_TESTCHILD_FORGETFUL_GRANDCHILD";
    if std::env::var_os(GRANDCHILD_ENV).is_some() {
        return Ok(());
    }
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    let started = run_root(config, |n| async move {
        let backend = ProcessBackend::new().with_env(GRANDCHILD_ENV, "1");
        n.start_actor("grandchild", backend.into_shared(), ActorSpec::new())
            .await?;
        Ok(())
    });
    let text = match started {
        Ok(()) => "the grandchild started".to_owned(),
        Err(e) => e.to_string(),
    };
    std::fs::write(&report, text)?;
    std::process::exit(1);
}

fn output_root(prefix: bool) -> anyhow::Result<()> {
    let config = RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick());
    run_root(config, |n| async move {
        let child = n
            .start_actor(
                "printer",
                ProcessBackend::new()
                    .with_output_prefix(prefix)
                    .into_shared(),
                ActorSpec::new(),
            )
            .await?;
        let args = Value::Map(vec![
            (
                "out".into(),
                Value::List(vec!["to stdout 1".into(), "to stdout 2".into()]),
            ),
            ("err".into(), Value::List(vec!["to stderr".into()])),
        ]);
        child.run("proc:print", args).await?;
        // Nested: the grandchild's lines carry both prefixes.
        child
            .run(
                "proc:nested_print",
                Value::Map(vec![(
                    "out".into(),
                    Value::List(vec!["from the leaf".into()]),
                )]),
            )
            .await?;
        let _ = child.cancel().await;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("root done");
    Ok(())
}
