//! Framing and encoding of [`Msg`](crate::Msg) for byte transports: a length prefix, then a
//! bincode 2.0.1 (serde mode) body. This module is the only place that knows the encoding.

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces a frame larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The body is not a valid encoding of a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Values are nested deeper than the configured limit.
    #[error("values nested deeper than the limit of {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// The body decoded, but bytes were left over.
    #[error("{0} unexpected trailing bytes after the message")]
    TrailingBytes(usize),
    /// The input ended in the middle of a frame.
    #[error("input ended inside a frame")]
    Truncated,
}
