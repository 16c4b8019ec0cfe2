//! [`PyArgs`]: a Python call's positional value plus keyword arguments, carried as one `Value`.

use harrow_ipc::Value;

/// The key of the positional value in an encoded [`PyArgs`].
pub const ARGS_KEY: &str = "harrow:args";
/// The key of the keyword arguments in an encoded [`PyArgs`].
pub const KWARGS_KEY: &str = "harrow:kwargs";

/// The arguments of a Python call with keyword arguments: the one positional value (`Null`: no
/// positional argument, as for a plain call) and named arguments.
///
/// A call's arguments are one `Value` on the wire, so `PyArgs` encodes as a map of exactly two
/// entries, `{"harrow:args": args, "harrow:kwargs": {name: value, ...}}`, in that order; a subint
/// actor calls `f(args, **kwargs)` (`f(**kwargs)` when `args` is `Null`). Any other value is the
/// positional value itself, so a plain dict argument is never taken for keyword arguments
/// unless it is exactly such a map.
///
/// ```
/// use harrow_ipc::Value;
/// use harrow_python::PyArgs;
/// let v = PyArgs::new(Value::Int(3)).kwarg("scale", Value::Float(0.5)).into_value();
/// assert_eq!(PyArgs::decode(&v).unwrap().kwargs.len(), 1);
/// // Without keyword arguments it is the positional value itself.
/// assert_eq!(PyArgs::new(Value::Int(3)).into_value(), Value::Int(3));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PyArgs {
    /// The positional value (`Null`: none).
    pub args: Value,
    /// Keyword arguments, in order.
    pub kwargs: Vec<(String, Value)>,
}

impl PyArgs {
    /// Arguments with positional value `args` and no keyword argument yet.
    pub fn new(args: Value) -> Self {
        PyArgs {
            args,
            kwargs: Vec::new(),
        }
    }

    /// Adds keyword argument `name`.
    pub fn kwarg(mut self, name: impl Into<String>, value: Value) -> Self {
        self.kwargs.push((name.into(), value));
        self
    }

    /// The call's `Value`: the positional value itself when there is no keyword argument, else
    /// the two-entry map described on the type.
    pub fn into_value(self) -> Value {
        if self.kwargs.is_empty() {
            return self.args;
        }
        Value::Map(vec![
            (Value::from(ARGS_KEY), self.args),
            (
                Value::from(KWARGS_KEY),
                Value::Map(
                    self.kwargs
                        .into_iter()
                        .map(|(k, v)| (Value::Str(k), v))
                        .collect(),
                ),
            ),
        ])
    }

    /// Decodes a call's `Value` that carries keyword arguments; `None` when it is a plain
    /// positional value (or a map that is not exactly the encoding, or has a non-string name).
    pub fn decode(v: &Value) -> Option<PyArgs> {
        let (args, kwargs) = split(v)?;
        let kwargs = kwargs
            .iter()
            .map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v.clone())))
            .collect::<Option<Vec<_>>>()?;
        Some(PyArgs {
            args: args.clone(),
            kwargs,
        })
    }
}

/// The positional value and the keyword entries of an encoded [`PyArgs`], without copying.
pub(crate) fn split(v: &Value) -> Option<(&Value, &[(Value, Value)])> {
    let Value::Map(entries) = v else { return None };
    match entries.as_slice() {
        [(ka, args), (kk, Value::Map(kwargs))]
            if ka.as_str() == Some(ARGS_KEY) && kk.as_str() == Some(KWARGS_KEY) =>
        {
            Some((args, kwargs))
        }
        _ => None,
    }
}
