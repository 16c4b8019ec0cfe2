//! An interpreter resolves a call's "module:function" once and reuses it: a function rebound on
//! its module, a module removed from `sys.modules`, a module whose class now shadows the
//! function, and a generator replaced by a plain function are all noticed on the next call. (Own test binary: process-global Python runtime.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::Result;
use common::*;
use harrow_ipc::Value;
use harrow_spawn_subint::{Exit, InterpThread};

const M: &str = "harrow_testfns.rebind";

fn spawn_rebind(name: &str) -> Result<InterpThread> {
    Ok(InterpThread::spawn(config(name).expose(M))?)
}

fn f(name: &str) -> String {
    format!("{M}:{name}")
}

#[test]
fn a_rebound_function_is_called_not_the_cached_one() -> Result<()> {
    let t = spawn_rebind("resolve-rebind")?;
    let h = t.handle();
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    assert_eq!(call_ok(&h, &f("rebind"), Value::Null)?, Value::Null);
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("second"));
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("second"));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_module_removed_from_sys_modules_is_imported_again() -> Result<()> {
    let t = spawn_rebind("resolve-forget")?;
    let h = t.handle();
    assert_eq!(call_ok(&h, &f("rebind"), Value::Null)?, Value::Null);
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("second"));
    assert_eq!(call_ok(&h, &f("forget"), Value::Null)?, Value::Null);
    // A fresh import: the module's own `which` again.
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn a_module_whose_class_shadows_the_function_is_asked_for_it() -> Result<()> {
    let t = spawn_rebind("resolve-shadow")?;
    let h = t.handle();
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("first"));
    // The module's dictionary still holds the cached `which`; its attribute is another one.
    assert_eq!(call_ok(&h, &f("shadow"), Value::Null)?, Value::Null);
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("shadowed"));
    assert_eq!(call_ok(&h, &f("which"), Value::Null)?, s("shadowed"));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}

#[test]
fn how_a_function_runs_follows_the_function() -> Result<()> {
    let t = spawn_rebind("resolve-gen")?;
    let h = t.handle();
    let items = list([Value::Int(0), Value::Int(1)]);
    assert_eq!(call_ok(&h, &f("gen"), Value::Null)?, items);
    assert_eq!(call_ok(&h, &f("gen"), Value::Null)?, items);
    assert_eq!(call_ok(&h, &f("make_gen_plain"), Value::Null)?, Value::Null);
    assert_eq!(call_ok(&h, &f("gen"), Value::Null)?, s("plain"));
    assert_eq!(t.shutdown(BOUND), Exit::Exited);
    Ok(())
}
