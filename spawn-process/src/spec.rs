//! How a parent passes a child process its spec and channel: environment variables and an
//! inherited descriptor. What crosses ([`ChildSpec`]) and its text form are the runtime's
//! (`harrow_runtime_core::bootstrap`), shared by every backend that launches its children.

pub use harrow_runtime_core::bootstrap::ChildSpec;

/// Holds the number of the inherited channel descriptor (always [`CHILD_FD`]) in a child.
pub const CHILD_FD_ENV: &str = "HARROW_CHILD_FD";
/// Holds the [`ChildSpec`] in a child, as [`ChildSpec::encode`] wrote it.
pub const CHILD_SPEC_ENV: &str = "HARROW_CHILD_SPEC";
/// Holds the pid of the parent process that started the child.
pub const PARENT_PID_ENV: &str = "HARROW_PARENT_PID";
/// The descriptor number the child's end of the channel has in a child.
pub const CHILD_FD: i32 = 3;
/// Set to `1` in a child started for a Python actor (the `python` feature's
/// `PyProcessBackend`): [`maybe_run_child`](crate::maybe_run_child) then serves Python.
pub const CHILD_PYTHON_ENV: &str = "HARROW_CHILD_PYTHON";
