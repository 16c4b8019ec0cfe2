//! Feeds arbitrary bytes to both sides of the peer handshake (the listener reading a connector,
//! the connector reading a listener): each must refuse with a typed error, never panic or loop.
#![no_main]

use futures_lite::future::block_on;
use futures_lite::io::Cursor;
use harrow_runtime_core::discovery::handshake;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let mut with_magic = handshake::MAGIC.to_vec();
    with_magic.extend_from_slice(data);
    for input in [data.to_vec(), with_magic] {
        let out = block_on(handshake::server(
            &mut Cursor::new(input),
            &mut Vec::new(),
            SECRET,
            |_| true,
        ));
        assert!(out.is_err(), "random bytes proved the secret");
    }
    let out = block_on(handshake::client(
        &mut Cursor::new(data.to_vec()),
        &mut Vec::new(),
        SECRET,
        "uid",
    ));
    assert!(out.is_err(), "random bytes proved the secret");
});
