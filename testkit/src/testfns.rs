//! The standard test functions every backend serves for the conformance suite, in Rust.
//!
//! Python backends serve the same names from a Python package (see `spawn-subint`'s tests).
//! Each function's contract is written on it; the scenarios in [`conformance`](crate::conformance)
//! rely on exactly that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harrow_runtime_core::ipc::{ErrorKind, Value};
use harrow_runtime_core::portal::{
    CallError, ContextEndpoint, FnRegistry, TypedCalleeContext, TypedStream,
};
use harrow_runtime_core::{current_actor, open_nursery, shield};
use serde::{Deserialize, Serialize};

use crate::conformance::BackendFactory;

/// How many times [`release_stuck`] was called in this process.
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// Lets the `busy` and `block` calls running in this process return, so that a leaked thread can
/// end. Calls that start afterwards are stuck again (until the next release), so one scenario's
/// release never frees a later scenario's stuck child.
pub fn release_stuck() {
    RELEASES.fetch_add(1, Ordering::SeqCst);
}

fn released_since(start: u64) -> bool {
    RELEASES.load(Ordering::SeqCst) != start
}

/// Items sent so far by `ctx_produce` in this process.
pub static PRODUCED: AtomicU64 = AtomicU64::new(0);

/// The error `fail` raises.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestError(pub String);

fn bad_args(func: &str, want: &str, got: &Value) -> CallError {
    CallError::new(
        ErrorKind::BadArguments,
        "TypeError",
        format!("{func} takes {want}, got {}", got.kind_name()),
    )
}

fn int_arg(func: &str, v: &Value) -> Result<i64, CallError> {
    v.as_i64().ok_or_else(|| bad_args(func, "an int", v))
}

// The context functions, declared once with their types. Their callers in the conformance suite
// use the `Value` API (the same scenario runs against Python twins); a Rust actor calling a Rust
// actor (`spawn_tree`'s own children) uses these.

/// `ctx_started(v)`: `started(v)`, returns `"done"`.
pub const CTX_STARTED: ContextEndpoint<Value, Value, (), (), String> =
    ContextEndpoint::new("testfns:ctx_started");
/// `ctx_started_twice()`: calls `started` twice; the second is an error.
pub const CTX_STARTED_TWICE: ContextEndpoint<(), (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_started_twice");
/// `ctx_stream_before_started()`: opens its stream before `started`; an error.
pub const CTX_STREAM_BEFORE_STARTED: ContextEndpoint<(), (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_stream_before_started");
/// `ctx_echo()`: `started(None)`, echoes every item until the caller stops; returns the count.
pub const CTX_ECHO: ContextEndpoint<(), (), Value, Value, i64> =
    ContextEndpoint::new("testfns:ctx_echo");
/// `ctx_echo_in_nursery()`: `ctx_echo` whose echo loop is the body of a nursery (without
/// children), so that a cancel of the call reaches the loop's `recv` and the nursery together.
pub const CTX_ECHO_IN_NURSERY: ContextEndpoint<(), (), Value, Value, i64> =
    ContextEndpoint::new("testfns:ctx_echo_in_nursery");
/// `ctx_produce(n)`: `started(None)`, sends `0..n`, closes; returns `n`.
pub const CTX_PRODUCE: ContextEndpoint<i64, (), (), i64, i64> =
    ContextEndpoint::new("testfns:ctx_produce");
/// `ctx_close_first()`: `started(None)`, closes its side at once, then drains the caller's
/// side; returns whether a send after close failed (it must).
pub const CTX_CLOSE_FIRST: ContextEndpoint<(), (), Value, (), bool> =
    ContextEndpoint::new("testfns:ctx_close_first");
/// `ctx_wait_forever()`: `started(None)`, then waits until cancelled.
pub const CTX_WAIT_FOREVER: ContextEndpoint<(), (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_wait_forever");
/// `ctx_shielded({ms, marker})`: `started(None)`, then a shielded section of `ms` that creates
/// the file `marker` when it completes.
pub const CTX_SHIELDED: ContextEndpoint<Shielded, (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_shielded");
/// `spawn_tree({depth, breadth})`: starts `breadth` children each running
/// `spawn_tree(depth - 1)`, calls `started(total actors in this subtree)`, then waits until
/// cancelled.
pub const SPAWN_TREE: ContextEndpoint<Tree, i64, (), (), ()> =
    ContextEndpoint::new("testfns:spawn_tree");
/// `ctx_cleanup_fails(ms)`: `started(None)`, waits until cancelled, then runs a cleanup of `ms`
/// milliseconds (none: at once) that fails with `TestError("cleanup failed")`.
pub const CTX_CLEANUP_FAILS: ContextEndpoint<Option<u64>, (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_cleanup_fails");
/// `ctx_spawn_canceller()`: `started(None)`, starts a child that asks this actor to cancel
/// itself, then waits until cancelled.
pub const CTX_SPAWN_CANCELLER: ContextEndpoint<(), (), (), (), ()> =
    ContextEndpoint::new("testfns:ctx_spawn_canceller");

/// Sends every item of `stream` back until the caller stops its side, then closes; the count.
async fn echo_all(
    mut stream: TypedStream<Value, Value>,
) -> Result<i64, harrow_runtime_core::portal::Error> {
    let mut n = 0;
    while let Some(item) = stream.recv().await? {
        stream.send(&item).await?;
        n += 1;
    }
    stream.close().await?;
    Ok(n)
}

/// The arguments of [`CTX_SHIELDED`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shielded {
    /// How long the shielded section lasts, in milliseconds.
    pub ms: u64,
    /// The file it creates when it completes.
    pub marker: String,
}

/// The arguments of [`SPAWN_TREE`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tree {
    /// Levels of actors, this one included (default 1: a leaf).
    #[serde(default = "one")]
    pub depth: i64,
    /// Children per actor (default 1).
    #[serde(default = "one")]
    pub breadth: i64,
}

fn one() -> i64 {
    1
}

/// The registry of the standard test functions, under the module `testfns`.
///
/// `factory` is what the nested functions (`spawn_tree`, `relay_fail`, `ctx_spawn_canceller`)
/// use to start their own children.
pub fn registry(factory: Arc<dyn BackendFactory>) -> Arc<FnRegistry> {
    let mut r = FnRegistry::new();
    register(&mut r, factory).expect("the standard test function paths are valid");
    crate::peerfns::register(&mut r).expect("the peer test function paths are valid");
    Arc::new(r)
}

fn register(
    r: &mut FnRegistry,
    factory: Arc<dyn BackendFactory>,
) -> Result<(), harrow_runtime_core::ipc::FnPathError> {
    // echo(v) -> v
    r.unary("testfns:echo", |v| async move { Ok(v) })?;
    // add([a, b]) -> a + b
    r.unary("testfns:add", |v| async move {
        match v.as_list() {
            Some([Value::Int(a), Value::Int(b)]) => Ok(Value::Int(a.wrapping_add(*b))),
            _ => Err(bad_args("add", "[int, int]", &v)),
        }
    })?;
    // fail(msg): raises TestError(msg)
    r.unary("testfns:fail", |v| async move {
        let msg = v.as_str().unwrap_or("failed on purpose").to_owned();
        Err(TestError(msg).into())
    })?;
    // fail_slowly({ms, msg}): blocks the actor for `ms` without yielding, then raises
    // TestError(msg)
    r.unary("testfns:fail_slowly", |v| async move {
        let ms = v.get("ms").and_then(Value::as_i64).unwrap_or(0);
        let msg = v
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("failed")
            .to_owned();
        std::thread::sleep(Duration::from_millis(ms.max(0) as u64));
        Err(TestError(msg).into())
    })?;
    // sleep_ms(ms): a cooperative sleep
    r.unary("testfns:sleep_ms", |v| async move {
        let ms = int_arg("sleep_ms", &v)?;
        async_io::Timer::after(Duration::from_millis(ms.max(0) as u64)).await;
        Ok(Value::Null)
    })?;
    // busy(): never yields to the executor (until release_stuck() in this process)
    r.unary("testfns:busy", |_| async move {
        let start = RELEASES.load(Ordering::SeqCst);
        while !released_since(start) {
            std::hint::spin_loop();
        }
        Ok(Value::Null)
    })?;
    // block(): a blocking native wait that does not yield (until release_stuck())
    r.unary("testfns:block", |_| async move {
        let start = RELEASES.load(Ordering::SeqCst);
        while !released_since(start) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Value::Null)
    })?;
    // produced() -> items sent by ctx_produce in this actor's process
    r.unary("testfns:produced", |_| async move {
        Ok(Value::Int(PRODUCED.load(Ordering::SeqCst) as i64))
    })?;
    r.serve_context(CTX_STARTED, |ctx, v| async move {
        ctx.started(&v).await?;
        Ok("done".to_owned())
    })?;
    r.serve_context(CTX_STARTED_TWICE, |ctx, ()| async move {
        ctx.started(&()).await?;
        ctx.started(&()).await?;
        Ok(())
    })?;
    r.serve_context(CTX_STREAM_BEFORE_STARTED, |ctx, ()| async move {
        let _stream = ctx.open_stream().await?;
        ctx.started(&()).await?;
        Ok(())
    })?;
    r.serve_context(CTX_ECHO, |ctx, ()| async move {
        ctx.started(&()).await?;
        Ok(echo_all(ctx.open_stream().await?).await?)
    })?;
    r.serve_context(CTX_ECHO_IN_NURSERY, |ctx, ()| async move {
        ctx.started(&()).await?;
        let stream = ctx.open_stream().await?;
        let n = open_nursery(|_n| async move { Ok(echo_all(stream).await?) }).await?;
        Ok(n)
    })?;
    r.serve_context(CTX_PRODUCE, |ctx, n| async move {
        ctx.started(&()).await?;
        let stream = ctx.open_stream().await?;
        for i in 0..n {
            stream.send(&i).await?;
            PRODUCED.fetch_add(1, Ordering::SeqCst);
        }
        stream.close().await?;
        Ok(n)
    })?;
    r.serve_context(CTX_CLOSE_FIRST, |ctx, ()| async move {
        ctx.started(&()).await?;
        let mut stream = ctx.open_stream().await?;
        stream.close().await?;
        let send_failed = stream.send(&()).await.is_err();
        while stream.recv().await?.is_some() {}
        Ok(send_failed)
    })?;
    r.serve_context(CTX_WAIT_FOREVER, |ctx, ()| async move {
        ctx.started(&()).await?;
        std::future::pending::<()>().await;
        Ok(())
    })?;
    r.serve_context(CTX_SHIELDED, |ctx, Shielded { ms, marker }| async move {
        ctx.started(&()).await?;
        shield(async move {
            async_io::Timer::after(Duration::from_millis(ms)).await;
            let _ = std::fs::write(&marker, b"done");
        })
        .await;
        Ok(())
    })?;
    let f = factory.clone();
    r.serve_context(SPAWN_TREE, move |ctx, tree| {
        spawn_tree(f.clone(), ctx, tree)
    })?;
    // relay_fail(msg): starts a child and calls fail(msg) there, propagating its error
    let f = factory.clone();
    r.unary("testfns:relay_fail", move |v| {
        let f = f.clone();
        async move {
            let out = open_nursery(|n| async move {
                let child = n.start_actor("relay-leaf", f.backend(), f.spec()).await?;
                Ok(child.run(&f.func("fail"), v).await)
            })
            .await
            .map_err(|e| CallError::raised("NurseryError", e.to_string()))?;
            Ok(out?)
        }
    })?;
    // fail_at_gate({dir, msg}): waits at the gate in `dir` (marking itself ready), then raises
    // TestError(msg). It observes its cancellation and keeps
    // going: once released by the gate it fails whatever cancel arrived meanwhile (failing is its
    // cleanup), so every child the gate releases reports its failure.
    r.unary("testfns:fail_at_gate", |v| async move {
        if let Some(call) = harrow_runtime_core::portal::current_call() {
            call.observe_cancel();
        }
        let (dir, msg) = gate_args("fail_at_gate", &v)?;
        wait_at_gate(&dir).await?;
        Err(TestError(msg).into())
    })?;
    // exit_at_gate({dir, code}): waits at the gate in `dir` (observing its cancel, as
    // fail_at_gate), then ends its process with status `code` (only for actors in a process of
    // their own)
    r.unary("testfns:exit_at_gate", |v| async move {
        if let Some(call) = harrow_runtime_core::portal::current_call() {
            call.observe_cancel();
        }
        let (dir, _) = gate_args("exit_at_gate", &v)?;
        let code = v.get("code").and_then(Value::as_i64).unwrap_or(0);
        wait_at_gate(&dir).await?;
        std::process::exit(i32::try_from(code).unwrap_or(1));
    })?;
    // result_tree(depth): at depth 1 raises TestError("leaf"); deeper, a nursery with one
    // run_in_actor child running result_tree(depth - 1), whose result it returns (its failure
    // passed on with `?`)
    let f = factory.clone();
    r.unary("testfns:result_tree", move |v| {
        let f = f.clone();
        async move {
            let depth = v.as_i64().unwrap_or(1);
            if depth <= 1 {
                return Err(TestError("leaf".into()).into());
            }
            let got = open_nursery(|n| async move {
                let below = Value::Int(depth - 1);
                let h = n
                    .run_in_actor(
                        "below",
                        f.backend(),
                        &f.func("result_tree"),
                        below,
                        f.spec(),
                    )
                    .await?;
                Ok(h.result().await?)
            })
            .await?;
            Ok(got)
        }
    })?;
    // fail_tree({depth, breadth, dir}): at depth 1, fail_at_gate({dir, msg: "leaf <name>"});
    // deeper, a nursery of `breadth` run_in_actor children running fail_tree(depth - 1), whose
    // failures it raises as one group (`?` on the nursery's error)
    let f = factory.clone();
    r.unary("testfns:fail_tree", move |v| {
        let f = f.clone();
        async move {
            let depth = v.get("depth").and_then(Value::as_i64).unwrap_or(1);
            let breadth = v.get("breadth").and_then(Value::as_i64).unwrap_or(1);
            let (dir, _) = gate_args("fail_tree", &v)?;
            let me = current_actor()
                .map(|a| a.id().name.clone())
                .unwrap_or_default();
            if depth <= 1 {
                if let Some(call) = harrow_runtime_core::portal::current_call() {
                    call.observe_cancel();
                }
                wait_at_gate(&dir).await?;
                return Err(TestError(format!("leaf {me}")).into());
            }
            open_nursery(|n| async move {
                for i in 0..breadth {
                    let args = Value::Map(vec![
                        ("depth".into(), Value::Int(depth - 1)),
                        ("breadth".into(), Value::Int(breadth)),
                        ("dir".into(), Value::from(dir.as_str())),
                    ]);
                    let name = format!("{me}.{i}");
                    n.run_in_actor(&name, f.backend(), &f.func("fail_tree"), args, f.spec())
                        .await?;
                }
                Ok(())
            })
            .await?;
            Ok(Value::Null)
        }
    })?;
    // exit_mid_call(): ends this process with status 3 (only for actors in a process of their
    // own: see `BackendFactory::ends_on_its_own`)
    r.unary("testfns:exit_mid_call", |_| async move {
        std::process::exit(3);
    })?;
    // busy_marker(path): writes the file `path`, then never yields (until release_stuck())
    r.unary("testfns:busy_marker", |v| async move {
        let path = v
            .as_str()
            .ok_or_else(|| bad_args("busy_marker", "a path", &v))?;
        let start = RELEASES.load(Ordering::SeqCst);
        std::fs::write(path, b"busy").map_err(|e| CallError::raised("IOError", e.to_string()))?;
        while !released_since(start) {
            std::hint::spin_loop();
        }
        Ok(Value::Null)
    })?;
    // ctx_hold_stuck_child(marker): a nursery with one child running busy_marker(marker) (its
    // backend cannot be cancelled gracefully), started(None), then waits until cancelled; its
    // nursery's outcome (the stuck child's teardown) is the call's answer
    let f = factory.clone();
    r.context("testfns:ctx_hold_stuck_child", move |ctx, v| {
        let f = f.clone();
        async move {
            open_nursery(|n| async move {
                let stuck = n.start_actor("stuck", f.backend(), f.spec()).await?;
                ctx.started(Value::Null).await?;
                stuck.run(&f.func("busy_marker"), v).await?;
                Ok(())
            })
            .await?;
            Ok(Value::Null)
        }
    })?;
    r.serve_context(CTX_CLEANUP_FAILS, |ctx, ms| async move {
        ctx.started(&()).await?;
        ctx.cancelled().await;
        async_io::Timer::after(Duration::from_millis(ms.unwrap_or(0))).await;
        Err(TestError("cleanup failed".into()).into())
    })?;
    // gen_count(n): a one-way stream of the ints 0..n (the Python twin is a generator)
    r.stream("testfns:gen_count", |v| {
        let n = v.as_i64().unwrap_or(0).max(0);
        futures_lite::stream::iter((0..n).map(|i| Ok(Value::Int(i))))
    })?;
    // cancel_parent(): asks this actor's parent to cancel itself
    r.unary("testfns:cancel_parent", |_| async move {
        let parent = current_actor()
            .and_then(|a| a.parent())
            .ok_or_else(|| CallError::raised("RuntimeError", "no parent"))?;
        Ok(Value::Bool(
            parent.cancel_actor(Duration::from_secs(5)).await,
        ))
    })?;
    let f = factory.clone();
    r.serve_context(CTX_SPAWN_CANCELLER, move |ctx, ()| {
        let f = f.clone();
        async move {
            ctx.started(&()).await?;
            // The nursery follows this call's cancellation: it ends with the cancel (naming the
            // canceller), which `?` answers the caller with.
            open_nursery(|n| async move {
                n.run_in_actor(
                    "canceller",
                    f.backend(),
                    &f.func("cancel_parent"),
                    Value::Null,
                    f.spec(),
                )
                .await?;
                std::future::pending::<()>().await;
                Ok(())
            })
            .await?;
            Ok(())
        }
    })?;
    // ctx_call_canceller(): started(null), starts a child and waits for its `cancel_parent`
    // call, whose answer it returns: this actor is cancelled by the child it waits on.
    let f = factory;
    r.context("testfns:ctx_call_canceller", move |ctx, _| {
        let f = f.clone();
        async move {
            ctx.started(Value::Null).await?;
            let v = open_nursery(|n| async move {
                let c = n.start_actor("canceller", f.backend(), f.spec()).await?;
                Ok(c.run(&f.func("cancel_parent"), Value::Null).await?)
            })
            .await?;
            Ok(v)
        }
    })?;
    Ok(())
}

fn gate_args(func: &str, v: &Value) -> Result<(String, String), CallError> {
    let dir = v
        .get("dir")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_args(func, "{dir, ...}", v))?
        .to_owned();
    let msg = v
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or("failed at the gate")
        .to_owned();
    Ok((dir, msg))
}

/// Waits at the gate in `dir` (see the conformance suite's scratch directory): opens the FIFO
/// `dir/gate` for reading, marks this actor ready, and blocks (not yielding) until the gate's
/// only writer closes it.
async fn wait_at_gate(dir: &str) -> Result<(), CallError> {
    use std::io::Read;
    let io = |e: std::io::Error| CallError::raised("IOError", e.to_string());
    let dir = std::path::Path::new(dir);
    let mut gate = std::fs::File::open(dir.join("gate")).map_err(io)?;
    let uid = current_actor()
        .map(|a| a.id().uid.clone())
        .unwrap_or_default();
    std::fs::write(dir.join(format!("ready-{uid}")), b"ready").map_err(io)?;
    let mut buf = [0u8; 16];
    loop {
        match gate.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
}

async fn spawn_tree(
    f: Arc<dyn BackendFactory>,
    ctx: TypedCalleeContext<i64, (), ()>,
    Tree { depth, breadth }: Tree,
) -> Result<(), CallError> {
    if depth <= 1 {
        ctx.started(&1).await?;
        std::future::pending::<()>().await;
        return Ok(());
    }
    let result = open_nursery(|n| async move {
        let mut contexts = Vec::new();
        let mut total = 1;
        for i in 0..breadth {
            let child = n
                .start_actor(&format!("tree-d{}-{i}", depth - 1), f.backend(), f.spec())
                .await?;
            // A Rust actor calling a Rust actor: the typed endpoint.
            let subtree = Tree {
                depth: depth - 1,
                breadth,
            };
            let (cctx, size) = child.open(SPAWN_TREE, &subtree).await?;
            total += size;
            contexts.push(cctx);
        }
        ctx.started(&total).await?;
        std::future::pending::<()>().await;
        drop(contexts);
        Ok(())
    })
    .await;
    result?;
    Ok(())
}
