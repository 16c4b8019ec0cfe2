//! Python actors in child processes (feature `python`): [`PyProcessBackend`].
//!
//! The child is the running binary re-executed, as for Rust actors;
//! [`maybe_run_child`](crate::maybe_run_child) sees that it was started for a Python actor and, instead of the
//! program's Rust functions, serves Python functions in CPython's *main* interpreter with the
//! same worker as a subint actor (`harrow_python`): the same `harrow` module (contexts and
//! streams, `Cancelled`, `shield`, `sleep`, async functions, keyword arguments, nurseries and
//! portals), the same conversion and the same cancellation. What differs is where the code runs: any extension
//! module loads (numpy and the others that refuse subinterpreters), each actor is a process
//! (its own GIL, isolated memory; spawning costs a process start and a Python init), and a
//! hard kill is SIGKILL and reap.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use harrow_python::nest::Offers;
use harrow_python::{InterpConfig, MainInterp, Nesting, PyResolver};
use harrow_runtime_core::{
    BoxFuture, Capabilities, Child, CoDriver, HardKill, SpawnBackend, SpawnError, SpawnSpec,
};

use crate::ProcessBackend;
use crate::bootstrap::{ChildBootstrap, EXIT_BOOTSTRAP_FAILED, IntoResolver, run_child_as};
use crate::spec::CHILD_PYTHON_ENV;

/// The backend name Python process actors report.
const NAME: &str = "pyprocess";

/// Actors running Python functions in child processes (the running binary re-executed, serving
/// them in CPython's main interpreter). The spawn spec's `params` are
/// [`InterpConfig::to_params`], as for the subint backend (modules to expose, `sys.path`, a
/// virtual environment); `legacy` and `allow_threads` do not apply (the main interpreter loads
/// every extension and always allows threads).
///
/// ```no_run
/// use harrow_runtime_core::{run_root, ActorSpec, RootConfig};
/// use harrow_runtime_core::ipc::Value;
/// use harrow_python::InterpConfig;
/// use harrow_spawn_process::ProcessBackend;
///
/// fn main() {
///     // The child of a Python actor is this binary too: it must hand control over first.
///     harrow_spawn_process::maybe_run_child(|| {
///         std::sync::Arc::new(harrow_runtime_core::portal::FnRegistry::new())
///     });
///     let mut spec = ActorSpec::new();
///     spec.params = InterpConfig::new("calc").expose("math").to_params();
///     let out = run_root(RootConfig::default(), |n| async move {
///         let child = n.start_actor("calc", ProcessBackend::python().into_shared(), spec).await?;
///         Ok(child.run("math:sqrt", Value::Float(16.0)).await?)
///     }).unwrap();
///     assert_eq!(out, Value::Float(4.0));
/// }
/// ```
#[derive(Debug, Clone)]
pub struct PyProcessBackend {
    inner: ProcessBackend,
}

impl Default for PyProcessBackend {
    fn default() -> Self {
        PyProcessBackend {
            inner: ProcessBackend::new()
                .with_env(CHILD_PYTHON_ENV, "1")
                // Output reaches the parent line by line, as a Rust child's does.
                .with_env("PYTHONUNBUFFERED", "1"),
        }
    }
}

impl ProcessBackend {
    /// The Python process backend: [`PyProcessBackend::new`].
    pub fn python() -> PyProcessBackend {
        PyProcessBackend::new()
    }
}

impl PyProcessBackend {
    /// Re-executes the running binary, with prefixed output.
    pub fn new() -> Self {
        PyProcessBackend::default()
    }

    /// A new default backend, ready to hand to a nursery.
    pub fn shared() -> Arc<dyn SpawnBackend> {
        Arc::new(PyProcessBackend::new())
    }

    /// Starts children from `program` instead of the running binary (see
    /// [`ProcessBackend::with_program`]); it must be built with this feature.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.inner = self.inner.with_program(program);
        self
    }

    /// See [`ProcessBackend::with_output_prefix`].
    pub fn with_output_prefix(mut self, on: bool) -> Self {
        self.inner = self.inner.with_output_prefix(on);
        self
    }

    /// Sets an environment variable for every child (`PYTHONPATH`, for example).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.inner = self.inner.with_env(key, value);
        self
    }

    /// Wraps this backend for a nursery.
    pub fn into_shared(self) -> Arc<dyn SpawnBackend> {
        Arc::new(self)
    }
}

impl SpawnBackend for PyProcessBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_hard_kill(HardKill::Kills)
            .with_in_process(false)
            .with_nested(true)
            .with_tree_at_spawn(true)
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<Box<dyn Child>, SpawnError>> {
        // A bad config is refused here, naming the actor, rather than by the child.
        let checked = InterpConfig::from_params(spec.id.name.clone(), spec.params())
            .and_then(|c| c.site_dirs(harrow_python::python_version()).map(|_| ()))
            .map_err(|e| SpawnError::BadSpec {
                actor: spec.id.clone(),
                reason: e.to_string(),
            });
        let result = match checked {
            Ok(()) if !harrow_python::available() => Err(SpawnError::Unavailable {
                actor: spec.id.clone(),
                backend: NAME,
                reason: harrow_python::unavailable_message(),
            }),
            Ok(()) => self.inner.spawn_now(spec),
            Err(e) => Err(e),
        };
        Box::pin(async move { result })
    }
}

/// The child of a Python actor: serves its spec's Python functions in the main interpreter
/// until the actor ends; returns the process's exit status (see
/// [`maybe_run_child`](crate::maybe_run_child)).
///
/// Its Python code is a full actor (nurseries, portals, its parent): it can start children on
/// `"pyprocess"` (this backend, the default: the same program re-executed) and `"process"`
/// (Rust actors of the same program), and on what `offers` adds (see
/// [`maybe_run_child_offering`]).
pub(crate) fn run_python_child(boot: ChildBootstrap, offers: impl FnOnce(&mut Offers)) -> i32 {
    let name = boot.spec.id.clone();
    let config = match InterpConfig::from_params(name.name.clone(), boot.spec.params()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("harrow child {name}: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let bound = config
        .thread_join_bound
        .saturating_add(Duration::from_secs(2));
    let main = match MainInterp::start(config) {
        Ok(main) => main,
        Err(e) => {
            eprintln!("harrow child {name}: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let nesting = Nesting {
        offers: Arc::new(child_offers(offers)),
        subint: PyProcessBackend::shared(),
        config: Arc::new(main.handle().config().clone()),
    };
    let resolver = PyResolver::nested(main.handle(), nesting);
    // The serving thread runs the actor's tasks while it waits for a call, so that a call
    // reaches it from the link's reader it runs, not through the actor's thread.
    let code = if codrive() {
        let co = CoDriver::new();
        let shared = main.handle().shared().clone();
        shared.set_codriver(Some(co.clone()));
        let code = run_child_as(boot, Arc::new(resolver), NAME, Some(&co));
        shared.set_codriver(None);
        code
    } else {
        run_child_as(boot, Arc::new(resolver), NAME, None)
    };
    // Its Python code called `os._exit()`: the call failed with `ActorExit` and the actor
    // ended; the process says so, for its parent to report.
    let ended = main.handle().shared().exit_reason.lock().clone();
    if let Err(why) = main.shutdown(bound) {
        eprintln!("harrow child {name}: {why}");
    }
    match ended {
        Some(reason) => {
            eprintln!("harrow child {name}: {reason}");
            crate::EXIT_PYTHON_EXIT
        }
        None => code,
    }
}

/// Whether a Python process child co-drives its actor (`HARROW_PYPROCESS_CODRIVE=0` turns it
/// off, for comparisons).
fn codrive() -> bool {
    harrow_runtime_core::ipc::env_switch("HARROW_PYPROCESS_CODRIVE")
}

/// What a Python process actor's code can start children on: this backend (`"pyprocess"`) and
/// Rust process actors (`"process"`), both re-executing the running program, then what the
/// program's `offers` adds or replaces.
fn child_offers(offers: impl FnOnce(&mut Offers)) -> Offers {
    let mut o = Offers::default();
    o.add_backend(NAME, PyProcessBackend::shared());
    o.add_backend("process", ProcessBackend::shared());
    offers(&mut o);
    o
}

/// [`maybe_run_child`](crate::maybe_run_child), letting the program add to what the Python code
/// of a Python process actor can start children on: `offers` is called in such a child only,
/// before its actor starts, with `"pyprocess"` and `"process"` already offered (a program can
/// add the thread backend and registries of Rust functions by name, or the subint backend,
/// which this crate does not depend on).
///
/// ```no_run
/// use std::sync::Arc;
/// use harrow_runtime_core::portal::FnRegistry;
///
/// fn main() {
///     harrow_spawn_process::maybe_run_child_offering(
///         || Arc::new(FnRegistry::new()),
///         |offers| offers.add_resolver("rust-fns", Arc::new(FnRegistry::new())),
///     );
/// }
/// ```
pub fn maybe_run_child_offering<F, R, O>(resolver: F, offers: O)
where
    F: FnOnce() -> R,
    R: IntoResolver,
    O: FnOnce(&mut Offers),
{
    crate::bootstrap::maybe_run_child_then(resolver, |boot| run_python_child(boot, offers))
}
