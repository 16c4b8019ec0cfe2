//! Who can connect to a tree's peer sockets: the runtime directory is private (mode 0700), a
//! process that is not in the tree (it does not know the secret) is refused by the listener with
//! a logged reason, and an actor refuses to use a runtime directory whose permissions were
//! loosened. Children are the helper binary of this package.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use harrow_process_testchild::ProcessFactory;
use harrow_runtime_core::discovery::handshake::{MAGIC, NONCE_LEN};
use harrow_runtime_core::discovery::recent_refusals;
use harrow_runtime_core::ipc::Value;
use harrow_runtime_core::{RootConfig, SpawnBackend, Timeouts, run_root};
use harrow_testkit::conformance::BackendFactory;

fn factory() -> Arc<ProcessFactory> {
    Arc::new(ProcessFactory::new(env!(
        "CARGO_BIN_EXE_harrow-process-testchild"
    )))
}

fn config() -> RootConfig {
    RootConfig::default()
        .handle_sigint(false)
        .timeouts(Timeouts::quick())
}

/// The refusals logged so far (the listener logs a refusal before it hangs up, so once `knock`
/// saw the end of the connection, its reason is here).
fn refusals() -> Vec<String> {
    recent_refusals()
}

/// Connects to `sock`, sends `first`, and reads until the listener hangs up (bounded).
fn knock(sock: &std::path::Path, first: &[u8], forge_second: bool) {
    let mut s = UnixStream::connect(sock).expect("connect to the peer socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(first).unwrap();
    if forge_second {
        let mut reply = [0u8; NONCE_LEN * 2];
        s.read_exact(&mut reply)
            .expect("the listener answers the first message");
        let mut forged = vec![0xAB; NONCE_LEN];
        forged.extend_from_slice(&3u16.to_be_bytes());
        forged.extend_from_slice(b"uid");
        s.write_all(&forged).unwrap();
    }
    let mut rest = Vec::new();
    // The listener hangs up without letting us in: EOF (or a reset), never a status byte 0.
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the listener said {rest:?} to an outsider");
}

#[test]
fn outsiders_are_refused_with_a_logged_reason() {
    harrow_testkit::harness(
        "outsiders_are_refused_with_a_logged_reason",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let f = factory();
            run_root(config(), |n| async move {
                // A child in another process: this process now listens for peers.
                let _b = n.start_actor("B", f.backend(), f.spec()).await?;
                let dir = n.actor().runtime_dir().expect("the root knows its tree");
                let meta = std::fs::symlink_metadata(&dir)?;
                assert!(meta.is_dir());
                assert_eq!(meta.mode() & 0o777, 0o700, "{}", dir.display());
                let sock = dir.join(format!("{}.sock", std::process::id()));

                // Something that does not speak the handshake at all.
                knock(&sock, b"GET / HTTP/1.1\r\n\r\n", false);
                let log = refusals();
                assert!(log.iter().any(|r| r.contains("bad magic")), "{log:?}");

                // A same-user process that speaks it but does not know the secret.
                let mut first = MAGIC.to_vec();
                first.extend_from_slice(&[9u8; NONCE_LEN]);
                knock(&sock, &first, true);
                let log = refusals();
                assert!(
                    log.iter()
                        .any(|r| r.contains("did not prove the tree secret")),
                    "{log:?}"
                );

                // The tree still works for its own members.
                let p = n.actor().find_actor("B").await?.expect("B");
                let args = Value::List(vec![Value::Int(2), Value::Int(2)]);
                assert_eq!(p.run(&f.func("add"), args).await?, Value::Int(4));
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
        },
    )
    .unwrap();
}

#[test]
fn loosened_runtime_dir_is_refused() {
    harrow_testkit::harness(
        "loosened_runtime_dir_is_refused",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let f = factory();
            run_root(config(), |n| async move {
                let a = n.start_actor("A", f.backend(), f.spec()).await?;
                let _b = n.start_actor("B", f.backend(), f.spec()).await?;
                let dir = n.actor().runtime_dir().expect("the root knows its tree");
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                let args = Value::Map(vec![
                    ("name".into(), Value::Str("B".into())),
                    ("func".into(), Value::Str(f.func("echo"))),
                    ("args".into(), Value::Int(1)),
                ]);
                let err = a
                    .run(&f.func("peer_call"), args.clone())
                    .await
                    .expect_err("A must refuse a directory others can enter");
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                assert!(err.to_string().contains("runtime directory"), "{err}");
                assert!(err.to_string().contains("755"), "{err}");
                // Restored: the same call goes through.
                assert_eq!(a.run(&f.func("peer_call"), args).await?, Value::Int(1));
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
        },
    )
    .unwrap();
}

/// The process backend as it is, recording the tree grant of each spawn.
#[derive(Debug)]
struct Recording {
    inner: harrow_spawn_process::ProcessBackend,
    grants: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl SpawnBackend for Recording {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> harrow_runtime_core::Capabilities {
        self.inner.capabilities()
    }

    fn spawn(
        &self,
        spec: harrow_runtime_core::SpawnSpec,
    ) -> harrow_runtime_core::BoxFuture<
        '_,
        Result<Box<dyn harrow_runtime_core::Child>, harrow_runtime_core::SpawnError>,
    > {
        let grant = spec.tree_grant().map(|g| g.to_bytes().expect("encodes"));
        self.grants.lock().unwrap().extend(grant);
        self.inner.spawn(spec)
    }
}

/// What `/proc/<pid>/<what>` holds.
fn proc_file(pid: i64, what: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{what}")).expect("the child's /proc entry")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A process child gets the tree's data (its secret) at its start through a descriptor it alone
/// inherits, and closes it: neither its environment, nor its argv, nor its encoded spec holds
/// it. It listens before its `Hello`: its socket is there when `start_actor` returns.
#[test]
fn the_tree_reaches_a_process_child_through_a_descriptor_only() {
    harrow_testkit::harness(
        "the_tree_reaches_a_process_child_through_a_descriptor_only",
        harrow_testkit::DEFAULT_BOUND,
        harrow_testkit::DEFAULT_SETTLE,
        || {
            let f = factory();
            let backend = Arc::new(Recording {
                inner: f.process_backend().clone(),
                grants: Default::default(),
            });
            assert!(backend.capabilities().tree_at_spawn);
            let shared: Arc<dyn SpawnBackend> = backend.clone();
            run_root(config(), move |n| async move {
                let child = n.start_actor("B", shared, f.spec()).await?;
                let dir = n.actor().runtime_dir().expect("the root knows its tree");
                let pid = child.run("proc:pid", Value::Null).await?;
                let pid = pid.as_i64().expect("a pid");
                // Its listener was up before its `Hello`, so before `start_actor` returned (the
                // call above does not wait for it).
                assert!(
                    dir.join(format!("{pid}.sock")).exists(),
                    "no socket for {pid}"
                );

                let grant = backend.grants.lock().unwrap().pop().expect("a grant");
                assert!(
                    grant.len() > 32,
                    "the grant holds the secret: {} bytes",
                    grant.len()
                );
                let grant_hex: String = grant.iter().map(|b| format!("{b:02x}")).collect();
                let environ = proc_file(pid, "environ");
                let cmdline = proc_file(pid, "cmdline");
                for (what, bytes) in [("environment", &environ), ("argv", &cmdline)] {
                    assert!(
                        !contains(bytes, &grant),
                        "the grant is in the child's {what}"
                    );
                    assert!(
                        !contains(bytes, grant_hex.as_bytes()),
                        "the grant is in the child's {what}, in hex"
                    );
                }
                let spec_var = environ
                    .split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(b"HARROW_CHILD_SPEC="))
                    .expect("the child's spec is in its environment");
                let spec = harrow_runtime_core::SpawnSpec::decode(
                    std::str::from_utf8(spec_var).expect("hex"),
                )?;
                assert!(
                    spec.tree_grant().is_none(),
                    "the encoded spec carries no tree"
                );
                // The descriptor is closed once read.
                for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
                    let target = std::fs::read_link(fd?.path()).unwrap_or_default();
                    assert!(
                        !target.to_string_lossy().contains("harrow-tree"),
                        "the child keeps its grant open: {}",
                        target.display()
                    );
                }
                // And the tree works: the root finds it and calls it over a peer link.
                let p = n.actor().find_actor("B").await?.expect("B");
                let args = Value::List(vec![Value::Int(2), Value::Int(3)]);
                assert_eq!(p.run(&f.func("add"), args).await?, Value::Int(5));
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
        },
    )
    .unwrap();
}
