//! Build script: exposes pyo3's `Py_3_x` cfgs for the configured Python (`PYO3_PYTHON`), sets
//! `cfg(harrow_subint)` when that Python can host own-GIL subinterpreters (3.12+, shared
//! libpython), and adds an rpath to libpython so this crate's own tests and benches run without
//! `LD_LIBRARY_PATH` (link arguments do not reach the binaries of dependent crates: those use
//! `harrow_build::link_python()`).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_subint)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    let config = pyo3_build_config::get();
    let v = config.version();
    // harrow's scripts/setup found no suitable Python: pyo3 is configured from a stand-in file
    // that links nothing, so no FFI code may be compiled in.
    let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| v == "1");
    let supported = !no_python
        && config.implementation() == pyo3_build_config::PythonImplementation::CPython
        && (v.major, v.minor) >= (3, 12)
        && config.shared();
    // What to do, said for a project that depends on harrow (or on this crate).
    let fix = "point PYO3_PYTHON at a CPython >= 3.12 built with a shared libpython (for example \
               in the [env] table of your project's .cargo/config.toml) and rebuild";
    if supported {
        println!("cargo::rustc-cfg=harrow_subint");
    } else if no_python {
        println!(
            "cargo::warning=harrow-spawn-subint: HARROW_NO_PYTHON=1 is set (harrow's own \
             scripts/setup sets it when it finds no suitable Python), so no Python is linked and \
             the subint backend will report Unavailable; unset it and {fix}."
        );
    } else {
        println!(
            "cargo::warning=harrow-spawn-subint: pyo3 found Python {}.{} ({}, shared libpython: \
             {}), which cannot host own-GIL subinterpreters; the subint backend will report \
             Unavailable; {fix}.",
            v.major,
            v.minor,
            config.executable().unwrap_or("?"),
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
