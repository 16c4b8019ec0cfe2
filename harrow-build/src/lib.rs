//! `harrow-build`: the build-script helper for a crate whose binaries run Python actors.
//!
//! harrow's subint backend links libpython. When that libpython is not in the dynamic loader's
//! default search path (a pyenv or other custom build, rather than a distribution package), a
//! binary linked against it needs an rpath to its directory, or it does not start
//! (`error while loading shared libraries: libpython3.13.so.1.0`). Link arguments from a
//! library's build script reach only that library's own tests and examples, never the binaries
//! of the crates that depend on it, so the crate that builds the binary has to add the rpath
//! itself. This crate does it in one line:
//!
//! ```no_run
//! // build.rs of the crate that depends on `harrow`
//! fn main() {
//!     harrow_build::link_python();
//! }
//! ```
//!
//! with `harrow-build` in that crate's `[build-dependencies]` and `harrow` in its
//! `[dependencies]`. It reads what the `harrow` crate's build script found (cargo hands a
//! package's build script the `DEP_HARROW_*` values of its direct dependency `harrow`) and:
//!
//! - when the subint backend is available, adds `-Wl,-rpath,<libpython's directory>` to the
//!   link of every binary, example, test and bench of the crate;
//! - when it is unavailable (the Python pyo3 was pointed at is too old, static, or missing),
//!   prints a cargo warning saying why and what to change;
//! - when `harrow`'s `subint` feature is off, does nothing;
//! - when `harrow` is not a direct dependency, warns that it cannot see it.
//!
//! It prints no `rerun-if-*` line, so it does not change when cargo reruns your build script.
//! Cargo reruns it anyway when `harrow`'s build output changes (another Python chosen).

// The example is a whole build.rs, so its `fn main` is the point.
#![allow(clippy::needless_doctest_main)]

use std::env;

/// Adds what the binaries of the calling crate need to run Python actors: an rpath to the
/// directory of the libpython that harrow's subint backend was linked against. Call it from the
/// crate's `build.rs` (see the [crate documentation](crate)); it prints cargo instructions on
/// standard output and never fails the build.
pub fn link_python() {
    for line in directives(|key| env::var(key).ok()) {
        println!("{line}");
    }
}

/// What harrow's build script published about the subint backend of this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subint {
    /// The backend works: libpython's directory (for the rpath) and the Python's version.
    Available {
        /// The directory holding the shared libpython the backend is linked against.
        libdir: String,
        /// The Python version, `"3.13"`.
        version: String,
    },
    /// The backend is compiled in but cannot run Python; the message says why and what to do.
    Unavailable(String),
    /// `harrow` was built without its `subint` feature.
    Off,
    /// No `DEP_HARROW_*` values: `harrow` is not a direct dependency of the calling crate.
    Unknown,
}

/// Reads harrow's published build information from the environment of the running build
/// script. Exposed for build scripts that want to decide for themselves.
pub fn subint() -> Subint {
    read(|key| env::var(key).ok())
}

fn read(var: impl Fn(&str) -> Option<String>) -> Subint {
    match var("DEP_HARROW_SUBINT").as_deref() {
        Some("available") => Subint::Available {
            libdir: var("DEP_HARROW_PYTHON_LIBDIR").unwrap_or_default(),
            version: var("DEP_HARROW_PYTHON_VERSION").unwrap_or_default(),
        },
        Some("off") => Subint::Off,
        Some(_) => Subint::Unavailable(
            var("DEP_HARROW_REASON")
                .unwrap_or_else(|| "harrow did not say why (DEP_HARROW_REASON unset)".to_owned()),
        ),
        None => Subint::Unknown,
    }
}

/// The cargo instructions [`link_python`] prints, given a way to read environment variables.
fn directives(var: impl Fn(&str) -> Option<String>) -> Vec<String> {
    match read(var) {
        Subint::Available { libdir, .. } if !libdir.is_empty() => {
            vec![format!("cargo::rustc-link-arg=-Wl,-rpath,{libdir}")]
        }
        Subint::Available { .. } => vec![
            "cargo::warning=harrow-build: harrow did not publish libpython's directory \
             (DEP_HARROW_PYTHON_LIBDIR); no rpath added: binaries find libpython only through \
             the loader's default path or LD_LIBRARY_PATH"
                .to_owned(),
        ],
        Subint::Unavailable(reason) => vec![format!(
            "cargo::warning=harrow-build: Python actors will not run in this build: {reason}"
        )],
        Subint::Off => Vec::new(),
        Subint::Unknown => vec![
            "cargo::warning=harrow-build: no build information from `harrow` \
             (DEP_HARROW_SUBINT unset): add `harrow` to the [dependencies] of the crate whose \
             build.rs calls harrow_build::link_python() (cargo passes it to direct dependents \
             only); no rpath added"
                .to_owned(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(pairs: &[(&str, &str)]) -> Vec<String> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        directives(|k| env.get(k).cloned())
    }

    #[test]
    fn available_adds_the_rpath_and_nothing_else() {
        let out = run(&[
            ("DEP_HARROW_SUBINT", "available"),
            ("DEP_HARROW_PYTHON_LIBDIR", "/opt/py/lib"),
            ("DEP_HARROW_PYTHON_VERSION", "3.13"),
        ]);
        assert_eq!(out, vec!["cargo::rustc-link-arg=-Wl,-rpath,/opt/py/lib"]);
    }

    #[test]
    fn unavailable_warns_with_harrows_reason() {
        let out = run(&[
            ("DEP_HARROW_SUBINT", "unavailable"),
            (
                "DEP_HARROW_REASON",
                "Python 3.11 is too old; set PYO3_PYTHON",
            ),
        ]);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].starts_with("cargo::warning=harrow-build: "),
            "{out:?}"
        );
        assert!(
            out[0].contains("Python 3.11 is too old; set PYO3_PYTHON"),
            "{out:?}"
        );
    }

    #[test]
    fn feature_off_is_silent() {
        assert!(run(&[("DEP_HARROW_SUBINT", "off")]).is_empty());
    }

    #[test]
    fn missing_metadata_says_harrow_must_be_a_direct_dependency() {
        let out = run(&[]);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("[dependencies]"), "{out:?}");
        assert_eq!(read(|_| None), Subint::Unknown);
    }

    #[test]
    fn available_without_libdir_warns() {
        let out = run(&[("DEP_HARROW_SUBINT", "available")]);
        assert!(out[0].starts_with("cargo::warning="), "{out:?}");
    }
}
