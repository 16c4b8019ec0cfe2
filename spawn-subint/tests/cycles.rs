//! Regression for the seed's destroy race (issue 6): 500 create/call/end cycles in one process
//! (440 sequential, 4 x 15 concurrent), with zero hangs and the interpreter and thread counts back where
//! they started. (One test in this binary so that the thread count is not disturbed.)

#![cfg(harrow_subint)] // needs Python >= 3.12 (tests/unavailable.rs covers the other case)

mod common;

use anyhow::{Result, ensure};
use common::*;
use harrow_ipc::Value;
use harrow_spawn_subint::{Exit, InterpThread, interp_threads, live_interpreters};

fn cycle(name: &str, i: i64) -> Result<()> {
    let t = InterpThread::spawn(config(name))?;
    let h = t.handle();
    let got = call_ok(
        &h,
        "harrow_testfns:add",
        list([Value::Int(i), Value::Int(1)]),
    )?;
    ensure!(got == Value::Int(i + 1), "{name}: got {got:?}");
    let exit = t.shutdown(BOUND);
    ensure!(exit == Exit::Exited, "{name}: {exit:?}");
    Ok(())
}

#[test]
fn many_create_call_end_cycles() -> Result<()> {
    // Warm up: the main interpreter and the cancel injector are process-wide and stay.
    cycle("warmup", 0)?;
    {
        let t = InterpThread::spawn(config("warmup-cancel"))?;
        let fut = start(&t.handle(), "harrow_testfns:echo", Value::Null);
        drop(fut);
        ensure!(t.shutdown(BOUND) == Exit::Exited);
    }
    let live0 = live_interpreters();
    let threads0 = os_threads();
    ensure!(live0 == 0, "live interpreters at start: {live0}");

    for i in 0..440 {
        cycle(&format!("seq-{i}"), i)?;
    }
    ensure!(
        live_interpreters() == live0,
        "after sequential cycles: {}",
        live_interpreters()
    );

    // Concurrent: 4 workers x 15 cycles each.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || -> Result<()> {
                for i in 0..15 {
                    cycle(&format!("par-{w}-{i}"), i)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    ensure!(
        live_interpreters() == live0,
        "after concurrent cycles: {}",
        live_interpreters()
    );
    ensure!(
        interp_threads().is_empty(),
        "registered: {:?}",
        interp_threads()
    );
    // Joined threads may take a moment to disappear from /proc.
    ensure!(
        wait_until(BOUND, || os_threads() <= threads0),
        "threads: {} at start, {} now",
        threads0,
        os_threads()
    );
    Ok(())
}
