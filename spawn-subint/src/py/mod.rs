//! What touches CPython in this crate (the only `unsafe` here), compiled only when the
//! configured Python can host own-GIL subinterpreters (`cfg(harrow_subint)`): an interpreter's
//! life on its dedicated thread ([`lifecycle`]). Serving its calls is the shared Python worker's
//! (`harrow_python::ffi`).
//!
//! Invariants every `unsafe` block here relies on:
//! - The main interpreter is initialised once (`harrow_python::ensure_main`) and its GIL
//!   released at once; no code of this crate ever runs in the main interpreter afterwards.
//! - Each subinterpreter is created, used and ended by ONE dedicated OS thread; every Python
//!   object of that interpreter is created, used and released on that thread while it holds that
//!   interpreter's GIL.
//! - Other threads only ever call `_PyEval_AddPendingCall` on an interpreter (no thread state
//!   needed), and only while holding `Shared::interp`'s lock with a non-null pointer; the owning
//!   thread nulls the pointer under that lock before `Py_EndInterpreter`.
//!
//! Every `unsafe` block holds ONE unsafe operation with its own `// SAFETY:` comment (enforced by
//! the two clippy lints below).
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]

mod lifecycle;

#[cfg(feature = "bench-internals")]
pub(crate) use lifecycle::bare_create_end;
pub(crate) use lifecycle::thread_main;
