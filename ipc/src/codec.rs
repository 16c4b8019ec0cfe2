//! Framing and encoding of [`Msg`] for byte transports: a length prefix, then a
//! bincode 2.0.1 (serde mode) body. This module is the only place that knows the encoding; its
//! `small` part reads the most frequent small frames directly, and agrees with bincode on them.

use crate::Msg;
use crate::value::with_depth_limit;

mod small;

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
    /// Before the handshake completed, the length prefix announces a frame larger than
    /// [`CodecConfig::max_handshake_frame`]: a peer that has proven nothing yet may only send
    /// small frames.
    #[error(
        "frame of {len} bytes before the handshake completed exceeds the pre-handshake maximum \
         of {max} bytes{}",
        prefix_as_text(*.len)
    )]
    HandshakeFrameTooLarge {
        /// The announced length.
        len: u64,
        /// The pre-handshake maximum.
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

/// Bytes in the length prefix of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// The default [`CodecConfig::max_frame`]: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The default [`CodecConfig::max_handshake_frame`]: 4 KiB, ample for `Hello` (and a
/// challenge-response) with actor names of ordinary length.
pub const DEFAULT_MAX_HANDSHAKE_FRAME: usize = 4 << 10;

/// Limits applied while encoding and decoding.
///
/// # Frame format
///
/// A frame is a `u32` little-endian body length, then the body: the [`Msg`] encoded by bincode
/// 2.0.1 in serde mode with `bincode::config::standard()` (little-endian, variable-length
/// integers). [`Value`](crate::Value)s inside are plain enums in that encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecConfig {
    /// The largest body, in bytes, that is encoded or accepted (the prefix is not counted).
    /// A larger announced length is rejected before any buffer is sized for it. Values above
    /// `u32::MAX` act as `u32::MAX`.
    pub max_frame: usize,
    /// How deeply [`Value`](crate::Value)s may nest (a scalar at the top is depth 1).
    pub max_depth: usize,
    /// The largest body accepted before the receiving side declares its handshake complete (see
    /// [`FrameDecoder::handshaking`] and [`ChannelRx::end_handshake`](crate::ChannelRx::end_handshake)).
    /// Byte transports start every channel in that state, so a peer that has proven nothing
    /// cannot announce a large frame. Never more than `max_frame`.
    pub max_handshake_frame: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: crate::DEFAULT_MAX_DEPTH,
            max_handshake_frame: DEFAULT_MAX_HANDSHAKE_FRAME,
        }
    }
}

impl CodecConfig {
    fn frame_limit(&self) -> usize {
        self.max_frame.min(u32::MAX as usize)
    }

    fn handshake_limit(&self) -> usize {
        self.max_handshake_frame.min(self.frame_limit())
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded body is larger than [`CodecConfig::max_frame`].
    #[error("message of {size} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// The encoded body size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A value is nested deeper than [`CodecConfig::max_depth`].
    #[error("values nested deeper than the limit of {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// The encoder failed for another reason.
    #[error("encoding failed: {0}")]
    Failed(String),
}

/// Encodes `msg` as one frame (prefix and body).
pub fn encode(msg: &Msg, config: &CodecConfig) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, config, &mut buf)?;
    Ok(buf)
}

/// Appends one frame for `msg` to `buf` and returns its length (prefix included). On error `buf`
/// is left as it was.
pub fn encode_into(
    msg: &Msg,
    config: &CodecConfig,
    buf: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; LENGTH_PREFIX]);
    let (result, too_deep) = if small::encode(msg, config.max_depth, buf) {
        (Ok(()), false)
    } else {
        with_depth_limit(config.max_depth, || {
            bincode::serde::encode_into_std_write(msg, &mut *buf, bincode::config::standard())
                .map(drop)
        })
    };
    let size = buf.len() - start - LENGTH_PREFIX;
    let error = match result {
        Ok(()) if size > config.frame_limit() => Some(EncodeError::TooLarge {
            size,
            max: config.frame_limit(),
        }),
        Ok(()) => None,
        Err(_) if too_deep => Some(EncodeError::TooDeep {
            limit: config.max_depth,
        }),
        Err(e) => Some(EncodeError::Failed(e.to_string())),
    };
    if let Some(error) = error {
        buf.truncate(start);
        return Err(error);
    }
    // `size <= frame_limit() <= u32::MAX`, so this cannot truncate.
    let prefix = (size as u32).to_le_bytes();
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&prefix);
    Ok(size + LENGTH_PREFIX)
}

/// Decodes the first frame of `bytes` with the default [`CodecConfig`]; returns the message and
/// the number of bytes the frame took. Bytes after the frame are left alone.
pub fn decode_frame(bytes: &[u8]) -> Result<(Msg, usize), DecodeError> {
    decode_frame_with(bytes, &CodecConfig::default())
}

/// Decodes the first frame of `bytes`; see [`decode_frame`].
pub fn decode_frame_with(bytes: &[u8], config: &CodecConfig) -> Result<(Msg, usize), DecodeError> {
    let len = match frame_len(bytes, config, false)? {
        Some(len) => len,
        None => return Err(DecodeError::Truncated),
    };
    let end = LENGTH_PREFIX + len;
    let body = bytes
        .get(LENGTH_PREFIX..end)
        .ok_or(DecodeError::Truncated)?;
    Ok((decode_body(body, config)?, end))
}

/// What a length prefix says when it reads as text: a peer that wrote something other than
/// frames on the channel (a program's banner on its stdout, say) is the likely cause.
fn prefix_as_text(len: u64) -> String {
    let bytes = (len as u32).to_le_bytes();
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        let text: String = bytes.iter().map(|b| char::from(*b)).collect();
        format!(
            " (its length prefix reads as the text {text:?}: did the peer write something other \
             than harrow frames, such as a banner?)"
        )
    } else {
        String::new()
    }
}

/// Reads a frame's announced body length, if the prefix is complete, rejecting lengths above the
/// maximum (the pre-handshake one while `handshaking`, checked first: before the handshake, a
/// length above either is most likely not a frame at all).
fn frame_len(
    bytes: &[u8],
    config: &CodecConfig,
    handshaking: bool,
) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if handshaking
        && len as usize > config.handshake_limit()
        && config.handshake_limit() < config.frame_limit()
    {
        return Err(DecodeError::HandshakeFrameTooLarge {
            len: len.into(),
            max: config.handshake_limit(),
        });
    }
    if len as usize > config.frame_limit() {
        return Err(DecodeError::FrameTooLarge {
            len: len.into(),
            max: config.frame_limit(),
        });
    }
    Ok(Some(len as usize))
}

/// Decodes one frame body (without its prefix). The body must hold exactly one message.
pub fn decode_body(body: &[u8], config: &CodecConfig) -> Result<Msg, DecodeError> {
    if body.len() > config.frame_limit() {
        return Err(DecodeError::FrameTooLarge {
            len: body.len() as u64,
            max: config.frame_limit(),
        });
    }
    if let Some(msg) = small::decode(body, config.max_depth) {
        return Ok(msg);
    }
    let (result, too_deep) = with_depth_limit(config.max_depth, || bincode_decode(body));
    match result {
        Ok((msg, used)) if used == body.len() => Ok(msg),
        Ok((_, used)) => Err(DecodeError::TrailingBytes(body.len() - used)),
        Err(_) if too_deep => Err(DecodeError::TooDeep {
            limit: config.max_depth,
        }),
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => Err(DecodeError::Malformed(
            "the body ends inside the message".into(),
        )),
        Err(bincode::error::DecodeError::LimitExceeded) => Err(DecodeError::Malformed(
            "a length inside the body exceeds what the frame can hold".into(),
        )),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// Runs bincode with a byte limit scaled to the body.
///
/// bincode sizes a string's buffer from its announced length before reading it; the limit (which
/// counts decoded in-memory bytes, up to 16 per encoded byte) caps what a lying length can make it
/// allocate to a small multiple of the frame actually received. Bodies above 16 MiB get a 4 GiB
/// cap, which is ample for any real message.
fn bincode_decode(body: &[u8]) -> Result<(Msg, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    let len = body.len();
    if len <= 0x1000 {
        decode_from_slice(body, standard().with_limit::<0x1_0000>())
    } else if len <= 0x1_0000 {
        decode_from_slice(body, standard().with_limit::<0x10_0000>())
    } else if len <= 0x10_0000 {
        decode_from_slice(body, standard().with_limit::<0x100_0000>())
    } else if len <= 0x100_0000 {
        decode_from_slice(body, standard().with_limit::<0x1000_0000>())
    } else {
        decode_from_slice(body, standard().with_limit::<{ u32::MAX as usize }>())
    }
}

/// How much a [`FrameDecoder`] asks the transport to read at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// Splits a byte stream into messages, keeping partial frames between reads.
///
/// Read into [`read_buf`](FrameDecoder::read_buf), report how much arrived with
/// [`commit`](FrameDecoder::commit) (or use [`extend`](FrameDecoder::extend)), then call
/// [`decode_next`](FrameDecoder::decode_next) until it returns `Ok(None)`.
///
/// Memory follows the bytes that arrived, never a length the peer announced: while a large frame
/// is incomplete the buffer at most doubles what was received of it (a 64 MiB length prefix alone
/// costs one read chunk). A decoder made with [`handshaking`](FrameDecoder::handshaking) also
/// refuses frames above [`CodecConfig::max_handshake_frame`] until
/// [`end_handshake`](FrameDecoder::end_handshake).
///
/// ```
/// use harrow_ipc::{codec, Msg};
/// let config = codec::CodecConfig::default();
/// let frame = codec::encode(&Msg::CancelAck { teardown_ms: None }, &config).unwrap();
/// let mut decoder = codec::FrameDecoder::new(config);
/// decoder.extend(&frame[..3]);
/// assert_eq!(decoder.decode_next().unwrap(), None);
/// decoder.extend(&frame[3..]);
/// assert_eq!(decoder.decode_next().unwrap(), Some(Msg::CancelAck { teardown_ms: None }));
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    config: CodecConfig,
    handshaking: bool,
    // `buf[start..end]` holds received, undecoded bytes; `buf[end..]` is free space.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameDecoder {
    /// A decoder with no buffered bytes that accepts frames up to [`CodecConfig::max_frame`].
    pub fn new(config: CodecConfig) -> Self {
        FrameDecoder {
            config,
            handshaking: false,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// A decoder for an unauthenticated peer: frames above [`CodecConfig::max_handshake_frame`]
    /// are refused with [`DecodeError::HandshakeFrameTooLarge`] until
    /// [`end_handshake`](FrameDecoder::end_handshake).
    pub fn handshaking(config: CodecConfig) -> Self {
        FrameDecoder {
            handshaking: true,
            ..FrameDecoder::new(config)
        }
    }

    /// Lifts the pre-handshake limit: from the next frame on, frames up to
    /// [`CodecConfig::max_frame`] are accepted. Idempotent.
    pub fn end_handshake(&mut self) {
        self.handshaking = false;
    }

    /// Whether the pre-handshake limit is in force.
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// The limits this decoder applies.
    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The full size (prefix included) of the frame being received, once its prefix is complete.
    /// With [`buffered`](Self::buffered) it tells how much of a frame a closed stream cut off.
    pub fn pending_frame_len(&self) -> Option<usize> {
        let pending = &self.buf[self.start..self.end];
        pending
            .first_chunk::<LENGTH_PREFIX>()
            .map(|prefix| LENGTH_PREFIX + u32::from_le_bytes(*prefix) as usize)
    }

    /// How much a read may bring in at once: a frame fits in one read chunk, or, before the
    /// handshake, in one pre-handshake frame.
    fn chunk(&self) -> usize {
        if self.handshaking {
            READ_CHUNK.min(LENGTH_PREFIX + self.config.handshake_limit())
        } else {
            READ_CHUNK
        }
    }

    /// Free space to read into: at least one byte. While a large frame is incomplete the space
    /// grows with what arrived of it (at most twice the received bytes), up to the rest of the
    /// frame. Fails if the pending frame announces a length above the maximum.
    pub fn read_buf(&mut self) -> Result<&mut [u8], DecodeError> {
        let chunk = self.chunk();
        let pending = &self.buf[self.start..self.end];
        // The size the buffer should have now: the pending frame whole if the bytes already
        // received vouch for it, else twice what was received.
        let target = match frame_len(pending, &self.config, self.handshaking)? {
            Some(len) => (LENGTH_PREFIX + len)
                .min(pending.len().saturating_mul(2))
                .max(chunk),
            None => chunk,
        };
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK && target <= READ_CHUNK {
                // Drop the memory a past large frame needed.
                self.buf = Vec::new();
            }
        }
        if self.buf.len() - self.start < target || self.end == self.buf.len() {
            // Move the pending bytes to the front, then grow if that is not enough.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < target || self.end == self.buf.len() {
                let size = target.max(self.end + chunk);
                // Exactly: amortised doubling on top of the doubling above would overshoot.
                self.buf.reserve_exact(size - self.buf.len());
                self.buf.resize(size, 0);
            }
        }
        Ok(&mut self.buf[self.end..])
    }

    /// Records that `n` bytes were written at the start of the last [`read_buf`](Self::read_buf).
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        let pending = self.end - self.start;
        if self.buf.len() - self.end < bytes.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            if self.buf.len() - self.end < bytes.len() {
                self.buf.resize(self.end + bytes.len(), 0);
            }
        }
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Decodes the next complete frame, or returns `Ok(None)` if more bytes are needed.
    ///
    /// A frame whose body is malformed is consumed and reported, so the next call continues
    /// with the following frame. An oversized length is reported without consuming anything
    /// (the stream cannot be resynchronised; stop reading it).
    pub fn decode_next(&mut self) -> Result<Option<Msg>, DecodeError> {
        let pending = &self.buf[self.start..self.end];
        let Some(len) = frame_len(pending, &self.config, self.handshaking)? else {
            return Ok(None);
        };
        let frame_end = LENGTH_PREFIX + len;
        if pending.len() < frame_end {
            return Ok(None);
        }
        let body = &pending[LENGTH_PREFIX..frame_end];
        let result = decode_body(body, &self.config);
        self.start += frame_end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        result.map(Some)
    }
}
