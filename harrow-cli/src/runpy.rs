//! `harrow run-py MODULE:FUNCTION --actors N [--args JSON] [--kwargs JSON] [--path DIR ...]
//! [--backend subint|process] [--venv DIR]`: runs a Python function in N Python actors at once
//! (subint actors, or Python process actors with `--backend process`) and prints each actor's
//! result as JSON. Ctrl-C cancels every actor (the root owns SIGINT) and exits with 130.
//!
//! With `--inputs FILE|-` it maps the function over the items instead, on a pool of N actors
//! (see `runpool.rs`).

use std::path::PathBuf;
use std::time::Instant;

use harrow::{ActorSpec, FnPath, RootConfig, Value, run_root};

use crate::util::{Job, human, join_all};

/// Exit code for bad input (usage errors).
const USAGE: i32 = 2;

/// Which Python backend `run-py` starts its actors on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PyBackend {
    /// Subinterpreters of this process, each with its own GIL.
    Subint,
    /// A child process each, running Python in its main interpreter.
    Process,
}

/// Where the actors run: the backend and the packages they see.
pub(crate) struct Where {
    pub(crate) backend: PyBackend,
    pub(crate) venv: Option<PathBuf>,
}

/// What to run, once validated.
struct Job1 {
    func: FnPath,
    actors: usize,
    args: Value,
    /// Keyword arguments (`--kwargs`), in order.
    kwargs: Vec<(String, Value)>,
    paths: Vec<PathBuf>,
}

fn validate(
    function: &str,
    actors: usize,
    args: Option<&str>,
    kwargs: Option<&str>,
    paths: Vec<PathBuf>,
) -> Result<Job1, String> {
    let func = FnPath::parse(function).map_err(|e| {
        format!("bad function {function:?}: {e}; expected MODULE:FUNCTION, e.g. mypkg.tasks:work")
    })?;
    if actors == 0 {
        return Err("--actors must be at least 1".into());
    }
    let args = match args {
        None => Value::Null,
        Some(text) => {
            let j: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("bad --args JSON {text:?}: {e}"))?;
            crate::json::check_int_literals(text).map_err(|e| format!("bad --args value: {e}"))?;
            crate::json::from_json(&j).map_err(|e| format!("bad --args value: {e}"))?
        }
    };
    let kwargs = match kwargs {
        None => Vec::new(),
        Some(text) => {
            let j: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("bad --kwargs JSON {text:?}: {e}"))?;
            crate::json::check_int_literals(text)
                .map_err(|e| format!("bad --kwargs value: {e}"))?;
            let serde_json::Value::Object(o) = &j else {
                return Err(format!(
                    "--kwargs must be a JSON object of named arguments, e.g. {{\"x\": 1}}; got {text:?}"
                ));
            };
            o.iter()
                .map(|(k, v)| {
                    crate::json::from_json(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| format!("bad --kwargs value for {k:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let paths = if paths.is_empty() {
        vec![
            std::env::current_dir()
                .map_err(|e| format!("cannot read the current directory: {e}"))?,
        ]
    } else {
        paths
    };
    let paths = paths
        .into_iter()
        .map(|p| {
            if p.is_dir() {
                std::fs::canonicalize(&p).map_err(|e| format!("--path {}: {e}", p.display()))
            } else {
                Err(format!("--path {}: not a directory", p.display()))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Job1 {
        func,
        actors,
        args,
        kwargs,
        paths,
    })
}

/// Whether `module` is a file or package under one of `paths` (it may still be a module of
/// Python's own library).
fn found_in(module: &str, paths: &[PathBuf]) -> bool {
    let rel = module.replace('.', "/");
    // A directory without `__init__.py` is a namespace package, which Python imports too.
    paths
        .iter()
        .any(|p| p.join(format!("{rel}.py")).is_file() || p.join(&rel).is_dir())
}

/// Where a pool run's items come from, and in which order its results are printed.
pub(crate) struct PoolInputs<'a> {
    /// `--inputs`: a file, or `-` for standard input.
    pub(crate) source: Option<&'a str>,
    /// `--unordered`: print results as they come.
    pub(crate) unordered: bool,
    /// `--batch`: items per call.
    pub(crate) batch: usize,
}

/// Runs the command; returns the exit code.
pub(crate) fn run(
    function: &str,
    actors: usize,
    args: Option<&str>,
    kwargs: Option<&str>,
    paths: Vec<PathBuf>,
    pool: PoolInputs<'_>,
    place: Where,
) -> i32 {
    if pool.source.is_some() && args.is_some() {
        eprintln!(
            "harrow run-py: --args and --inputs exclude each other (each input is the argument)"
        );
        return USAGE;
    }
    if pool.source.is_none() && (pool.unordered || pool.batch != 1) {
        eprintln!("harrow run-py: --unordered and --batch need --inputs");
        return USAGE;
    }
    if pool.batch == 0 {
        eprintln!("harrow run-py: --batch must be at least 1");
        return USAGE;
    }
    let job = match validate(function, actors, args, kwargs, paths) {
        Ok(j) => j,
        Err(msg) => {
            eprintln!("harrow run-py: {msg}");
            return USAGE;
        }
    };
    let inputs = match pool.source.map(crate::runpool::read_inputs).transpose() {
        Ok(inputs) => inputs,
        Err(msg) => {
            eprintln!("harrow run-py: {msg}");
            return USAGE;
        }
    };
    if let Err(why) = harrow::subint_status() {
        eprintln!("harrow run-py: {why}");
        return USAGE;
    }
    if let Some(venv) = &place.venv
        && !venv.is_dir()
    {
        eprintln!("harrow run-py: --venv {}: not a directory", venv.display());
        return USAGE;
    }
    match inputs {
        Some(items) => run_on_pool(job, items, !pool.unordered, pool.batch, place),
        None => run_actors(job, place),
    }
}

#[cfg(feature = "subint")]
fn run_on_pool(job: Job1, items: Vec<Value>, ordered: bool, batch: usize, place: Where) -> i32 {
    let backend = match py_backend(&place) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("harrow run-py: {why}");
            return USAGE;
        }
    };
    crate::runpool::run_pool(
        backend,
        place.venv.as_deref(),
        &job.func,
        job.actors,
        &job.kwargs,
        &job.paths,
        items,
        ordered,
        batch,
    )
}

#[cfg(not(feature = "subint"))]
fn run_on_pool(
    _job: Job1,
    _items: Vec<Value>,
    _ordered: bool,
    _batch: usize,
    _place: Where,
) -> i32 {
    eprintln!("harrow run-py: the `subint` feature is off in this build");
    USAGE
}

#[cfg(not(feature = "subint"))]
fn run_actors(_job: Job1, _place: Where) -> i32 {
    // Unreachable in practice: `subint_status` already said the feature is off.
    eprintln!("harrow run-py: the `subint` feature is off in this build");
    USAGE
}

/// The backend `place` names, or why this build has none.
#[cfg(feature = "subint")]
fn py_backend(place: &Where) -> Result<std::sync::Arc<dyn harrow::SpawnBackend>, String> {
    match place.backend {
        PyBackend::Subint => Ok(harrow::SubintBackend::shared()),
        #[cfg(feature = "process")]
        PyBackend::Process => Ok(harrow::PyProcessBackend::shared()),
        #[cfg(not(feature = "process"))]
        PyBackend::Process => {
            Err("--backend process: the `process` feature is off in this build".into())
        }
    }
}

#[cfg(feature = "subint")]
fn run_actors(job: Job1, place: Where) -> i32 {
    let backend = match py_backend(&place) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("harrow run-py: {why}");
            return USAGE;
        }
    };
    let (backend, venv) = (&backend, &place.venv);
    let module = job.func.module().to_owned();
    let in_paths = found_in(&module, &job.paths);
    let shown_paths = job
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let func = job.func.to_string();
    let call_args = job
        .kwargs
        .iter()
        .fold(harrow::PyArgs::new(job.args.clone()), |a, (k, v)| {
            a.kwarg(k.clone(), v.clone())
        })
        .into_value();
    let call_args = &call_args;
    let t0 = Instant::now();
    let result = run_root(RootConfig::default(), |n| {
        let (job, module, func) = (&job, &module, &func);
        async move {
            let starts: Vec<Job<'_, _>> = (0..job.actors)
                .map(|i| {
                    let n = n.clone();
                    Box::pin(async move {
                        let name = format!("py-{i}");
                        let mut config = harrow::InterpConfig::new(&name).expose(module.as_str());
                        for p in &job.paths {
                            config = config.sys_path(p);
                        }
                        if let Some(v) = venv {
                            config = config.venv(v);
                        }
                        let spec = ActorSpec::new().params(config.to_params());
                        n.start_actor(&name, backend.clone(), spec).await
                    }) as Job<'_, _>
                })
                .collect();
            let mut handles: Vec<harrow::ChildHandle> = Vec::new();
            for h in join_all(starts).await {
                handles.push(h?);
            }
            let started = t0.elapsed();
            type Outcome = (
                String,
                Result<Value, harrow::portal::Error>,
                std::time::Duration,
            );
            let calls: Vec<Job<'_, Outcome>> = handles
                .iter()
                .map(|h| {
                    Box::pin(async move {
                        let t = Instant::now();
                        let r = h.run(func, call_args.clone()).await;
                        (h.id().name.clone(), r, t.elapsed())
                    }) as Job<'_, _>
                })
                .collect();
            Ok((started, join_all(calls).await))
        }
    });
    match result {
        Ok((started, results)) => {
            let mut failed = 0;
            for (actor, r, took) in &results {
                match r {
                    Ok(v) => {
                        println!("{actor}: {}", crate::json::to_json_text(v));
                        eprintln!("  ({actor} returned after {})", human(*took));
                    }
                    Err(e) => {
                        failed += 1;
                        match e.remote_error() {
                            Some(remote) if !remote.children.is_empty() => {
                                // A group: every member, with its source, as a tree.
                                println!("{actor}: error: {remote}");
                            }
                            Some(remote) => {
                                // An empty message prints the type alone, as Python does.
                                if remote.message.is_empty() {
                                    println!("{actor}: error: {}", remote.type_name);
                                } else {
                                    println!(
                                        "{actor}: error: {}: {}",
                                        remote.type_name, remote.message
                                    );
                                }
                                // Only when the module itself was not found: a module that
                                // was found but whose own imports failed says so in its error.
                                if remote.kind == harrow::ErrorKind::NotFound
                                    && remote.type_name.contains("ModuleNotFoundError")
                                {
                                    eprintln!(
                                        "  (module {module:?} was looked for in --path entries [{shown_paths}] and in Python's own library)"
                                    );
                                } else if remote.kind == harrow::ErrorKind::NotFound && !in_paths {
                                    eprintln!(
                                        "  (module {module:?} is not a file or package under the --path entries [{shown_paths}]; it was imported from elsewhere)"
                                    );
                                }
                                if !remote.traceback.is_empty() {
                                    eprintln!("{}", remote.traceback.trim_end());
                                }
                            }
                            None => println!("{actor}: error: {e}"),
                        }
                    }
                }
            }
            eprintln!(
                "{} actor(s) up in {}; all done in {}; {} failed",
                results.len(),
                human(started),
                human(t0.elapsed()),
                failed
            );
            i32::from(failed > 0)
        }
        Err(e) if e.is_interrupted() => {
            let leaked: Vec<String> = e.leaks().map(|l| l.actor().to_string()).collect();
            if leaked.is_empty() {
                eprintln!(
                    "harrow run-py: interrupted (SIGINT): every actor was cancelled ({} after start)",
                    human(t0.elapsed())
                );
            } else {
                eprintln!(
                    "harrow run-py: interrupted (SIGINT): the actors were cancelled, but {} could \
                     not be stopped and leaked (still running in this process until it exits) \
                     ({} after start)",
                    leaked.join(", "),
                    human(t0.elapsed())
                );
            }
            130
        }
        Err(e) => {
            eprintln!("harrow run-py: {e}");
            1
        }
    }
}
