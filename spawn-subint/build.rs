//! Build script: exposes pyo3's `Py_3_x` cfgs for the configured Python (`PYO3_PYTHON`), sets
//! `cfg(harrow_subint)` when harrow-python's build script found that Python suitable (it decides
//! for every harrow crate: CPython 3.12+ with a shared libpython), warns when it did not, and adds
//! an rpath to libpython so this crate's own tests and benches run without `LD_LIBRARY_PATH`
//! (link arguments do not reach the binaries of dependent crates: those use
//! `harrow_build::link_python()`).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_subint)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    let dep = |key: &str| std::env::var(format!("DEP_HARROW_PYTHON_{key}")).unwrap_or_default();
    if dep("SUPPORTED") == "yes" {
        println!("cargo::rustc-cfg=harrow_subint");
    } else {
        println!(
            "cargo::warning=harrow-spawn-subint: the subint backend will report Unavailable: {}.",
            dep("REASON")
        );
    }
    println!("cargo::rustc-env=HARROW_SUBINT_PYTHON={}", dep("EXE"));
    println!(
        "cargo::rustc-env=HARROW_SUBINT_PY_VERSION={}",
        dep("VERSION")
    );
}
