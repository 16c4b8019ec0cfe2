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

/// Writes a `Value` as JSON text: bytes become an array of numbers, map keys that are not
/// strings are written as their JSON text. A non-finite float is written as Python's `json`
/// module writes it (`NaN`, `Infinity`, `-Infinity`): never silently turned into `null`.
pub(crate) fn to_json_text(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => out.push_str(
            &serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
        ),
        Value::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
        Value::Bytes(b) => write_seq(b.iter().map(|x| Value::Int(i64::from(*x))), out),
        Value::List(items) => write_seq(items.iter().cloned(), out),
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match k {
                    Value::Str(s) => s.clone(),
                    other => to_json_text(other),
                };
                out.push_str(&serde_json::Value::from(key).to_string());
                out.push(':');
                write_json(v, out);
            }
            out.push('}');
        }
    }
}

fn write_seq(items: impl Iterator<Item = Value>, out: &mut String) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json(&item, out);
    }
    out.push(']');
}

/// Refuses integer literals (no fraction, no exponent) outside the signed 64-bit range in JSON
/// `text`: serde_json would read them as floats and lose digits silently
/// (`99999999999999999999999` as `1e23`).
pub(crate) fn check_int_literals(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_digit()
                    || matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                i += 1;
            }
            let literal = &text[start..i];
            let is_int = !literal.contains(['.', 'e', 'E']);
            if is_int && literal != "-" && literal.parse::<i64>().is_err() {
                return Err(format!(
                    "the integer {literal} does not fit in 64 signed bits (harrow integers are \
                     i64; pass a float like {literal}.0 or a string to keep it)"
                ));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}
