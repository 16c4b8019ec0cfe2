//! Build script: with the `python` feature (Python actors in child processes, which links
//! libpython), an rpath to libpython so this package's own tests and benches run without
//! `LD_LIBRARY_PATH` (link arguments reach only this package's targets: a program using the
//! feature adds its own, with `harrow_build::link_python()`). The directory comes from
//! harrow-python's build script (`DEP_HARROW_PYTHON_LIBDIR`).

fn main() {
    if let Ok(libdir) = std::env::var("DEP_HARROW_PYTHON_LIBDIR")
        && !libdir.is_empty()
    {
        println!("cargo::rustc-link-arg=-Wl,-rpath,{libdir}");
    }
}
