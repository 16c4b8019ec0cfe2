//! The backend conformance suite (docs/SCENARIOS.md) against `RemoteBackend::ssh`, to a private
//! sshd on 127.0.0.1 (the testkit's fixture); children are the helper binary of this package.
//! Without sshd (not installed, not startable) every scenario says so and skips, except in CI.

use std::sync::Arc;

use harrow_remote_testchild::SshFactory;

fn factory() -> Arc<SshFactory> {
    Arc::new(SshFactory::new(env!(
        "CARGO_BIN_EXE_harrow-remote-testchild"
    )))
}

harrow_testkit::conformance_suite!(factory());

// Discovery and peers over ssh: every remote child begins a host domain of its own, so each
// peer link here is routed through the tree.
harrow_testkit::discovery_suite!(factory());
