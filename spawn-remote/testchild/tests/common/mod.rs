//! Shared by the tests that need a remote child stuck in a loop that never yields.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{ActorNursery, ActorSpec, ChildHandle, SpawnBackend};

/// Starts a child named "busy" on `backend` and sets it spinning in `testfns:busy_marker`,
/// waiting until the file `marker` shows the loop running (the call itself never returns; it
/// is dropped). The child and its process id.
pub(crate) async fn start_busy(
    n: &ActorNursery,
    backend: Arc<dyn SpawnBackend>,
    marker: &Path,
) -> harrow_runtime_core::Result<(ChildHandle, u32)> {
    let child = n.start_actor("busy", backend, ActorSpec::new()).await?;
    let pid = child
        .run("proc:pid", Value::Null)
        .await?
        .as_i64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("a pid");
    let path = Value::from(marker.to_string_lossy().as_ref());
    let busy = async {
        let _ = child.run("testfns:busy_marker", path).await;
        false
    };
    let started = async {
        while !marker.exists() {
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        true
    };
    assert!(busy.or(started).await, "the busy loop started");
    Ok((child, pid))
}
