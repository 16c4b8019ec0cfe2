//! A `Value` nested far deeper than any stack allows (100,000 levels) can be built, dropped,
//! cloned, compared, measured, printed and refused by serde and the codec without recursing.
//!
//! Each check runs on a thread with a 1 MiB stack: recursing once per level would need several
//! times that.

use harrow_ipc::codec::{self, CodecConfig, EncodeError};
use harrow_ipc::{Cid, DEFAULT_MAX_DEPTH, Msg, Value, ValueError, from_value, to_value};

const DEEP: usize = 100_000;

/// Runs `f` on a thread with a small stack, so that recursion per level would overflow it.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// Lists nested `depth` deep around an Int (depth 1 is the Int itself).
fn nested_list(depth: usize) -> Value {
    let mut v = Value::Int(7);
    for _ in 1..depth {
        v = Value::List(vec![Value::Null, v]);
    }
    v
}

/// Maps nested `depth` deep, alternating the deep side between key and value.
fn nested_map(depth: usize) -> Value {
    let mut v = Value::Str("leaf".into());
    for level in 1..depth {
        v = if level % 2 == 0 {
            Value::Map(vec![(v, Value::Int(0))])
        } else {
            Value::Map(vec![(Value::Str("k".into()), v)])
        };
    }
    v
}

#[test]
fn dropping_a_deep_value_does_not_recurse() {
    on_small_stack(|| {
        drop(nested_list(DEEP));
        drop(nested_map(DEEP));
        // Wide and deep at once.
        let wide = Value::List((0..100).map(|_| nested_list(2_000)).collect());
        drop(wide);
    });
}

#[test]
fn cloning_and_comparing_a_deep_value_do_not_recurse() {
    on_small_stack(|| {
        for make in [nested_list, nested_map] {
            let v = make(DEEP);
            let copy = v.clone();
            assert!(copy == v);
            assert_eq!(copy.depth(), DEEP);
            let other = make(DEEP - 1);
            assert!(other != v);
        }
        // A difference at the very bottom is found.
        let mut a = Value::Int(1);
        let mut b = Value::Int(2);
        for _ in 0..DEEP {
            a = Value::List(vec![a]);
            b = Value::List(vec![b]);
        }
        assert!(a != b);
    });
}

#[test]
fn depth_is_measured_without_recursion_and_checked_against_a_limit() {
    on_small_stack(|| {
        let deep = nested_list(DEEP);
        assert_eq!(deep.depth(), DEEP);
        assert_eq!(
            deep.check_depth(DEFAULT_MAX_DEPTH),
            Err(ValueError::TooDeep {
                limit: DEFAULT_MAX_DEPTH
            })
        );
        assert_eq!(nested_map(DEEP).depth(), DEEP);
    });
    assert_eq!(Value::Int(1).depth(), 1);
    assert_eq!(Value::List(vec![]).depth(), 1);
    assert_eq!(Value::List(vec![Value::Null]).depth(), 2);
    // A scalar is 1 deep against any limit, as a container is.
    assert_eq!(Value::Int(1).check_depth(1), Ok(()));
    assert_eq!(
        Value::Str("x".into()).check_depth(0),
        Err(ValueError::TooDeep { limit: 0 })
    );
    assert_eq!(Value::List(vec![]).check_depth(1), Ok(()));
    assert_eq!(
        Value::List(vec![]).check_depth(0),
        Err(ValueError::TooDeep { limit: 0 })
    );
    let at_limit = nested_list(DEFAULT_MAX_DEPTH);
    assert_eq!(at_limit.check_depth(DEFAULT_MAX_DEPTH), Ok(()));
    assert!(
        nested_list(DEFAULT_MAX_DEPTH + 1)
            .check_depth(DEFAULT_MAX_DEPTH)
            .is_err()
    );
    // The codec agrees on where the limit lies.
    let msg = |value| Msg::Yield { cid: Cid(1), value };
    let config = CodecConfig::default();
    assert!(codec::encode(&msg(at_limit), &config).is_ok());
    assert_eq!(
        codec::encode(&msg(nested_list(DEFAULT_MAX_DEPTH + 1)), &config).unwrap_err(),
        EncodeError::TooDeep {
            limit: DEFAULT_MAX_DEPTH
        }
    );
}

#[test]
fn debug_prints_a_deep_value_with_the_depth_elided() {
    let text = on_small_stack(|| format!("{:?}", nested_list(DEEP)));
    assert!(text.contains("List([..])"), "{}", &text[..200]);
    assert_eq!(text.matches("List(").count(), DEFAULT_MAX_DEPTH + 1);
    let pretty = on_small_stack(|| format!("{:#?}", nested_map(DEEP)));
    assert!(pretty.contains("Map([..])"));
}

#[test]
fn debug_of_ordinary_values_keeps_the_derived_form() {
    let v = Value::Map(vec![
        (
            Value::Str("a".into()),
            Value::List(vec![Value::Int(1), Value::Null]),
        ),
        (Value::Bool(true), Value::Bytes(vec![1, 2])),
        (Value::Float(0.5), Value::List(vec![])),
    ]);
    assert_eq!(
        format!("{v:?}"),
        r#"Map([(Str("a"), List([Int(1), Null])), (Bool(true), Bytes([1, 2])), (Float(0.5), List([]))])"#
    );
    assert_eq!(
        format!("{:#?}", Value::List(vec![Value::Int(1)])),
        "List(\n    [\n        Int(\n            1,\n        ),\n    ],\n)"
    );
}

#[test]
fn serde_and_the_codec_refuse_a_deep_value_without_recursing() {
    on_small_stack(|| {
        let deep = nested_list(DEEP);
        assert!(serde_json::to_string(&deep).is_err());
        assert!(to_value(&deep).is_err());
        assert!(from_value::<Value>(deep.clone()).is_err());
        let msg = Msg::Return {
            cid: Cid(3),
            value: deep,
        };
        assert!(matches!(
            codec::encode(&msg, &CodecConfig::default()),
            Err(EncodeError::TooDeep { .. })
        ));
    });
}

#[test]
fn contents_move_out_through_the_into_methods() {
    assert_eq!(
        Value::List(vec![Value::Int(1)]).into_list(),
        Ok(vec![Value::Int(1)])
    );
    assert_eq!(Value::Int(1).into_list(), Err(Value::Int(1)));
    assert_eq!(
        Value::Map(vec![(Value::Null, Value::Null)]).into_map(),
        Ok(vec![(Value::Null, Value::Null)])
    );
    assert_eq!(Value::from("s").into_string(), Ok("s".to_owned()));
    assert_eq!(Value::Bytes(vec![9]).into_bytes(), Ok(vec![9]));
    assert_eq!(Value::Null.into_bytes(), Err(Value::Null));
}
