//! Messages too large for the transport's frame limit: the call they belong to fails, with an
//! error that says so, on both sides; nothing hangs and no stream looks whole with an item
//! missing. (Over `unix` with a 64 KiB limit; `mem` does not encode, so it has no frame limit.)

mod common;

use std::sync::Arc;

use common::*;
use harrow_portal::ipc::codec::CodecConfig;
use harrow_portal::ipc::{Value, unix};
use harrow_portal::{CallError, Error, Executor, FnRegistry, Link, LinkConfig, Resolver};

const LIMIT: usize = 64 << 10;

/// The standard functions and `t:big_err(n)`, which fails with a message of `n` bytes.
fn big_err_registry() -> FnRegistry {
    let (mut reg, _probe) = standard_registry();
    reg.unary("t:big_err", |v| async move {
        let n = v.as_i64().unwrap_or(0) as usize;
        Err::<Value, _>(CallError::raised("BigError", "e".repeat(n)))
    })
    .unwrap();
    reg
}

/// A caller "a" linked over a socketpair whose frames may hold `LIMIT` bytes to a callee "b"
/// serving `reg`.
async fn small_frames(exec: &Executor, reg: FnRegistry) -> (Link, Link) {
    let codec = CodecConfig {
        max_frame: LIMIT,
        ..CodecConfig::default()
    };
    let ends = unix::pair_with(codec).expect("socketpair");
    let b = Some(Arc::new(reg) as Arc<dyn Resolver>);
    establish_pair(
        exec,
        ends,
        local("a"),
        None,
        local("b"),
        b,
        LinkConfig::default(),
    )
    .await
}

#[test]
fn an_item_too_large_to_send_fails_its_call_never_a_stream_missing_it() {
    run_test(Transport::Unix, |exec, _| async move {
        let (a, _b) = small_frames(&exec, big_err_registry()).await;
        let (mut ctx, _) = bounded("open", a.portal().open_context("t:ctx_echo", Value::Int(0)))
            .await
            .unwrap();
        let mut s = ctx.open_stream().await.unwrap();
        bounded("send 1", s.send(Value::Int(1))).await.unwrap();
        // Queued for the writer, which finds it too large after `send` returned.
        let _ = bounded("send big", s.send(Value::Bytes(vec![7; 2 * LIMIT]))).await;
        let _ = bounded("send 2", s.send(Value::Int(2))).await;
        let _ = s.close().await;
        let mut echoed = Vec::new();
        let end = loop {
            match bounded("recv", s.recv()).await {
                Ok(Some(v)) => echoed.push(v),
                other => break other,
            }
        };
        let err = end.expect_err("an error, never the end of a stream that lost an item");
        assert!(matches!(err, Error::Value(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("t:ctx_echo") && text.contains("not sent"),
            "{text}"
        );
        assert!(
            !echoed.iter().any(|v| matches!(v, Value::Bytes(_))),
            "{echoed:?}"
        );
        let result = bounded("result", ctx.result()).await;
        assert!(matches!(&result, Err(Error::Value(_))), "{result:?}");
        // The link is fine: the next call works.
        assert_eq!(
            bounded("echo", a.portal().run("t:echo", Value::Int(5)))
                .await
                .unwrap(),
            Value::Int(5)
        );
    });
}

#[test]
fn a_failure_too_large_to_send_still_answers_its_call() {
    run_test(Transport::Unix, |exec, _| async move {
        let (a, _b) = small_frames(&exec, big_err_registry()).await;
        let n = 3 * LIMIT;
        let err = bounded(
            "the big failure's answer",
            a.portal().run("t:big_err", Value::Int(n as i64)),
        )
        .await
        .expect_err("the call fails");
        let remote = err.remote_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(remote.type_name, "BigError", "{err}");
        assert_eq!(remote.source.name, "b", "{err}");
        assert!(remote.message.starts_with(&"e".repeat(4096)), "{err}");
        assert!(remote.message.len() < LIMIT, "{}", remote.message.len());
        assert!(
            remote.message.contains("too large to send")
                && remote
                    .message
                    .contains(&format!("all but 4096 of its message's {n} bytes")),
            "{}",
            &remote.message[4096..]
        );
        // One that fits is sent whole.
        let err = bounded(
            "a small failure",
            a.portal().run("t:big_err", Value::Int(10)),
        )
        .await
        .expect_err("the call fails");
        assert_eq!(
            err.remote_error().map(|r| r.message.as_str()),
            Some("eeeeeeeeee")
        );
    });
}

/// A callee's stream item too large to send answers the call with a `SendError`, and the
/// function, which would otherwise wait for credit its caller never grants, is stopped.
#[test]
fn a_callee_item_too_large_answers_the_call_and_stops_the_function() {
    run_test(Transport::Unix, |exec, _| async move {
        let (stopped_tx, stopped) = async_channel::unbounded::<&'static str>();
        let mut reg = FnRegistry::new();
        reg.context("t:big_then_more", move |ctx, _| {
            let stopped_tx = stopped_tx.clone();
            async move {
                struct Stopped(async_channel::Sender<&'static str>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        let _ = self.0.try_send("stopped");
                    }
                }
                let _stopped = Stopped(stopped_tx);
                ctx.started(Value::Null).await?;
                let s = ctx.open_stream().await?;
                s.send(Value::Bytes(vec![7; 2 * LIMIT])).await?;
                loop {
                    s.send(Value::Int(1)).await?;
                }
            }
        })
        .unwrap();
        let (a, _b) = small_frames(&exec, reg).await;
        let (mut ctx, _) = bounded(
            "open",
            a.portal().open_context("t:big_then_more", Value::Null),
        )
        .await
        .unwrap();
        let mut s = ctx.open_stream().await.unwrap();
        let end = loop {
            match bounded("recv", s.recv()).await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        let err = end.expect_err("the SendError, never an end of stream");
        let remote = err.remote_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(remote.type_name, "SendError", "{err}");
        assert_eq!(
            bounded("the function stops", stopped.recv()).await,
            Ok("stopped")
        );
    });
}
