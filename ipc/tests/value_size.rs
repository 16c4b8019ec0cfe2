//! `Value::approx_size`: what a stream's receiver estimates an item holds when it sizes its
//! credit window. Exact for what it counts, stops soon after its cap, and never recurses.

use harrow_ipc::Value;

const ONE: usize = std::mem::size_of::<Value>();

#[test]
fn scalars_strings_and_bytes_count_their_payload() {
    for v in [
        Value::Null,
        Value::Bool(true),
        Value::Int(-3),
        Value::Float(0.5),
    ] {
        assert_eq!(v.approx_size(usize::MAX), ONE, "{v:?}");
    }
    assert_eq!(
        Value::Str("x".repeat(100)).approx_size(usize::MAX),
        ONE + 100
    );
    assert_eq!(Value::Bytes(vec![0; 4096]).approx_size(0), ONE + 4096);
    assert_eq!(Value::List(vec![]).approx_size(usize::MAX), ONE);
}

#[test]
fn containers_count_every_value_in_them() {
    let v = Value::List(vec![
        Value::Int(1),
        Value::Str("abc".into()),
        Value::Map(vec![(Value::Str("k".into()), Value::Bytes(vec![1; 10]))]),
    ]);
    // The list, its three items, the map's key and value.
    assert_eq!(v.approx_size(usize::MAX), 6 * ONE + 3 + 1 + 10);
}

#[test]
fn measuring_stops_once_past_the_cap() {
    let v = Value::List((0..1_000_000).map(Value::Int).collect());
    let got = v.approx_size(1_000);
    assert!(got > 1_000, "{got}");
    assert!(
        got <= 1_000 + ONE,
        "stopped at the first value past the cap: {got}"
    );
    assert_eq!(v.approx_size(usize::MAX), 1_000_001 * ONE);
}

#[test]
fn a_deep_value_is_measured_without_recursing() {
    const DEEP: usize = 100_000;
    let got = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            let mut v = Value::Int(7);
            for _ in 1..DEEP {
                v = Value::List(vec![Value::Null, v]);
            }
            v.approx_size(usize::MAX)
        })
        .expect("spawn")
        .join()
        .expect("no panic");
    // Each level a list and its `Null`, then the innermost int.
    assert_eq!(got, (2 * DEEP - 1) * ONE);
}
