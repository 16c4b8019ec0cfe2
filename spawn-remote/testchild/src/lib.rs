//! Support for the remote backend's tests: the factory the conformance suite runs with (ssh to
//! the testkit's private sshd, children are this package's helper binary).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use harrow_runtime_core::{ActorSpec, SpawnBackend};
use harrow_spawn_remote::RemoteBackend;
use harrow_testkit::conformance::BackendFactory;
use harrow_testkit::sshd::Sshd;
use harrow_testkit::testfns;

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
        .remote_path(program.display().to_string());
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
    fn unavailable(&self) -> Option<String> {
        Sshd::shared()
            .err()
            .map(|why| format!("no sshd for the ssh backend: {why}"))
    }
}
