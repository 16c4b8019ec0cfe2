//! Feeds arbitrary bytes to the frame decoder, whole and in pieces: it must return a message or a
//! typed error, never panic, overflow its stack or loop; and decoding a body must agree with
//! bincode's own decoder (the codec reads small frames without it).
#![no_main]

use harrow_ipc::codec::{self, CodecConfig, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = CodecConfig {
        max_frame: 1 << 20,
        ..CodecConfig::default()
    };
    if let Ok((msg, used)) = codec::decode_frame_with(data, &config) {
        assert!(used <= data.len());
        // Whatever decodes must encode and decode back to itself (up to NaN payloads).
        if let Ok(frame) = codec::encode(&msg, &config) {
            assert!(codec::decode_frame_with(&frame, &config).is_ok());
        }
    }
    let ours = codec::decode_body(data, &config);
    if data.len() <= 0x1000 {
        // The limit the codec gives bincode for bodies this small.
        let limit = bincode::config::standard().with_limit::<0x1_0000>();
        let theirs = match bincode::serde::decode_from_slice::<harrow_ipc::Msg, _>(data, limit) {
            Ok((msg, used)) if used == data.len() => Some(msg),
            _ => None,
        };
        match (ours, theirs) {
            (Ok(ours), Some(theirs)) => assert_eq!(
                codec::encode(&ours, &config).ok(),
                codec::encode(&theirs, &config).ok()
            ),
            (Err(_), None) => {}
            (ours, theirs) => panic!("the codec gave {ours:?}, bincode {theirs:?}"),
        }
    }
    // The streaming decoder, fed in 7-byte pieces.
    let mut decoder = FrameDecoder::new(config);
    for piece in data.chunks(7) {
        decoder.extend(piece);
        loop {
            match decoder.decode_next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(codec::DecodeError::FrameTooLarge { .. }) => return,
                Err(_) => {}
            }
        }
    }
});
