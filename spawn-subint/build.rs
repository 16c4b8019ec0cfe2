//! Build script: exposes pyo3's `Py_3_x` cfgs for the configured Python (`PYO3_PYTHON`), sets
//! `cfg(harrow_subint)` when that Python can host own-GIL subinterpreters (3.12+, shared
//! libpython), and adds an rpath to libpython so tests and benches run without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_subint)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    let config = pyo3_build_config::get();
    let v = config.version();
    let supported = config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared();
    if supported {
        println!("cargo::rustc-cfg=harrow_subint");
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
