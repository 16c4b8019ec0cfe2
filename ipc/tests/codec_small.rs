//! The codec reads the most frequent small frames (`Yield`, `Credit`, `Return` of a scalar, ...)
//! without bincode. Whatever body it is given, it must agree with bincode: the same message when
//! bincode decodes the whole body, an error when bincode fails or leaves bytes over.
//!
//! bincode is the reference here, called directly with the limit the codec gives bodies this
//! small.

use harrow_ipc::codec::{self, CodecConfig, DecodeError, LENGTH_PREFIX};
use harrow_ipc::{Cid, Msg, Value};
use proptest::prelude::*;

/// What bincode makes of `body`, as the codec reports it: the message, or that it failed.
fn reference(body: &[u8]) -> Option<Msg> {
    assert!(
        body.len() <= 0x1000,
        "the reference uses the limit of small bodies"
    );
    let config = bincode::config::standard().with_limit::<0x1_0000>();
    match bincode::serde::decode_from_slice::<Msg, _>(body, config) {
        Ok((msg, used)) if used == body.len() => Some(msg),
        _ => None,
    }
}

/// The frame's bytes identify the message (its encoding is deterministic), NaN payloads included.
fn bytes_of(msg: &Msg) -> Vec<u8> {
    codec::encode(msg, &CodecConfig::default()).expect("a decoded message encodes")
}

fn assert_agrees(body: &[u8]) {
    let ours = codec::decode_body(body, &CodecConfig::default());
    match (ours, reference(body)) {
        (Ok(ours), Some(theirs)) => assert_eq!(
            bytes_of(&ours),
            bytes_of(&theirs),
            "body {body:02x?}: {ours:?} against bincode's {theirs:?}"
        ),
        (Err(_), None) => {}
        (ours, theirs) => panic!("body {body:02x?}: the codec gave {ours:?}, bincode {theirs:?}"),
    }
}

fn body_of(msg: &Msg) -> Vec<u8> {
    bytes_of(msg)[LENGTH_PREFIX..].to_vec()
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-300i64..300).prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        prop::collection::vec(any::<i64>().prop_map(Value::Int), 0..3).prop_map(Value::List),
    ]
}

fn small_msg() -> impl Strategy<Value = Msg> {
    let cid = prop_oneof![any::<u64>(), 0u64..300, Just(u64::MAX)].prop_map(Cid);
    let count = prop_oneof![any::<u32>(), 0u32..300];
    let total = prop_oneof![any::<u64>(), 0u64..70_000];
    prop_oneof![
        cid.clone().prop_map(|cid| Msg::StartAck { cid }),
        (cid.clone(), scalar()).prop_map(|(cid, value)| Msg::Started { cid, value }),
        (cid.clone(), scalar()).prop_map(|(cid, value)| Msg::Yield { cid, value }),
        (cid.clone(), count, total).prop_map(|(cid, n, consumed)| Msg::Credit { cid, n, consumed }),
        cid.clone().prop_map(|cid| Msg::Stop { cid }),
        (cid.clone(), scalar()).prop_map(|(cid, value)| Msg::Return { cid, value }),
        cid.prop_map(|cid| Msg::Cancel { cid }),
        Just(Msg::Heartbeat),
        Just(Msg::CancelAck {
            teardown_ms: Some(5)
        }),
    ]
}

/// One change to a valid body.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes around bincode's markers (250..=255) and the tags are the interesting ones.
    let byte = prop_oneof![any::<u8>(), 0u8..12, 248u8..=255];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(body: &mut Vec<u8>, edit: &Edit) {
    let len = body.len();
    match *edit {
        Edit::Set(at, b) if len > 0 => body[at % len] = b,
        Edit::Insert(at, b) => body.insert(at % (len + 1), b),
        Edit::Remove(at) if len > 0 => {
            body.remove(at % len);
        }
        Edit::Truncate(at) => body.truncate(at % (len + 1)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn valid_small_frames_decode_as_bincode_decodes_them(msg in small_msg()) {
        let body = body_of(&msg);
        assert_agrees(&body);
        // And they come back as they were sent.
        let decoded = codec::decode_body(&body, &CodecConfig::default()).expect("valid body");
        prop_assert_eq!(bytes_of(&decoded), bytes_of(&msg));
    }

    #[test]
    fn edited_small_frames_decode_as_bincode_decodes_them(
        msg in small_msg(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut body = body_of(&msg);
        for e in &edits {
            apply(&mut body, e);
        }
        assert_agrees(&body);
    }

    #[test]
    fn arbitrary_bodies_decode_as_bincode_decodes_them(
        tag in 0u8..14,
        rest in prop::collection::vec(prop_oneof![any::<u8>(), 248u8..=255, 0u8..8], 0..24),
    ) {
        let mut body = vec![tag];
        body.extend_from_slice(&rest);
        assert_agrees(&body);
    }
}

/// bincode reads a number written in a longer form than it needs (251, 252 and 253 announce 2, 4
/// and 8 bytes), except the 8-byte form where it wants a `u32` (a count, a variant's index).
/// Every field of every small frame, in every form.
#[test]
fn numbers_in_every_form_agree_with_bincode() {
    fn forms(n: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if n <= 250 {
            out.push(vec![n as u8]);
        }
        if let Ok(n) = u16::try_from(n) {
            out.push([&[251u8][..], &n.to_le_bytes()].concat());
        }
        if let Ok(n) = u32::try_from(n) {
            out.push([&[252u8][..], &n.to_le_bytes()].concat());
        }
        out.push([&[253u8][..], &n.to_le_bytes()].concat());
        out.push(vec![254, 0]);
        out.push(vec![255]);
        out
    }
    let mut checked = 0;
    // Fields, in order: the message's tag, then the call id, then per kind.
    for (tag, tail) in [
        (2u64, vec![]),
        (6, vec![]),
        (9, vec![]),
        (5, vec![vec![7u8], vec![9u8]]),
        (4, vec![vec![2u8], vec![6u8]]),
        (4, vec![vec![4u8], vec![1u8, b'x']]),
        (7, vec![vec![1u8], vec![1u8]]),
        (3, vec![vec![0u8]]),
    ] {
        for tag_form in forms(tag) {
            for cid_form in forms(300) {
                let mut body = tag_form.clone();
                body.extend_from_slice(&cid_form);
                for field in &tail {
                    body.extend_from_slice(field);
                }
                assert_agrees(&body);
                checked += 1;
            }
        }
        // Each later field in every form of a few values.
        for (i, _) in tail.iter().enumerate() {
            for n in [
                0u64,
                1,
                250,
                251,
                65_535,
                65_536,
                u32::MAX as u64 + 1,
                u64::MAX,
            ] {
                for form in forms(n) {
                    let mut body = vec![tag as u8, 3];
                    for (j, field) in tail.iter().enumerate() {
                        if i == j {
                            body.extend_from_slice(&form);
                        } else {
                            body.extend_from_slice(field);
                        }
                    }
                    assert_agrees(&body);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} bodies checked");
}

/// Every byte of a body of every small kind (and every kind of scalar), replaced in turn by each
/// of the 256 values, and each body cut short at every length.
#[test]
fn every_single_byte_change_agrees_with_bincode() {
    let cid = Cid(0x1_0203);
    let mut bodies = vec![
        Msg::StartAck { cid },
        Msg::Stop { cid },
        Msg::Cancel { cid },
        Msg::Credit {
            cid,
            n: 300,
            consumed: 70_000,
        },
        Msg::Heartbeat,
    ];
    for value in [
        Value::Null,
        Value::Bool(true),
        Value::Int(-70_000),
        Value::Float(1.5),
        Value::Str("hé".into()),
        Value::Bytes(vec![1, 2]),
        Value::List(vec![Value::Int(1)]),
    ] {
        bodies.push(Msg::Started {
            cid,
            value: value.clone(),
        });
        bodies.push(Msg::Yield {
            cid,
            value: value.clone(),
        });
        bodies.push(Msg::Return { cid, value });
    }
    let mut checked = 0;
    for msg in &bodies {
        let body = body_of(msg);
        for at in 0..body.len() {
            for b in 0..=255u8 {
                let mut changed = body.clone();
                changed[at] = b;
                assert_agrees(&changed);
                checked += 1;
            }
        }
        for len in 0..body.len() {
            assert_agrees(&body[..len]);
        }
    }
    assert!(checked > 50_000, "only {checked} bodies checked");
}

/// A depth limit of 0 admits no value at all: the small reader must not let one through.
#[test]
fn a_depth_limit_of_zero_still_refuses_a_scalar() {
    let config = CodecConfig {
        max_depth: 0,
        ..CodecConfig::default()
    };
    let body = body_of(&Msg::Yield {
        cid: Cid(1),
        value: Value::Int(5),
    });
    assert!(matches!(
        codec::decode_body(&body, &config),
        Err(DecodeError::TooDeep { limit: 0 })
    ));
    let credit = body_of(&Msg::Credit {
        cid: Cid(1),
        n: 4,
        consumed: 9,
    });
    assert!(codec::decode_body(&credit, &config).is_ok());
}
