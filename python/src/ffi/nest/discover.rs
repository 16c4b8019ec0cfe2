//! The Python side of discovery (`crate::nest::discover` does the work on the actor's runtime):
//! the operation codes 200.. of `_native_nest`, waited for like every other operation (GIL
//! released, the actor's other calls served meanwhile, interrupted by a cancel or a fired scope).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pyo3_ffi as ffi;

use super::super::convert::{self, ConvError};
use super::super::module::{ServerHooks, raise_type_error};
use super::{out_to_py, raise_fail, wait};
use crate::nest::discover::DiscOp;
use crate::nest::{ActorEnv, Handle};
use crate::state::{JobState, Shared};

/// Runs discovery operation `op` for the running call and returns its outcome as a new Python
/// object (null with an exception set on failure).
///
/// # Safety
/// Owning thread, GIL held; `arg` valid.
pub(super) unsafe fn native_discover(
    shared: &Shared,
    hooks: &ServerHooks,
    job: &Arc<JobState>,
    env: &ActorEnv,
    op: DiscOp,
    target: Option<Handle>,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: GIL held; `arg` valid.
    let value = match unsafe { convert::to_value(arg) } {
        Ok(v) => v,
        Err(ConvError::Py(_)) => return std::ptr::null_mut(),
        Err(ConvError::Unsupported(m)) => {
            // SAFETY: GIL held.
            unsafe { raise_type_error(&m) };
            return std::ptr::null_mut();
        }
    };
    let fut = match env.discovery_op(op, target.as_ref(), value) {
        Ok(f) => f,
        // SAFETY: owning thread, GIL held.
        Err(fail) => return unsafe { raise_fail(shared, fail) },
    };
    // Cancelling a peer is bounded by its timeout and must not be abandoned halfway (as for a
    // child); lookups and waits are interrupted by a cancel or a fired scope.
    let shielded =
        shared.shield_depth.load(Ordering::SeqCst) > 0 || matches!(op, DiscOp::PeerCancel);
    // SAFETY: owning thread, GIL held (released while waiting).
    match unsafe { wait(hooks, job, shielded, fut) } {
        // SAFETY: owning thread, GIL held.
        Ok(out) => unsafe { out_to_py(shared, out) },
        // SAFETY: owning thread, GIL held.
        Err(fail) => unsafe { raise_fail(shared, fail) },
    }
}
