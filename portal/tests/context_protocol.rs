//! Context rules: `started` exactly once, no stream before `started`, no `started` in unary calls;
//! each error reported on both sides.

mod common;

use std::sync::Arc;

use common::*;
use harrow_portal::ipc::{ErrorKind, Value};
use harrow_portal::{
    CallError, CallFuture, Error, Executor, FnRegistry, Invocation, LinkConfig, Resolver,
};

/// Reports what the callee saw on a channel.
fn registry(seen: async_channel::Sender<String>) -> FnRegistry {
    let mut reg = FnRegistry::new();
    let s = seen.clone();
    reg.context("t:twice", move |ctx, _| {
        let s = s.clone();
        async move {
            ctx.started(Value::Int(1)).await?;
            let second = ctx.started(Value::Int(2)).await;
            let _ = s.try_send(format!("{second:?}"));
            Ok(Value::Null)
        }
    })
    .unwrap();
    let s = seen.clone();
    reg.context("t:early_stream", move |ctx, _| {
        let s = s.clone();
        async move {
            let early = ctx.open_stream().await;
            let _ = s.try_send(format!("{early:?}"));
            Ok(Value::Null)
        }
    })
    .unwrap();
    reg.context("t:first_then_result", |ctx, v| async move {
        ctx.started(Value::Str("first".into())).await?;
        Ok(v)
    })
    .unwrap();
    reg.context("t:returns_without_started", |_ctx, _| async move {
        Ok(Value::Null)
    })
    .unwrap();
    reg
}

async fn open_context_returns_first_value_then_result(exec: Executor, t: Transport) {
    let (tx, _rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(tx)).await;
    let (ctx, first) = bounded(
        "open",
        a.portal()
            .open_context("t:first_then_result", Value::Int(9)),
    )
    .await
    .unwrap();
    assert_eq!(first, Value::Str("first".into()));
    assert_eq!(
        bounded("result", ctx.result()).await.unwrap(),
        Value::Int(9)
    );
    let err = bounded(
        "no started",
        a.portal()
            .open_context("t:returns_without_started", Value::Null),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
}

async fn started_twice_errors_on_both_sides(exec: Executor, t: Transport) {
    let (tx, rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(tx)).await;
    let (ctx, first) = bounded("open", a.portal().open_context("t:twice", Value::Null))
        .await
        .unwrap();
    assert_eq!(first, Value::Int(1));
    let callee_saw = bounded("callee outcome", rx.recv()).await.unwrap();
    assert!(
        callee_saw.contains("Protocol") && callee_saw.contains("twice"),
        "{callee_saw}"
    );
    let err = bounded("result", ctx.result()).await.unwrap_err();
    let re = err.remote_error().expect("remote");
    assert_eq!(re.kind, ErrorKind::Protocol);
    assert!(re.message.contains("twice"), "{re}");
    // The link is still usable.
    let (ctx, _) = bounded(
        "again",
        a.portal().open_context("t:first_then_result", Value::Null),
    )
    .await
    .unwrap();
    assert_eq!(bounded("result", ctx.result()).await.unwrap(), Value::Null);
}

async fn stream_before_started_errors_on_both_sides(exec: Executor, t: Transport) {
    let (tx, rx) = async_channel::unbounded();
    let (a, _b) = caller_callee(&exec, t, registry(tx)).await;
    let err = bounded(
        "open",
        a.portal().open_context("t:early_stream", Value::Null),
    )
    .await
    .unwrap_err();
    let re = err.remote_error().expect("remote");
    assert_eq!(re.kind, ErrorKind::Protocol);
    assert!(re.message.contains("before started"), "{re}");
    let callee_saw = bounded("callee outcome", rx.recv()).await.unwrap();
    assert!(
        callee_saw.contains("Protocol") && callee_saw.contains("before started"),
        "{callee_saw}"
    );
}

/// Runs every call as given, so a unary call can reach `started`.
#[derive(Debug)]
struct StartedInUnary(async_channel::Sender<String>);

impl Resolver for StartedInUnary {
    fn start(&self, call: Invocation) -> Result<CallFuture, CallError> {
        let seen = self.0.clone();
        Ok(Box::pin(async move {
            let r = call.ctx.started(Value::Null).await;
            let _ = seen.try_send(format!("{r:?}"));
            Ok(Value::Null)
        }))
    }
}

async fn started_in_unary_call_errors_on_both_sides(exec: Executor, t: Transport) {
    let (tx, rx) = async_channel::unbounded();
    let (a, _b) = link_pair(
        &exec,
        t,
        None,
        Some(Arc::new(StartedInUnary(tx))),
        LinkConfig::default(),
    )
    .await;
    let err = bounded("run", a.portal().run("t:any", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote_error().expect("remote").kind,
        ErrorKind::Protocol
    );
    let callee_saw = bounded("callee outcome", rx.recv()).await.unwrap();
    assert!(
        callee_saw.contains("Protocol") && callee_saw.contains("unary"),
        "{callee_saw}"
    );
}

both_transports!(
    open_context_returns_first_value_then_result,
    started_twice_errors_on_both_sides,
    stream_before_started_errors_on_both_sides,
    started_in_unary_call_errors_on_both_sides,
);
