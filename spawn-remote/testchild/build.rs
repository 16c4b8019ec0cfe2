//! Build script: an rpath to libpython. The helper binary links it whenever a build that includes
//! it turns on harrow-spawn-process's `python` feature (cargo unifies features: `cargo test
//! --workspace` does, through the `harrow` facade), and must then still start without
//! `LD_LIBRARY_PATH` (here, under a launcher such as ssh, whose environment it does not inherit).

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
}
