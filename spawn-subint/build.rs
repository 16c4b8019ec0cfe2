//! Build script: exposes pyo3's `Py_3_x` cfgs for the configured Python (`PYO3_PYTHON`), sets
//! `cfg(harrow_subint)` when that Python can host own-GIL subinterpreters (3.12+, shared
//! libpython), and adds an rpath to libpython so tests and benches run without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_subint)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    let config = pyo3_build_config::get();
    let v = config.version();
    // scripts/setup found no suitable Python: pyo3 is configured from a stand-in file that links
    // nothing, so no FFI code may be compiled in.
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| v == "1");
    let supported = !no_python
        && config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared();
    if supported {
        println!("cargo::rustc-cfg=harrow_subint");
    } else if no_python {
        println!(
            "cargo::warning=harrow-spawn-subint: scripts/setup found no Python >= 3.12 with a \
             shared libpython; the subint backend will report Unavailable. Install one and run \
             scripts/setup again."
        );
    } else {
        println!(
            "cargo::warning=harrow-spawn-subint: Python {}.{} (shared: {}) cannot host own-GIL \
             subinterpreters; the subint backend will report Unavailable. Run scripts/setup.",
            v.major,
            v.minor,
            config.shared()
        );
    }
    let exe = config.executable().unwrap_or_default().to_owned();
    println!("cargo::rustc-env=HARROW_SUBINT_PYTHON={exe}");
    println!(
        "cargo::rustc-env=HARROW_SUBINT_PY_VERSION={}.{}",
        v.major, v.minor
    );
}
