//! Golden bytes: the wire encoding of every message kind is pinned to checked-in frames.
//!
//! Two harrow builds talk if their `PROTOCOL_VERSION`s are equal (the `Hello` check), so any change
//! to how a message encodes — a reordered `Msg` or `Value` variant, a field added, removed or
//! reordered, a changed codec setting — must come with a new protocol version. This test fails
//! when the encoding of any message differs from `tests/golden/frames.hex` while the version
//! recorded there is still the current one.
//!
//! To change the wire on purpose: bump `PROTOCOL_VERSION` in `ipc/src/msg.rs`, update
//! `docs/PROTOCOL.md`, then rewrite the file with
//! `HARROW_BLESS_GOLDEN=1 cargo test -p harrow-ipc --test codec_golden` and commit it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use harrow_ipc::codec::{self, CodecConfig};
use harrow_ipc::{
    ActorId, CallKind, Cid, ErrorKind, FnPath, Msg, PROTOCOL_VERSION, RemoteError, Value,
};

const BLESS_ENV: &str = "HARROW_BLESS_GOLDEN";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/frames.hex")
}

fn bless_command() -> String {
    format!("{BLESS_ENV}=1 cargo test -p harrow-ipc --test codec_golden")
}

fn actor(name: &str) -> ActorId {
    ActorId::with_uid(name, format!("{name}-uid"))
}

fn path(s: &str) -> FnPath {
    FnPath::parse(s).expect("a valid path")
}

/// One value of every `Value` variant, nested.
fn every_value() -> Value {
    Value::List(vec![
        Value::Null,
        Value::Bool(true),
        Value::Int(-2),
        Value::Float(1.5),
        Value::Str("é".into()),
        Value::Bytes(vec![0, 255]),
        Value::List(vec![]),
        Value::Map(vec![(Value::Str("k".into()), Value::Int(300))]),
    ])
}

fn error(kind: ErrorKind) -> RemoteError {
    RemoteError::new(kind, "T", "m", actor("src"))
}

/// The `Msg` variant's position; an exhaustive match, so a new variant does not compile here
/// until it has a sample below.
fn variant_index(msg: &Msg) -> usize {
    match msg {
        Msg::Hello { .. } => 0,
        Msg::Start { .. } => 1,
        Msg::StartAck { .. } => 2,
        Msg::Started { .. } => 3,
        Msg::Yield { .. } => 4,
        Msg::Credit { .. } => 5,
        Msg::Stop { .. } => 6,
        Msg::Return { .. } => 7,
        Msg::Error { .. } => 8,
        Msg::Cancel { .. } => 9,
        Msg::CancelActor { .. } => 10,
        Msg::CancelAck { .. } => 11,
        Msg::Heartbeat => 12,
        Msg::StopReading { .. } => 13,
    }
}
const MSG_VARIANTS: usize = 14;

/// Every ErrorKind the wire knows, in declaration order.
const ERROR_KINDS: [ErrorKind; 8] = [
    ErrorKind::Raised,
    ErrorKind::Cancelled,
    ErrorKind::NotFound,
    ErrorKind::ModuleNotExposed,
    ErrorKind::BadArguments,
    ErrorKind::Protocol,
    ErrorKind::Runtime,
    ErrorKind::Group,
];

/// Named samples: every `Msg` variant at least once, every `CallKind`, every `ErrorKind`, every
/// `Value` variant, and every field of `RemoteError` filled.
fn samples() -> Vec<(String, Msg)> {
    let mut out: Vec<(String, Msg)> = vec![
        (
            "hello".into(),
            Msg::Hello {
                actor: actor("root"),
                protocol: PROTOCOL_VERSION,
                pid: 4242,
                backend: "thread".into(),
            },
        ),
        (
            "start_unary".into(),
            Msg::Start {
                cid: Cid(2),
                func: path("pkg.mod:double"),
                kind: CallKind::Unary,
                args: Value::Int(21),
            },
        ),
        (
            "start_context".into(),
            Msg::Start {
                cid: Cid(3),
                func: path("m:ctx"),
                kind: CallKind::Context,
                args: every_value(),
            },
        ),
        ("start_ack".into(), Msg::StartAck { cid: Cid(2) }),
        (
            "started".into(),
            Msg::Started {
                cid: Cid(3),
                value: Value::Str("first".into()),
            },
        ),
        (
            "yield".into(),
            Msg::Yield {
                cid: Cid(1000),
                value: Value::Bytes(vec![1, 2, 3]),
            },
        ),
        (
            "credit".into(),
            Msg::Credit {
                cid: Cid(3),
                n: 64,
                consumed: 1000,
            },
        ),
        ("stop".into(), Msg::Stop { cid: Cid(3) }),
        (
            "return".into(),
            Msg::Return {
                cid: Cid(2),
                value: Value::Int(42),
            },
        ),
        (
            "error_full".into(),
            Msg::Error {
                cid: Some(Cid(5)),
                error: Box::new(
                    RemoteError::cancelled(actor("leaf"), actor("canceller"))
                        .with_traceback("tb line")
                        .relayed_by(actor("mid")),
                ),
            },
        ),
        (
            "error_actor_level".into(),
            Msg::Error {
                cid: None,
                error: Box::new(error(ErrorKind::Runtime)),
            },
        ),
        ("cancel".into(), Msg::Cancel { cid: Cid(7) }),
        (
            "cancel_actor".into(),
            Msg::CancelActor {
                reason: "why".into(),
            },
        ),
        ("cancel_ack".into(), Msg::CancelAck { teardown_ms: None }),
        (
            "cancel_ack_tearing_down".into(),
            Msg::CancelAck {
                teardown_ms: Some(1500),
            },
        ),
        ("heartbeat".into(), Msg::Heartbeat),
        ("stop_reading".into(), Msg::StopReading { cid: Cid(12) }),
        (
            "error_group".into(),
            Msg::Error {
                cid: Some(Cid(11)),
                error: Box::new(RemoteError::group(
                    "2 failures in the nursery of mid",
                    actor("mid"),
                    vec![
                        error(ErrorKind::Raised).relayed_by(actor("mid")),
                        RemoteError::group(
                            "1 failure",
                            actor("sub"),
                            vec![error(ErrorKind::Raised)],
                        )
                        .relayed_by(actor("mid")),
                    ],
                )),
            },
        ),
    ];
    for (i, kind) in ERROR_KINDS.iter().enumerate() {
        out.push((
            format!("error_kind_{i}"),
            Msg::Error {
                cid: Some(Cid(9)),
                error: Box::new(error(*kind)),
            },
        ));
    }
    out
}

struct Golden {
    protocol: u32,
    frames: BTreeMap<String, String>,
}

fn read_golden() -> Result<Golden, String> {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut protocol = None;
    let mut frames = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("# protocol ") {
            protocol = Some(
                v.trim()
                    .parse()
                    .map_err(|e| format!("line {}: {e}", n + 1))?,
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, hex) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {}: expected `name hex`", n + 1))?;
        frames.insert(name.to_owned(), hex.trim().to_owned());
    }
    Ok(Golden {
        protocol: protocol.ok_or("no `# protocol N` line")?,
        frames,
    })
}

fn encode_all() -> Vec<(String, Msg, String)> {
    samples()
        .into_iter()
        .map(|(name, msg)| {
            let frame = codec::encode(&msg, &CodecConfig::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, msg, hex::encode(frame))
        })
        .collect()
}

fn write_golden(encoded: &[(String, Msg, String)]) {
    let mut text = format!(
        "# Golden frames of the harrow wire protocol (ipc/tests/codec_golden.rs).\n\
         # Each line: sample name, then the whole frame (length prefix and body) in hex.\n\
         # Regenerate only together with a PROTOCOL_VERSION bump: {}\n\
         # protocol {PROTOCOL_VERSION}\n",
        bless_command()
    );
    for (name, _, hex) in encoded {
        text.push_str(&format!("{name} {hex}\n"));
    }
    std::fs::write(golden_path(), text).expect("write the golden file");
}

#[test]
fn samples_cover_every_message_variant() {
    let mut seen = [false; MSG_VARIANTS];
    for (_, msg) in samples() {
        seen[variant_index(&msg)] = true;
    }
    let missing: Vec<usize> = (0..MSG_VARIANTS).filter(|i| !seen[*i]).collect();
    assert!(
        missing.is_empty(),
        "no golden sample for Msg variant(s) at position {missing:?}: add one to samples()"
    );
}

/// The wire cannot grow a variant unseen: decoding the first unknown variant index must fail.
/// (An enum variant is its index in bincode's encoding, so a new one is a wire change too.)
#[test]
fn no_variant_beyond_the_known_ones() {
    let cfg = bincode::config::standard();
    let next_kind = ERROR_KINDS.len() as u8;
    assert!(
        bincode::serde::decode_from_slice::<ErrorKind, _>(&[next_kind], cfg).is_err(),
        "ErrorKind has a variant this test does not know: add it to ERROR_KINDS, bump \
         PROTOCOL_VERSION and regenerate the golden file ({})",
        bless_command()
    );
    assert!(
        bincode::serde::decode_from_slice::<CallKind, _>(&[2], cfg).is_err(),
        "CallKind has a new variant: add a sample, bump PROTOCOL_VERSION, regenerate ({})",
        bless_command()
    );
    assert!(
        bincode::serde::decode_from_slice::<Value, _>(&[8], cfg).is_err(),
        "Value has a new variant: add it to every_value(), bump PROTOCOL_VERSION, regenerate ({})",
        bless_command()
    );
    assert!(
        codec::decode_body(&[MSG_VARIANTS as u8], &CodecConfig::default()).is_err(),
        "Msg has a new variant"
    );
}

#[test]
fn encoding_matches_the_golden_frames() {
    let encoded = encode_all();
    if std::env::var_os(BLESS_ENV).is_some() {
        write_golden(&encoded);
        eprintln!("wrote {}", golden_path().display());
        return;
    }
    let golden = read_golden()
        .unwrap_or_else(|e| panic!("golden file: {e}; to create it run {}", bless_command()));
    if golden.protocol != PROTOCOL_VERSION {
        panic!(
            "PROTOCOL_VERSION is {PROTOCOL_VERSION} but the golden frames are of version {}: \
             if the wire change is deliberate and docs/PROTOCOL.md describes it, regenerate them \
             with {} and commit tests/golden/frames.hex",
            golden.protocol,
            bless_command()
        );
    }
    let mut changed = Vec::new();
    for (name, _, hex) in &encoded {
        match golden.frames.get(name) {
            Some(expected) if expected == hex => {}
            Some(expected) => changed.push(format!("  {name}:\n    was {expected}\n    now {hex}")),
            None => changed.push(format!("  {name}: no golden frame")),
        }
    }
    for name in golden.frames.keys() {
        if !encoded.iter().any(|(n, _, _)| n == name) {
            changed.push(format!("  {name}: golden frame without a sample"));
        }
    }
    assert!(
        changed.is_empty(),
        "the wire encoding changed while PROTOCOL_VERSION is still {PROTOCOL_VERSION}:\n{}\n\
         Peers of the same version would misread each other. If the change is deliberate, bump \
         PROTOCOL_VERSION in ipc/src/msg.rs, describe it in docs/PROTOCOL.md and regenerate the \
         golden frames with {}. If it is not, undo it (a reordered Msg, Value or ErrorKind \
         variant, or a changed field, is a wire change).",
        changed.join("\n"),
        bless_command()
    );
}

/// Old frames still decode into the same messages (the decoder agrees with the golden file too).
#[test]
fn golden_frames_decode_to_their_samples() {
    let golden = match read_golden() {
        Ok(g) if g.protocol == PROTOCOL_VERSION => g,
        // `encoding_matches_the_golden_frames` reports a missing or outdated file.
        _ => return,
    };
    for (name, msg) in samples() {
        let Some(hex) = golden.frames.get(&name) else {
            continue;
        };
        let bytes =
            hex::decode(hex).unwrap_or_else(|e| panic!("{name}: bad hex in golden file: {e}"));
        let (decoded, used) = codec::decode_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(used, bytes.len(), "{name}");
        assert_eq!(decoded, msg, "{name}");
    }
}
