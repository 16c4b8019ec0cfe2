//! Support for the process backend's tests: the [`ProcessFactory`] the conformance suite runs
//! with, the registry the helper binary serves, and its misbehaviour modes.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::{CallError, FnRegistry};
use harrow_runtime_core::{ActorSpec, SpawnBackend, open_nursery};
use harrow_spawn_process::ProcessBackend;
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::testfns;

/// The environment variable that makes the helper binary misbehave as a child (see [`Mode`]).
pub const MODE_ENV: &str = "HARROW_TESTCHILD_MODE";

/// The environment variable that makes the helper binary, started as a child, forget to run its
/// actor: it skips `maybe_run_child` and goes on as a root that starts a process child of its
/// own, then writes how that start ended to the file this variable names and exits. (Its own
/// child, were it started, exits at once: the chain stops there even without the refusal.)
pub const FORGETS_ENV: &str = "HARROW_TESTCHILD_FORGETS";

/// The environment variable that makes the helper binary run a small root program (see the
/// binary's `main`), instead of saying it is only a helper.
pub const ROOT_ENV: &str = "HARROW_TESTCHILD_ROOT";

/// How the helper binary behaves when started as a child actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Aborts before anything else.
    Crash,
    /// Exits (status 0) without a word.
    ExitBeforeHello,
    /// Writes bytes that are no frame, then waits for its parent to close.
    Garbage,
    /// Says `Hello` with another protocol version, then waits for its parent to close.
    WrongProtocol,
}

impl Mode {
    /// Every mode with its name in [`MODE_ENV`].
    pub const ALL: [(Mode, &'static str); 4] = [
        (Mode::Crash, "crash"),
        (Mode::ExitBeforeHello, "exit-before-hello"),
        (Mode::Garbage, "garbage"),
        (Mode::WrongProtocol, "wrong-protocol"),
    ];

    /// The mode named `name`.
    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.iter().find(|(_, n)| *n == name).map(|(m, _)| *m)
    }

    /// Its name in [`MODE_ENV`].
    pub fn name(self) -> &'static str {
        Mode::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("?", |(_, n)| n)
    }
}

/// The conformance suite's factory: children are the helper binary at `program`.
#[derive(Debug, Clone)]
pub struct ProcessFactory {
    backend: ProcessBackend,
}

impl ProcessFactory {
    /// Children run `program` (the helper binary).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ProcessFactory {
            backend: ProcessBackend::new().with_program(program),
        }
    }

    /// Children run the program this process runs (inside the helper binary itself).
    pub fn current() -> Self {
        ProcessFactory {
            backend: ProcessBackend::new(),
        }
    }

    /// A factory with another backend configuration.
    pub fn with_backend(backend: ProcessBackend) -> Self {
        ProcessFactory { backend }
    }

    /// The backend's configuration.
    pub fn process_backend(&self) -> &ProcessBackend {
        &self.backend
    }
}

impl BackendFactory for ProcessFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        self.backend.clone().into_shared()
    }
    fn spec(&self) -> ActorSpec {
        // The child serves what its own main registers: `child_registry`.
        ActorSpec::new()
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
    fn ends_on_its_own(&self) -> bool {
        true
    }
}

/// What the helper binary serves: the standard test functions (nested children are the same
/// binary), plus `proc:pid() -> pid`, `proc:print({out, err})`, which writes `out` to stdout
/// and `err` to stderr (each a list of lines), and `proc:nested_print(args)`, which starts a
/// child actor `leaf` and has it run `proc:print(args)`.
pub fn child_registry() -> Arc<FnRegistry> {
    let reg = testfns::registry(Arc::new(ProcessFactory::current()));
    let mut reg = Arc::try_unwrap(reg).unwrap_or_else(|_| unreachable_registry());
    reg.unary("proc:pid", |_| async move {
        Ok(Value::Int(i64::from(std::process::id())))
    })
    .expect("a valid path");
    reg.unary("proc:cores_spare_inherited", |_| async move {
        let inherited = harrow_runtime_core::ipc::park::spin::inherited_others_leave_a_core();
        Ok(inherited.map_or(Value::Null, Value::Bool))
    })
    .expect("a valid path");
    reg.unary("proc:print", |v| async move {
        let lines = |key: &str| -> Vec<String> {
            v.get(key)
                .and_then(Value::as_list)
                .unwrap_or(&[])
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        };
        let (out, err) = (lines("out"), lines("err"));
        let mut stdout = std::io::stdout().lock();
        for l in &out {
            writeln!(stdout, "{l}").map_err(|e| CallError::raised("IoError", e.to_string()))?;
        }
        stdout
            .flush()
            .map_err(|e| CallError::raised("IoError", e.to_string()))?;
        for l in &err {
            eprintln!("{l}");
        }
        Ok(Value::Null)
    })
    .expect("a valid path");
    reg.unary("proc:nested_print", |v| async move {
        let out = open_nursery(|n| async move {
            let f = ProcessFactory::current();
            let leaf = n.start_actor("leaf", f.backend(), f.spec()).await?;
            Ok(leaf.run("proc:print", v).await)
        })
        .await
        .map_err(|e| CallError::raised("NurseryError", e.to_string()))?;
        Ok(out?)
    })
    .expect("a valid path");
    Arc::new(reg)
}

fn unreachable_registry() -> FnRegistry {
    // `testfns::registry` returns a fresh Arc nobody else holds; should that ever change, serve
    // just the extra functions rather than panic in a child.
    FnRegistry::new()
}
