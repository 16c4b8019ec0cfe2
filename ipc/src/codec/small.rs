//! Small frames read directly: the messages a stream or a call exchanges by the million.
//!
//! bincode's serde decoder spends about 50 ns on a `Yield` of one integer, most of it in the
//! visitor machinery around a few bytes. [`decode`] reads the frames that carry only a call id,
//! counters and at most one scalar value (`StartAck`, `Started`, `Yield`, `Credit`, `Stop`,
//! `Return`, `Cancel`) in a few nanoseconds, straight from the layout bincode gives them.
//!
//! It never decides that a body is malformed. It returns a message only when bincode would
//! decode the whole body to that same message, and `None` for everything else (another kind of
//! message, a list or map inside, any byte it does not expect), which then goes to bincode. So
//! bincode stays the one authority on what is valid and on every error; the property test in
//! `tests/codec_small.rs` holds the two to agreeing.

use crate::{Cid, Msg, Value};

// bincode's variant indices: the declaration order of `Msg` and of `Value`.
const START_ACK: u32 = 2;
const STARTED: u32 = 3;
const YIELD: u32 = 4;
const CREDIT: u32 = 5;
const STOP: u32 = 6;
const RETURN: u32 = 7;
const CANCEL: u32 = 9;

const NULL: u32 = 0;
const BOOL: u32 = 1;
const INT: u32 = 2;
const FLOAT: u32 = 3;
const STR: u32 = 4;
const BYTES: u32 = 5;

/// The message `body` holds, when it is one of the small kinds above and bincode would decode
/// it, whole, to the same message. `max_depth` is the codec's value depth limit: a value needs 1.
#[inline]
pub(super) fn decode(body: &[u8], max_depth: usize) -> Option<Msg> {
    let mut r = Reader(body);
    let msg = match r.varint_u32()? {
        START_ACK => Msg::StartAck { cid: r.cid()? },
        STOP => Msg::Stop { cid: r.cid()? },
        CANCEL => Msg::Cancel { cid: r.cid()? },
        CREDIT => Msg::Credit {
            cid: r.cid()?,
            n: r.varint_u32()?,
            consumed: r.varint()?,
        },
        tag @ (STARTED | YIELD | RETURN) => {
            if max_depth == 0 {
                return None;
            }
            let cid = r.cid()?;
            let value = r.scalar()?;
            match tag {
                STARTED => Msg::Started { cid, value },
                YIELD => Msg::Yield { cid, value },
                _ => Msg::Return { cid, value },
            }
        }
        _ => return None,
    };
    // bincode reports bytes left over as an error: leave that to it.
    r.0.is_empty().then_some(msg)
}

/// The unread rest of a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// bincode's variable-length unsigned integer, as it reads one into a `u64`: a byte up to
    /// 250 is the value; 251, 252 and 253 announce 2, 4 and 8 little-endian bytes.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        match first {
            0..=250 => Some(u64::from(first)),
            251 => Some(u64::from(u16::from_le_bytes(self.array()?))),
            252 => Some(u64::from(u32::from_le_bytes(self.array()?))),
            253 => Some(u64::from_le_bytes(self.array()?)),
            _ => None,
        }
    }

    /// The same, as bincode reads one into a `u32` (a count, or a variant's index): it refuses
    /// the 8-byte form.
    #[inline]
    fn varint_u32(&mut self) -> Option<u32> {
        match self.0.first() {
            Some(253) => None,
            _ => self.varint().and_then(|n| u32::try_from(n).ok()),
        }
    }

    #[inline]
    fn cid(&mut self) -> Option<Cid> {
        self.varint().map(Cid)
    }

    /// A length that bincode would accept: it must fit in what is left of the body, or bincode
    /// would fail reading past its end.
    #[inline]
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    /// A `Value` that is not a list or a map.
    #[inline]
    fn scalar(&mut self) -> Option<Value> {
        Some(match self.varint_u32()? {
            NULL => Value::Null,
            BOOL => match self.take(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return None,
            },
            INT => {
                // Zigzag: even numbers are the non-negative values, odd ones the negative.
                let n = self.varint()?;
                let half = (n >> 1) as i64;
                Value::Int(if n & 1 == 0 { half } else { !half })
            }
            FLOAT => Value::Float(f64::from_le_bytes(self.array()?)),
            STR => {
                let len = self.len()?;
                Value::Str(std::str::from_utf8(self.take(len)?).ok()?.to_owned())
            }
            BYTES => {
                let len = self.len()?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            _ => return None,
        })
    }
}
