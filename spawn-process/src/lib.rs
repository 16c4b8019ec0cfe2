//! `ProcessBackend`: harrow actors in child processes (the same binary re-executed).
