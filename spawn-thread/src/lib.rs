//! `ThreadBackend`: harrow actors on dedicated OS threads, each with its own executor.
#![forbid(unsafe_code)]
