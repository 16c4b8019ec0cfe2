//! [`Value`]: the self-describing payload every call carries, shared by Rust and Python peers.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

/// A self-describing value: what crosses the wire as arguments, results and stream items.
///
/// Typed Rust code converts its own serde types with [`to_value`](crate::to_value) and
/// [`from_value`](crate::from_value); Python peers map it to and from native objects.
/// Map keys are values too, and a map keeps its insertion order.
///
/// # Serde forms
///
/// In compact binary formats (`is_human_readable() == false`, such as the codec's bincode) a
/// `Value` is a plain enum with the variants in the order below. In self-describing formats
/// (JSON, and [`to_value`](crate::to_value)/[`from_value`](crate::from_value) themselves) it takes
/// its natural form: `null`, a bool, a number, a string, bytes, a sequence or a map.
///
/// Either way, (de)serializing a value nested deeper than the current depth limit (see
/// [`CodecConfig::max_depth`](crate::codec::CodecConfig); [`DEFAULT_MAX_DEPTH`] outside the codec)
/// fails with an error instead of exhausting the stack.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// No value (`None`, `()`).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A sequence.
    List(Vec<Value>),
    /// An ordered map with value keys.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The kind of value, for error messages (`"int"`, `"list"`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// The integer, if this is an `Int`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, if this is a `List`.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// Looks up a string key in a `Map`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Self {
        Value::Null
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}

/// How deeply values may nest when no codec configuration says otherwise.
pub const DEFAULT_MAX_DEPTH: usize = 128;

thread_local! {
    // Nesting depth of the `Value`s being (de)serialized on this thread right now, the limit, and
    // whether the limit was hit (so the codec can tell `TooDeep` from other malformed input).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static DEPTH_LIMIT: Cell<usize> = const { Cell::new(DEFAULT_MAX_DEPTH) };
    static DEPTH_EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// One level of `Value` nesting; leaving it (even by unwinding) pops the level.
pub(crate) struct DepthGuard(());

impl DepthGuard {
    /// Enters one more level, or reports that the limit would be exceeded.
    pub(crate) fn enter() -> Result<DepthGuard, usize> {
        let depth = DEPTH.with(Cell::get) + 1;
        let limit = DEPTH_LIMIT.with(Cell::get);
        if depth > limit {
            DEPTH_EXCEEDED.with(|e| e.set(true));
            return Err(limit);
        }
        DEPTH.with(|d| d.set(depth));
        Ok(DepthGuard(()))
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The depth limit in force on this thread.
pub(crate) fn current_depth_limit() -> usize {
    DEPTH_LIMIT.with(Cell::get)
}

/// Runs `f` with `limit` as this thread's value depth limit, starting from depth 0. Returns what
/// `f` returned and whether the limit was hit inside it. Restores the previous state afterwards.
pub(crate) fn with_depth_limit<R>(limit: usize, f: impl FnOnce() -> R) -> (R, bool) {
    struct Restore {
        depth: usize,
        limit: usize,
        exceeded: bool,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(self.depth));
            DEPTH_LIMIT.with(|l| l.set(self.limit));
            DEPTH_EXCEEDED.with(|e| e.set(self.exceeded));
        }
    }
    let _restore = Restore {
        depth: DEPTH.with(|d| d.replace(0)),
        limit: DEPTH_LIMIT.with(|l| l.replace(limit)),
        exceeded: DEPTH_EXCEEDED.with(|e| e.replace(false)),
    };
    let result = f();
    let exceeded = DEPTH_EXCEEDED.with(Cell::get);
    (result, exceeded)
}

fn too_deep_msg(limit: usize) -> String {
    format!("values nested deeper than the limit of {limit}")
}

const VARIANTS: &[&str] = &[
    "Null", "Bool", "Int", "Float", "Str", "Bytes", "List", "Map",
];

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let _guard =
            DepthGuard::enter().map_err(|limit| ser::Error::custom(too_deep_msg(limit)))?;
        if serializer.is_human_readable() {
            match self {
                Value::Null => serializer.serialize_unit(),
                Value::Bool(b) => serializer.serialize_bool(*b),
                Value::Int(i) => serializer.serialize_i64(*i),
                Value::Float(f) => serializer.serialize_f64(*f),
                Value::Str(s) => serializer.serialize_str(s),
                Value::Bytes(b) => serializer.serialize_bytes(b),
                Value::List(items) => {
                    let mut seq = serializer.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Value::Map(entries) => {
                    let mut map = serializer.serialize_map(Some(entries.len()))?;
                    for (k, v) in entries {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
            }
        } else {
            // The same shape `#[derive(Serialize)]` would give, so the wire format is a plain enum.
            match self {
                Value::Null => serializer.serialize_unit_variant("Value", 0, "Null"),
                Value::Bool(b) => serializer.serialize_newtype_variant("Value", 1, "Bool", b),
                Value::Int(i) => serializer.serialize_newtype_variant("Value", 2, "Int", i),
                Value::Float(f) => serializer.serialize_newtype_variant("Value", 3, "Float", f),
                Value::Str(s) => serializer.serialize_newtype_variant("Value", 4, "Str", s),
                Value::Bytes(b) => serializer.serialize_newtype_variant(
                    "Value",
                    5,
                    "Bytes",
                    serde_bytes::Bytes::new(b),
                ),
                Value::List(items) => {
                    serializer.serialize_newtype_variant("Value", 6, "List", items)
                }
                Value::Map(entries) => {
                    serializer.serialize_newtype_variant("Value", 7, "Map", entries)
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _guard = DepthGuard::enter().map_err(|limit| de::Error::custom(too_deep_msg(limit)))?;
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(NaturalVisitor)
        } else {
            deserializer.deserialize_enum("Value", VARIANTS, EnumVisitor)
        }
    }
}

/// Builds a `Value` from whatever a self-describing format presents.
struct NaturalVisitor;

impl<'de> de::Visitor<'de> for NaturalVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in a 64-bit signed int")))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in a 64-bit signed int")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in a 64-bit signed int")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

/// Reads the plain-enum form used by compact binary formats.
struct EnumVisitor;

impl<'de> de::Visitor<'de> for EnumVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("enum Value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant) = data.variant::<Tag>()?;
        Ok(match tag {
            Tag::Null => {
                variant.unit_variant()?;
                Value::Null
            }
            Tag::Bool => Value::Bool(variant.newtype_variant()?),
            Tag::Int => Value::Int(variant.newtype_variant()?),
            Tag::Float => Value::Float(variant.newtype_variant()?),
            Tag::Str => Value::Str(variant.newtype_variant()?),
            Tag::Bytes => Value::Bytes(
                variant
                    .newtype_variant::<serde_bytes::ByteBuf>()?
                    .into_vec(),
            ),
            Tag::List => Value::List(variant.newtype_variant()?),
            Tag::Map => Value::Map(variant.newtype_variant()?),
        })
    }
}

/// A `Value` variant, by index or by name.
enum Tag {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    List,
    Map,
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagVisitor;
        impl de::Visitor<'_> for TagVisitor {
            type Value = Tag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Value variant")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tag, E> {
                Ok(match v {
                    0 => Tag::Null,
                    1 => Tag::Bool,
                    2 => Tag::Int,
                    3 => Tag::Float,
                    4 => Tag::Str,
                    5 => Tag::Bytes,
                    6 => Tag::List,
                    7 => Tag::Map,
                    _ => {
                        return Err(E::invalid_value(
                            de::Unexpected::Unsigned(v),
                            &"variant index 0 <= i < 8",
                        ));
                    }
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
                Ok(match v {
                    "Null" => Tag::Null,
                    "Bool" => Tag::Bool,
                    "Int" => Tag::Int,
                    "Float" => Tag::Float,
                    "Str" => Tag::Str,
                    "Bytes" => Tag::Bytes,
                    "List" => Tag::List,
                    "Map" => Tag::Map,
                    _ => return Err(E::unknown_variant(v, VARIANTS)),
                })
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tag, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(v), &self)),
                }
            }
        }
        deserializer.deserialize_identifier(TagVisitor)
    }
}
