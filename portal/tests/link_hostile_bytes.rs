//! A link over a byte stream facing a peer that sends bad bytes: an oversized frame before the
//! handshake is refused, and a frame cut short is named in the link's end and the caller's error.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::*;
use harrow_portal::ipc::codec::{self, CodecConfig};
use harrow_portal::ipc::{self, ActorId, Msg, Value};
use harrow_portal::{Error, Executor, Link, LinkConfig, LinkEnd};

async fn oversized_header_before_hello_fails_the_handshake(exec: Executor, _t: Transport) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let ch = ipc::unix::from_stream(ours, CodecConfig::default()).unwrap();
    // A 64 MiB length prefix where the Hello should be.
    theirs
        .write_all(&(codec::DEFAULT_MAX_FRAME as u32).to_le_bytes())
        .unwrap();
    let err = bounded(
        "establish",
        Link::establish(ch, local("a"), None, &exec, LinkConfig::default()),
    )
    .await
    .unwrap_err();
    let Error::Handshake(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains("before the handshake")
            && text.contains(&codec::DEFAULT_MAX_FRAME.to_string()),
        "{text}"
    );
}

async fn large_frames_cross_once_the_handshake_is_done(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let big = Value::Bytes(vec![7; 1 << 20]);
    let back = bounded("echo", a.portal().run("t:echo", big.clone()))
        .await
        .unwrap();
    assert_eq!(back, big);
}

async fn a_truncated_frame_is_named_in_the_link_end_and_the_callers_error(
    exec: Executor,
    _t: Transport,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut raw = theirs.try_clone().unwrap();
    let peer_ch = ipc::unix::from_stream(theirs, CodecConfig::default()).unwrap();
    let ch = ipc::unix::from_stream(ours, CodecConfig::default()).unwrap();
    let (link, hello) = bounded(
        "establish",
        futures_lite::future::zip(
            Link::establish(ch, local("a"), None, &exec, LinkConfig::default()),
            raw_hello(&peer_ch, &ActorId::new("cut")),
        ),
    )
    .await;
    assert!(matches!(hello, Msg::Hello { .. }));
    let link = link.unwrap();
    let portal = link.portal();
    let call = exec.spawn(async move { portal.run("t:x", Value::Null).await });
    // The call is pending once its Start arrived here.
    let start = bounded("start", peer_ch.recv()).await.unwrap();
    let Msg::Start { cid, .. } = start else {
        panic!("{start:?}")
    };
    let frame = codec::encode(
        &Msg::Return {
            cid,
            value: Value::Str("never whole".into()),
        },
        &CodecConfig::default(),
    )
    .unwrap();
    let got = frame.len() - 3;
    raw.write_all(&frame[..got]).unwrap();
    drop(raw);
    drop(peer_ch);
    let expected_text = format!("after sending {got} of its {} bytes", frame.len());
    let end = bounded("link end", link.closed()).await;
    let LinkEnd::Broken(reason) = &end else {
        panic!("{end:?}")
    };
    assert!(
        reason.contains("middle of a frame") && reason.contains(&expected_text),
        "{reason}"
    );
    let err = bounded("call", call).await.unwrap_err();
    let Error::Closed(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains("middle of a frame") && text.contains(&expected_text),
        "{text}"
    );
}

#[test]
fn oversized_header_before_hello() {
    run_test(
        Transport::Unix,
        oversized_header_before_hello_fails_the_handshake,
    );
}

#[test]
fn truncated_frame_after_hello() {
    run_test(
        Transport::Unix,
        a_truncated_frame_is_named_in_the_link_end_and_the_callers_error,
    );
}

both_transports!(large_frames_cross_once_the_handshake_is_done);
