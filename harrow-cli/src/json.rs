//! JSON <-> [`Value`] for the command line.

use harrow::Value;

/// Converts JSON to a `Value`: null, bool, integers (i64), floats, strings, arrays, objects
/// (string keys).
pub(crate) fn from_json(j: &serde_json::Value) -> Result<Value, String> {
    Ok(match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_u64() {
                return Err(format!("the integer {n} does not fit in 64 signed bits"));
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(a) => {
            Value::List(a.iter().map(from_json).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| Ok((Value::Str(k.clone()), from_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Converts a `Value` to JSON: bytes become an array of numbers, map keys that are not strings
/// are written as their JSON text, a non-finite float becomes null.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Str(s) => s.clone().into(),
        Value::Bytes(b) => b.iter().map(|x| serde_json::Value::from(*x)).collect(),
        Value::List(items) => items.iter().map(to_json).collect(),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}
