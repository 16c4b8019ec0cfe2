//! The `Hello` exchange: identities, protocol version mismatch, wrong first message, closed or
//! silent peers.

mod common;

use std::time::Duration;

use common::*;
use harrow_portal::ipc::{ActorId, Msg, PROTOCOL_VERSION};
use harrow_portal::{Error, Executor, Link, LinkConfig};

async fn peers_learn_each_other(exec: Executor, t: Transport) {
    let (a, b) = link_pair(&exec, t, None, None, LinkConfig::default()).await;
    assert_eq!(a.peer().id, b.local().id);
    assert_eq!(b.peer().id, a.local().id);
    assert_eq!(a.peer().protocol, PROTOCOL_VERSION);
    assert_eq!(a.peer().pid, std::process::id());
    assert_eq!(a.peer().backend, "test");
    assert!(!a.is_closed());
}

async fn establish_against(
    exec: &Executor,
    t: Transport,
    peer_first: Option<Msg>,
    config: LinkConfig,
) -> (Error, Option<Msg>) {
    let (ca, cb) = pair(t);
    let peer = exec.spawn(async move {
        let ours = cb.recv().await.ok();
        if let Some(m) = peer_first {
            let _ = cb.send(m).await;
            // Stay around until the link gives up on us.
            let _ = cb.recv().await;
        } else {
            drop(cb);
        }
        ours
    });
    let err = bounded(
        "establish",
        Link::establish(ca, local("a"), None, exec, config),
    )
    .await
    .unwrap_err();
    (err, bounded("peer", peer).await)
}

async fn other_protocol_version_is_refused_clearly(exec: Executor, t: Transport) {
    let hello = Msg::Hello {
        actor: ActorId::new("old"),
        protocol: PROTOCOL_VERSION + 41,
        pid: 1,
        backend: "x".into(),
    };
    let (err, ours) = establish_against(&exec, t, Some(hello), LinkConfig::default()).await;
    assert!(
        matches!(
            ours,
            Some(Msg::Hello {
                protocol: PROTOCOL_VERSION,
                ..
            })
        ),
        "{ours:?}"
    );
    let Error::Handshake(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 41)),
        "{text}"
    );
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
}

async fn other_first_message_is_refused(exec: Executor, t: Transport) {
    let (err, _) = establish_against(
        &exec,
        t,
        Some(Msg::CancelAck { teardown_ms: None }),
        LinkConfig::default(),
    )
    .await;
    let Error::Handshake(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("CancelAck"), "{text}");
}

async fn channel_closed_before_hello(exec: Executor, t: Transport) {
    let (err, _) = establish_against(&exec, t, None, LinkConfig::default()).await;
    let Error::Handshake(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("closed"), "{text}");
}

async fn silent_peer_times_out(exec: Executor, t: Transport) {
    let (ca, cb) = pair(t);
    let mut config = LinkConfig::default();
    config.hello_timeout = Duration::from_millis(100);
    let err = bounded(
        "establish",
        Link::establish(ca, local("a"), None, &exec, config),
    )
    .await
    .unwrap_err();
    let Error::Handshake(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("no Hello"), "{text}");
    drop(cb);
}

both_transports!(
    peers_learn_each_other,
    other_protocol_version_is_refused_clearly,
    other_first_message_is_refused,
    channel_closed_before_hello,
    silent_peer_times_out,
);
