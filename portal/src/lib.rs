//! The protocol engine on both ends of one harrow channel: remote calls, contexts, bidirectional
//! streams with flow control, and the cancel protocol.
#![forbid(unsafe_code)]
