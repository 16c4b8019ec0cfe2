//! [`PyResolver`]: serves an actor's calls with Python functions in its interpreter (a
//! subinterpreter, or a process child's main interpreter).

use std::sync::{Arc, OnceLock};

use harrow_ipc::Value;
use harrow_portal::{CallError, CallFuture, CalleeContext, Invocation, MsgStream, Resolver};

use crate::handle::InterpHandle;
use crate::host::{CallHost, HostFuture, StreamHost};

/// The [`Resolver`] of a Python actor (either backend): checks that the function's module is exposed, then runs
/// the call on the actor's interpreter thread.
///
/// Calls observe their cancellation: on a cancel, `harrow.Cancelled` is raised in the running
/// Python code and the call goes on until the function ends (its `except`/`finally` run), bounded
/// by the link's cleanup time; what it ended with is the caller's answer (a failure raised during
/// the cleanup is reported as such). Dropping the future also cancels the Python call.
#[derive(Clone, Debug)]
pub struct PyResolver {
    interp: InterpHandle,
    nest: Option<Arc<Nesting>>,
    /// What every call of the actor reaches alike, made on its first call (see
    /// [`ActorEnv::for_call`](crate::nest::ActorEnv::for_call)).
    env_base: Arc<OnceLock<Arc<crate::nest::EnvBase>>>,
}

/// What a Python actor's calls need to make their Python code a full actor (nurseries,
/// portals, the parent): what the host offers, the backend that made the actor, and its
/// interpreter configuration (which its Python children inherit). Both Python backends build
/// one: subint in the host process, pyprocess in the child process.
#[derive(Debug)]
pub struct Nesting {
    /// What the host offers Python code by name.
    pub offers: Arc<crate::nest::Offers>,
    /// The backend that made this actor (its children default to it, under its name).
    pub subint: Arc<dyn harrow_runtime_core::SpawnBackend>,
    /// This actor's interpreter configuration.
    pub config: Arc<crate::InterpConfig>,
}

impl PyResolver {
    /// A resolver running calls on `interp`.
    pub fn new(interp: InterpHandle) -> Self {
        PyResolver {
            interp,
            nest: None,
            env_base: Arc::default(),
        }
    }

    /// A resolver of an actor whose Python code may open nurseries and use portals.
    pub fn nested(interp: InterpHandle, nest: Nesting) -> Self {
        PyResolver {
            interp,
            nest: Some(Arc::new(nest)),
            env_base: Arc::default(),
        }
    }
}

impl Resolver for PyResolver {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        self.interp.check_exposed(&call.func)?;
        let ctx = call.ctx.clone();
        // Before the Python code can run: a cancel from now on lets it clean up.
        ctx.observe_cancel();
        if call.kind == harrow_ipc::CallKind::Unary {
            // Its answer goes from the interpreter thread (`CalleeHost::answer_now`); the
            // future below then only sees that done.
            ctx.ends_with_answer_now();
        }
        // The resolver runs on the actor's runtime thread, where its context is current: the
        // Python code reaches the actor (its nurseries, portals, parent) through it.
        let env = self.nest.as_ref().and_then(|n| {
            harrow_runtime_core::with_current_actor(|actor| {
                let actor = actor?;
                let make = || {
                    crate::nest::EnvBase::new(
                        actor.clone(),
                        n.offers.clone(),
                        n.subint.clone(),
                        n.config.clone(),
                    )
                };
                let base = match self.env_base.get() {
                    Some(base) if base.is_of(actor) => base.clone(),
                    // Another actor's (a resolver is made per actor: not expected): its own.
                    Some(_) => make(),
                    None => self.env_base.get_or_init(make).clone(),
                };
                Some(crate::nest::ActorEnv::for_call(
                    base,
                    Some(call.ctx.clone()),
                ))
            })
        });
        let host: Arc<dyn CallHost> = Arc::new(CalleeHost { ctx: call.ctx });
        let mut py = self
            .interp
            .call_in(call.func, call.kind, call.args, Some(host), env);
        Ok(Box::pin(async move {
            use futures_lite::FutureExt;
            let first = async { Some((&mut py).await) }
                .or(async {
                    ctx.cancelled().await;
                    None
                })
                .await;
            let result = match first {
                Some(result) => result,
                None => {
                    // Raise `harrow.Cancelled` in it and wait for it to end.
                    py.cancel();
                    (&mut py).await
                }
            };
            if py
                .shared()
                .exit_seen
                .load(std::sync::atomic::Ordering::Acquire)
            {
                end_after_exit(py.shared());
            }
            result
        }))
    }
}

/// `os._exit` was called in this actor, and its interpreter serves no more calls: the actor ends
/// too (its other calls are cancelled, its children torn down, its link closed), so that its
/// parent sees it go, and reports it, instead of keeping an actor that fails every call.
fn end_after_exit(shared: &crate::state::Shared) {
    if shared.exit_reason.lock().is_none() {
        return;
    }
    harrow_runtime_core::with_current_actor(|actor| {
        if let Some(actor) = actor {
            actor.cancel_self(actor.id().clone());
        }
    });
}

/// How long a cancelled call whose Python code has ended may take to convert its outcome.
const OUTCOME_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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

    fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }

    fn user_code_ended(&self) {
        self.ctx.extend_cleanup(OUTCOME_GRACE);
    }

    fn answers_now(&self) -> bool {
        true
    }

    fn answer_now(&self, answer: crate::Answer) -> Result<(), crate::Answer> {
        self.ctx.answer_now(answer);
        Ok(())
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
