//! `to_value` / `from_value`: the mapping of the serde data model onto `Value`.

use std::collections::{BTreeMap, HashMap};

use harrow_ipc::{Value, ValueError, from_value, from_value_ref, to_value};
use serde::{Deserialize, Serialize};

fn s(x: &str) -> Value {
    Value::Str(x.to_owned())
}

fn round_trip<T>(x: &T) -> T
where
    T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let v = to_value(x).unwrap();
    let back: T = from_value(v.clone()).unwrap();
    assert_eq!(&back, x, "through {v:?}");
    back
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: f64,
    label: String,
    tags: Vec<String>,
    parent: Option<Box<Point>>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Poly {
        points: Vec<(i64, i64)>,
        closed: bool,
    },
}

#[test]
fn structs_become_maps_with_str_keys_in_field_order() {
    let p = Point {
        x: -3,
        y: 1.5,
        label: "a".into(),
        tags: vec!["t".into()],
        parent: None,
    };
    let v = to_value(&p).unwrap();
    assert_eq!(
        v,
        Value::Map(vec![
            (s("x"), Value::Int(-3)),
            (s("y"), Value::Float(1.5)),
            (s("label"), s("a")),
            (s("tags"), Value::List(vec![s("t")])),
            (s("parent"), Value::Null),
        ])
    );
    round_trip(&p);
    round_trip(&Point {
        parent: Some(Box::new(Point {
            x: 1,
            y: 0.0,
            label: String::new(),
            tags: vec![],
            parent: None,
        })),
        ..p
    });
}

#[test]
fn enums_are_a_name_or_a_one_entry_map() {
    assert_eq!(to_value(&Shape::Empty).unwrap(), s("Empty"));
    assert_eq!(
        to_value(&Shape::Circle(2.0)).unwrap(),
        Value::Map(vec![(s("Circle"), Value::Float(2.0))])
    );
    assert_eq!(
        to_value(&Shape::Rect(1, 2)).unwrap(),
        Value::Map(vec![(
            s("Rect"),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        )])
    );
    let poly = Shape::Poly {
        points: vec![(0, 0), (1, -1)],
        closed: true,
    };
    let v = to_value(&poly).unwrap();
    let payload = v.get("Poly").unwrap();
    assert_eq!(payload.get("closed"), Some(&Value::Bool(true)));
    for shape in [Shape::Empty, Shape::Circle(-0.5), Shape::Rect(7, 8), poly] {
        round_trip(&shape);
    }
}

#[test]
fn unknown_variant_and_wrong_shapes_are_errors() {
    assert!(from_value::<Shape>(s("Hexagon")).is_err());
    assert!(from_value::<Shape>(Value::Int(3)).is_err());
    assert!(
        from_value::<Shape>(s("Circle")).is_err(),
        "newtype variant without payload"
    );
    let two = Value::Map(vec![
        (s("Empty"), Value::Null),
        (s("Circle"), Value::Float(1.0)),
    ]);
    assert!(from_value::<Shape>(two).is_err());
    let err = from_value::<Point>(Value::List(vec![])).unwrap_err();
    assert!(matches!(err, ValueError::Message(_)), "{err:?}");
}

#[test]
fn options_are_null_or_the_value() {
    assert_eq!(to_value(&None::<i32>).unwrap(), Value::Null);
    assert_eq!(to_value(&Some(4u8)).unwrap(), Value::Int(4));
    round_trip(&Some(String::from("x")));
    round_trip(&None::<String>);
    round_trip(&vec![Some(1), None, Some(3)]);
}

#[test]
fn vectors_and_tuples_are_lists() {
    assert_eq!(
        to_value(&(1, "two", 3.0)).unwrap(),
        Value::List(vec![Value::Int(1), s("two"), Value::Float(3.0)])
    );
    round_trip(&vec![vec![1u16, 2], vec![], vec![3]]);
    round_trip(&(true, 'c', -1i8, String::from("s")));
}

#[test]
fn maps_keep_any_key_type() {
    let mut m = BTreeMap::new();
    m.insert(3u32, "three".to_owned());
    m.insert(1u32, "one".to_owned());
    assert_eq!(
        to_value(&m).unwrap(),
        Value::Map(vec![(Value::Int(1), s("one")), (Value::Int(3), s("three"))])
    );
    round_trip(&m);
    let mut h: HashMap<(i32, bool), Vec<u8>> = HashMap::new();
    h.insert((1, true), vec![1, 2]);
    h.insert((-1, false), vec![]);
    round_trip(&h);
}

#[test]
fn byte_strings_are_bytes() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        plain: Vec<u8>,
    }
    let blob = Blob {
        data: vec![0, 255, 7],
        plain: vec![1, 2],
    };
    let v = to_value(&blob).unwrap();
    assert_eq!(v.get("data"), Some(&Value::Bytes(vec![0, 255, 7])));
    assert_eq!(
        v.get("plain"),
        Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
    );
    round_trip(&blob);
    // Bytes from a peer also fill a plain `Vec<u8>`.
    let from_peer = Value::Map(vec![
        (s("data"), Value::Bytes(vec![9])),
        (s("plain"), Value::Bytes(vec![8, 7])),
    ]);
    let got: Blob = from_value(from_peer).unwrap();
    assert_eq!(got.plain, vec![8, 7]);
}

#[test]
fn borrowing_conversion_borrows_strings_and_bytes() {
    #[derive(Deserialize)]
    struct View<'a> {
        name: &'a str,
        #[serde(borrow, with = "serde_bytes")]
        raw: &'a [u8],
    }
    let v = Value::Map(vec![(s("name"), s("n")), (s("raw"), Value::Bytes(vec![1]))]);
    let view: View<'_> = from_value_ref(&v).unwrap();
    assert_eq!((view.name, view.raw), ("n", &[1u8][..]));
}

#[test]
fn integers_must_fit_in_i64() {
    assert_eq!(to_value(&(i64::MAX as u64)).unwrap(), Value::Int(i64::MAX));
    let err = to_value(&u64::MAX).unwrap_err();
    assert!(
        matches!(err, ValueError::IntegerOutOfRange { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&u64::MAX.to_string()));
    assert_eq!(to_value(&-5i128).unwrap(), Value::Int(-5));
    assert!(to_value(&i128::MIN).is_err());
    assert!(from_value::<u8>(Value::Int(256)).is_err());
    assert!(from_value::<u64>(Value::Int(-1)).is_err());
    assert_eq!(from_value::<u64>(Value::Int(7)).unwrap(), 7);
}

#[test]
fn value_converts_to_itself() {
    let v = Value::Map(vec![
        (
            Value::Int(1),
            Value::List(vec![Value::Null, Value::Bytes(vec![1])]),
        ),
        (
            s("k"),
            Value::Map(vec![(Value::Bool(true), Value::Float(0.5))]),
        ),
    ]);
    assert_eq!(to_value(&v).unwrap(), v);
    assert_eq!(from_value::<Value>(v.clone()).unwrap(), v);
}

#[test]
fn value_in_json_takes_its_natural_form() {
    let v = Value::Map(vec![(
        s("a"),
        Value::List(vec![Value::Int(1), Value::Null]),
    )]);
    let json = serde_json::to_string(&v).unwrap();
    assert_eq!(json, r#"{"a":[1,null]}"#);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
}

fn nested(depth: usize) -> Value {
    let mut v = Value::Int(0);
    for _ in 1..depth {
        v = Value::List(vec![v]);
    }
    v
}

#[test]
fn nesting_beyond_the_limit_is_an_error_not_a_stack_overflow() {
    let limit = harrow_ipc::DEFAULT_MAX_DEPTH;
    let ok = nested(limit);
    assert_eq!(from_value::<Value>(ok.clone()).unwrap(), ok);
    assert_eq!(to_value(&ok).unwrap(), ok);
    let deep = nested(limit + 1);
    assert!(from_value::<Value>(deep.clone()).is_err());
    assert!(to_value(&deep).is_err());
    let err = from_value::<serde::de::IgnoredAny>(deep.clone()).unwrap_err();
    assert_eq!(err, ValueError::TooDeep { limit });
    // JSON goes through the same guard.
    let json = "[".repeat(limit + 1) + &"]".repeat(limit + 1);
    assert!(serde_json::from_str::<Value>(&json).is_err());
}
