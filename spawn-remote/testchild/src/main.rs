//! The helper binary of the remote backend's tests: started by a `RemoteBackend` (over ssh or a
//! local launcher) it serves the process backend's test registry; its nested children are
//! process children of itself.

use std::time::Duration;

use harrow_remote_testchild::{FORGETS_ENV, RESOLVER_PANICS_ENV, registry};
use harrow_runtime_core::{ActorSpec, RootConfig, run_root};
use harrow_spawn_remote::RemoteBackend;

fn main() {
    if let Ok(depth) = std::env::var(FORGETS_ENV) {
        forgetful(&depth);
    }
    if std::env::var_os(RESOLVER_PANICS_ENV).is_some() {
        harrow_spawn_remote::maybe_run_child(|| panic!("no registry today"));
    }
    harrow_spawn_remote::maybe_run_child(registry);
    harrow_spawn_process::maybe_run_child(registry);
    eprintln!(
        "harrow-remote-testchild: a helper binary for harrow-spawn-remote's tests; it runs as a \
         remote or process child actor"
    );
    std::process::exit(2);
}

/// A program that forgot `remote::maybe_run_child`: started as a remote child, it goes on to
/// its own work, which starts a remote actor (this binary again, forgetful too). `depth`
/// bounds the chain, should the backend's guard against it ever fail: at 0 it exits at once.
fn forgetful(depth: &str) -> ! {
    let depth: u32 = depth.parse().unwrap_or(0);
    if depth == 0 {
        eprintln!("forgetful: the end of the chain");
        std::process::exit(6);
    }
    let Ok(exe) = std::env::current_exe() else {
        std::process::exit(7);
    };
    let next = format!("{FORGETS_ENV}={}", depth - 1);
    let backend = RemoteBackend::command(["env", next.as_str(), "sh", "-c", "exec \"$@\"", "x"])
        .program(&exe)
        .remote_path(exe.display().to_string())
        .start_timeout(Duration::from_secs(5))
        .into_shared();
    let config = RootConfig::default().handle_sigint(false);
    let result = run_root(config, |n| async move {
        n.start_actor("grandchild", backend, ActorSpec::new())
            .await?;
        Ok(())
    });
    eprintln!("forgetful: {result:?}");
    std::process::exit(5);
}
