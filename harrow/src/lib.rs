//! harrow: a structured-concurrency actor runtime. This facade re-exports the runtime and its
//! backends.
#![forbid(unsafe_code)]
