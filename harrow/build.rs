//! Build script: with the `subint` feature, adds an rpath to libpython so the examples and tests
//! run without `LD_LIBRARY_PATH`, and says clearly (a cargo warning) when the
//! build has no suitable Python, in which case the subint backend is compiled in but unavailable.

fn main() {
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_PYTHON");
    #[cfg(feature = "subint")]
    subint();
}

#[cfg(feature = "subint")]
fn subint() {
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0");
    if no_python {
        println!(
            "cargo::warning=harrow: the subint backend (Python actors) is UNAVAILABLE in this \
             build: scripts/setup found no CPython >= 3.12 with a shared libpython \
             (HARROW_NO_PYTHON=1). Everything else works; `harrow demo` skips the Python actor. \
             Install one (e.g. PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.13) and run \
             scripts/setup again."
        );
        return;
    }
    let config = pyo3_build_config::get();
    let v = config.version();
    let supported = config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared();
    if supported {
        pyo3_build_config::add_libpython_rpath_link_args();
    } else {
        println!(
            "cargo::warning=harrow: the subint backend (Python actors) is UNAVAILABLE in this \
             build: Python {}.{} (shared libpython: {}) cannot host own-GIL subinterpreters \
             (needs CPython >= 3.12, shared). Run scripts/setup.",
            v.major,
            v.minor,
            config.shared()
        );
    }
}
