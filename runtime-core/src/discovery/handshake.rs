//! The peer handshake: proving membership of the tree before a peer link exists.
//!
//! Over a freshly accepted unix socket, before any harrow frame, the two sides prove that they
//! know the tree's secret by HMAC-SHA256 over fresh nonces from both sides (`docs/PROTOCOL.md`,
//! "Peer handshake"):
//!
//! ```text
//! client (connector)                                  server (listener)
//!   MAGIC(8) nonce_c(32)                          ->
//!                                                 <-  nonce_s(32) mac_s(32)
//!   mac_c(32) len(2, big-endian) target uid(len)  ->
//!                                                 <-  status(1)
//!   transport(1) [+ shared-memory segment]        ->                 then harrow frames
//! mac_s = HMAC(secret, "harrow-peer/server" | nonce_c | nonce_s)
//! mac_c = HMAC(secret, "harrow-peer/client" | nonce_c | nonce_s | len | uid)
//! ```
//!
//! Both MACs are checked in constant time (`Mac::verify_slice`). A replayed client message fails
//! because the server's nonce is new for every connection; a replayed server message fails
//! because the client's is.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The first bytes a connector sends: the handshake's name and version.
pub const MAGIC: &[u8; 8] = b"HRWPEER2";
/// Length of each nonce and MAC.
pub const NONCE_LEN: usize = 32;
/// The longest target uid a server accepts.
pub const MAX_UID_LEN: usize = 256;

/// The server's last byte: the target actor was found and the link may start.
pub const STATUS_OK: u8 = 0;
/// The server's last byte: the client proved the secret but no such actor lives here.
pub const STATUS_UNKNOWN_TARGET: u8 = 1;

/// Why a peer handshake was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The connection ended or failed before the handshake finished.
    #[error("peer handshake: i/o failed: {0}")]
    Io(String),
    /// The first bytes are not this handshake (another program, or another version).
    #[error("peer handshake: bad magic (not a harrow peer, or another handshake version)")]
    BadMagic,
    /// The peer's MAC does not prove the tree's secret (wrong secret, or a replayed handshake).
    #[error("peer handshake: the {0} did not prove the tree secret (wrong secret or replay)")]
    BadMac(&'static str),
    /// The target uid is empty, too long or not UTF-8.
    #[error("peer handshake: malformed target uid ({0})")]
    BadTarget(String),
    /// The server knows the secret, but serves no actor with that uid.
    #[error("peer handshake: no actor with uid {0} in that process")]
    UnknownTarget(String),
    /// The server sent a status byte this side does not know.
    #[error("peer handshake: unknown status byte {0}")]
    BadStatus(u8),
}

fn io_err(e: std::io::Error) -> HandshakeError {
    HandshakeError::Io(e.to_string())
}

/// `nonce_len` fresh random bytes from the operating system.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| HandshakeError::Io(format!("no randomness: {e}")))?;
    Ok(n)
}

fn mac(secret: &[u8], label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(label);
    for p in parts {
        m.update(p);
    }
    m
}

const SERVER_LABEL: &[u8] = b"harrow-peer/server";
const CLIENT_LABEL: &[u8] = b"harrow-peer/client";

/// The connector's side: proves the secret, checks the server's proof, names the target.
pub async fn client<R, W>(
    r: &mut R,
    w: &mut W,
    secret: &[u8],
    target_uid: &str,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let uid = target_uid.as_bytes();
    if uid.is_empty() || uid.len() > MAX_UID_LEN {
        return Err(HandshakeError::BadTarget(format!("{} bytes", uid.len())));
    }
    let nonce_c = fresh_nonce()?;
    let mut first = Vec::with_capacity(MAGIC.len() + NONCE_LEN);
    first.extend_from_slice(MAGIC);
    first.extend_from_slice(&nonce_c);
    w.write_all(&first).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)?;
    let mut reply = [0u8; NONCE_LEN * 2];
    r.read_exact(&mut reply).await.map_err(io_err)?;
    let (nonce_s, mac_s) = reply.split_at(NONCE_LEN);
    mac(secret, SERVER_LABEL, &[&nonce_c, nonce_s])
        .verify_slice(mac_s)
        .map_err(|_| HandshakeError::BadMac("listener"))?;
    let len = (uid.len() as u16).to_be_bytes();
    let mac_c = mac(secret, CLIENT_LABEL, &[&nonce_c, nonce_s, &len, uid])
        .finalize()
        .into_bytes();
    let mut second = Vec::with_capacity(NONCE_LEN + 2 + uid.len());
    second.extend_from_slice(&mac_c);
    second.extend_from_slice(&len);
    second.extend_from_slice(uid);
    w.write_all(&second).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)?;
    let mut status = [0u8; 1];
    r.read_exact(&mut status).await.map_err(io_err)?;
    match status[0] {
        STATUS_OK => Ok(()),
        STATUS_UNKNOWN_TARGET => Err(HandshakeError::UnknownTarget(target_uid.to_owned())),
        other => Err(HandshakeError::BadStatus(other)),
    }
}

/// The listener's side: checks the connector's proof and returns the target uid it asked for.
/// `known(uid)` says whether this process serves that actor; the status byte tells the client.
pub async fn server<R, W>(
    r: &mut R,
    w: &mut W,
    secret: &[u8],
    known: impl FnOnce(&str) -> bool,
) -> Result<String, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).await.map_err(io_err)?;
    if &magic != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let mut nonce_c = [0u8; NONCE_LEN];
    r.read_exact(&mut nonce_c).await.map_err(io_err)?;
    let nonce_c = &nonce_c[..];
    let nonce_s = fresh_nonce()?;
    let mac_s = mac(secret, SERVER_LABEL, &[nonce_c, &nonce_s])
        .finalize()
        .into_bytes();
    let mut reply = Vec::with_capacity(NONCE_LEN * 2);
    reply.extend_from_slice(&nonce_s);
    reply.extend_from_slice(&mac_s);
    w.write_all(&reply).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)?;
    let mut head = [0u8; NONCE_LEN + 2];
    r.read_exact(&mut head).await.map_err(io_err)?;
    let (mac_c, len) = head.split_at(NONCE_LEN);
    let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if n == 0 || n > MAX_UID_LEN {
        return Err(HandshakeError::BadTarget(format!("{n} bytes")));
    }
    let mut uid = vec![0u8; n];
    r.read_exact(&mut uid).await.map_err(io_err)?;
    mac(secret, CLIENT_LABEL, &[nonce_c, &nonce_s, len, &uid])
        .verify_slice(mac_c)
        .map_err(|_| HandshakeError::BadMac("connector"))?;
    let uid = String::from_utf8(uid).map_err(|_| HandshakeError::BadTarget("not UTF-8".into()))?;
    let found = known(&uid);
    let status = if found {
        STATUS_OK
    } else {
        STATUS_UNKNOWN_TARGET
    };
    w.write_all(&[status]).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)?;
    if found {
        Ok(uid)
    } else {
        Err(HandshakeError::UnknownTarget(uid))
    }
}
