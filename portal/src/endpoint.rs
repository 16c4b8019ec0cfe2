//! [`Endpoint`]: a remotely callable function declared once, with its argument and result
//! types, and used by both sides.

use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CallError, FnRegistry, Portal, Result};

/// A unary function's path together with its argument type `A` and result type `R`, declared
/// once (typically as a `const` shared by the serving and the calling crate) so that the two
/// sides cannot disagree: serving it with a handler of another shape, or calling it with another
/// argument type, is a compile error. `Value` remains the way to call dynamic and Python peers.
///
/// ```
/// use std::sync::Arc;
/// use harrow_portal::{Endpoint, FnRegistry, Link, LinkConfig, LocalInfo};
/// use harrow_portal::ipc::{mem, ActorId};
///
/// /// Doubles a number.
/// const DOUBLE: Endpoint<i64, i64> = Endpoint::new("math:double");
///
/// let mut reg = FnRegistry::new();
/// reg.serve(DOUBLE, |n| async move { Ok(n * 2) }).unwrap();
/// # let exec = Arc::new(async_executor::Executor::new());
/// # async_io::block_on(exec.run(async {
/// # let (ca, cb) = mem::pair();
/// # let info = |name: &str| LocalInfo { id: ActorId::new(name), backend: "thread".into() };
/// # let (caller, _callee) = futures_lite::future::zip(
/// #     Link::establish(ca, info("caller"), None, &exec, LinkConfig::default()),
/// #     Link::establish(cb, info("callee"), Some(Arc::new(reg)), &exec, LinkConfig::default()),
/// # ).await;
/// # let caller = caller.unwrap();
/// let portal = caller.portal();
/// assert_eq!(portal.call(DOUBLE, &21).await.unwrap(), 42);
/// # }));
/// ```
///
/// A handler or an argument of another type does not compile:
///
/// ```compile_fail
/// use harrow_portal::{Endpoint, FnRegistry};
/// const DOUBLE: Endpoint<i64, i64> = Endpoint::new("math:double");
/// let mut reg = FnRegistry::new();
/// reg.serve(DOUBLE, |s: String| async move { Ok(s) }).unwrap();
/// ```
///
/// ```compile_fail
/// # async fn f(portal: harrow_portal::Portal) {
/// use harrow_portal::Endpoint;
/// const DOUBLE: Endpoint<i64, i64> = Endpoint::new("math:double");
/// let _: i64 = portal.call(DOUBLE, &"twenty-one").await.unwrap();
/// # }
/// ```
pub struct Endpoint<A, R> {
    path: &'static str,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Endpoint<A, R> {
    /// The endpoint at `path` (`"module.path:function"`; checked where it is served or called).
    pub const fn new(path: &'static str) -> Self {
        Endpoint {
            path,
            _types: PhantomData,
        }
    }

    /// Its path.
    pub const fn path(&self) -> &'static str {
        self.path
    }
}

impl<A, R> Clone for Endpoint<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for Endpoint<A, R> {}

impl<A, R> std::fmt::Debug for Endpoint<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Endpoint({} : {} -> {})",
            self.path,
            std::any::type_name::<A>(),
            std::any::type_name::<R>()
        )
    }
}

impl FnRegistry {
    /// Serves `endpoint` with `handler`. The argument arrives already converted to `A` (another
    /// shape is a `BadArguments` error to the caller); the result is converted from `R`.
    pub fn serve<A, R, F, Fut>(
        &mut self,
        endpoint: Endpoint<A, R>,
        handler: F,
    ) -> std::result::Result<&mut Self, harrow_ipc::FnPathError>
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, CallError>> + Send + 'static,
    {
        // The endpoint form supersedes the string-keyed twin, which stays (deprecated) for now.
        #[allow(deprecated)]
        self.unary_typed(endpoint.path, handler)
    }
}

impl Portal {
    /// Calls `endpoint` in the peer with `args` and returns its typed result.
    pub async fn call<A, R>(&self, endpoint: Endpoint<A, R>, args: &A) -> Result<R>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        #[allow(deprecated)]
        self.run_typed(endpoint.path, args).await
    }
}
