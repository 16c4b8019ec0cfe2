//! The codec: every message round-trips, and no input makes the decoder panic, overflow its stack
//! or wait for bytes that are not coming.

use harrow_ipc::codec::{
    self, CodecConfig, DecodeError, EncodeError, FrameDecoder, LENGTH_PREFIX, decode_frame,
    decode_frame_with, encode,
};
use harrow_ipc::{ActorId, CallKind, Cid, ErrorKind, FnPath, Msg, RemoteError, Value};
use proptest::prelude::*;

fn value_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

fn actor_strategy() -> impl Strategy<Value = ActorId> {
    (".{0,10}", "[0-9a-f-]{0,20}").prop_map(|(name, uid)| ActorId::with_uid(name, uid))
}

fn fn_path_strategy() -> impl Strategy<Value = FnPath> {
    (
        "[a-z_][a-z0-9_]{0,5}(\\.[a-z_][a-z0-9_]{0,5}){0,2}",
        "[A-Za-z_][A-Za-z0-9_]{0,8}",
    )
        .prop_map(|(m, f)| FnPath::parse(&format!("{m}:{f}")).expect("generated path is valid"))
}

fn error_strategy() -> impl Strategy<Value = RemoteError> {
    let kind = prop_oneof![
        Just(ErrorKind::Raised),
        Just(ErrorKind::Cancelled),
        Just(ErrorKind::NotFound),
        Just(ErrorKind::ModuleNotExposed),
        Just(ErrorKind::BadArguments),
        Just(ErrorKind::Protocol),
        Just(ErrorKind::Runtime),
        Just(ErrorKind::Group),
    ];
    (
        kind,
        ".{0,10}",
        ".{0,30}",
        ".{0,30}",
        actor_strategy(),
        prop::collection::vec(actor_strategy(), 0..4),
        prop::option::of(actor_strategy()),
    )
        .prop_map(
            |(kind, type_name, message, traceback, source, relay_path, canceller)| RemoteError {
                kind,
                type_name,
                message,
                traceback,
                source,
                relay_path,
                canceller,
                children: Vec::new(),
            },
        )
        .prop_recursive(3, 12, 3, |inner| {
            (inner.clone(), prop::collection::vec(inner, 0..3)).prop_map(|(mut group, children)| {
                group.children = children;
                group
            })
        })
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    let cid = any::<u64>().prop_map(Cid);
    let kind = prop_oneof![Just(CallKind::Unary), Just(CallKind::Context)];
    prop_oneof![
        (actor_strategy(), any::<u32>(), any::<u32>(), ".{0,8}").prop_map(
            |(actor, protocol, pid, backend)| Msg::Hello {
                actor,
                protocol,
                pid,
                backend
            }
        ),
        (cid.clone(), fn_path_strategy(), kind, value_strategy()).prop_map(
            |(cid, func, kind, args)| Msg::Start {
                cid,
                func,
                kind,
                args
            }
        ),
        cid.clone().prop_map(|cid| Msg::StartAck { cid }),
        (cid.clone(), value_strategy()).prop_map(|(cid, value)| Msg::Started { cid, value }),
        (cid.clone(), value_strategy()).prop_map(|(cid, value)| Msg::Yield { cid, value }),
        (cid.clone(), any::<u32>(), any::<u64>()).prop_map(|(cid, n, consumed)| Msg::Credit {
            cid,
            n,
            consumed
        }),
        cid.clone().prop_map(|cid| Msg::Stop { cid }),
        (cid.clone(), value_strategy()).prop_map(|(cid, value)| Msg::Return { cid, value }),
        (prop::option::of(cid.clone()), error_strategy()).prop_map(|(cid, error)| Msg::Error {
            cid,
            error: Box::new(error),
        }),
        cid.prop_map(|cid| Msg::Cancel { cid }),
        ".{0,20}".prop_map(|reason| Msg::CancelActor { reason }),
        prop::option::of(any::<u64>()).prop_map(|teardown_ms| Msg::CancelAck { teardown_ms }),
        Just(Msg::Heartbeat),
        any::<u64>().prop_map(|c| Msg::StopReading { cid: Cid(c) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_msg_round_trips(msg in msg_strategy()) {
        let config = CodecConfig::default();
        let frame = encode(&msg, &config).unwrap();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len + LENGTH_PREFIX, frame.len());
        let (back, used) = decode_frame(&frame).unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_frame(&bytes);
        let _ = codec::decode_body(&bytes, &CodecConfig::default());
        let mut decoder = FrameDecoder::new(CodecConfig::default());
        decoder.extend(&bytes);
        while let Ok(Some(_)) = decoder.decode_next() {}
    }

    #[test]
    fn corrupted_frames_never_panic_the_decoder(
        msg in msg_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut frame = encode(&msg, &CodecConfig::default()).unwrap();
        for (at, byte) in flips {
            let i = at.index(frame.len() - LENGTH_PREFIX) + LENGTH_PREFIX;
            frame[i] = byte;
        }
        let _ = decode_frame(&frame);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_to_the_same_messages(
        msgs in prop::collection::vec(msg_strategy(), 1..8),
        cuts in prop::collection::vec(1usize..64, 1..32),
    ) {
        let config = CodecConfig::default();
        let mut stream = Vec::new();
        for msg in &msgs {
            codec::encode_into(msg, &config, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new(config);
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap().min(rest.len());
            // Alternate between both ways of feeding the decoder.
            if n % 2 == 0 {
                decoder.extend(&rest[..n]);
            } else {
                let buf = decoder.read_buf().unwrap();
                let n = n.min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                decoder.commit(n);
            }
            rest = &rest[n..];
            while let Some(msg) = decoder.decode_next().unwrap() {
                got.push(msg);
            }
        }
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert_eq!(got, msgs);
    }
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

#[test]
fn every_truncation_is_truncated() {
    let msg = Msg::Yield {
        cid: Cid(300),
        value: Value::Str("hello".into()),
    };
    let frame = encode(&msg, &CodecConfig::default()).unwrap();
    for cut in 0..frame.len() {
        assert_eq!(
            decode_frame(&frame[..cut]).unwrap_err(),
            DecodeError::Truncated,
            "cut {cut}"
        );
    }
}

#[test]
fn oversized_length_prefix_is_rejected() {
    let config = CodecConfig {
        max_frame: 1024,
        ..CodecConfig::default()
    };
    let mut frame = 1025u32.to_le_bytes().to_vec();
    frame.push(0);
    assert_eq!(
        decode_frame_with(&frame, &config).unwrap_err(),
        DecodeError::FrameTooLarge {
            len: 1025,
            max: 1024
        }
    );
    let huge = u32::MAX.to_le_bytes();
    assert!(matches!(
        decode_frame(&huge),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    let mut decoder = FrameDecoder::new(config);
    decoder.extend(&frame);
    assert!(matches!(
        decoder.decode_next(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    assert!(matches!(
        decoder.read_buf(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn oversized_message_is_not_encoded() {
    let config = CodecConfig {
        max_frame: 16,
        ..CodecConfig::default()
    };
    let msg = Msg::CancelActor {
        reason: "x".repeat(100),
    };
    let mut buf = vec![1, 2, 3];
    let err = codec::encode_into(&msg, &config, &mut buf).unwrap_err();
    assert!(
        matches!(err, EncodeError::TooLarge { max: 16, .. }),
        "{err:?}"
    );
    assert_eq!(buf, [1, 2, 3], "a failed encode leaves the buffer alone");
}

#[test]
fn garbage_unknown_variants_and_trailing_bytes_are_typed_errors() {
    // Msg has 12 variants: index 200 is unknown.
    assert!(matches!(
        decode_frame(&frame_of(&[200])),
        Err(DecodeError::Malformed(_))
    ));
    // A Value with an unknown variant inside a Yield (Yield = 4, cid = 1, Value tag 9).
    assert!(matches!(
        decode_frame(&frame_of(&[4, 1, 9])),
        Err(DecodeError::Malformed(_))
    ));
    // An empty body.
    assert!(matches!(
        decode_frame(&frame_of(&[])),
        Err(DecodeError::Malformed(_))
    ));
    // CancelAck (11) with no teardown (0: None) followed by a stray byte.
    assert_eq!(
        decode_frame(&frame_of(&[11, 0, 0])).unwrap_err(),
        DecodeError::TrailingBytes(1)
    );
    assert_eq!(
        decode_frame(&frame_of(&[11, 0])).unwrap().0,
        Msg::CancelAck { teardown_ms: None }
    );
    // Invalid UTF-8 in CancelActor's reason (10): length 2, bytes ff ff.
    assert!(matches!(
        decode_frame(&frame_of(&[10, 2, 0xff, 0xff])),
        Err(DecodeError::Malformed(_))
    ));
    // A string that claims far more bytes than the frame holds.
    let mut body = vec![10, 0xfc];
    body.extend_from_slice(&(60u32 << 20).to_le_bytes());
    assert!(matches!(
        decode_frame(&frame_of(&body)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_malformed_frame_does_not_poison_the_stream() {
    let config = CodecConfig::default();
    let mut stream = frame_of(&[200]);
    codec::encode_into(&Msg::CancelAck { teardown_ms: None }, &config, &mut stream).unwrap();
    let mut decoder = FrameDecoder::new(config);
    decoder.extend(&stream);
    assert!(matches!(
        decoder.decode_next(),
        Err(DecodeError::Malformed(_))
    ));
    assert_eq!(
        decoder.decode_next().unwrap(),
        Some(Msg::CancelAck { teardown_ms: None })
    );
    assert_eq!(decoder.decode_next().unwrap(), None);
}

/// The body of a `Yield { cid: 1, value }` with `value` lists nested `depth` deep around an Int.
fn nested_yield_body(depth: usize) -> Vec<u8> {
    let mut body = vec![4, 1];
    for _ in 1..depth {
        body.extend_from_slice(&[6, 1]); // Value::List, one item
    }
    body.extend_from_slice(&[2, 0]); // Value::Int(0)
    body
}

fn nested(depth: usize) -> Value {
    let mut v = Value::Int(0);
    for _ in 1..depth {
        v = Value::List(vec![v]);
    }
    v
}

#[test]
fn hand_built_nesting_matches_the_encoder() {
    let msg = Msg::Yield {
        cid: Cid(1),
        value: nested(3),
    };
    assert_eq!(
        encode(&msg, &CodecConfig::default()).unwrap(),
        frame_of(&nested_yield_body(3))
    );
}

#[test]
fn nesting_up_to_the_limit_decodes_and_deeper_is_too_deep() {
    let config = CodecConfig::default();
    let limit = config.max_depth;
    let (msg, _) = decode_frame(&frame_of(&nested_yield_body(limit))).unwrap();
    assert_eq!(
        msg,
        Msg::Yield {
            cid: Cid(1),
            value: nested(limit)
        }
    );
    assert_eq!(
        decode_frame(&frame_of(&nested_yield_body(limit + 1))).unwrap_err(),
        DecodeError::TooDeep { limit }
    );
    // Far past any stack: still a typed error.
    assert_eq!(
        decode_frame(&frame_of(&nested_yield_body(1_000_000))).unwrap_err(),
        DecodeError::TooDeep { limit }
    );
    let small = CodecConfig {
        max_depth: 3,
        ..config
    };
    assert!(decode_frame_with(&frame_of(&nested_yield_body(3)), &small).is_ok());
    assert_eq!(
        decode_frame_with(&frame_of(&nested_yield_body(4)), &small).unwrap_err(),
        DecodeError::TooDeep { limit: 3 }
    );
    let too_deep = Msg::Yield {
        cid: Cid(1),
        value: nested(4),
    };
    assert_eq!(
        encode(&too_deep, &small).unwrap_err(),
        EncodeError::TooDeep { limit: 3 }
    );
}

#[test]
fn a_large_announced_frame_grows_the_buffer_only_with_the_bytes_that_arrived() {
    let mut decoder = FrameDecoder::new(CodecConfig::default());
    decoder.extend(&(codec::DEFAULT_MAX_FRAME as u32).to_le_bytes());
    let mut received = LENGTH_PREFIX;
    // Feed 4 MiB of the 64 MiB body in reads as large as the decoder offers; the space it offers
    // never exceeds twice what arrived (plus one read chunk).
    while received < 4 << 20 {
        let space = decoder.read_buf().unwrap().len();
        assert!(
            received + space <= 2 * received + codec::READ_CHUNK,
            "{space} bytes offered after {received} received"
        );
        decoder.commit(space);
        received += space;
        assert_eq!(decoder.decode_next().unwrap(), None);
    }
    assert_eq!(decoder.buffered(), received);
    assert_eq!(
        decoder.pending_frame_len(),
        Some(LENGTH_PREFIX + codec::DEFAULT_MAX_FRAME)
    );
}

#[test]
fn a_handshaking_decoder_refuses_large_frames_until_the_handshake_ends() {
    let config = CodecConfig {
        max_handshake_frame: 100,
        ..CodecConfig::default()
    };
    let big = Msg::CancelActor {
        reason: "x".repeat(500),
    };
    let frame = encode(&big, &config).unwrap();
    let mut decoder = FrameDecoder::handshaking(config);
    assert!(decoder.is_handshaking());
    decoder.extend(&frame);
    let err = decoder.decode_next().unwrap_err();
    assert_eq!(
        err,
        DecodeError::HandshakeFrameTooLarge {
            len: (frame.len() - LENGTH_PREFIX) as u64,
            max: 100
        }
    );
    assert!(err.to_string().contains("before the handshake"), "{err}");
    // A banner where the first frame should be: said as such, before the general limit.
    let mut decoder = FrameDecoder::handshaking(config);
    decoder.extend(b"login: welcome\n");
    let err = decoder.decode_next().unwrap_err();
    assert!(
        matches!(err, DecodeError::HandshakeFrameTooLarge { .. })
            && err.to_string().contains("\"logi\"")
            && err.to_string().contains("banner"),
        "{err}"
    );
    assert!(matches!(
        decoder.read_buf(),
        Err(DecodeError::HandshakeFrameTooLarge { .. })
    ));
    // Small frames pass; once the handshake ends, large ones too.
    let mut decoder = FrameDecoder::handshaking(config);
    let small = encode(&Msg::CancelAck { teardown_ms: None }, &config).unwrap();
    decoder.extend(&small);
    decoder.extend(&frame);
    assert_eq!(
        decoder.decode_next().unwrap(),
        Some(Msg::CancelAck { teardown_ms: None })
    );
    decoder.end_handshake();
    assert!(!decoder.is_handshaking());
    assert_eq!(decoder.decode_next().unwrap(), Some(big));
    // The absolute maximum still wins over a larger pre-handshake one.
    let tiny_max = CodecConfig {
        max_frame: 10,
        max_handshake_frame: 1000,
        ..CodecConfig::default()
    };
    let mut decoder = FrameDecoder::handshaking(tiny_max);
    decoder.extend(&20u32.to_le_bytes());
    assert_eq!(
        decoder.decode_next().unwrap_err(),
        DecodeError::FrameTooLarge { len: 20, max: 10 }
    );
}
