//! harrow's test kit: the backend conformance suite, resource tracker, hang watchdog and fault
//! injection wrappers.
#![forbid(unsafe_code)]
