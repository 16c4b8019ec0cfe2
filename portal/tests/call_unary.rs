//! Unary calls: results, remote errors, panics, unknown functions, bad arguments.

mod common;

use common::*;
use harrow_portal::Executor;
use harrow_portal::ipc::{ErrorKind, Value};

async fn echo_and_typed(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    assert_eq!(p.peer(), &b.local().id);
    let v = bounded("echo", p.run("t:echo", Value::Str("hi".into()))).await;
    assert_eq!(v.unwrap(), Value::Str("hi".into()));
    let sum: i64 = bounded("add", p.call(ADD, &(2, 40))).await.unwrap();
    assert_eq!(sum, 42);
    // Many concurrent calls on one link.
    let calls = (0..50).map(|i| {
        let p = p.clone();
        exec.spawn(async move { p.call(ADD, &(i, 1)).await })
    });
    let tasks: Vec<_> = calls.collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(bounded("concurrent add", task).await.unwrap(), i as i64 + 1);
    }
}

async fn remote_error_names_type_message_and_source(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, b) = caller_callee(&exec, t, reg).await;
    let err = bounded("fail", a.portal().run("t:fail", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::Raised);
    assert_eq!(re.type_name, "ValueError");
    assert_eq!(re.message, "boom");
    assert_eq!(re.source, b.local().id);
    assert!(re.relay_path.is_empty());
    assert!(!err.is_cancelled());
}

async fn panic_becomes_error_and_serving_continues(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let err = bounded("panic", p.run("t:panic", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::Raised);
    assert_eq!(re.type_name, "panic");
    assert!(re.message.contains("kaboom"), "{re}");
    // The traceback says where it panicked.
    assert!(re.traceback.contains("common/mod.rs"), "{}", re.traceback);
    let v = bounded("echo after panic", p.run("t:echo", Value::Int(7))).await;
    assert_eq!(v.unwrap(), Value::Int(7));
}

async fn unknown_function_is_not_found_and_link_stays_usable(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let err = bounded("missing", p.run("t:missing", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::NotFound);
    assert!(re.message.contains("t:missing"), "{re}");
    let err = bounded("missing ctx", p.open_context("nope.mod:f", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(err.remote_error().unwrap().kind, ErrorKind::NotFound);
    assert_eq!(
        bounded("echo", p.run("t:echo", Value::Int(1)))
            .await
            .unwrap(),
        Value::Int(1)
    );
}

async fn bad_arguments_name_function_and_problem(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let p = a.portal();
    let err = bounded("bad args", p.run("t:add", Value::Str("x".into())))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::BadArguments);
    assert!(re.message.contains("t:add"), "{re}");
    // The wrong call kind is refused too, naming the function.
    let err = bounded("unary as ctx", p.open_context("t:echo", Value::Null))
        .await
        .unwrap_err();
    let re = err.remote_error().expect("a remote error");
    assert_eq!(re.kind, ErrorKind::BadArguments);
    assert!(re.message.contains("t:echo"), "{re}");
    let sum: i64 = bounded("add", p.call(ADD, &(1, 2))).await.unwrap();
    assert_eq!(sum, 3);
}

async fn malformed_path_fails_locally(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let err = a.portal().run("no colon", Value::Null).await.unwrap_err();
    assert!(matches!(err, harrow_portal::Error::FnPath(_)), "{err:?}");
}

async fn link_without_resolver_answers_not_found(exec: Executor, t: Transport) {
    let (a, b) = link_pair(&exec, t, None, None, Default::default()).await;
    let err = bounded("no resolver", b.portal().run("t:echo", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(err.remote_error().unwrap().kind, ErrorKind::NotFound);
    assert!(err.to_string().contains("t:echo"), "{err}");
    drop(a);
}

/// Calls made from several tasks at once, on an executor three threads drive, while each link's
/// reader is routing answers (a `Start` handed over meanwhile must still wake the peer): every
/// call is answered, with its own value.
async fn sequential_calls_from_many_tasks_at_once_are_all_answered(exec: Executor, t: Transport) {
    let (reg, _probe) = standard_registry();
    let (a, _b) = caller_callee(&exec, t, reg).await;
    let tasks: Vec<_> = (0..8i64)
        .map(|k| {
            let p = a.portal();
            exec.spawn(async move {
                for i in 0..300i64 {
                    let v = p.run("t:echo", Value::Int(k * 1000 + i)).await.unwrap();
                    assert_eq!(v, Value::Int(k * 1000 + i));
                }
            })
        })
        .collect();
    for task in tasks {
        bounded("a task's 300 calls", task).await;
    }
}

both_transports!(
    sequential_calls_from_many_tasks_at_once_are_all_answered,
    echo_and_typed,
    remote_error_names_type_message_and_source,
    panic_becomes_error_and_serving_continues,
    unknown_function_is_not_found_and_link_stays_usable,
    bad_arguments_name_function_and_problem,
    malformed_path_fails_locally,
    link_without_resolver_answers_not_found,
);
