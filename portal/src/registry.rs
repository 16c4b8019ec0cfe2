//! [`FnRegistry`]: the Rust [`Resolver`], functions registered by path.

use std::collections::HashMap;
use std::future::Future;

use harrow_ipc::{FnPath, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CallError, CallFuture, CalleeContext, Invocation, Resolver};

/// Rust functions an actor serves, by [`FnPath`]. Build it once and share it (`Arc`).
#[derive(Default)]
pub struct FnRegistry {
    _entries: HashMap<FnPath, ()>,
}

impl std::fmt::Debug for FnRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnRegistry").finish_non_exhaustive()
    }
}

impl FnRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        FnRegistry::default()
    }

    /// Registers a unary function taking and returning [`Value`]s.
    pub fn unary<F, Fut>(&mut self, path: &str, f: F) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        let _ = (path, f);
        unimplemented!("portal helper")
    }

    /// Registers a unary function with typed (serde) arguments and result. Arguments of the
    /// wrong shape are a `BadArguments` error to the caller.
    pub fn unary_typed<A, R, F, Fut>(
        &mut self,
        path: &str,
        f: F,
    ) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, CallError>> + Send + 'static,
    {
        let _ = (path, f);
        unimplemented!("portal helper")
    }

    /// Registers a context function: it gets the [`CalleeContext`] to call `started`, open a
    /// stream and watch for cancellation.
    pub fn context<F, Fut>(&mut self, path: &str, f: F) -> Result<&mut Self, harrow_ipc::FnPathError>
    where
        F: Fn(CalleeContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        let _ = (path, f);
        unimplemented!("portal helper")
    }

    /// Whether `path` is registered.
    pub fn contains(&self, path: &FnPath) -> bool {
        let _ = path;
        unimplemented!("portal helper")
    }
}

impl Resolver for FnRegistry {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        let _ = call;
        unimplemented!("portal helper")
    }
}
