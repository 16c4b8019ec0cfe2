//! The `harrow` command: `harrow demo`, `harrow bench`, `harrow run-py` (the harrow-cli crate,
//! so that depending on the harrow library compiles no command-line dependencies).
//!
//! This binary is also its own process-backend child: `main` first hands control to the runtime
//! when it was started as a child actor ([`harrow::maybe_run_child`]), and the benchmark's
//! baselines re-execute it in two plain modes (`HARROW_BENCH_CHILD=bare|echo`).
// With a backend feature off, the code for it is compiled out and some helpers go unused.
#![cfg_attr(
    not(all(feature = "thread", feature = "process", feature = "subint")),
    allow(dead_code, unused_imports, unused_mut)
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fns;
mod json;
mod pymod;
mod runpool;
mod runpy;
mod util;

/// harrow: a structured-concurrency actor runtime.
#[derive(Debug, Parser)]
#[command(name = "harrow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a small actor tree on every available backend and show it working (a few seconds).
    Demo {
        /// Also start actors on another host: `ssh://[user@]host[:port]` (the same binary must
        /// be at the same path there, or use --upload).
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// With --remote: upload this binary to --remote-path when missing or different.
        #[arg(long, requires = "remote")]
        upload: bool,
        /// With --remote: where the binary is on the remote host (default: this binary's path).
        #[arg(long, value_name = "PATH", requires = "remote")]
        remote_path: Option<String>,
        /// With --remote: an ssh `-o` option such as `IdentityFile=~/.ssh/key` (repeatable).
        #[arg(long = "ssh-option", value_name = "NAME=VALUE", requires = "remote")]
        ssh_options: Vec<String>,
    },
    /// Run the benchmark suite: each figure beside a baseline measured in the same run, as a
    /// ratio; progress on stderr.
    Bench {
        /// Print machine-readable JSON instead of the tables.
        #[arg(long)]
        json: bool,
        /// Small sizes, two repetitions: a smoke run of a few seconds (figures are rough).
        #[arg(long)]
        quick: bool,
        /// Only the scale table: trees of 10, 100 and 1,000 thread / 200 process / 100 subint
        /// idle actors; spawn and teardown time and memory per actor (with `--quick`: one
        /// tree of 5 per backend).
        #[arg(long, conflicts_with = "only")]
        scale: bool,
        /// Only one section of the suite (`pool`: the pool throughput table; `pool-small`: its
        /// small items' batched rows alone, more rounds, for profiling; `rpc-BACKEND`: one
        /// backend's RPC round trips alone, many of them, for profiling; `async-BACKEND`: the
        /// same with an `async def` function (subint, pyprocess); `stream-BACKEND`: its
        /// stream echo alone, longer, for profiling; `fail-BACKEND`: its failing calls taking
        /// turns with as many succeeding ones, for profiling; `spawn-BACKEND`: its spawn-to-first-reply
        /// beside the bare spawn, many times).
        #[arg(long, value_name = "SECTION", value_parser = ["pool", "pool-small", "rpc-thread", "rpc-process", "rpc-subint", "rpc-pyprocess", "async-subint", "async-pyprocess", "stream-thread", "stream-process", "stream-subint", "stream-pyprocess", "fail-thread", "fail-process", "fail-subint", "fail-pyprocess", "spawn-thread", "spawn-process", "spawn-subint", "spawn-pyprocess"])]
        only: Option<String>,
    },
    /// Run a Python function in N Python actors in parallel (subinterpreters, or child
    /// processes with `--backend process`) and print each result as JSON (Ctrl-C cancels them
    /// all; exit code 130).
    RunPy {
        /// The function, `package.module:function`.
        function: String,
        /// How many actors (each runs the function once).
        #[arg(long, default_value_t = 1)]
        actors: usize,
        /// The argument as JSON: `null` (the default) calls `f()`, anything else `f(arg)`.
        #[arg(long, allow_negative_numbers = true)]
        args: Option<String>,
        /// Keyword arguments as a JSON object: `{"x": 1}` calls `f(arg, x=1)` (`f(x=1)` without
        /// `--args`).
        #[arg(long)]
        kwargs: Option<String>,
        /// A directory to find the module in (repeatable; default: the current directory).
        #[arg(long = "path", value_name = "DIR")]
        paths: Vec<PathBuf>,
        /// Map the function over these items instead, one JSON value a line (`-`: standard
        /// input), on a pool of `--actors` workers; each result is printed as a JSON line as it
        /// comes, progress on stderr.
        #[arg(long, value_name = "FILE|-")]
        inputs: Option<String>,
        /// With `--inputs`: print results as they come rather than in input order.
        #[arg(long)]
        unordered: bool,
        /// With `--inputs`: send items N at a time (one call per batch: much faster for small
        /// items; each item still gets its own result line).
        #[arg(long, default_value_t = 1, value_name = "N")]
        batch: usize,
        /// Where the actors run: `subint` (subinterpreters of this process, parallel, for
        /// modules that support subinterpreters) or `process` (a child process each, for any
        /// module, numpy included).
        #[arg(long, value_enum, default_value_t = runpy::PyBackend::Subint)]
        backend: runpy::PyBackend,
        /// A virtual environment whose packages the actors see (made with the Python harrow is
        /// linked against).
        #[arg(long, value_name = "DIR")]
        venv: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // In a child actor started by the process backend: serve the CLI's functions, then exit.
    #[cfg(feature = "process")]
    harrow::maybe_run_child(fns::registry);
    // In a child actor started on this host by the remote backend (ssh, ...): the same.
    #[cfg(feature = "remote")]
    harrow::remote::maybe_run_child(|| -> std::sync::Arc<dyn harrow::Resolver> { fns::registry() });
    if let Some(code) = bench::child_mode() {
        return code;
    }

    let cli = Cli::parse();
    // The demo and the bench report their expected leaks and kills themselves; RUST_LOG wins.
    let default = match cli.command {
        Command::RunPy { .. } => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let code = match cli.command {
        Command::Demo {
            remote,
            upload,
            remote_path,
            ssh_options,
        } => demo::run(demo::RemoteArgs {
            url: remote,
            upload,
            path: remote_path,
            ssh_options,
        }),
        Command::Bench {
            json,
            quick,
            scale,
            only,
        } => match only {
            Some(section) => bench::run_only(&section, json, quick),
            None => bench::run(json, quick, scale),
        },
        Command::RunPy {
            function,
            actors,
            args,
            kwargs,
            paths,
            inputs,
            unordered,
            batch,
            backend,
            venv,
        } => runpy::run(
            &function,
            actors,
            args.as_deref(),
            kwargs.as_deref(),
            paths,
            runpy::PoolInputs {
                source: inputs.as_deref(),
                unordered,
                batch,
            },
            runpy::Where { backend, venv },
        ),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
