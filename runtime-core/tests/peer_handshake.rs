//! The peer handshake's security properties: only a party that knows the tree secret gets
//! through, a recorded handshake cannot be replayed, unsafe runtime directories are refused, and
//! arbitrary bytes never make the listener side panic.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use async_io::Async;
use futures_lite::future::{block_on, zip};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, Cursor};
use harrow_runtime_core::DiscoveryError;
use harrow_runtime_core::discovery::check_runtime_dir;
use harrow_runtime_core::discovery::handshake::{self, HandshakeError, MAGIC, NONCE_LEN};
use proptest::prelude::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";

fn pair() -> (Async<UnixStream>, Async<UnixStream>) {
    let (a, b) = UnixStream::pair().unwrap();
    (Async::new(a).unwrap(), Async::new(b).unwrap())
}

fn run(
    client_secret: &[u8],
    server_secret: &[u8],
) -> (Result<(), HandshakeError>, Result<String, HandshakeError>) {
    let (c, s) = pair();
    block_on(async {
        let client = async {
            let (mut r, mut w) = (&c, &c);
            let out = handshake::client(&mut r, &mut w, client_secret, "uid-1").await;
            drop(c);
            out
        };
        let server = async {
            let (mut r, mut w) = (&s, &s);
            handshake::server(&mut r, &mut w, server_secret, |u| u == "uid-1").await
        };
        zip(client, server).await
    })
}

#[test]
fn same_secret_passes() {
    let (c, s) = run(SECRET, SECRET);
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok("uid-1".to_owned()));
}

#[test]
fn unknown_target_is_refused_after_the_proof() {
    let (c, s) = pair();
    let (cr, sr) = block_on(zip(
        async {
            let (mut r, mut w) = (&c, &c);
            handshake::client(&mut r, &mut w, SECRET, "nobody").await
        },
        async {
            let (mut r, mut w) = (&s, &s);
            handshake::server(&mut r, &mut w, SECRET, |_| false).await
        },
    ));
    assert_eq!(cr, Err(HandshakeError::UnknownTarget("nobody".into())));
    assert_eq!(sr, Err(HandshakeError::UnknownTarget("nobody".into())));
}

#[test]
fn wrong_secret_is_refused_by_both_sides() {
    // An honest client with the wrong secret refuses the listener's proof and hangs up: the
    // listener never accepts it.
    let (c, s) = run(OTHER, SECRET);
    assert_eq!(c, Err(HandshakeError::BadMac("listener")));
    assert!(s.is_err(), "{s:?}");
    // A client that ignores the listener's proof and answers with a MAC of the wrong secret.
    let (c, s) = pair();
    let server = block_on(zip(
        async {
            let (mut r, mut w) = (&c, &c);
            w.write_all(MAGIC).await.unwrap();
            w.write_all(&[7u8; NONCE_LEN]).await.unwrap();
            let mut reply = [0u8; NONCE_LEN * 2];
            r.read_exact(&mut reply).await.unwrap();
            let mut forged = vec![1u8; NONCE_LEN];
            forged.extend_from_slice(&5u16.to_be_bytes());
            forged.extend_from_slice(b"uid-1");
            w.write_all(&forged).await.unwrap();
        },
        async {
            let (mut r, mut w) = (&s, &s);
            handshake::server(&mut r, &mut w, SECRET, |_| true).await
        },
    ))
    .1;
    assert_eq!(server, Err(HandshakeError::BadMac("connector")));
}

#[test]
fn no_secret_at_all_is_refused() {
    // A program that speaks something else.
    let mut w = Vec::new();
    let out = block_on(handshake::server(
        &mut Cursor::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n......".to_vec()),
        &mut w,
        SECRET,
        |_| true,
    ));
    assert_eq!(out, Err(HandshakeError::BadMagic));
    // One that hangs up at once.
    let out = block_on(handshake::server(
        &mut Cursor::new(Vec::new()),
        &mut Vec::new(),
        SECRET,
        |_| true,
    ));
    assert!(matches!(out, Err(HandshakeError::Io(_))), "{out:?}");
}

#[test]
fn a_replayed_handshake_is_refused() {
    // Record what a legitimate client sent in one session...
    let (c, s) = pair();
    let (tap_c, tap_s) = pair();
    let recorded = block_on(async {
        let client = async {
            let (mut r, mut w) = (&c, &c);
            handshake::client(&mut r, &mut w, SECRET, "uid-1").await
        };
        // A man in the middle that copies the client's bytes.
        let relay = async {
            let mut first = vec![0u8; MAGIC.len() + NONCE_LEN];
            (&s).read_exact(&mut first).await.unwrap();
            (&tap_c).write_all(&first).await.unwrap();
            let mut reply = vec![0u8; NONCE_LEN * 2];
            (&tap_c).read_exact(&mut reply).await.unwrap();
            (&s).write_all(&reply).await.unwrap();
            let mut second = vec![0u8; NONCE_LEN + 2 + 5];
            (&s).read_exact(&mut second).await.unwrap();
            (&tap_c).write_all(&second).await.unwrap();
            let mut status = [0u8; 1];
            (&tap_c).read_exact(&mut status).await.unwrap();
            (&s).write_all(&status).await.unwrap();
            (first, second)
        };
        let server = async {
            let (mut r, mut w) = (&tap_s, &tap_s);
            handshake::server(&mut r, &mut w, SECRET, |_| true).await
        };
        let ((c, rec), s) = zip(zip(client, relay), server).await;
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok("uid-1".into()));
        rec
    });
    // ...and replay it to a new session: the listener's fresh nonce makes the old MAC useless.
    let (first, second) = recorded;
    let mut input = first;
    input.extend_from_slice(&second);
    let out = block_on(handshake::server(
        &mut Cursor::new(input),
        &mut Vec::new(),
        SECRET,
        |_| true,
    ));
    assert_eq!(out, Err(HandshakeError::BadMac("connector")));
}

#[test]
fn runtime_dir_with_wrong_permissions_is_refused() {
    let base = std::env::temp_dir().join(format!("harrow-permtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).unwrap();
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = check_runtime_dir(&open).expect_err("0755 lets others in");
    assert!(matches!(err, DiscoveryError::RuntimeDir { .. }), "{err}");
    assert!(err.to_string().contains("755"), "{err}");
    let good = base.join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    check_runtime_dir(&good).expect("0700 is fine");
    let link = base.join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let err = check_runtime_dir(&link).expect_err("a symlink is refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    let err = check_runtime_dir(&base.join("missing")).expect_err("missing");
    assert!(matches!(err, DiscoveryError::RuntimeDir { .. }), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes (and arbitrary bytes after a valid magic) never panic the listener side
    /// and never get through.
    #[test]
    fn fuzzed_handshakes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
        let mut input = Vec::new();
        if magic {
            input.extend_from_slice(MAGIC);
        }
        input.extend_from_slice(&bytes);
        let out = block_on(handshake::server(&mut Cursor::new(input), &mut Vec::new(), SECRET, |_| true));
        prop_assert!(out.is_err());
    }

    /// Arbitrary listener answers never panic the connector side and never get through.
    #[test]
    fn fuzzed_listener_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let out = block_on(handshake::client(&mut Cursor::new(bytes), &mut Vec::new(), SECRET, "uid-1"));
        prop_assert!(out.is_err());
    }
}
