//! The helper binary of the remote backend's tests: started by a `RemoteBackend` (over ssh or a
//! local launcher) it serves the process backend's test registry; its nested children are
//! process children of itself.

use harrow_remote_testchild::registry;

fn main() {
    harrow_spawn_remote::maybe_run_child(registry);
    harrow_spawn_process::maybe_run_child(registry);
    eprintln!(
        "harrow-remote-testchild: a helper binary for harrow-spawn-remote's tests; it runs as a \
         remote or process child actor"
    );
    std::process::exit(2);
}
