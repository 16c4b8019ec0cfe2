//! Built against a Python that cannot host own-GIL subinterpreters (< 3.12 or static), every
//! entry point reports `Unavailable` with a message that says what to do.
#![cfg(not(harrow_subint))]

use harrow_spawn_subint::{Error, InterpConfig, InterpThread, available};

#[test]
fn every_entry_point_reports_unavailable() {
    assert!(!available());
    let msg = match InterpThread::spawn(InterpConfig::new("x")) {
        Err(Error::Unavailable(m)) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    };
    assert!(
        msg.contains(">= 3.12") && msg.contains("PYO3_PYTHON") && !msg.contains("scripts/setup"),
        "{msg}"
    );
    #[cfg(feature = "bench-internals")]
    assert!(matches!(
        harrow_spawn_subint::__bench::bare_create_end(&InterpConfig::new("x")),
        Err(Error::Unavailable(_))
    ));
}
