//! Link heartbeats: a peer that says `Hello` and then nothing at all (a partition, a frozen
//! host) ends the link within the heartbeat timeout, with an error that says so, on every
//! transport; a peer that is a link itself sends heartbeats that arrive as `Heartbeat`
//! messages.

mod common;

use std::time::Duration;

use common::*;
use harrow_portal::ipc::{ActorId, Msg};
use harrow_portal::{Error, Executor, Link, LinkConfig, LinkEnd};

async fn silent_peer_ends_the_link(exec: Executor, t: Transport) {
    let (ca, cb) = pair(t);
    let config = LinkConfig::default().heartbeat(None, Some(Duration::from_millis(300)));
    let peer = ActorId::new("silent");
    let (link, _) = bounded(
        "hello exchange",
        futures_lite::future::zip(
            Link::establish(ca, local("a"), None, &exec, config),
            raw_hello(&cb, &peer),
        ),
    )
    .await;
    let link = link.expect("link");
    let portal = link.portal();
    let call = exec.spawn(async move { portal.run("m:f", harrow_portal::ipc::Value::Null).await });
    let end = bounded("the link ends", link.closed()).await;
    let LinkEnd::Broken(why) = &end else {
        panic!("{end:?}")
    };
    assert!(why.contains("heartbeat"), "{why}");
    assert!(why.contains("silent"), "names the peer: {why}");
    let err = bounded("the pending call fails", call).await.unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
    assert!(err.to_string().contains("heartbeat"), "{err}");
    drop(cb);
}

async fn a_link_sends_heartbeats(exec: Executor, t: Transport) {
    let (ca, cb) = pair(t);
    let config = LinkConfig::default().heartbeat(Some(Duration::from_millis(20)), None);
    let peer = ActorId::new("raw");
    let (link, _) = bounded(
        "hello exchange",
        futures_lite::future::zip(
            Link::establish(ca, local("a"), None, &exec, config),
            raw_hello(&cb, &peer),
        ),
    )
    .await;
    let link = link.expect("link");
    let got = bounded("a heartbeat", cb.recv()).await.expect("a message");
    assert_eq!(got, Msg::Heartbeat);
    assert!(!link.is_closed());
}

both_transports!(silent_peer_ends_the_link, a_link_sends_heartbeats);
