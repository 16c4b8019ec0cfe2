//! Build script: with the `subint` feature, adds an rpath to libpython so the `harrow` binary
//! runs without `LD_LIBRARY_PATH`. (The harrow crate's build script warns when the build has no
//! suitable Python; the subint backend is then compiled in but unavailable.)

fn main() {
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    #[cfg(feature = "subint")]
    {
        let no_python = std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0");
        if !no_python && pyo3_build_config::get().shared() {
            pyo3_build_config::add_libpython_rpath_link_args();
        }
    }
}
