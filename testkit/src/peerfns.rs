//! The standard test functions for discovery and peer portals (module `testfns`, registered
//! with the others by [`testfns::registry`](crate::testfns::registry)). Each finds a peer by
//! name through the current actor and acts on it.

use std::time::Duration;

use harrow_runtime_core::ipc::{ErrorKind, Value};
use harrow_runtime_core::portal::{CallError, FnRegistry, Portal};
use harrow_runtime_core::{DiscoveryError, current_actor};

fn discovery_err(e: DiscoveryError) -> CallError {
    CallError::new(ErrorKind::Runtime, "DiscoveryError", e.to_string())
}

fn str_field(func: &str, v: &Value, key: &str) -> Result<String, CallError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            CallError::new(
                ErrorKind::BadArguments,
                "TypeError",
                format!("{func} needs a str field {key:?}"),
            )
        })
}

async fn find(name: &str) -> Result<Portal, CallError> {
    let me = current_actor().ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
    me.find_actor(name)
        .await
        .map_err(discovery_err)?
        .ok_or_else(|| CallError::raised("LookupError", format!("no actor named {name:?}")))
}

pub(crate) fn register(r: &mut FnRegistry) -> Result<(), harrow_runtime_core::ipc::FnPathError> {
    // peer_call({name, func, args}): finds `name` and returns what `func(args)` returns there
    r.unary("testfns:peer_call", |v| async move {
        let name = str_field("peer_call", &v, "name")?;
        let func = str_field("peer_call", &v, "func")?;
        let args = v.get("args").cloned().unwrap_or(Value::Null);
        Ok(find(&name).await?.run(&func, args).await?)
    })?;
    // peer_wait_call({name, func, args, timeout_ms}): waits for `name` (bounded; a negative
    // timeout_ms waits as long as a wait can: `Duration::MAX`), then calls
    r.unary("testfns:peer_wait_call", |v| async move {
        let name = str_field("peer_wait_call", &v, "name")?;
        let func = str_field("peer_wait_call", &v, "func")?;
        let args = v.get("args").cloned().unwrap_or(Value::Null);
        let ms = v.get("timeout_ms").and_then(Value::as_i64).unwrap_or(5000);
        let timeout = u64::try_from(ms).map_or(Duration::MAX, Duration::from_millis);
        let me = current_actor().ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
        let p = me
            .wait_for_actor(&name, timeout)
            .await
            .map_err(discovery_err)?;
        Ok(p.run(&func, args).await?)
    })?;
    // peer_echo_stream({name, func, n}): opens context `func` (an echo) on `name`, streams
    // 0..n through it and returns the sum of the echoes
    r.unary("testfns:peer_echo_stream", |v| async move {
        let name = str_field("peer_echo_stream", &v, "name")?;
        let func = str_field("peer_echo_stream", &v, "func")?;
        let n = v.get("n").and_then(Value::as_i64).unwrap_or(0);
        let p = find(&name).await?;
        let (mut ctx, _) = p.open_context(&func, Value::Null).await?;
        let mut stream = ctx.open_stream().await?;
        let mut sum = 0;
        for i in 0..n {
            stream.send(Value::Int(i)).await?;
            let back = stream.recv().await?.and_then(|v| v.as_i64());
            sum += back.ok_or_else(|| CallError::raised("RuntimeError", "echo ended early"))?;
        }
        stream.close().await?;
        while stream.recv().await?.is_some() {}
        ctx.result().await?;
        Ok(Value::Int(sum))
    })?;
    // peer_cancel({name}): finds `name` and cancels that actor directly; returns whether it acked
    r.unary("testfns:peer_cancel", |v| async move {
        let name = str_field("peer_cancel", &v, "name")?;
        let p = find(&name).await?;
        Ok(Value::Bool(p.cancel_actor(Duration::from_secs(5)).await))
    })?;
    // peer_self(): asks for a portal to this actor itself; returns the error text
    r.unary("testfns:peer_self", |_| async move {
        let me = current_actor().ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
        match me.find_actor(&me.id().name).await {
            Err(e) => Ok(Value::Str(e.to_string())),
            Ok(_) => Err(CallError::raised(
                "AssertionError",
                "a portal to itself was given",
            )),
        }
    })?;
    // register_alias({alias}): registers an extra name for this actor
    r.unary("testfns:register_alias", |v| async move {
        let alias = str_field("register_alias", &v, "alias")?;
        let me = current_actor().ok_or_else(|| CallError::raised("RuntimeError", "no actor"))?;
        me.register_names(&[&alias]).await.map_err(discovery_err)?;
        Ok(Value::Null)
    })?;
    Ok(())
}
