//! The codec writes and reads the most frequent small frames (`Yield`, `Credit`, `Return` of a
//! scalar, ...) without bincode. It must agree with bincode: the same bytes for every message it
//! writes; and whatever body it is given, the same message when bincode decodes the whole body,
//! an error when bincode fails or leaves bytes over.
//!
//! bincode is the reference here, called directly (for decoding, with the limit the codec gives
//! bodies this small).

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

/// The frame bincode writes for `msg`: the length prefix, then the body.
fn reference_frame(msg: &Msg) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(msg, bincode::config::standard())
        .expect("bincode encodes every message");
    let len = u32::try_from(body.len()).expect("a small body");
    [&len.to_le_bytes()[..], &body].concat()
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
    fn small_frames_are_written_as_bincode_writes_them(msg in small_msg()) {
        prop_assert_eq!(bytes_of(&msg), reference_frame(&msg));
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

/// Every number at the edges of bincode's forms, in every field, written as bincode writes it.
#[test]
fn numbers_at_every_edge_are_written_as_bincode_writes_them() {
    let edges = [
        0u64,
        1,
        250,
        251,
        65_535,
        65_536,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        u64::MAX,
    ];
    let ints = [0i64, 1, -1, 125, -126, 32_767, -32_768, i64::MAX, i64::MIN];
    let mut checked = 0;
    for &n in &edges {
        let cid = Cid(n);
        let count = u32::try_from(n).unwrap_or(u32::MAX);
        let mut msgs = vec![
            Msg::StartAck { cid },
            Msg::Stop { cid },
            Msg::Cancel { cid },
            Msg::Credit {
                cid,
                n: count,
                consumed: n,
            },
        ];
        for &i in &ints {
            msgs.push(Msg::Yield {
                cid,
                value: Value::Int(i),
            });
        }
        let long = "x".repeat(usize::try_from(n.min(70_000)).expect("small"));
        msgs.push(Msg::Return {
            cid,
            value: Value::Str(long.clone()),
        });
        msgs.push(Msg::Started {
            cid,
            value: Value::Bytes(long.into_bytes()),
        });
        msgs.push(Msg::Yield {
            cid,
            value: Value::Float(f64::NAN),
        });
        for msg in &msgs {
            assert_eq!(bytes_of(msg), reference_frame(msg), "{msg:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, edges.len() * 16);
}

/// What the small writer leaves to bincode still fails as bincode makes it fail: a frame over
/// the limit, a value deeper than the limit.
#[test]
fn limits_hold_for_small_frames_too() {
    let tiny = CodecConfig {
        max_frame: 8,
        ..CodecConfig::default()
    };
    let long = Msg::Yield {
        cid: Cid(1),
        value: Value::Str("more than eight bytes".into()),
    };
    assert!(matches!(
        codec::encode(&long, &tiny),
        Err(codec::EncodeError::TooLarge { max: 8, .. })
    ));
    let mut buf = vec![7u8];
    assert!(codec::encode_into(&long, &tiny, &mut buf).is_err());
    assert_eq!(buf, [7], "a failed encode leaves the buffer as it was");
    let flat = CodecConfig {
        max_depth: 0,
        ..CodecConfig::default()
    };
    assert!(matches!(
        codec::encode(
            &Msg::Return {
                cid: Cid(2),
                value: Value::Null
            },
            &flat
        ),
        Err(codec::EncodeError::TooDeep { limit: 0 })
    ));
    assert!(codec::encode(&Msg::Stop { cid: Cid(2) }, &flat).is_ok());
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
