//! The harrow actor runtime: the actor tree, nurseries with one-cancels-all supervision, the
//! bounded teardown ladder, and the `SpawnBackend` contract every backend implements.
#![forbid(unsafe_code)]
