//! Build script: exposes pyo3's `Py_3_x` cfgs for the configured Python (`PYO3_PYTHON`), sets
//! `cfg(harrow_python)` when that Python is one harrow's Python worker supports (CPython 3.12+
//! with a shared libpython, the same condition as the subint backend's), and adds an rpath to
//! libpython for this crate's own tests.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_python)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    let config = pyo3_build_config::get();
    let v = config.version();
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| v == "1");
    let supported = !no_python
        && config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared();
    // No warning here: the backends' build scripts say what is wrong and what to do.
    if supported {
        println!("cargo::rustc-cfg=harrow_python");
    }
    let exe = config.executable().unwrap_or_default().to_owned();
    println!("cargo::rustc-env=HARROW_SUBINT_PYTHON={exe}");
    println!(
        "cargo::rustc-env=HARROW_SUBINT_PY_VERSION={}.{}",
        v.major, v.minor
    );
}
