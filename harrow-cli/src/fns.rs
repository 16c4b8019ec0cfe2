//! The Rust functions the CLI's actors serve: the thread actors get them through their spec, the
//! process actors through `maybe_run_child` (they are this binary re-executed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use harrow::{CallError, FnRegistry, Value};

/// Bumped to release every `demo:spin` call started before (a Rust thread cannot be killed, so a
/// stuck thread actor is let go this way once its teardown has been shown). A process child
/// never sees it bumped: it spins until SIGKILL.
static SPIN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Ends every `demo:spin` loop running in this process.
pub(crate) fn release_spinners() {
    SPIN_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The registry: `demo:add`, `demo:divide`, `demo:whoami`, `demo:echo` (unary),
/// `demo:echo_stream` and `demo:spin` (contexts).
pub(crate) fn registry() -> Arc<FnRegistry> {
    let mut f = FnRegistry::new();
    let paths_are_valid = "function paths are valid literals";
    f.unary("demo:add", |v: Value| async move {
        let sum = v
            .as_list()
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::as_i64)
            .sum::<i64>();
        Ok(Value::Int(sum))
    })
    .expect(paths_are_valid);
    f.unary("demo:divide", |v: Value| async move {
        match v.as_list() {
            Some([Value::Int(_), Value::Int(0)]) => Err(CallError::raised(
                "DivisionByZero",
                "cannot divide by zero (raised on purpose)",
            )),
            Some([Value::Int(a), Value::Int(b)]) => Ok(Value::Int(a / b)),
            _ => Err(CallError::raised("TypeError", "divide takes [int, int]")),
        }
    })
    .expect(paths_are_valid);
    f.unary("demo:whoami", |_| async move {
        Ok(Value::from(format!(
            "pid {}, thread {}",
            std::process::id(),
            std::thread::current().name().unwrap_or("unnamed")
        )))
    })
    .expect(paths_are_valid);
    f.unary("demo:echo", |v: Value| async move { Ok(v) })
        .expect(paths_are_valid);
    f.context("demo:echo_stream", |ctx, _| async move {
        ctx.started(Value::from("ready")).await?;
        let mut stream = ctx.open_stream().await?;
        let mut n = 0;
        while let Some(item) = stream.recv().await? {
            stream.send(item).await?;
            n += 1;
        }
        stream.close().await?;
        Ok(Value::Int(n))
    })
    .expect(paths_are_valid);
    f.context("demo:spin", |ctx, _| async move {
        // Says so, then never yields to its executor again: the graceful cancel cannot land;
        // only the hard kill deals with it.
        ctx.started(Value::from("spinning")).await?;
        // Let the executor's writer flush `started` before it is starved (few yields: a cancel
        // that lands before the loop starts would end the call gracefully).
        for _ in 0..4 {
            futures_lite::future::yield_now().await;
        }
        let generation = SPIN_GENERATION.load(Ordering::SeqCst);
        while SPIN_GENERATION.load(Ordering::Relaxed) == generation {
            std::hint::spin_loop();
        }
        Ok(Value::Null)
    })
    .expect(paths_are_valid);
    Arc::new(f)
}
