//! The backend conformance suite against `RemoteBackend::command` with a local `sh` as the
//! launcher: every part of the remote backend but ssh itself, so it needs no sshd, and it runs
//! the soaks the ssh suite leaves out.

use std::sync::Arc;

use harrow_remote_testchild::LocalFactory;

fn factory() -> Arc<LocalFactory> {
    Arc::new(LocalFactory::new(env!(
        "CARGO_BIN_EXE_harrow-remote-testchild"
    )))
}

harrow_testkit::conformance_suite!(factory());

// Discovery and peers: every remote child begins a host domain of its own, so each peer link
// here (the root's, and a remote actor's to its remote sibling) is routed through the tree.
harrow_testkit::discovery_suite!(factory());
