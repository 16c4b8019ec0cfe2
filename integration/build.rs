//! Build script: an rpath to libpython (the subint backend links it), so the scenario binaries
//! and tests run without `LD_LIBRARY_PATH`, and `cfg(harrow_python)` for the Python tests, which
//! run only with a Python the Python backends support — as harrow-python's build script decided
//! (`DEP_HARROW_PYTHON_*`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(harrow_python)");
    let dep = |key: &str| std::env::var(format!("DEP_HARROW_PYTHON_{key}")).unwrap_or_default();
    let libdir = dep("LIBDIR");
    if !libdir.is_empty() {
        println!("cargo::rustc-link-arg=-Wl,-rpath,{libdir}");
    }
    if dep("SUPPORTED") == "yes" {
        println!("cargo::rustc-cfg=harrow_python");
    }
}
