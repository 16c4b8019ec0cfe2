//! Conversion between any serde type and [`Value`]: a serde `Serializer` that builds a `Value` and
//! a `Deserializer` that reads one.
//!
//! The mapping, chosen so Python peers see natural objects:
//!
//! | Rust (serde data model) | `Value` |
//! |---|---|
//! | `()`, unit struct, `None` | `Null` |
//! | `Some(x)`, newtype struct | whatever `x` is |
//! | bool / integers / floats / `char`, `&str` | `Bool` / `Int` / `Float` / `Str` |
//! | byte strings (`serde_bytes`) | `Bytes` |
//! | sequences, tuples, tuple structs | `List` |
//! | maps (any key type) | `Map` |
//! | structs | `Map` with `Str` keys, in field order |
//! | unit variant `E::A` | `Str("A")` |
//! | newtype / tuple / struct variant `E::A(..)` | one-entry `Map` `{"A": payload}` |
//!
//! Integers must fit in an `i64`: a larger `u64` (or `i128`/`u128`) is an error, not a wrap.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde::ser::{self, Serialize};
use serde::{Deserialize, forward_to_deserialize_any};

use crate::Value;
use crate::value::current_depth_limit;

/// Why a conversion between a Rust value and a [`Value`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// An integer does not fit in `Value::Int` (a signed 64-bit integer).
    #[error("integer {value} does not fit in a 64-bit signed Value::Int")]
    IntegerOutOfRange {
        /// The integer, printed.
        value: String,
    },
    /// The value is nested deeper than the depth limit.
    #[error("values nested deeper than the limit of {limit}")]
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// Any other mismatch between the value and the type (reported by serde or the type itself).
    #[error("{0}")]
    Message(String),
}

impl ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::Message(msg.to_string())
    }
}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError::Message(msg.to_string())
    }
}

/// Converts any serializable value into a [`Value`].
///
/// ```
/// use harrow_ipc::{to_value, Value};
/// #[derive(serde::Serialize)]
/// struct Point { x: i32, y: i32 }
/// let v = to_value(&Point { x: 1, y: 2 }).unwrap();
/// assert_eq!(v.get("y"), Some(&Value::Int(2)));
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer { depth: 0 })
}

/// Converts a [`Value`] into any deserializable type.
///
/// ```
/// use harrow_ipc::{from_value, Value};
/// let v = Value::List(vec![Value::Int(1), Value::Int(2)]);
/// let xs: Vec<u8> = from_value(v).unwrap();
/// assert_eq!(xs, [1, 2]);
/// ```
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    from_value_ref(&value)
}

/// Converts a borrowed [`Value`] into a type that may borrow from it (`&str`, `&[u8]` with
/// `serde_bytes`), without consuming the value.
pub fn from_value_ref<'de, T: Deserialize<'de>>(value: &'de Value) -> Result<T, ValueError> {
    T::deserialize(ValueDeserializer { value, depth: 0 })
}

fn check_depth(depth: usize) -> Result<(), ValueError> {
    let limit = current_depth_limit();
    if depth >= limit {
        Err(ValueError::TooDeep { limit })
    } else {
        Ok(())
    }
}

fn int<T: TryInto<i64> + fmt::Display + Copy>(v: T) -> Result<Value, ValueError> {
    v.try_into()
        .map(Value::Int)
        .map_err(|_| ValueError::IntegerOutOfRange {
            value: v.to_string(),
        })
}

/// The serializer behind [`to_value`]. `depth` counts enclosing containers.
struct ValueSerializer {
    depth: usize,
}

impl ValueSerializer {
    fn child(&self) -> Result<ValueSerializer, ValueError> {
        check_depth(self.depth + 1)?;
        Ok(ValueSerializer {
            depth: self.depth + 1,
        })
    }
}

fn variant_entry(variant: &str, payload: Value) -> Value {
    Value::Map(vec![(Value::Str(variant.to_owned()), payload)])
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = MapBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        int(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        int(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        Ok(variant_entry(variant, value.serialize(self.child()?)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, ValueError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            child: self.child()?,
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        let mut builder = self.child()?.serialize_seq(Some(len))?;
        builder.variant = Some(variant);
        Ok(builder)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, ValueError> {
        Ok(MapBuilder {
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            next_key: None,
            child: self.child()?,
            variant: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, ValueError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapBuilder, ValueError> {
        let mut builder = self.child()?.serialize_map(Some(len))?;
        builder.variant = Some(variant);
        Ok(builder)
    }
}

/// Collects a sequence, tuple or tuple variant.
struct SeqBuilder {
    items: Vec<Value>,
    child: ValueSerializer,
    variant: Option<&'static str>,
}

impl SeqBuilder {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let child = ValueSerializer {
            depth: self.child.depth,
        };
        self.items.push(value.serialize(child)?);
        Ok(())
    }
    fn finish(self) -> Result<Value, ValueError> {
        let list = Value::List(self.items);
        Ok(match self.variant {
            Some(variant) => variant_entry(variant, list),
            None => list,
        })
    }
}

/// The four sequence-shaped serde traits differ only in the name of their element method.
macro_rules! impl_seq_builder {
    ($($trait:ident :: $method:ident),+ $(,)?) => {$(
        impl ser::$trait for SeqBuilder {
            type Ok = Value;
            type Error = ValueError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
                self.push(value)
            }
            fn end(self) -> Result<Value, ValueError> {
                self.finish()
            }
        }
    )+};
}

impl_seq_builder!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// Collects a map, struct or struct variant.
struct MapBuilder {
    entries: Vec<(Value, Value)>,
    next_key: Option<Value>,
    child: ValueSerializer,
    variant: Option<&'static str>,
}

impl MapBuilder {
    fn child(&self) -> ValueSerializer {
        ValueSerializer {
            depth: self.child.depth,
        }
    }
    fn finish(self) -> Result<Value, ValueError> {
        let map = Value::Map(self.entries);
        Ok(match self.variant {
            Some(variant) => variant_entry(variant, map),
            None => map,
        })
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.next_key = Some(key.serialize(self.child())?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let key = self
            .next_key
            .take()
            .ok_or_else(|| ValueError::Message("map value serialized before its key".into()))?;
        let value = value.serialize(self.child())?;
        self.entries.push((key, value));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        self.finish()
    }
}

/// A struct and a struct variant both collect their fields as string-keyed map entries.
macro_rules! impl_struct_builder {
    ($($trait:ident),+ $(,)?) => {$(
        impl ser::$trait for MapBuilder {
            type Ok = Value;
            type Error = ValueError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), ValueError> {
                let value = value.serialize(self.child())?;
                self.entries.push((Value::Str(key.to_owned()), value));
                Ok(())
            }
            fn end(self) -> Result<Value, ValueError> {
                self.finish()
            }
        }
    )+};
}

impl_struct_builder!(SerializeStruct, SerializeStructVariant);

/// The deserializer behind [`from_value`] and [`from_value_ref`]. `depth` counts enclosing
/// containers.
struct ValueDeserializer<'de> {
    value: &'de Value,
    depth: usize,
}

impl<'de> ValueDeserializer<'de> {
    fn child(&self, value: &'de Value) -> Result<ValueDeserializer<'de>, ValueError> {
        check_depth(self.depth + 1)?;
        Ok(ValueDeserializer {
            value,
            depth: self.depth + 1,
        })
    }

    fn unexpected(&self) -> de::Unexpected<'de> {
        match self.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Str(s) => de::Unexpected::Str(s),
            Value::Bytes(b) => de::Unexpected::Bytes(b),
            Value::List(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::List(items) => visitor.visit_seq(SeqReader {
                items: items.iter(),
                parent: &self,
            }),
            Value::Map(entries) => visitor.visit_map(MapReader {
                entries: entries.iter(),
                pending: None,
                parent: &self,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.value {
            // A `Vec<u8>` without `serde_bytes` still reads a byte string.
            Value::Bytes(bytes) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(bytes.iter().copied()))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.value {
            Value::Str(variant) => visitor.visit_enum(EnumReader {
                variant,
                payload: None,
            }),
            Value::Map(entries) if entries.len() == 1 => {
                let (key, payload) = &entries[0];
                let variant = key.as_str().ok_or_else(|| {
                    ValueError::Message(format!(
                        "enum variant name must be a str, found {}",
                        key.kind_name()
                    ))
                })?;
                visitor.visit_enum(EnumReader {
                    variant,
                    payload: Some(self.child(payload)?),
                })
            }
            _ => Err(de::Error::invalid_type(
                self.unexpected(),
                &"a variant name or a one-entry map {variant: payload}",
            )),
        }
    }

    fn is_human_readable(&self) -> bool {
        true
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

/// Walks a `List`.
struct SeqReader<'a, 'de> {
    items: std::slice::Iter<'de, Value>,
    parent: &'a ValueDeserializer<'de>,
}

impl<'de> de::SeqAccess<'de> for SeqReader<'_, 'de> {
    type Error = ValueError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        match self.items.next() {
            Some(item) => seed.deserialize(self.parent.child(item)?).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Walks a `Map`.
struct MapReader<'a, 'de> {
    entries: std::slice::Iter<'de, (Value, Value)>,
    pending: Option<&'de Value>,
    parent: &'a ValueDeserializer<'de>,
}

impl<'de> de::MapAccess<'de> for MapReader<'_, 'de> {
    type Error = ValueError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.pending = Some(value);
                seed.deserialize(self.parent.child(key)?).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        let value = self
            .pending
            .take()
            .ok_or_else(|| ValueError::Message("map value requested before its key".into()))?;
        seed.deserialize(self.parent.child(value)?)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum: the variant name and, unless it is a unit variant, its payload.
struct EnumReader<'de> {
    variant: &'de str,
    payload: Option<ValueDeserializer<'de>>,
}

impl<'de> de::EnumAccess<'de> for EnumReader<'de> {
    type Error = ValueError;
    type Variant = VariantReader<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantReader<'de>), ValueError> {
        let name = de::value::BorrowedStrDeserializer::<'de, ValueError>::new(self.variant);
        let tag = seed.deserialize(name)?;
        Ok((
            tag,
            VariantReader {
                payload: self.payload,
            },
        ))
    }
}

/// The payload of one enum variant.
struct VariantReader<'de> {
    payload: Option<ValueDeserializer<'de>>,
}

impl<'de> VariantReader<'de> {
    fn payload(self, what: &str) -> Result<ValueDeserializer<'de>, ValueError> {
        self.payload.ok_or_else(|| {
            ValueError::Message(format!("expected a {what} variant, found a unit variant"))
        })
    }
}

impl<'de> de::VariantAccess<'de> for VariantReader<'de> {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        match self.payload {
            None => Ok(()),
            Some(ValueDeserializer {
                value: Value::Null, ..
            }) => Ok(()),
            Some(payload) => Err(de::Error::invalid_type(
                payload.unexpected(),
                &"a unit variant",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(self.payload("newtype")?)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_seq(self.payload("tuple")?, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_map(self.payload("struct")?, visitor)
    }
}
