//! The demo's Python module, embedded in the binary and written to a temporary directory that
//! is removed afterwards.

use std::path::{Path, PathBuf};

/// The module's name.
pub(crate) const MODULE: &str = "harrow_demo";
const SOURCE: &str = include_str!("py/harrow_demo.py");

/// A directory holding `harrow_demo.py`, removed on drop.
pub(crate) struct PyDir(PathBuf);

impl PyDir {
    /// Writes the module into a fresh directory under the system temp dir.
    pub(crate) fn create() -> std::io::Result<PyDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("harrow-py-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let this = PyDir(dir);
        std::fs::write(this.0.join(format!("{MODULE}.py")), SOURCE)?;
        Ok(this)
    }

    /// The directory (a `sys.path` entry).
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The spec params of a subint actor that exposes the module (own GIL unless `legacy`).
    #[cfg(feature = "subint")]
    pub(crate) fn params(&self, name: &str, legacy: bool) -> harrow::Value {
        harrow::InterpConfig::new(name)
            .expose(MODULE)
            .sys_path(self.path())
            .legacy(legacy)
            .to_params()
    }
}

/// The pools' batch runner (`PoolConfig::batch`): the one every Python actor serves natively.
#[cfg(feature = "subint")]
pub(crate) const POOL_RUNNER: &str = harrow::backends::subint::BATCH_RUNNER;
/// The same runner written in Python (the bench compares the two), a module written beside the
/// demo's module.
pub(crate) const POOL_MODULE: &str = "harrow_pool";
/// Its batch function.
pub(crate) const POOL_PY_RUNNER: &str = "harrow_pool:run_batch";
const POOL_SOURCE: &str = include_str!("py/harrow_pool.py");

/// Writes the batch runner module into `dir` (a `sys.path` entry of the pool's workers).
pub(crate) fn write_pool_module(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join(format!("{POOL_MODULE}.py")), POOL_SOURCE)
}

impl Drop for PyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
