//! Small frames written and read directly: the messages a stream or a call exchanges by the
//! million.
//!
//! bincode's serde decoder spends about 50 ns on a `Yield` of one integer, most of it in the
//! visitor machinery around a few bytes. The frames that carry only a call id, counters and at
//! most one scalar value (`StartAck`, `Started`, `Yield`, `Credit`, `Stop`, `Return`, `Cancel`)
//! are written by [`encode`] and read by [`decode`] in a few nanoseconds, in the layout bincode
//! gives them.
//!
//! Neither decides anything bincode would decide otherwise. [`encode`] writes exactly bincode's
//! bytes, and leaves every other message to bincode. [`decode`] returns a message only when
//! bincode would decode the whole body to that same message, and `None` for everything else
//! (another kind of message, a list or map inside, any byte it does not expect), which then goes
//! to bincode. So bincode stays the one authority on the format and on every error; the tests in
//! `tests/codec_small.rs` hold the two to agreeing.

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
        STARTED => {
            let (cid, value) = r.cid_and_scalar(max_depth)?;
            Msg::Started { cid, value }
        }
        YIELD => {
            let (cid, value) = r.cid_and_scalar(max_depth)?;
            Msg::Yield { cid, value }
        }
        RETURN => {
            let (cid, value) = r.cid_and_scalar(max_depth)?;
            Msg::Return { cid, value }
        }
        _ => return None,
    };
    // bincode reports bytes left over as an error: leave that to it.
    r.0.is_empty().then_some(msg)
}

/// Appends the body of `msg` to `buf` as bincode would, if it is one of the small kinds above
/// and `max_depth` admits its value; returns whether it did (if not, `buf` is untouched).
#[inline]
pub(super) fn encode(msg: &Msg, max_depth: usize, buf: &mut Vec<u8>) -> bool {
    let (tag, cid, value) = match msg {
        Msg::StartAck { cid } => (START_ACK, cid, None),
        Msg::Stop { cid } => (STOP, cid, None),
        Msg::Cancel { cid } => (CANCEL, cid, None),
        Msg::Started { cid, value } => (STARTED, cid, Some(value)),
        Msg::Yield { cid, value } => (YIELD, cid, Some(value)),
        Msg::Return { cid, value } => (RETURN, cid, Some(value)),
        Msg::Credit { cid, n, consumed } => {
            put_varint(buf, u64::from(CREDIT));
            put_varint(buf, cid.0);
            put_varint(buf, u64::from(*n));
            put_varint(buf, *consumed);
            return true;
        }
        _ => return false,
    };
    if value.is_some() && max_depth == 0 {
        return false;
    }
    let start = buf.len();
    put_varint(buf, u64::from(tag));
    put_varint(buf, cid.0);
    match value {
        None => true,
        Some(value) => {
            let written = put_scalar(buf, value);
            if !written {
                buf.truncate(start);
            }
            written
        }
    }
}

/// bincode's variable-length unsigned integer: the shortest of the forms [`Reader::varint`]
/// reads.
#[inline]
fn put_varint(buf: &mut Vec<u8>, n: u64) {
    if n <= 250 {
        buf.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        buf.push(251);
        buf.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        buf.push(252);
        buf.extend_from_slice(&n.to_le_bytes());
    } else {
        buf.push(253);
        buf.extend_from_slice(&n.to_le_bytes());
    }
}

/// A value that is not a list or a map; returns false (having written nothing) for those.
#[inline]
fn put_scalar(buf: &mut Vec<u8>, value: &Value) -> bool {
    match value {
        Value::Null => put_varint(buf, u64::from(NULL)),
        Value::Bool(b) => {
            put_varint(buf, u64::from(BOOL));
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_varint(buf, u64::from(INT));
            // Zigzag, as `Reader::scalar` undoes it.
            put_varint(buf, ((*i << 1) ^ (*i >> 63)) as u64);
        }
        Value::Float(f) => {
            put_varint(buf, u64::from(FLOAT));
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            put_varint(buf, u64::from(STR));
            put_varint(buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            put_varint(buf, u64::from(BYTES));
            put_varint(buf, b.len() as u64);
            buf.extend_from_slice(b);
        }
        Value::List(_) | Value::Map(_) => return false,
    }
    true
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

    /// A string's or byte string's length. The caller then takes that many bytes, which fails
    /// (as bincode would, reading past the body's end) when fewer are left.
    #[inline]
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    /// A call id, then a value that is not a list or a map; `None` if the depth limit admits
    /// no value at all (bincode would refuse it as too deep).
    #[inline]
    fn cid_and_scalar(&mut self, max_depth: usize) -> Option<(Cid, Value)> {
        if max_depth == 0 {
            return None;
        }
        Some((self.cid()?, self.scalar()?))
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
