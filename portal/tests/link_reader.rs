//! A link whose reader its owner drives (`Link::establish_with_reader`): calls flow while the
//! reader is polled, and dropping the reader before the link ends breaks the link, so that no
//! call waits for an answer nobody will read.

mod common;

use std::sync::Arc;

use common::*;
use futures_lite::future;
use harrow_portal::ipc::Value;
use harrow_portal::{Executor, Link, LinkConfig, LinkEnd, LinkReader};

/// A callee `b` serving `t:echo` and `t:wait` (answers once `release` delivers), established
/// with its reader handed back; and a caller `a` established the usual way.
async fn caller_and_driven_callee(exec: &Executor, t: Transport) -> (Link, Link, LinkReader, Wait) {
    let (release, release_rx) = async_channel::unbounded::<Value>();
    let (entered_tx, entered) = async_channel::unbounded::<()>();
    let mut reg = harrow_portal::FnRegistry::new();
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    reg.unary("t:wait", move |_| {
        let release_rx = release_rx.clone();
        let entered_tx = entered_tx.clone();
        async move {
            let _ = entered_tx.send(()).await;
            Ok(release_rx.recv().await.unwrap_or(Value::Null))
        }
    })
    .unwrap();
    let (ca, cb) = pair(t);
    let (a, b) = bounded(
        "hello exchange",
        future::zip(
            Link::establish(ca, local("a"), None, exec, LinkConfig::default()),
            Link::establish_with_reader(
                cb,
                local("b"),
                Some(Arc::new(reg)),
                exec,
                LinkConfig::default(),
            ),
        ),
    )
    .await;
    let (b, reader) = b.expect("link b");
    (a.expect("link a"), b, reader, Wait { entered, release })
}

/// `t:wait`'s ends: it says when it runs, and answers what `release` delivers.
struct Wait {
    entered: async_channel::Receiver<()>,
    release: async_channel::Sender<Value>,
}

async fn calls_are_served_while_the_reader_is_polled(exec: Executor, t: Transport) {
    let (a, b, reader, _wait) = caller_and_driven_callee(&exec, t).await;
    let calls = async {
        for i in 0..100 {
            let v = a.portal().run("t:echo", Value::Int(i)).await.unwrap();
            assert_eq!(v, Value::Int(i));
        }
        a.close();
    };
    // The reader is polled here, by this test's own future, not by the executor; it ends once
    // the link has shut down.
    bounded("the calls and the reader", future::zip(calls, reader)).await;
    // `a` closed its end: `b` saw its channel close (the reader was not dropped).
    let end = bounded("b's end", b.closed()).await;
    assert!(
        matches!(&end, LinkEnd::Broken(reason) if reason.contains("closed")),
        "{end:?}"
    );
    bounded("b's I/O stops", b.io_stopped()).await;
}

async fn a_dropped_reader_breaks_the_link_and_fails_its_calls(exec: Executor, t: Transport) {
    let (a, b, reader, wait) = caller_and_driven_callee(&exec, t).await;
    // `a` calls into `b`, whose function waits.
    let reader_task = exec.spawn(reader);
    let from_a = exec.spawn({
        let p = a.portal();
        async move { p.run("t:wait", Value::Null).await }
    });
    bounded("b's served call", wait.entered.recv())
        .await
        .unwrap();
    // The reader is dropped before the link ends (its task cancelled).
    let cancelled = bounded("the reader's task is cancelled", reader_task.cancel()).await;
    assert_eq!(cancelled, None, "the reader ended by itself");
    let end = bounded("b's end", b.closed()).await;
    let LinkEnd::Broken(reason) = end else {
        panic!("expected a broken link, got {end:?}");
    };
    assert!(reason.contains("reader"), "{reason}");
    let err = bounded("a call through b", b.portal().run("t:echo", Value::Int(1)))
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    // b's served call was cancelled with the link; a's call ends too (b's side closed the
    // channel), not waiting for an answer that cannot come.
    drop(wait.release);
    let a_err = bounded("a's call", from_a).await.unwrap_err();
    assert!(a_err.is_closed() || a_err.is_cancelled(), "{a_err:?}");
    bounded("b's I/O stops", b.io_stopped()).await;
}

both_transports!(
    calls_are_served_while_the_reader_is_polled,
    a_dropped_reader_breaks_the_link_and_fails_its_calls,
);
