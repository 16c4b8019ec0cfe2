//! Build script: an rpath to libpython (the subint backend links it), so the scenario binaries
//! and tests run without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
}
