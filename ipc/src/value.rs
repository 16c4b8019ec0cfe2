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
///
/// # Deep values
///
/// However deeply a value nests, dropping, cloning and comparing it never recurse (they walk the
/// value with a heap stack), and `Debug` prints at most [`DEFAULT_MAX_DEPTH`] levels (deeper
/// containers show as `List([..])` / `Map([..])`). [`check_depth`](Value::check_depth) measures
/// a value the same way, without recursion; the portal refuses values deeper than
/// [`DEFAULT_MAX_DEPTH`] at its API.
///
/// Because `Value` implements `Drop`, a container's contents cannot be moved out by a pattern:
/// use [`into_list`](Value::into_list), [`into_map`](Value::into_map) (or `std::mem::take` on a
/// `&mut` binding).
#[derive(Default)]
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

    /// The items, if this is a `List`; otherwise the value itself is handed back.
    pub fn into_list(mut self) -> Result<Vec<Value>, Value> {
        match &mut self {
            Value::List(items) => Ok(std::mem::take(items)),
            _ => Err(self),
        }
    }

    /// The entries, if this is a `Map`; otherwise the value itself is handed back.
    pub fn into_map(mut self) -> Result<Vec<(Value, Value)>, Value> {
        match &mut self {
            Value::Map(entries) => Ok(std::mem::take(entries)),
            _ => Err(self),
        }
    }

    /// The string, if this is a `Str`; otherwise the value itself is handed back.
    pub fn into_string(mut self) -> Result<String, Value> {
        match &mut self {
            Value::Str(s) => Ok(std::mem::take(s)),
            _ => Err(self),
        }
    }

    /// The bytes, if this is a `Bytes`; otherwise the value itself is handed back.
    pub fn into_bytes(mut self) -> Result<Vec<u8>, Value> {
        match &mut self {
            Value::Bytes(b) => Ok(std::mem::take(b)),
            _ => Err(self),
        }
    }

    /// Whether this is a `List` or a `Map`.
    pub fn is_container(&self) -> bool {
        matches!(self, Value::List(_) | Value::Map(_))
    }

    /// How deeply the value nests: 1 for a scalar or an empty container, one more per level of
    /// containers. Computed without recursion.
    pub fn depth(&self) -> usize {
        self.measure_depth(usize::MAX)
    }

    /// Checks that the value nests at most `limit` deep (as [`depth`](Value::depth) counts, and
    /// as the codec's [`max_depth`](crate::codec::CodecConfig::max_depth) does). Stops at the
    /// first level past the limit; never recurses.
    #[inline]
    pub fn check_depth(&self, limit: usize) -> Result<(), crate::ValueError> {
        // A scalar is 1 deep: most streamed items and call arguments need no walk.
        let depth = if self.is_container() {
            self.measure_depth(limit)
        } else {
            1
        };
        if depth > limit {
            return Err(crate::ValueError::TooDeep { limit });
        }
        Ok(())
    }

    /// The depth, or some depth above `limit` as soon as one is found. Allocates only for
    /// containers nested in containers.
    fn measure_depth(&self, limit: usize) -> usize {
        let mut deepest = 1;
        let mut pending: Vec<(&Value, usize)> = Vec::new();
        let (mut value, mut depth): (&Value, usize) = (self, 1);
        loop {
            let child_depth = depth.saturating_add(1);
            let mut visit = |child: &'_ Value| {
                deepest = deepest.max(child_depth);
                child.is_container()
            };
            match value {
                Value::List(items) => {
                    for item in items {
                        if visit(item) {
                            pending.push((item, child_depth));
                        }
                    }
                }
                Value::Map(entries) => {
                    for (k, v) in entries {
                        if visit(k) {
                            pending.push((k, child_depth));
                        }
                        if visit(v) {
                            pending.push((v, child_depth));
                        }
                    }
                }
                _ => {}
            }
            if deepest > limit {
                return deepest;
            }
            match pending.pop() {
                Some(next) => (value, depth) = next,
                None => return deepest,
            }
        }
    }

    /// An estimate of the memory the value holds, in bytes: the size of a `Value` for each
    /// value in it, plus the bytes of its strings and byte strings. Computed without recursion,
    /// and only as far as needed: once the sum passes `cap` it stops and returns a figure above
    /// `cap`, so a large value costs no more to measure than one of about `cap` bytes.
    #[inline]
    pub fn approx_size(&self, cap: usize) -> usize {
        if self.is_container() {
            self.measure_size(cap)
        } else {
            self.own_size()
        }
    }

    /// The value itself and its string's or bytes' payload, not what a container holds.
    #[inline]
    fn own_size(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Str(s) => s.len(),
                Value::Bytes(b) => b.len(),
                _ => 0,
            }
    }

    fn measure_size(&self, cap: usize) -> usize {
        let mut total = self.own_size();
        let mut pending: Vec<&Value> = Vec::new();
        let mut value = self;
        loop {
            let children: &mut dyn Iterator<Item = &Value> = match value {
                Value::List(items) => &mut items.iter(),
                Value::Map(entries) => &mut entries.iter().flat_map(|(k, v)| [k, v]),
                _ => &mut std::iter::empty(),
            };
            for child in children {
                total = total.saturating_add(child.own_size());
                if child.is_container() {
                    pending.push(child);
                }
                if total > cap {
                    return total;
                }
            }
            match pending.pop() {
                Some(next) => value = next,
                None => return total,
            }
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

/// A scalar's copy; `None` for containers.
fn clone_scalar(value: &Value) -> Option<Value> {
    Some(match value {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::Bool(*b),
        Value::Int(i) => Value::Int(*i),
        Value::Float(f) => Value::Float(*f),
        Value::Str(s) => Value::Str(s.clone()),
        Value::Bytes(b) => Value::Bytes(b.clone()),
        Value::List(_) | Value::Map(_) => return None,
    })
}

/// Equality of two values whose children are not compared here: scalars by value, containers by
/// kind and length.
fn shallow_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        (Value::List(x), Value::List(y)) => x.len() == y.len(),
        (Value::Map(x), Value::Map(y)) => x.len() == y.len(),
        _ => false,
    }
}

/// One container being copied by [`Value::clone`]: its source, the next child to copy, and the
/// copies made so far (map entries flattened as key, value, key, value...).
struct CloneFrame<'a> {
    source: &'a Value,
    next: usize,
    copies: Vec<Value>,
}

impl<'a> CloneFrame<'a> {
    fn new(source: &'a Value) -> Self {
        let len = match source {
            Value::List(items) => items.len(),
            Value::Map(entries) => entries.len() * 2,
            _ => 0,
        };
        CloneFrame {
            source,
            next: 0,
            copies: Vec::with_capacity(len),
        }
    }

    fn next_child(&mut self) -> Option<&'a Value> {
        let child = match self.source {
            Value::List(items) => items.get(self.next),
            Value::Map(entries) => entries
                .get(self.next / 2)
                .map(|(k, v)| if self.next.is_multiple_of(2) { k } else { v }),
            _ => None,
        };
        self.next += 1;
        child
    }

    fn finish(self) -> Value {
        match self.source {
            Value::Map(_) => {
                let mut copies = self.copies.into_iter();
                let mut entries = Vec::with_capacity(copies.len() / 2);
                while let (Some(k), Some(v)) = (copies.next(), copies.next()) {
                    entries.push((k, v));
                }
                Value::Map(entries)
            }
            _ => Value::List(self.copies),
        }
    }
}

impl Clone for Value {
    fn clone(&self) -> Self {
        if let Some(scalar) = clone_scalar(self) {
            return scalar;
        }
        // Depth-first with the enclosing containers on a heap stack, never the call stack.
        let mut current = CloneFrame::new(self);
        let mut enclosing: Vec<CloneFrame<'_>> = Vec::new();
        loop {
            match current.next_child() {
                Some(child) => match clone_scalar(child) {
                    Some(copy) => current.copies.push(copy),
                    None => enclosing.push(std::mem::replace(&mut current, CloneFrame::new(child))),
                },
                None => {
                    let done = current.finish();
                    match enclosing.pop() {
                        Some(parent) => {
                            current = parent;
                            current.copies.push(done);
                        }
                        None => return done,
                    }
                }
            }
        }
    }
}

/// Compares two children now if neither is a container, else leaves them for later.
fn eq_or_defer<'a>(x: &'a Value, y: &'a Value, pending: &mut Vec<(&'a Value, &'a Value)>) -> bool {
    if x.is_container() || y.is_container() {
        pending.push((x, y));
        true
    } else {
        shallow_eq(x, y)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        // Pairs of containers still to compare live on a heap stack, never the call stack.
        let mut pending: Vec<(&Value, &Value)> = Vec::new();
        let (mut a, mut b) = (self, other);
        loop {
            if !shallow_eq(a, b) {
                return false;
            }
            let equal = match (a, b) {
                (Value::List(xs), Value::List(ys)) => xs
                    .iter()
                    .zip(ys)
                    .all(|(x, y)| eq_or_defer(x, y, &mut pending)),
                (Value::Map(xs), Value::Map(ys)) => {
                    xs.iter().zip(ys).all(|((kx, vx), (ky, vy))| {
                        eq_or_defer(kx, ky, &mut pending) && eq_or_defer(vx, vy, &mut pending)
                    })
                }
                _ => true,
            };
            if !equal {
                return false;
            }
            match pending.pop() {
                Some((x, y)) => (a, b) = (x, y),
                None => return true,
            }
        }
    }
}

/// Moves the children of `value` into `pending` if any of them is a container (those are the
/// ones whose drop would recurse); a container of scalars is left to drop as it is.
fn detach_nested(value: &mut Value, pending: &mut Vec<Value>) {
    match value {
        Value::List(items) if items.iter().any(Value::is_container) => pending.append(items),
        Value::Map(entries)
            if entries
                .iter()
                .any(|(k, v)| k.is_container() || v.is_container()) =>
        {
            pending.reserve(entries.len() * 2);
            for (k, v) in entries.drain(..) {
                pending.push(k);
                pending.push(v);
            }
        }
        _ => {}
    }
}

impl Drop for Value {
    #[inline]
    fn drop(&mut self) {
        // A scalar (a stream's usual item) has nothing nested: no call, no loop.
        if !self.is_container() {
            return;
        }
        // Empty nested containers from a heap stack until only scalars, containers of scalars
        // and empty shells are dropped: none of those goes deeper. No allocation when `self`
        // holds no container.
        let mut pending = Vec::new();
        detach_nested(self, &mut pending);
        while let Some(mut value) = pending.pop() {
            detach_nested(&mut value, &mut pending);
        }
    }
}

/// `Debug` at a nesting depth; containers past [`DEFAULT_MAX_DEPTH`] are elided.
struct DebugAt<'a>(&'a Value, usize);

/// A map entry, printed as a pair like the derived form does.
struct DebugEntry<'a>(&'a (Value, Value), usize);

impl fmt::Debug for DebugEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k, v) = self.0;
        f.debug_tuple("")
            .field(&DebugAt(k, self.1))
            .field(&DebugAt(v, self.1))
            .finish()
    }
}

impl fmt::Debug for DebugAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DebugAt(value, depth) = *self;
        let deeper = depth.saturating_add(1);
        match value {
            Value::Null => f.write_str("Null"),
            Value::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            Value::Int(i) => f.debug_tuple("Int").field(i).finish(),
            Value::Float(x) => f.debug_tuple("Float").field(x).finish(),
            Value::Str(s) => f.debug_tuple("Str").field(s).finish(),
            Value::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            Value::List(_) if depth > DEFAULT_MAX_DEPTH => f.write_str("List([..])"),
            Value::Map(_) if depth > DEFAULT_MAX_DEPTH => f.write_str("Map([..])"),
            Value::List(items) => {
                let items = DebugWith(|f: &mut fmt::Formatter<'_>| {
                    f.debug_list()
                        .entries(items.iter().map(|item| DebugAt(item, deeper)))
                        .finish()
                });
                f.debug_tuple("List").field(&items).finish()
            }
            Value::Map(entries) => {
                let entries = DebugWith(|f: &mut fmt::Formatter<'_>| {
                    f.debug_list()
                        .entries(entries.iter().map(|entry| DebugEntry(entry, deeper)))
                        .finish()
                });
                f.debug_tuple("Map").field(&entries).finish()
            }
        }
    }
}

/// `Debug` by a closure.
struct DebugWith<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Debug for DebugWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DebugAt(self, 1).fmt(f)
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
