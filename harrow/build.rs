//! Build script. With the `subint` feature:
//!
//! - adds an rpath to libpython so this package's own binary, examples and tests run without
//!   `LD_LIBRARY_PATH` (link arguments reach only this package's targets);
//! - publishes what it found for the build scripts of crates that depend on `harrow` directly
//!   (`links = "harrow"`: cargo hands them `DEP_HARROW_SUBINT` = `available` | `unavailable` |
//!   `off`, `DEP_HARROW_PYTHON_LIBDIR`, `DEP_HARROW_PYTHON_VERSION`, `DEP_HARROW_PYTHON`,
//!   `DEP_HARROW_REASON`), which is how `harrow_build::link_python()` gives their binaries the
//!   same rpath;
//! - says clearly (a cargo warning) when the build has no suitable Python, in which case the
//!   subint backend is compiled in but unavailable.

fn main() {
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    #[cfg(feature = "subint")]
    subint();
    #[cfg(not(feature = "subint"))]
    println!("cargo::metadata=subint=off");
}

/// What to do about an unsuitable Python, said for a project that depends on harrow.
#[cfg(feature = "subint")]
const FIX: &str = "point PYO3_PYTHON at a CPython >= 3.12 built with a shared libpython (for \
                   example in the [env] table of your project's .cargo/config.toml) and rebuild, \
                   or turn off harrow's default `subint` feature";

#[cfg(feature = "subint")]
fn subint() {
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0");
    let reason = if no_python {
        Some(format!(
            "HARROW_NO_PYTHON=1 is set (harrow's own scripts/setup sets it when it finds no \
             suitable Python), so no Python is linked; unset it and {FIX}"
        ))
    } else {
        let config = pyo3_build_config::get();
        let v = config.version();
        let exe = config.executable().unwrap_or("?");
        if config.implementation() != pyo3_build_config::PythonImplementation::CPython {
            Some(format!(
                "pyo3 found {:?} {}.{} ({exe}), not CPython; {FIX}",
                config.implementation(),
                v.major,
                v.minor
            ))
        } else if (v.major, v.minor) < (3, 12) {
            Some(format!(
                "pyo3 found Python {}.{} ({exe}), which has no per-interpreter GIL (needs \
                 >= 3.12); {FIX}",
                v.major, v.minor
            ))
        } else if !config.shared() {
            Some(format!(
                "pyo3 found Python {}.{} ({exe}) built without a shared libpython (needs \
                 --enable-shared, as distribution packages are); {FIX}",
                v.major, v.minor
            ))
        } else {
            pyo3_build_config::add_libpython_rpath_link_args();
            println!("cargo::metadata=subint=available");
            println!(
                "cargo::metadata=python_libdir={}",
                config.lib_dir().unwrap_or_default()
            );
            println!("cargo::metadata=python_version={}.{}", v.major, v.minor);
            println!("cargo::metadata=python={exe}");
            None
        }
    };
    if let Some(reason) = reason {
        println!("cargo::metadata=subint=unavailable");
        println!("cargo::metadata=reason={reason}");
        println!(
            "cargo::warning=harrow: the subint backend (Python actors) is UNAVAILABLE in this \
             build: {reason}. Thread and process actors are not affected; \
             harrow::subint_status() reports the same at run time."
        );
    }
}
