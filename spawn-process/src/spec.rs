//! How a parent passes a child process its spec and channel: environment variables and an
//! inherited descriptor. What crosses (the [`SpawnSpec`] itself, without its resolver) and its
//! text form are the runtime's ([`SpawnSpec::encode`]), shared by every backend that launches its
//! children.

#[cfg(doc)]
use harrow_runtime_core::SpawnSpec;

/// Holds the number of the inherited channel descriptor (always [`CHILD_FD`]) in a child.
pub const CHILD_FD_ENV: &str = "HARROW_CHILD_FD";
/// Holds the [`SpawnSpec`] in a child, as [`SpawnSpec::encode`] wrote it.
pub const CHILD_SPEC_ENV: &str = "HARROW_CHILD_SPEC";
/// Holds the pid of the parent process that started the child.
pub const PARENT_PID_ENV: &str = "HARROW_PARENT_PID";
/// The descriptor number the child's end of the channel has in a child.
pub const CHILD_FD: i32 = 3;
/// Holds the number of the inherited shared-memory segment (always [`CHILD_SHM_FD`]) in a child
/// whose channel runs through shared memory ([`harrow_runtime_core::ipc::shm`]); absent when it
/// runs through the socket alone.
pub const CHILD_SHM_FD_ENV: &str = "HARROW_CHILD_SHM_FD";
/// The descriptor number of the shared-memory segment in a child.
pub const CHILD_SHM_FD: i32 = 4;
/// Holds the number of the inherited descriptor with the tree's discovery data (always
/// [`CHILD_TREE_FD`]) in a child of a tree whose root has it: a sealed `memfd` (or a pipe, where
/// `memfd_create` is not allowed) holding a [`TreeGrant`](harrow_runtime_core::TreeGrant),
/// which carries the tree's secret, so it never travels in the environment or argv.
pub const CHILD_TREE_FD_ENV: &str = "HARROW_CHILD_TREE_FD";
/// The descriptor number of the tree's discovery data in a child.
pub const CHILD_TREE_FD: i32 = 5;
/// In the parent: `0` makes children's channels run through their socket alone, without shared
/// memory (for comparison, or where `memfd` is not allowed).
pub const PROCESS_SHM_ENV: &str = harrow_runtime_core::ipc::shm::ENV;
/// `1` or `0` in a child: whether the parent saw a core to spare from other programs' CPU use
/// when it started the child ([`harrow_runtime_core::ipc::park::spin::others_leave_a_core`]).
/// The child's spinning follows it until the child has measured for itself, so that a child
/// started beside CPU hogs does not spin beside them meanwhile. A hint: absent or anything else,
/// the child judges alone.
pub const CHILD_CORES_SPARE_ENV: &str = "HARROW_CHILD_CORES_SPARE";
/// Set to `1` in a child started for a Python actor (the `python` feature's
/// `PyProcessBackend`): [`maybe_run_child`](crate::maybe_run_child) then serves Python.
pub const CHILD_PYTHON_ENV: &str = "HARROW_CHILD_PYTHON";
