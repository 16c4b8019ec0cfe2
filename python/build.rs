//! Build script, and the one place that decides whether this build can run Python actors.
//!
//! The Python worker (and so both Python backends: subint actors and Python actors in child
//! processes) needs CPython 3.12 or newer with a shared libpython: the Python that pyo3 is
//! pointed at (`PYO3_PYTHON`). This script
//!
//! - sets `cfg(harrow_python)` when that Python is suitable, and exposes pyo3's `Py_3_x` cfgs;
//! - adds an rpath to libpython for this crate's own tests;
//! - publishes what it found to the build scripts of the crates that depend on this one directly
//!   (`links = "harrow_python"`: cargo hands them `DEP_HARROW_PYTHON_SUPPORTED` = `yes` | `no`,
//!   `DEP_HARROW_PYTHON_REASON` (why not, and what to do), `DEP_HARROW_PYTHON_LIBDIR`,
//!   `DEP_HARROW_PYTHON_VERSION` and `DEP_HARROW_PYTHON_EXE`), so that they need not repeat the
//!   decision. It prints no warning itself: each dependent says what an unsuitable Python means
//!   for it;
//! - compiles `src/ffi/harrow.py` with that Python into `$OUT_DIR/harrow_code.bin` (the 4-byte
//!   magic number of the bytecode, then the code object in `marshal` format), so that no process
//!   compiles it at run time: a Python process child or a process's first subint actor would
//!   otherwise spend about 10 ms on it. The file is empty when that Python cannot be run (cross
//!   builds, no Python): the module is then compiled at run time, once per process, as it is
//!   when the running libpython's magic number is not the one written here.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rustc-check-cfg=cfg(harrow_python)");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo::rerun-if-env-changed=HARROW_NO_PYTHON");
    println!("cargo::rerun-if-changed={HARROW_PY}");
    let config = pyo3_build_config::get();
    let v = config.version();
    let exe = config.executable().unwrap_or_default().to_owned();
    let code = match unsupported(config) {
        None => {
            println!("cargo::rustc-cfg=harrow_python");
            println!("cargo::metadata=supported=yes");
            compiled_harrow_py(&exe)
        }
        Some(reason) => {
            println!("cargo::metadata=supported=no");
            println!("cargo::metadata=reason={reason}");
            Vec::new()
        }
    };
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("harrow_code.bin"), code).expect("OUT_DIR is writable");
    println!(
        "cargo::metadata=libdir={}",
        config.lib_dir().unwrap_or_default()
    );
    println!("cargo::metadata=version={}.{}", v.major, v.minor);
    println!("cargo::metadata=exe={exe}");
    println!("cargo::rustc-env=HARROW_SUBINT_PYTHON={exe}");
    println!(
        "cargo::rustc-env=HARROW_SUBINT_PY_VERSION={}.{}",
        v.major, v.minor
    );
}

/// The `harrow` module's source, relative to this crate.
const HARROW_PY: &str = "src/ffi/harrow.py";

/// Compiles `harrow.py` as `Py_CompileString` does at run time (no inherited future flags,
/// filename `<string>`), at optimization level 0 (the run time uses these bytes only at that
/// level), and writes the bytecode's magic number followed by `marshal.dumps(code, 4)` to
/// stdout. The source path is the first argument.
const COMPILE: &str = "import importlib.util, marshal, sys\n\
    src = open(sys.argv[1], encoding='utf-8').read()\n\
    code = compile(src, '<string>', 'exec', dont_inherit=True, optimize=0)\n\
    sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER + marshal.dumps(code, 4))\n";

/// `harrow.py` compiled by `exe` (see [`COMPILE`]), or nothing when `exe` cannot do it: the
/// module is then compiled at run time.
fn compiled_harrow_py(exe: &str) -> Vec<u8> {
    if exe.is_empty() {
        return Vec::new();
    }
    let src = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join(HARROW_PY);
    // `-I`: isolated from the environment and the user's site directory; `-S`: no `site` (no
    // `sitecustomize` that could print to stdout): only the standard library is imported; `-B`:
    // no bytecode files written.
    let out = std::process::Command::new(exe)
        .args(["-I", "-S", "-B", "-c", COMPILE])
        .arg(&src)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        // A magic number and at least one byte of code.
        Ok(out) if out.status.success() && out.stdout.len() > 4 => out.stdout,
        _ => Vec::new(),
    }
}

/// What to do about an unsuitable Python.
const FIX: &str = "point PYO3_PYTHON at a CPython >= 3.12 built with a shared libpython (for \
                   example in the [env] table of your project's .cargo/config.toml) and rebuild";

/// Why the configured Python cannot run harrow's Python actors (and what to do), or `None`.
fn unsupported(config: &pyo3_build_config::InterpreterConfig) -> Option<String> {
    // harrow's scripts/setup sets HARROW_NO_PYTHON=1 when it finds no suitable Python: pyo3 is
    // then configured from a stand-in file that links nothing.
    if std::env::var("HARROW_NO_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Some(format!(
            "HARROW_NO_PYTHON=1 is set (harrow's own scripts/setup sets it when it finds no \
             suitable Python), so no Python is linked; unset it and {FIX}"
        ));
    }
    let v = config.version();
    let exe = config.executable().unwrap_or("?");
    if config.implementation() != pyo3_build_config::PythonImplementation::CPython {
        Some(format!(
            "pyo3 found {:?} {}.{} ({exe}), not CPython; {FIX}",
            config.implementation(),
            v.major,
            v.minor
        ))
    } else if (v.major, v.minor) < (3, 12) {
        Some(format!(
            "pyo3 found Python {}.{} ({exe}), which has no per-interpreter GIL (needs >= 3.12); \
             {FIX}",
            v.major, v.minor
        ))
    } else if !config.shared() {
        Some(format!(
            "pyo3 found Python {}.{} ({exe}) built without a shared libpython (needs \
             --enable-shared, as distribution packages are); {FIX}",
            v.major, v.minor
        ))
    } else {
        None
    }
}
