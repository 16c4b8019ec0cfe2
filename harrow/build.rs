//! Build script. With the `subint` feature:
//!
//! - adds an rpath to libpython so this package's own binary, examples and tests run without
//!   `LD_LIBRARY_PATH` (link arguments reach only this package's targets);
//! - publishes what harrow-python's build script found (it decides for every harrow crate) for
//!   the build scripts of crates that depend on `harrow` directly (`links = "harrow"`: cargo
//!   hands them `DEP_HARROW_SUBINT` = `available` | `unavailable` | `off`,
//!   `DEP_HARROW_PYTHON_LIBDIR`, `DEP_HARROW_PYTHON_VERSION`, `DEP_HARROW_PYTHON`,
//!   `DEP_HARROW_REASON`), which is how `harrow_build::link_python()` gives their binaries the
//!   same rpath;
//! - says clearly (a cargo warning) when the build has no suitable Python, in which case the
//!   subint backend is compiled in but unavailable.

fn main() {
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    #[cfg(feature = "subint")]
    subint();
    #[cfg(not(feature = "subint"))]
    println!("cargo::metadata=subint=off");
}

#[cfg(feature = "subint")]
fn subint() {
    let dep = |key: &str| std::env::var(format!("DEP_HARROW_PYTHON_{key}")).unwrap_or_default();
    let libdir = dep("LIBDIR");
    if !libdir.is_empty() {
        println!("cargo::rustc-link-arg=-Wl,-rpath,{libdir}");
    }
    if dep("SUPPORTED") == "yes" {
        println!("cargo::metadata=subint=available");
        println!("cargo::metadata=python_libdir={libdir}");
        println!("cargo::metadata=python_version={}", dep("VERSION"));
        println!("cargo::metadata=python={}", dep("EXE"));
    } else {
        let reason = format!(
            "{}, or turn off harrow's default `subint` feature",
            dep("REASON")
        );
        println!("cargo::metadata=subint=unavailable");
        println!("cargo::metadata=reason={reason}");
        println!(
            "cargo::warning=harrow: the subint backend (Python actors) is UNAVAILABLE in this \
             build: {reason}. Thread and process actors are not affected; \
             harrow::subint_status() reports the same at run time."
        );
    }
}
