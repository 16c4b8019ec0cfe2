//! Calls, values, errors, streams and cancellation in own-GIL subinterpreters.
//! (Initialises the process-global Python runtime.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use harrow_ipc::{CallKind, ErrorKind, FnPath, Value};
use harrow_spawn_subint::{Exit, InterpConfig, InterpThread, live_interpreters};

#[test]
fn create_call_end() -> Result<()> {
    let t = spawn("basic-add")?;
    let h = t.handle();
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(2), Value::Int(40)])
        )?,
        Value::Int(42)
    );
    assert!(live_interpreters() >= 1);
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn every_value_kind_round_trips() -> Result<()> {
    let t = spawn("basic-values")?;
    let h = t.handle();
    let values = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::Float(1.5),
        Value::Str("héllo ✓".into()),
        Value::Bytes(vec![0, 1, 255]),
        list([Value::Int(1), s("two"), list([])]),
        Value::Map(vec![
            (s("a"), Value::Int(1)),
            (Value::Int(7), list([Value::Null])),
        ]),
    ];
    for v in values {
        // Any value but Null is exactly one positional argument, lists and maps included.
        assert_eq!(call_ok(&h, "harrow_testfns:echo", v.clone())?, v);
    }
    // bool is checked before int, on both sides; a list stays a list, a map a dict.
    for (v, ty) in [
        (Value::Bool(true), "bool"),
        (Value::Int(1), "int"),
        (Value::Bytes(vec![]), "bytes"),
        (list([Value::Int(1), Value::Int(2)]), "list"),
        (Value::Map(vec![(s("a"), Value::Int(1))]), "dict"),
        (Value::Map(vec![]), "dict"),
    ] {
        assert_eq!(call_ok(&h, "harrow_testfns:type_of", v)?, s(ty));
    }
    // Null is no argument: the parameter's default.
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", Value::Null)?,
        Value::Null
    );
    assert_eq!(
        call(&h, "harrow_testfns:fail", Value::Null)?
            .unwrap_err()
            .to_string(),
        "ValueError: boom"
    );
    // A map is one dict argument (not keyword arguments), whatever its keys.
    let m = Value::Map(vec![(s("b"), Value::Int(1)), (Value::Int(7), Value::Null)]);
    assert_eq!(
        call_ok(&h, "harrow_testfns:keys", m)?,
        list([s("b"), Value::Int(7)])
    );
    // A key that is a list (a tuple on the wire) is a tuple in Python, its lists too: a dict
    // keyed by tuples makes the round trip.
    let key = list([Value::Int(1), list([Value::Int(2), s("x")])]);
    let m = Value::Map(vec![(key.clone(), s("v"))]);
    assert_eq!(call_ok(&h, "harrow_testfns:echo", m.clone())?, m);
    assert_eq!(
        call_ok(&h, "harrow_testfns:key_types", m)?,
        list([s("tuple"), s("tuple")])
    );
    // A list is one list argument: `add` unpacks it.
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(2), Value::Int(3)])
        )?,
        Value::Int(5)
    );
    // A tuple comes back as a list.
    assert_eq!(
        call_ok(&h, "harrow_testfns:gen", Value::Int(3))?,
        list([Value::Int(0), Value::Int(1), Value::Int(2)])
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn unsupported_values_are_clear_errors() -> Result<()> {
    let t = spawn("basic-badvalues")?;
    let h = t.handle();
    for (kind, needle) in [
        ("set", "'set'"),
        ("object", "'object'"),
        ("nested", "'set'"),
        ("bigint", "int 1208925819614629174706176 does not fit"),
        // Past Python's int-to-decimal limit: shown in hex.
        (
            "huge",
            "hex digits) does not fit in a signed 64-bit integer",
        ),
        ("big_index", "does not fit in a signed 64-bit integer"),
        ("bad_index", "'_Index'"),
    ] {
        let err = call(&h, "harrow_testfns:bad_return", s(kind))?.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Raised, "{kind}");
        assert!(err.to_string().starts_with("TypeError"), "{kind}: {err}");
        assert!(err.to_string().contains(needle), "{kind}: {err}");
    }
    // Integers of other types (with `__index__`, as numpy's are) are sent as ints.
    let ints = call(&h, "harrow_testfns:index_ints", Value::Null)?.expect("index ints");
    assert_eq!(
        ints,
        list([
            Value::Int(7),
            Value::Map(vec![(s("k"), Value::Int(-3))]),
            Value::Int(i64::MAX),
        ])
    );
    // An unhashable dict key in the argument (a map: a list key is a tuple).
    let arg = Value::Map(vec![(Value::Map(vec![]), Value::Null)]);
    let err = call(&h, "harrow_testfns:echo", arg)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
    assert!(err.to_string().contains("unhashable"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

/// `text` with the count of every `[Previous line repeated N more times]` line left out.
fn repeats_as_some(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("  [Previous line repeated ") {
                "  [Previous line repeated some more times]"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The traceback a failing call carries is the same text whichever way it was made: the
/// native path (one exception on its own, read through the C API, frames seen before kept),
/// the harness's Python (every other shape), and the standard library without its carets.
#[test]
fn tracebacks_read_natively_match_the_harness_and_the_standard_library() -> Result<()> {
    let t = spawn("basic-tb")?;
    let h = t.handle();
    let id = harrow_ipc::ActorId::new("basic-tb");
    for shape in [
        "plain",
        "custom",
        "empty",
        "deep",
        "deep4",
        "recursion",
        "from_none",
        "context",
        "notes",
        "bad_str",
    ] {
        // Twice: the second failure goes through frames seen before.
        let mut texts = Vec::new();
        for _ in 0..2 {
            let err = call(&h, "harrow_testfns:fail_shaped", s(shape))?.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Raised, "{shape}");
            texts.push(err.into_remote(&id).traceback);
        }
        assert_eq!(
            texts[0], texts[1],
            "{shape}: a second failure reads differently"
        );
        let made = call_ok(&h, "harrow_testfns:shaped_texts", s(shape))?;
        let Value::List(made) = &made else {
            anyhow::bail!("{shape}: shaped_texts did not return a list");
        };
        let [Value::Str(harness), Value::Str(stdlib)] = &made[..] else {
            anyhow::bail!("{shape}: shaped_texts returned {made:?}");
        };
        // `shaped_texts` runs one frame deeper than a call: a recursion stops one frame
        // earlier there, so that shape's count of repeats is compared as "some".
        let native = if shape == "recursion" {
            repeats_as_some(&texts[0])
        } else {
            texts[0].clone()
        };
        let (harness, stdlib) = if shape == "recursion" {
            (repeats_as_some(harness), repeats_as_some(stdlib))
        } else {
            (harness.clone(), stdlib.clone())
        };
        assert_eq!(native, harness, "{shape}: native path against the harness");
        if shape == "bad_str" {
            // The one wording of our own: the standard library says `<exception str() failed>`.
            assert!(
                texts[0].ends_with("harrow_testfns.BadStr: <str() of the exception failed>\n"),
                "{}",
                texts[0]
            );
        } else {
            assert_eq!(native, stdlib, "{shape}: against the standard library");
        }
    }
    let err = call(&h, "harrow_testfns:fail_shaped", s("recursion"))?.unwrap_err();
    let tb = err.into_remote(&id).traceback;
    assert_eq!(tb.matches("in _recurse\n").count(), 3, "{tb}");
    assert!(
        tb.contains("  [Previous line repeated ") && tb.contains(" more times]\n"),
        "{tb}"
    );
    let err = call(&h, "harrow_testfns:fail_shaped", s("empty"))?.unwrap_err();
    assert_eq!(err.to_string(), "harrow_testfns.CustomError");
    let err = call(&h, "harrow_testfns:fail_shaped", s("deep"))?.unwrap_err();
    let tb = err.into_remote(&id).traceback;
    // Six frames of `_deep`: the five alike in a row printed three times and then counted,
    // then the one that raised.
    assert_eq!(tb.matches("in _deep\n").count(), 4, "{tb}");
    assert!(
        tb.contains("  [Previous line repeated 2 more times]\n"),
        "{tb}"
    );
    assert!(tb.ends_with("IndexError: at the bottom\n"), "{tb}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn exceptions_carry_type_message_traceback() -> Result<()> {
    let t = spawn("basic-exc")?;
    let h = t.handle();
    let err = call(&h, "harrow_testfns:fail", s("bad input"))?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised);
    assert_eq!(err.to_string(), "ValueError: bad input");
    let remote = err.into_remote(&harrow_ipc::ActorId::new("basic-exc"));
    assert!(
        remote.traceback.contains("Traceback"),
        "{}",
        remote.traceback
    );
    assert!(remote.traceback.contains("in fail"), "{}", remote.traceback);
    assert!(
        remote.traceback.contains("ValueError: bad input"),
        "{}",
        remote.traceback
    );

    // A chain, formatted as the standard library does (without the carets), and the same on
    // a second failure through the same frames as on the first (frame texts are kept).
    let chained = |msg: &str| -> Result<String> {
        let err = call(&h, "harrow_testfns:fail_from", s(msg))?.unwrap_err();
        Ok(err
            .into_remote(&harrow_ipc::ActorId::new("basic-exc"))
            .traceback)
    };
    let first = chained("k1")?;
    for part in [
        "ZeroDivisionError: division by zero",
        "in _divide\n    return a / b\n",
        "The above exception was the direct cause of the following exception:",
        "raise KeyError(msg) from e\n",
        "KeyError: 'k1'\n",
    ] {
        assert!(first.contains(part), "{part:?} not in {first}");
    }
    let again = chained("k2")?;
    assert_eq!(again, first.replace("'k1'", "'k2'"));

    let err = call(&h, "harrow_testfns:fail_custom", Value::Null)?.unwrap_err();
    assert_eq!(
        err.to_string(),
        "harrow_testfns.CustomError: custom failure"
    );
    // A missing argument (Null: none given) is a TypeError raised by Python.
    let err = call(&h, "harrow_testfns:add", Value::Null)?.unwrap_err();
    assert!(err.to_string().starts_with("TypeError"), "{err}");
    // The interpreter is still fine after errors.
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(1), Value::Int(1)])
        )?,
        Value::Int(2)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn module_not_exposed_and_not_found() -> Result<()> {
    let t = spawn("basic-expose")?;
    let h = t.handle();
    let err = call(&h, "harrow_testfns.other:secret", Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModuleNotExposed);
    assert!(err.to_string().contains("harrow_testfns.other"), "{err}");
    let err = call(&h, "os:getcwd", Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModuleNotExposed);
    assert!(h.check_exposed(&FnPath::parse("os:getcwd")?).is_err());
    let err = call(&h, "harrow_testfns:nope", Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);

    // An exposed module that does not exist.
    let t = InterpThread::spawn(config("basic-missing").expose("no_such_module_xyz"))?;
    let err = call(&t.handle(), "no_such_module_xyz:f", Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("ModuleNotFoundError"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn context_call_streams_both_ways() -> Result<()> {
    let t = spawn("basic-ctx")?;
    let h = t.handle();
    let (host, ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_echo")?,
        CallKind::Context,
        s("hi"),
        Some(host),
    );
    let worker = std::thread::spawn(move || bounded(BOUND, fut));
    assert_eq!(ends.started.recv_timeout(BOUND)?, s("hi"));
    for i in 0..5 {
        ends.to_py.send(Value::Int(i))?;
        assert_eq!(
            ends.from_py.recv_timeout(BOUND)?,
            list([Value::Int(i), Value::Int(i)])
        );
    }
    drop(ends.to_py); // end of our side: Python's `for item in stream` ends
    ends.closed.recv_timeout(BOUND)?;
    let result = worker.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert_eq!(result.map_err(|e| anyhow::anyhow!("{e:?}"))?, Value::Int(5));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn context_generator_and_stream_end() -> Result<()> {
    let t = spawn("basic-ctxgen")?;
    let h = t.handle();
    // A generator in a context call: started(None), each item streamed, then Stop and None.
    let (host, ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:gen")?,
        CallKind::Context,
        Value::Int(3),
        Some(host),
    );
    assert_eq!(
        bounded(BOUND, fut)?.map_err(|e| anyhow::anyhow!("{e:?}"))?,
        Value::Null
    );
    assert_eq!(ends.started.try_recv()?, Value::Null);
    let got: Vec<Value> = ends.from_py.try_iter().collect();
    assert_eq!(got, vec![Value::Int(0), Value::Int(1), Value::Int(2)]);
    assert!(ends.closed.try_recv().is_ok());

    // recv() after the end raises EndOfStream.
    let (host, ends) = chan_host();
    ends.to_py.send(Value::Int(9))?;
    drop(ends.to_py);
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_recv_after_end")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    assert_eq!(
        bounded(BOUND, fut)?.map_err(|e| anyhow::anyhow!("{e:?}"))?,
        list([Value::Int(9), s("end")])
    );

    // A failure inside `with ctx.open_stream()` leaves the stream open: the caller reads the
    // failure, never an end of stream first.
    let (host, ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_fail_in_stream")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert!(err.to_string().contains("mid-stream"), "{err}");
    assert_eq!(
        ends.from_py.try_iter().collect::<Vec<_>>(),
        vec![Value::Int(1)]
    );
    assert!(
        ends.closed.try_recv().is_err(),
        "the failing side closed its stream: an end of stream before the failure"
    );

    // started twice is an error raised in Python (harrow.HarrowError).
    let (host, _ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_started_twice")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert!(err.to_string().contains("harrow.HarrowError"), "{err}");
    assert!(err.to_string().contains("already called"), "{err}");

    // An unsupported value passed to started() is a TypeError in Python.
    let (host, _ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_bad_started")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert!(err.to_string().starts_with("TypeError"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn two_own_gil_interpreters_run_in_parallel() -> Result<()> {
    let a = spawn("basic-par-a")?;
    let b = spawn("basic-par-b")?;
    let (ha, hb) = (a.handle(), b.handle());
    let ta = std::thread::spawn(move || call_ok(&ha, "harrow_testfns:cpu", Value::Int(200_000)));
    let tb = std::thread::spawn(move || call_ok(&hb, "harrow_testfns:cpu", Value::Int(200_000)));
    let expect: i64 = (0..200_000i64).map(|i| i * i).sum();
    assert_eq!(
        ta.join().map_err(|_| anyhow::anyhow!("panic"))??,
        Value::Int(expect)
    );
    assert_eq!(
        tb.join().map_err(|_| anyhow::anyhow!("panic"))??,
        Value::Int(expect)
    );
    assert_eq!(a.shutdown(BOUND), Exit::Exited);
    assert_eq!(b.shutdown(BOUND), Exit::Exited);
    Ok(())
}

/// Starts a context call of `f` and waits until Python signalled (via `ctx.started`) that it
/// reached the point to cancel.
fn start_ctx(
    h: &harrow_spawn_subint::InterpHandle,
    f: &str,
    args: Value,
) -> Result<(harrow_spawn_subint::PyCall, ChanHostEnds)> {
    let (host, ends) = chan_host();
    let fut = h.call(FnPath::parse(f)?, CallKind::Context, args, Some(host));
    // The call runs on the interpreter thread whether or not its future is polled.
    ends.started.recv_timeout(BOUND)?;
    Ok((fut, ends))
}

#[test]
fn cancel_lands_in_a_busy_loop_and_finally_runs() -> Result<()> {
    let t = spawn("basic-cancel")?;
    let h = t.handle();
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:busy_finally", Value::Null)?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(err.to_string(), "harrow.Cancelled");
    assert_eq!(
        call_ok(&h, "harrow_testfns:finally_flag", Value::Null)?,
        Value::Bool(true)
    );
    // Dropping the future cancels too.
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:busy_finally", Value::Null)?;
    drop(fut);
    // The next call runs, so the busy loop ended.
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(1), Value::Int(2)])
        )?,
        Value::Int(3)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn code_that_swallows_the_cancel_gets_it_again() -> Result<()> {
    let t = spawn("basic-swallow")?;
    let h = t.handle();
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:swallow_some", Value::Int(3))?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(
        call_ok(&h, "harrow_testfns:swallowed_count", Value::Null)?,
        Value::Int(3)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_cleanup_longer_than_the_re_arm_is_not_interrupted_and_its_failure_is_the_answer() -> Result<()>
{
    let t = spawn("basic-slow-cleanup")?;
    let h = t.handle();
    // The cleanup handles the cancel for 0.4 s (Python code, then a blocking sleep): the
    // re-armed injection (every 20 ms) leaves it alone, and its failure is the answer.
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:slow_cleanup_fails", Value::Float(0.4))?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    assert!(err.to_string().contains("cleanup failed"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_cleanup_that_does_not_end_is_cut_short_by_the_hard_kill() -> Result<()> {
    let t = spawn("basic-endless-cleanup")?;
    let h = t.handle();
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:endless_cleanup", Value::Null)?;
    fut.cancel();
    // The graceful half of the bound passes with the cleanup running; the hard kill then
    // raises the cancel inside it, so the interpreter ends instead of leaking.
    assert_eq!(t.shutdown(Duration::from_secs(2)), Exit::Exited);
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert!(err.kind() == ErrorKind::Cancelled, "{err}");
    Ok(())
}

#[test]
fn a_cancelled_raised_in_a_call_nobody_cancelled_is_a_failure() -> Result<()> {
    let t = spawn("basic-spurious-cancel")?;
    let h = t.handle();
    for how in ["raise", "deadline"] {
        let err = call(&h, "harrow_testfns:raises_cancelled", s(how))?.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Raised, "{how}: {err}");
        assert!(err.to_string().contains("not cancelled"), "{how}: {err}");
    }
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn shield_defers_the_cancel() -> Result<()> {
    let t = spawn("basic-shield")?;
    let h = t.handle();
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:shielded", Value::Float(0.3))?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    // The shielded section ran to completion before the cancel landed.
    assert_eq!(
        call_ok(&h, "harrow_testfns:shield_completed", Value::Null)?,
        Value::Bool(true)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_failure_leaving_a_shield_is_not_replaced_by_the_cancel() -> Result<()> {
    let t = spawn("basic-shield-fail")?;
    let h = t.handle();
    // The cancel is outstanding when the ValueError leaves the shield, and the re-armed
    // injection fires many times while it unwinds through 0.3 s of `finally`.
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:fail_leaving_shield", Value::Float(0.3))?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised, "{err}");
    assert!(err.to_string().contains("failed in the shield"), "{err}");
    // An exception being handled only defers the cancel: it lands once the block is left.
    let (fut, _ends) = start_ctx(&h, "harrow_testfns:catch_then_spin", Value::Float(0.1))?;
    fut.cancel();
    let err = bounded(BOUND, fut)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn harrow_sleep_and_blocked_ctx_ops_are_cancellable() -> Result<()> {
    let t = spawn("basic-sleep")?;
    let h = t.handle();
    assert_eq!(
        call_ok(&h, "harrow_testfns:harrow_sleep", Value::Float(0.02))?,
        s("slept")
    );
    let fut = start(&h, "harrow_testfns:harrow_sleep", Value::Float(3600.0));
    assert!(wait_until(BOUND, || harrow_spawn_subint::interp_threads()
        .iter()
        .any(|i| i.name == "basic-sleep" && i.current_call.is_some())));
    fut.cancel();
    assert_eq!(
        bounded(BOUND, fut)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );

    // Blocked in stream.recv() (GIL released): the cancel wakes it and finally runs.
    let (host, ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_wait")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let waiter = std::thread::spawn(move || bounded(BOUND, fut));
    assert_eq!(ends.started.recv_timeout(BOUND)?, Value::Null);
    // Cancel through the handle (as CancelActor would).
    h.cancel_current();
    let err = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("panic"))??
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(
        call_ok(&h, "harrow_testfns:finally_flag", Value::Null)?,
        Value::Bool(true)
    );
    drop(ends);
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn threads_are_refused_by_default_and_joined_when_allowed() -> Result<()> {
    let t = spawn("basic-nothreads")?;
    let err = call(&t.handle(), "harrow_testfns:start_thread", Value::Null)?.unwrap_err();
    assert!(err.to_string().starts_with("RuntimeError"), "{err}");
    assert_eq!(t.shutdown(BOUND), Exit::Exited);

    let t = InterpThread::spawn(config("basic-threads").allow_threads(true))?;
    let h = t.handle();
    assert_eq!(
        call_ok(&h, "harrow_testfns:start_thread", Value::Null)?,
        list([Value::Int(1)])
    );
    // A thread that runs until told to stop: cancelled and joined at shutdown.
    assert_eq!(
        call_ok(&h, "harrow_testfns:start_spinning_thread", Value::Null)?,
        Value::Bool(true)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

/// An idle interpreter thread keeps its GIL only while no other thread of its interpreter
/// could want it: a Python thread that a call started runs while the actor waits for calls.
#[test]
fn a_python_thread_runs_while_its_interpreter_waits_for_calls() -> Result<()> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;

    let t = InterpThread::spawn(config("basic-idle-thread").allow_threads(true))?;
    let h = t.handle();
    let (reader, writer) = std::io::pipe()?;
    let (tx, rx) = std::sync::mpsc::channel::<i64>();
    let lines = std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(n) = line.map(|l| l.trim().parse::<i64>().unwrap_or(-1)) else {
                break;
            };
            if tx.send(n).is_err() {
                break;
            }
        }
    });
    let fd = Value::Int(i64::from(writer.as_raw_fd()));
    let at_return = call_ok(&h, "harrow_testfns:write_while_idle", fd)?
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("write_while_idle returned no count"))?;
    // No call runs from here on: what the thread writes next, it writes while the interpreter's
    // own thread waits for a call.
    loop {
        let n = rx.recv_timeout(BOUND)?;
        assert!(n >= 1, "a line that is not a count");
        if n > at_return + 1 {
            break;
        }
    }
    assert_eq!(
        call_ok(&h, "harrow_testfns:stop_writing", Value::Null)?,
        Value::Bool(true)
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    drop(writer);
    lines
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    Ok(())
}

#[test]
fn queued_calls_fail_cleanly_at_shutdown() -> Result<()> {
    let t = spawn("basic-queue")?;
    let h = t.handle();
    let busy = start(&h, "harrow_testfns:busy", Value::Null);
    let queued = start(
        &h,
        "harrow_testfns:add",
        list([Value::Int(1), Value::Int(1)]),
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    assert_eq!(
        bounded(BOUND, busy)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert!(bounded(BOUND, queued)?.is_err());
    // Calls after shutdown fail at once.
    assert!(bounded(BOUND, start(&h, "harrow_testfns:add", Value::Null))?.is_err());
    Ok(())
}

#[test]
fn own_gil_refuses_single_phase_extensions() -> Result<()> {
    let own = spawn("basic-own-gil")?;
    let err = call(&own.handle(), "harrow_testfns:legacy_only", Value::Null)?.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Raised);
    assert!(err.to_string().contains("ImportError"), "{err}");
    // The error names the module and says what can run it.
    assert!(
        err.to_string().contains("refuses this subinterpreter"),
        "{err}"
    );
    assert!(err.to_string().contains("legacy mode"), "{err}");
    assert_eq!(own.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn bad_config_is_an_error() {
    assert!(InterpThread::spawn(InterpConfig::new("")).is_err());
    let _ = Duration::ZERO;
}

#[test]
fn calls_interleave_at_waits_last_in_first_out() -> Result<()> {
    let t = spawn("basic-nested")?;
    let h = t.handle();
    // A call sleeping in harrow.sleep (GIL released): other calls of the actor still run.
    let sleeper = start(&h, "harrow_testfns:harrow_sleep", Value::Float(3600.0));
    assert!(wait_until(BOUND, || harrow_spawn_subint::interp_threads()
        .iter()
        .any(|i| i.name == "basic-nested"
            && i.current_call.as_deref()
                == Some("harrow_testfns:harrow_sleep"))));
    assert_eq!(
        call_ok(&h, "harrow_testfns:echo", Value::Int(1))?,
        Value::Int(1)
    );
    // A context call waiting in stream.recv(), nested in the sleeper; calls nest in it too.
    let (host, ends) = chan_host();
    let fut = h.call(
        FnPath::parse("harrow_testfns:ctx_wait")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    let waiter = std::thread::spawn(move || bounded(BOUND, fut));
    assert_eq!(ends.started.recv_timeout(BOUND)?, Value::Null);
    assert_eq!(
        call_ok(
            &h,
            "harrow_testfns:add",
            list([Value::Int(1), Value::Int(2)])
        )?,
        Value::Int(3)
    );
    // Cancelling the outer sleeper takes effect once the call nested in it has returned.
    sleeper.cancel();
    drop(ends.to_py); // the waiter's recv() sees the end of the stream and raises EndOfStream
    let err = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("panic"))??
        .unwrap_err();
    assert!(err.to_string().contains("EndOfStream"), "{err}");
    assert_eq!(
        bounded(BOUND, sleeper)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn shutdown_cancels_every_nested_call() -> Result<()> {
    let t = spawn("basic-nested-stop")?;
    let h = t.handle();
    let outer = start(&h, "harrow_testfns:harrow_sleep", Value::Float(3600.0));
    let (host, ends) = chan_host();
    let inner = h.call(
        FnPath::parse("harrow_testfns:ctx_wait")?,
        CallKind::Context,
        Value::Null,
        Some(host),
    );
    assert_eq!(ends.started.recv_timeout(BOUND)?, Value::Null);
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    assert_eq!(
        bounded(BOUND, inner)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(
        bounded(BOUND, outer)?.unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    drop(ends);
    Ok(())
}
