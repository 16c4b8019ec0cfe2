//! [`InterpConfig`]: how one Python actor's interpreter is made (a subinterpreter, or the main
//! interpreter of a child process).

use std::path::PathBuf;
use std::time::Duration;

/// How one actor's subinterpreter is created and what it may run.
#[derive(Clone, Debug)]
pub struct InterpConfig {
    /// The actor's name: names the OS thread (`subint-<name>`) and every report.
    pub name: String,
    /// Modules whose functions may be called (exact dotted names). Calls into any other module
    /// fail with `ErrorKind::ModuleNotExposed`.
    pub modules: Vec<String>,
    /// Entries put at the front of `sys.path`, in order, before any call.
    pub sys_path: Vec<PathBuf>,
    /// A virtual environment whose packages the actor sees: its
    /// `lib/python<X.Y>/site-packages` (for the Python harrow is linked against) is added with
    /// `site.addsitedir` (so its `.pth` files work), after [`site_packages`](Self::site_packages).
    /// The same for both Python backends; a venv made with another Python version is an error at
    /// spawn.
    pub venv: Option<PathBuf>,
    /// Site-packages directories added with `site.addsitedir`, in order, before any call.
    pub site_packages: Vec<PathBuf>,
    /// Legacy mode: share the main interpreter's GIL and allow single-phase-init extension
    /// modules (`check_multi_interp_extensions = 0`). No parallelism with other legacy
    /// interpreters; use only for extensions that refuse to load in an isolated interpreter.
    pub legacy: bool,
    /// Whether Python code may start threads (`threading.Thread`). Off by default: starting one is
    /// a Python `RuntimeError`. Allowed threads are cancelled and joined within
    /// [`thread_join_bound`](Self::thread_join_bound) before the interpreter ends.
    pub allow_threads: bool,
    /// How long shutdown waits for Python threads started by user code to end, after
    /// asking them to stop. A thread still alive then makes the interpreter leak (reported).
    pub thread_join_bound: Duration,
    /// The interpreter thread's stack size, in bytes. Python code recursing through C (`repr`,
    /// `json`, `pickle` of deeply nested data) uses this stack down to CPython's C recursion
    /// limit; [`DEFAULT_STACK_SIZE`] lets that limit be reached safely (a `RecursionError`, not a
    /// crash). It is address space reserved, not memory used.
    pub stack_size: usize,
}

/// The default [`InterpConfig::stack_size`]: 8 MiB, the usual main-thread stack that CPython's
/// recursion limits are set for (Rust's default for a spawned thread is 2 MiB). Raising
/// `sys.setrecursionlimit` far above its default can need more.
pub const DEFAULT_STACK_SIZE: usize = 8 << 20;

/// The smallest accepted [`InterpConfig::stack_size`].
pub const MIN_STACK_SIZE: usize = 256 << 10;

impl InterpConfig {
    /// A config for actor `name` that exposes no module yet.
    pub fn new(name: impl Into<String>) -> Self {
        InterpConfig {
            name: name.into(),
            modules: Vec::new(),
            sys_path: Vec::new(),
            venv: None,
            site_packages: Vec::new(),
            legacy: false,
            allow_threads: false,
            thread_join_bound: Duration::from_secs(1),
            stack_size: DEFAULT_STACK_SIZE,
        }
    }

    /// Exposes `module` (a dotted module name).
    pub fn expose(mut self, module: impl Into<String>) -> Self {
        self.modules.push(module.into());
        self
    }

    /// Adds a `sys.path` entry.
    pub fn sys_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.sys_path.push(path.into());
        self
    }

    /// Makes the packages of the virtual environment at `dir` visible (see
    /// [`venv`](Self::venv)).
    pub fn venv(mut self, dir: impl Into<PathBuf>) -> Self {
        self.venv = Some(dir.into());
        self
    }

    /// Adds a site-packages directory (see [`site_packages`](Self::site_packages)).
    pub fn site_packages(mut self, dir: impl Into<PathBuf>) -> Self {
        self.site_packages.push(dir.into());
        self
    }

    /// The directories given to `site.addsitedir`, in order: [`site_packages`](Self::site_packages),
    /// then the venv's site-packages for the Python harrow is linked against (`python_version`,
    /// `"3.13"`). A venv without one, or a directory that does not exist, is an
    /// [`Error::Config`](crate::Error::Config) naming it.
    pub fn site_dirs(&self, python_version: &str) -> crate::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for dir in &self.site_packages {
            if !dir.is_dir() {
                return Err(crate::Error::Config(format!(
                    "site-packages directory {} does not exist",
                    dir.display()
                )));
            }
            out.push(dir.clone());
        }
        if let Some(venv) = &self.venv {
            let site = venv
                .join("lib")
                .join(format!("python{python_version}"))
                .join("site-packages");
            if !site.is_dir() {
                return Err(crate::Error::Config(format!(
                    "virtual environment {} has no {} (it must be made with Python \
                     {python_version}, the one harrow is linked against: `python{python_version} \
                     -m venv {}`)",
                    venv.display(),
                    site.strip_prefix(venv).unwrap_or(&site).display(),
                    venv.display()
                )));
            }
            out.push(site);
        }
        Ok(out)
    }

    /// Sets legacy (shared GIL) mode.
    pub fn legacy(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
    }

    /// Allows or refuses Python threads.
    pub fn allow_threads(mut self, allow: bool) -> Self {
        self.allow_threads = allow;
        self
    }

    /// Sets the interpreter thread's stack size in bytes (at least [`MIN_STACK_SIZE`]).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// Whether `module` may be called.
    pub fn exposes(&self, module: &str) -> bool {
        self.modules.iter().any(|m| m == module)
    }
}

impl InterpConfig {
    /// Encodes the config (all but the name) as the `params` of a spawn spec:
    /// `{"modules": [str], "sys_path": [str], "legacy": bool, "allow_threads": bool,
    /// "thread_join_bound_ms": int, "stack_size": int}`, plus `"venv": str` and
    /// `"site_packages": [str]` when set.
    pub fn to_params(&self) -> harrow_ipc::Value {
        use harrow_ipc::Value;
        let strs = |v: Vec<String>| Value::List(v.into_iter().map(Value::Str).collect());
        let mut entries = vec![
            (Value::from("modules"), strs(self.modules.clone())),
            (
                Value::from("sys_path"),
                strs(
                    self.sys_path
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect(),
                ),
            ),
            (Value::from("legacy"), Value::Bool(self.legacy)),
            (
                Value::from("allow_threads"),
                Value::Bool(self.allow_threads),
            ),
            (
                Value::from("thread_join_bound_ms"),
                Value::Int(i64::try_from(self.thread_join_bound.as_millis()).unwrap_or(i64::MAX)),
            ),
            (
                Value::from("stack_size"),
                Value::Int(i64::try_from(self.stack_size).unwrap_or(i64::MAX)),
            ),
        ];
        if let Some(venv) = &self.venv {
            entries.push((
                Value::from("venv"),
                Value::Str(venv.to_string_lossy().into_owned()),
            ));
        }
        if !self.site_packages.is_empty() {
            entries.push((
                Value::from("site_packages"),
                strs(
                    self.site_packages
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect(),
                ),
            ));
        }
        Value::Map(entries)
    }

    /// Decodes spawn-spec `params` (see [`to_params`](Self::to_params); every key is optional,
    /// `Null` is an empty config) for actor `name`.
    pub fn from_params(name: impl Into<String>, params: &harrow_ipc::Value) -> crate::Result<Self> {
        use crate::Error;
        use harrow_ipc::Value;
        let mut cfg = InterpConfig::new(name);
        let entries = match params {
            Value::Null => return Ok(cfg),
            Value::Map(entries) => entries,
            other => {
                return Err(Error::Config(format!(
                    "params must be a map, got {}",
                    other.kind_name()
                )));
            }
        };
        let strs = |key: &str, v: &Value| -> crate::Result<Vec<String>> {
            let items = v
                .as_list()
                .ok_or_else(|| Error::Config(format!("{key:?} must be a list of str")))?;
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| Error::Config(format!("{key:?} must be a list of str")))
                })
                .collect()
        };
        let boolean = |key: &str, v: &Value| match v {
            Value::Bool(b) => Ok(*b),
            _ => Err(Error::Config(format!("{key:?} must be a bool"))),
        };
        for (k, v) in entries {
            match k.as_str() {
                Some("modules") => cfg.modules = strs("modules", v)?,
                Some("sys_path") => {
                    cfg.sys_path = strs("sys_path", v)?
                        .into_iter()
                        .map(PathBuf::from)
                        .collect()
                }
                Some("venv") => {
                    let dir = v
                        .as_str()
                        .ok_or_else(|| Error::Config("\"venv\" must be a str".into()))?;
                    cfg.venv = Some(PathBuf::from(dir));
                }
                Some("site_packages") => {
                    cfg.site_packages = strs("site_packages", v)?
                        .into_iter()
                        .map(PathBuf::from)
                        .collect()
                }
                Some("legacy") => cfg.legacy = boolean("legacy", v)?,
                Some("allow_threads") => cfg.allow_threads = boolean("allow_threads", v)?,
                Some("thread_join_bound_ms") => {
                    let ms = v.as_i64().filter(|ms| *ms >= 0).ok_or_else(|| {
                        Error::Config("\"thread_join_bound_ms\" must be a non-negative int".into())
                    })?;
                    cfg.thread_join_bound = Duration::from_millis(ms as u64);
                }
                Some("stack_size") => {
                    let bytes = v
                        .as_i64()
                        .and_then(|b| usize::try_from(b).ok())
                        .ok_or_else(|| {
                            Error::Config("\"stack_size\" must be a non-negative int".into())
                        })?;
                    cfg.stack_size = bytes;
                }
                _ => return Err(Error::Config(format!("unknown key {k:?} in params"))),
            }
        }
        Ok(cfg)
    }
}
