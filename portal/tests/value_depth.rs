//! Values nested 100,000 deep are refused where they enter the API, with a typed error, on every
//! transport (mem included, which never encodes): as arguments, started values, stream items and
//! return values. Nothing overflows a stack and the link keeps working.

mod common;

use std::sync::Arc;

use common::*;
use harrow_portal::ipc::{DEFAULT_MAX_DEPTH, ErrorKind, Value};
use harrow_portal::{Error, Executor, FnRegistry, LinkConfig};

const DEEP: usize = 100_000;

fn deep() -> Value {
    let mut v = Value::Int(1);
    for _ in 1..DEEP {
        v = Value::List(vec![v]);
    }
    v
}

fn is_too_deep(text: &str) -> bool {
    text.contains(&format!(
        "nested deeper than the limit of {DEFAULT_MAX_DEPTH}"
    ))
}

fn registry() -> FnRegistry {
    let mut reg = FnRegistry::new();
    reg.unary("t:echo", |v| async move { Ok(v) }).unwrap();
    reg.unary("t:deep_result", |_| async move { Ok(deep()) })
        .unwrap();
    reg.context("t:deep_started", |ctx, _| async move {
        ctx.started(deep()).await?;
        Ok(Value::Null)
    })
    .unwrap();
    // Tries to stream a deep item, then a fine one; returns the refusal's text.
    reg.context("t:deep_item", |ctx, _| async move {
        ctx.started(Value::Null).await?;
        let mut s = ctx.open_stream().await?;
        let refused = match s.send(deep()).await {
            Err(e @ Error::Value(_)) => e.to_string(),
            other => format!("unexpected {other:?}"),
        };
        s.send(Value::Int(2)).await?;
        // Wait for the caller's items to end, so its refused send is checked first.
        while s.recv().await?.is_some() {}
        s.close().await?;
        Ok(Value::Str(refused))
    })
    .unwrap();
    reg
}

async fn deep_arguments_are_refused_before_sending(exec: Executor, t: Transport) {
    let (a, _b) = link_pair(
        &exec,
        t,
        None,
        Some(Arc::new(registry())),
        LinkConfig::default(),
    )
    .await;
    let p = a.portal();
    let err = bounded("run", p.run("t:echo", deep())).await.unwrap_err();
    let Error::Value(text) = &err else {
        panic!("{err:?}")
    };
    assert!(
        is_too_deep(text) && text.contains("arguments of t:echo"),
        "{text}"
    );
    let err = bounded("open", p.open_context("t:deep_item", deep()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Value(text) if is_too_deep(text)),
        "{err:?}"
    );
    // The link is unharmed, and a value at the limit still crosses.
    let mut at_limit = Value::Int(1);
    for _ in 1..DEFAULT_MAX_DEPTH {
        at_limit = Value::List(vec![at_limit]);
    }
    let back = bounded("run", p.run("t:echo", at_limit.clone()))
        .await
        .unwrap();
    assert_eq!(back, at_limit);
}

async fn a_deep_return_value_becomes_an_error_for_the_caller(exec: Executor, t: Transport) {
    let (a, _b) = link_pair(
        &exec,
        t,
        None,
        Some(Arc::new(registry())),
        LinkConfig::default(),
    )
    .await;
    let err = bounded("run", a.portal().run("t:deep_result", Value::Null))
        .await
        .unwrap_err();
    let remote = err.remote_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.kind, ErrorKind::Runtime);
    assert!(
        is_too_deep(&remote.message) && remote.message.contains("result of t:deep_result"),
        "{remote}"
    );
    let back = bounded("run", a.portal().run("t:echo", Value::Int(5)))
        .await
        .unwrap();
    assert_eq!(back, Value::Int(5));
}

async fn a_deep_started_value_is_refused_to_the_callee(exec: Executor, t: Transport) {
    let (a, _b) = link_pair(
        &exec,
        t,
        None,
        Some(Arc::new(registry())),
        LinkConfig::default(),
    )
    .await;
    let err = bounded(
        "open",
        a.portal().open_context("t:deep_started", Value::Null),
    )
    .await
    .unwrap_err();
    // The callee's `started` failed and the function passed the error on with `?`.
    let remote = err.remote_error().unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        is_too_deep(&remote.message) && remote.message.contains("started value of t:deep_started"),
        "{remote}"
    );
}

async fn deep_stream_items_are_refused_on_both_sides(exec: Executor, t: Transport) {
    let (a, _b) = link_pair(
        &exec,
        t,
        None,
        Some(Arc::new(registry())),
        LinkConfig::default(),
    )
    .await;
    let (mut ctx, _) = bounded("open", a.portal().open_context("t:deep_item", Value::Null))
        .await
        .unwrap();
    let mut s = bounded("stream", ctx.open_stream()).await.unwrap();
    let err = bounded("send", s.send(deep())).await.unwrap_err();
    assert!(
        matches!(&err, Error::Value(text) if is_too_deep(text)),
        "{err:?}"
    );
    bounded("close", s.close()).await.unwrap();
    assert_eq!(
        bounded("item", s.recv()).await.unwrap(),
        Some(Value::Int(2))
    );
    assert_eq!(bounded("end", s.recv()).await.unwrap(), None);
    let result = bounded("result", ctx.result()).await.unwrap();
    let text = result.as_str().unwrap_or_default();
    assert!(
        is_too_deep(text) && text.contains("stream item of t:deep_item"),
        "{result:?}"
    );
}

both_transports!(
    deep_arguments_are_refused_before_sending,
    a_deep_return_value_becomes_an_error_for_the_caller,
    a_deep_started_value_is_refused_to_the_callee,
    deep_stream_items_are_refused_on_both_sides,
);
