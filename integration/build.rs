//! Build script: an rpath to libpython (the subint backend links it), so the scenario binaries
//! and tests run without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    // The Python tests run only with a Python the Python backends support (as
    // harrow-python's own build script decides).
    println!("cargo::rustc-check-cfg=cfg(harrow_python)");
    let config = pyo3_build_config::get();
    let v = config.version();
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| v == "1");
    if !no_python
        && config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared()
    {
        println!("cargo::rustc-cfg=harrow_python");
    }
}
