//! `SubintBackend`: harrow actors that run Python functions in CPython subinterpreters, each with
//! its own GIL, owned by a dedicated OS thread.
