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
use harrow_runtime_core::{RootConfig, Timeouts, run_root};
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
