//! [`PyResolver`]: serves an actor's calls with Python functions in its subinterpreter.

use std::sync::Arc;

use harrow_ipc::Value;
use harrow_portal::{CallError, CallFuture, CalleeContext, Invocation, MsgStream, Resolver};

use crate::host::{CallHost, HostFuture, StreamHost};
use crate::interp::InterpHandle;

/// The [`Resolver`] of a subint actor: checks that the function's module is exposed, then runs
/// the call on the actor's interpreter thread. Dropping the returned future cancels the Python
/// call (`harrow.Cancelled` is raised in it).
#[derive(Clone, Debug)]
pub struct PyResolver {
    interp: InterpHandle,
}

impl PyResolver {
    /// A resolver running calls on `interp`.
    pub fn new(interp: InterpHandle) -> Self {
        PyResolver { interp }
    }
}

impl Resolver for PyResolver {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        self.interp.check_exposed(&call.func)?;
        let host: Arc<dyn CallHost> = Arc::new(CalleeHost { ctx: call.ctx });
        Ok(Box::pin(self.interp.call(
            call.func,
            call.kind,
            call.args,
            Some(host),
        )))
    }
}

/// `ctx` of a Python context call, backed by the portal's [`CalleeContext`].
struct CalleeHost {
    ctx: CalleeContext,
}

impl CallHost for CalleeHost {
    fn started(&self, value: Value) -> HostFuture<'_, ()> {
        Box::pin(async move { self.ctx.started(value).await.map_err(|e| e.to_string()) })
    }

    fn open_stream(&self) -> HostFuture<'_, Box<dyn StreamHost>> {
        Box::pin(async move {
            let s = self.ctx.open_stream().await.map_err(|e| e.to_string())?;
            Ok(Box::new(PortalStream(s)) as Box<dyn StreamHost>)
        })
    }
}

struct PortalStream(MsgStream);

impl StreamHost for PortalStream {
    fn send(&mut self, value: Value) -> HostFuture<'_, ()> {
        Box::pin(async move { self.0.send(value).await.map_err(|e| e.to_string()) })
    }

    fn recv(&mut self) -> HostFuture<'_, Option<Value>> {
        Box::pin(async move { self.0.recv().await.map_err(|e| e.to_string()) })
    }

    fn close(&mut self) -> HostFuture<'_, ()> {
        Box::pin(async move { self.0.close().await.map_err(|e| e.to_string()) })
    }
}
