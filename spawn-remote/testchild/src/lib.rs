//! Support for the remote backend's tests: the factory the conformance suite runs with (ssh to
//! the testkit's private sshd, children are this package's helper binary).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use harrow_process_testchild::{ProcessFactory, child_registry};
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::portal::{CallError, FnRegistry, Resolver};
use harrow_runtime_core::{ActorSpec, SpawnBackend, open_nursery};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::sshd::Sshd;
use harrow_testkit::testfns;

/// Set in a child's environment (to a depth), the helper binary plays a program that forgot
/// `remote::maybe_run_child`: it starts a remote actor of its own instead of serving.
pub const FORGETS_ENV: &str = "HARROW_TESTCHILD_FORGETS";

/// Set in a child's environment, the helper binary's resolver panics as the remote child
/// builds it (after its start line, before its `Hello`).
pub const RESOLVER_PANICS_ENV: &str = "HARROW_TESTCHILD_RESOLVER_PANICS";

/// An ssh backend to the process's private sshd, running `program` there (the same machine, so
/// the same path).
///
/// # Errors
///
/// Why there is no sshd (see [`Sshd::shared`]).
pub fn ssh_backend(program: impl Into<PathBuf>) -> Result<RemoteBackend, String> {
    let sshd = Sshd::shared()?;
    let program = program.into();
    let mut b = RemoteBackend::ssh(sshd.host())
        .port(sshd.port())
        .user(sshd.user())
        .identity(sshd.identity())
        .program(&program)
        .remote_path(program.display().to_string())
        // Dozens of ssh sessions starting at once on a 2-core machine (the many-children
        // scenarios) take seconds: the spawn bound follows (see RemoteBackend::link_config).
        .start_timeout(std::time::Duration::from_secs(20))
        // Some scenarios block a child's thread on purpose (`fail_at_gate` waits on a FIFO while
        // the other children of `many_failures_together` start, one ssh session each): a
        // blocked actor sends no heartbeats, and 25 session starts on a loaded 2-core machine
        // can outlast the default 15 s. The partition test sets its own bound.
        .heartbeat_timeout(Some(std::time::Duration::from_secs(90)));
    for o in sshd.ssh_options() {
        b = b.ssh_option(o);
    }
    Ok(b)
}

/// The conformance suite's factory over ssh.
#[derive(Debug, Clone)]
pub struct SshFactory {
    program: PathBuf,
}

impl SshFactory {
    /// Children run `program` (the helper binary) over ssh to the private sshd.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SshFactory {
            program: program.into(),
        }
    }
}

impl BackendFactory for SshFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        match ssh_backend(&self.program) {
            Ok(b) => b.into_shared(),
            // `unavailable` made every scenario skip before this could be reached.
            Err(_) => RemoteBackend::command(["false"]).into_shared(),
        }
    }
    fn spec(&self) -> ActorSpec {
        ActorSpec::new()
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
    fn warm_up(&self) {
        let _ = Sshd::shared();
    }
    fn unavailable(&self, scenario: &str) -> Option<String> {
        if let Err(why) = Sshd::shared() {
            return Some(format!("no sshd for the ssh backend: {why}"));
        }
        // Hundreds of sequential ssh sessions, or a 300 ms window between two spawns, do not
        // fit an ssh session's start-up on a 2-core CI machine; the same backend runs these over
        // the local launcher (tests/conformance_local.rs).
        if let Some((_, why)) = LEFT_TO_LOCAL.iter().find(|(name, _)| *name == scenario) {
            return Some(format!(
                "{why}: runs over the local launcher (conformance_local)"
            ));
        }
        None
    }
}

/// The scenarios the ssh suite leaves to the local-launcher suite, and why.
pub const LEFT_TO_LOCAL: [(&str, &str); 3] = [
    ("spawn_cancel_soak", "500 sequential ssh sessions"),
    (
        "many_failures_together_repeated",
        "20 rounds of 25 concurrent ssh sessions",
    ),
    (
        "multierror",
        "needs the second child started within the first one's 300 ms call",
    ),
];

/// A backend whose launcher is a local `sh` that executes the remote command in place: the
/// whole remote path (spec line, start line, stdio wire, launcher kill) without any sshd.
pub fn local_backend(program: impl Into<PathBuf>) -> RemoteBackend {
    let program = program.into();
    RemoteBackend::command(["sh", "-c", "exec \"$@\"", "launcher"])
        .program(&program)
        .remote_path(program.display().to_string())
        .remote_kill(true)
}

/// The conformance suite's factory over the local launcher.
#[derive(Debug, Clone)]
pub struct LocalFactory {
    program: PathBuf,
}

impl LocalFactory {
    /// Children run `program` (the helper binary) through a local `sh` launcher.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        LocalFactory {
            program: program.into(),
        }
    }
}

impl BackendFactory for LocalFactory {
    fn backend(&self) -> Arc<dyn SpawnBackend> {
        local_backend(&self.program).into_shared()
    }
    fn spec(&self) -> ActorSpec {
        ActorSpec::new()
    }
    fn func(&self, name: &str) -> String {
        format!("testfns:{name}")
    }
    fn fail_type_name(&self) -> &'static str {
        std::any::type_name::<testfns::TestError>()
    }
}

/// What the helper binary serves, as a remote child and as a (nested) process child: the
/// process backend's test registry, plus `routes:hold_child(name)`, a context that starts a
/// process child named `name` on the actor's own host, says `started(its uid)` and keeps it
/// until cancelled (the routed-peer tests reach actors below a remote parent with it), and
/// `routes:hold_child_until_closed(name)`, the same with a stream: once the caller closes it
/// (or sends anything), the child is cancelled, and the call returns once it has ended (and so
/// left the registrar); `routes:hold_remote_child(name)`, as `hold_child` with a remote child
/// started through the local `sh` launcher; `routes:hold_peer_stream(name)`, a context that
/// keeps an echo stream to peer `name` open; `routes:peer_links()`, how many peer links the
/// actor holds; and `routes:runtime_dir()`, the actor's domain's runtime directory.
pub fn registry() -> Arc<dyn Resolver> {
    let reg = child_registry();
    let mut reg: FnRegistry = match Arc::try_unwrap(reg) {
        Ok(r) => r,
        Err(shared) => return shared,
    };
    let added = reg.context("routes:hold_child", |ctx, v| async move {
        let name = v
            .as_str()
            .ok_or_else(|| CallError::raised("TypeError", "hold_child needs a name"))?
            .to_owned();
        open_nursery(|n| async move {
            let backend = ProcessFactory::current().backend();
            let child = n.start_actor(&name, backend, ActorSpec::new()).await?;
            ctx.started(Value::Str(child.id().uid.clone())).await?;
            std::future::pending::<()>().await;
            Ok(())
        })
        .await?;
        Ok(Value::Null)
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:hold_child not served: {e}");
    }
    let added = reg.context("routes:hold_child_until_closed", |ctx, v| async move {
        let name = v
            .as_str()
            .ok_or_else(|| CallError::raised("TypeError", "needs a name"))?
            .to_owned();
        open_nursery(|n| async move {
            let backend = ProcessFactory::current().backend();
            let child = n.start_actor(&name, backend, ActorSpec::new()).await?;
            ctx.started(Value::Str(child.id().uid.clone())).await?;
            let mut stream = ctx.open_stream().await?;
            // Any item, the caller's close, or an error: the child goes.
            let _ = stream.recv().await;
            child.cancel().await;
            Ok(())
        })
        .await?;
        Ok(Value::Null)
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:hold_child_until_closed not served: {e}");
    }
    // routes:hold_remote_child(name): routes:hold_child, but the child is a remote child of
    // this actor, started through the local `sh` launcher (a host domain of its own)
    let added = reg.context("routes:hold_remote_child", |ctx, v| async move {
        let name = v
            .as_str()
            .ok_or_else(|| CallError::raised("TypeError", "needs a name"))?
            .to_owned();
        let program = std::env::current_exe()
            .map_err(|e| CallError::raised("RuntimeError", format!("no program: {e}")))?;
        open_nursery(|n| async move {
            let backend = local_backend(program).into_shared();
            let child = n.start_actor(&name, backend, ActorSpec::new()).await?;
            ctx.started(Value::Str(child.id().uid.clone())).await?;
            std::future::pending::<()>().await;
            Ok(())
        })
        .await?;
        Ok(Value::Null)
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:hold_remote_child not served: {e}");
    }
    // routes:hold_peer_stream(name): finds `name`, opens its testfns:ctx_echo stream, echoes
    // one item through it, says started(None) and keeps the stream open until cancelled
    let added = reg.context("routes:hold_peer_stream", |ctx, v| async move {
        let name = v
            .as_str()
            .ok_or_else(|| CallError::raised("TypeError", "needs a name"))?
            .to_owned();
        let me = harrow_runtime_core::current_actor()
            .ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
        let peer = me
            .find_actor(&name)
            .await
            .map_err(|e| CallError::raised("DiscoveryError", e.to_string()))?
            .ok_or_else(|| CallError::raised("LookupError", format!("no actor {name:?}")))?;
        let (mut echo, _) = peer.open_context("testfns:ctx_echo", Value::Null).await?;
        let mut stream = echo.open_stream().await?;
        stream.send(Value::Int(1)).await?;
        stream.recv().await?;
        ctx.started(Value::Null).await?;
        let _open = (echo, stream);
        std::future::pending::<()>().await;
        Ok(Value::Null)
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:hold_peer_stream not served: {e}");
    }
    // routes:peer_links() -> how many live peer links this actor holds
    let added = reg.unary("routes:peer_links", |_| async move {
        let n = harrow_runtime_core::current_actor().map_or(0, |a| a.peer_links());
        Ok(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:peer_links not served: {e}");
    }
    // routes:runtime_dir() -> the runtime directory of this actor's host domain, or None
    let added = reg.unary("routes:runtime_dir", |_| async move {
        Ok(harrow_runtime_core::current_actor()
            .and_then(|a| a.runtime_dir())
            .map_or(Value::Null, |d| Value::Str(d.display().to_string())))
    });
    if let Err(e) = added {
        eprintln!("harrow-remote-testchild: routes:runtime_dir not served: {e}");
    }
    Arc::new(reg)
}
