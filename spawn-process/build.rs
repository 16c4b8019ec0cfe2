//! Build script: with the `python` feature (Python actors in child processes, which links
//! libpython), an rpath to libpython so this package's own tests and benches run without
//! `LD_LIBRARY_PATH` (link arguments reach only this package's targets: a program using the
//! feature adds its own, with `harrow_build::link_python()`).

fn main() {
    #[cfg(feature = "python")]
    {
        pyo3_build_config::add_libpython_rpath_link_args();
        println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    }
}
