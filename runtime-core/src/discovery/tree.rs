//! What a tree shares: its secret and its runtime directory; the per-process unix listener and
//! the in-process acceptors of peer links.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_io::Async;
use harrow_ipc::Channel;
use harrow_ipc::wait::deadline;
use serde::{Deserialize, Serialize};

use super::DiscoveryError;
use super::handshake::{self, HandshakeError};

/// How long a listener gives a connector to finish the peer handshake.
pub(crate) const HANDSHAKE_BOUND: Duration = Duration::from_secs(2);

/// The tree's shared facts, created by the root and handed down over each parent channel.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TreeInfo {
    /// Names the tree (hex of 16 random bytes).
    pub(crate) id: String,
    /// The secret every peer handshake proves (32 random bytes).
    pub(crate) secret: Vec<u8>,
    /// The per-tree runtime directory (mode 0700) holding one socket per process.
    pub(crate) dir: PathBuf,
    /// The process that creates `dir`: the root's for the root's host domain, the first
    /// process of any other domain (a child started on another host) for that domain's.
    pub(crate) root_pid: u32,
    /// The host domain this copy describes (hex of 8 random bytes). Actors of one domain reach
    /// each other directly (in memory, or over the sockets in `dir`); other domains are reached
    /// through the tree. An empty `dir` with a new domain, handed to a child on another host,
    /// asks it to start the domain there: it names its own `dir` and creates it.
    #[serde(default)]
    pub(crate) domain: String,
}

impl fmt::Debug for TreeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TreeInfo")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl TreeInfo {
    /// A new tree: fresh id and secret; the directory is only named here (created on first use).
    pub(crate) fn new() -> Result<Self, DiscoveryError> {
        let mut id = [0u8; 16];
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|e| {
                DiscoveryError::Setup(format!("no randomness for the tree secret: {e}"))
            })?;
        let id = hex::encode(id);
        Ok(TreeInfo {
            dir: runtime_base().join(format!("harrow-{}", &id[..16])),
            id,
            secret,
            root_pid: std::process::id(),
            domain: new_domain()?,
        })
    }

    /// What a parent hands to a child that may run on another host: the tree's id and secret,
    /// a new domain, and no directory (the child names and creates its own there).
    pub(crate) fn for_other_host(&self) -> Result<Self, DiscoveryError> {
        Ok(TreeInfo {
            id: self.id.clone(),
            secret: self.secret.clone(),
            dir: PathBuf::new(),
            root_pid: 0,
            domain: new_domain()?,
        })
    }

    /// Checks a copy that came from elsewhere: what a root makes, or [`Self::for_other_host`].
    pub(crate) fn check(&self) -> Result<(), String> {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        if self.id.len() != 32 || !hex(&self.id) {
            return Err(format!(
                "a tree id of {} characters, not 32 hex digits",
                self.id.len()
            ));
        }
        if self.secret.len() != 32 {
            return Err(format!(
                "a tree secret of {} bytes, not 32",
                self.secret.len()
            ));
        }
        if !hex(&self.domain) || self.domain.len() > 16 {
            return Err("a host domain that is not up to 16 hex digits".into());
        }
        Ok(())
    }

    /// Whether this copy asks its receiver to start its domain (see [`TreeInfo::domain`]).
    pub(crate) fn starts_domain(&self) -> bool {
        self.dir.as_os_str().is_empty()
    }

    /// The receiver starts the domain: it names the directory on its host (distinct from the
    /// root's, should both domains share a machine) and becomes the process that creates it.
    pub(crate) fn start_domain(&mut self) {
        let short = &self.domain[..self.domain.len().min(8)];
        let tree = &self.id[..self.id.len().min(16)];
        self.dir = runtime_base().join(format!("harrow-{tree}-{short}"));
        self.root_pid = std::process::id();
    }

    pub(crate) fn socket_path(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("{pid}.sock"))
    }
}

/// Where this host keeps runtime directories: `$XDG_RUNTIME_DIR`, or the temp directory.
fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// A fresh host domain tag: hex of 8 random bytes.
fn new_domain() -> Result<String, DiscoveryError> {
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag)
        .map_err(|e| DiscoveryError::Setup(format!("no randomness for a host domain: {e}")))?;
    Ok(hex::encode(tag))
}

/// Checks that `dir` is a real directory (not a symlink), owned by this user, with no access for
/// group or others. Every process checks before it binds or connects a socket in it.
pub fn check_runtime_dir(dir: &Path) -> Result<(), DiscoveryError> {
    let bad = |reason: String| DiscoveryError::RuntimeDir {
        dir: dir.to_owned(),
        reason,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(format!("cannot stat: {e}")))?;
    if meta.file_type().is_symlink() {
        return Err(bad("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(bad("it is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(bad(format!("owned by uid {}, not {me}", meta.uid())));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!("mode {mode:o} lets others in (must be 0700)")));
    }
    Ok(())
}

/// Creates the runtime directory mode 0700 (the root's process only), then checks it.
pub(crate) fn create_runtime_dir(dir: &Path) -> Result<(), DiscoveryError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(DiscoveryError::RuntimeDir {
                dir: dir.to_owned(),
                reason: format!("cannot create: {e}"),
            });
        }
    }
    check_runtime_dir(dir)
}

// ------------------------------------------------------------------------------------------------
// In-process acceptors: every actor of this process, by uid, takes peer channels here.

type Acceptors = Mutex<HashMap<String, async_channel::Sender<Channel>>>;

fn acceptors() -> &'static Acceptors {
    static A: OnceLock<Acceptors> = OnceLock::new();
    A.get_or_init(Default::default)
}

/// Removes the actor's acceptor when the actor ends.
#[derive(Debug)]
pub(crate) struct AcceptorGuard {
    uid: String,
}

impl Drop for AcceptorGuard {
    fn drop(&mut self) {
        let tx = acceptors()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
        if let Some(tx) = tx {
            tx.close();
        }
    }
}

pub(crate) fn add_acceptor(uid: &str) -> (AcceptorGuard, async_channel::Receiver<Channel>) {
    let (tx, rx) = async_channel::unbounded();
    acceptors()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid.to_owned(), tx);
    (
        AcceptorGuard {
            uid: uid.to_owned(),
        },
        rx,
    )
}

/// Hands `channel` to the actor `uid` of this process. False when no such actor lives here.
pub(crate) fn hand_to(uid: &str, channel: Channel) -> bool {
    let tx = acceptors()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(uid)
        .cloned();
    match tx {
        Some(tx) => tx.try_send(channel).is_ok(),
        None => false,
    }
}

fn is_local(uid: &str) -> bool {
    acceptors()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(uid)
}

// ------------------------------------------------------------------------------------------------
// Refusals: the last few reasons a listener refused a connection (also logged).

fn refusals_log() -> &'static Mutex<Vec<String>> {
    static R: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

pub(crate) fn log_refusal(tree: &str, reason: String) {
    tracing::warn!(tree, %reason, "peer connection refused");
    let mut log = refusals_log().lock().unwrap_or_else(|p| p.into_inner());
    if log.len() >= 64 {
        log.remove(0);
    }
    log.push(format!("tree {tree}: {reason}"));
}

/// The reasons this process's listeners refused connections lately (newest last, at most 64),
/// as they were logged. For tests and diagnostics.
pub fn recent_refusals() -> Vec<String> {
    refusals_log()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

// ------------------------------------------------------------------------------------------------
// The process's listener for one tree.

/// A unix listener at `<dir>/<pid>.sock`, serving peer handshakes on a thread of its own, one per
/// tree and process; stopped (socket removed, thread joined) when dropped.
pub(crate) struct Listener {
    path: PathBuf,
    stop: async_channel::Sender<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.close();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn listeners() -> &'static Mutex<HashMap<String, Arc<Listener>>> {
    static L: OnceLock<Mutex<HashMap<String, Arc<Listener>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Starts the listener of `tree` in this process unless it runs already; true when this call
/// started it (its caller then stops it, with [`stop_listener`], when it exits). The root's
/// process creates the runtime directory; every other process checks its permissions first and
/// refuses a bad one.
pub(crate) fn ensure_listener(tree: &TreeInfo) -> Result<bool, DiscoveryError> {
    let mut map = listeners().lock().unwrap_or_else(|p| p.into_inner());
    if map.contains_key(&tree.id) {
        return Ok(false);
    }
    if tree.root_pid == std::process::id() {
        create_runtime_dir(&tree.dir)?;
    } else {
        check_runtime_dir(&tree.dir).inspect_err(|e| log_refusal(&tree.id, e.to_string()))?;
    }
    let path = tree.socket_path(std::process::id());
    let _ = std::fs::remove_file(&path); // a stale socket of a recycled pid
    let sock = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| DiscoveryError::Setup(format!("cannot listen at {}: {e}", path.display())))?;
    let sock = Async::new(sock)
        .map_err(|e| DiscoveryError::Setup(format!("cannot poll {}: {e}", path.display())))?;
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let secret = tree.secret.clone();
    let tree_id = tree.id.clone();
    let thread = std::thread::Builder::new()
        .name("harrow-peers".into())
        .spawn(move || accept_loop(sock, secret, tree_id, stopped))
        .map_err(|e| DiscoveryError::Setup(format!("cannot start the listener thread: {e}")))?;
    let l = Arc::new(Listener {
        path,
        stop,
        thread: Mutex::new(Some(thread)),
    });
    map.insert(tree.id.clone(), l);
    Ok(true)
}

/// Stops this process's listener of the tree `tree_id` (socket removed, thread joined).
pub(crate) fn stop_listener(tree_id: &str) {
    let l = listeners()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(tree_id);
    drop(l);
}

fn accept_loop(
    sock: Async<std::os::unix::net::UnixListener>,
    secret: Vec<u8>,
    tree: String,
    stopped: async_channel::Receiver<()>,
) {
    use futures_lite::FutureExt;
    let exec = async_executor::Executor::new();
    let secret = Arc::new(secret);
    let tree = Arc::new(tree);
    async_io::block_on(exec.run(async {
        loop {
            let next = async { Some(sock.accept().await) }.or(async {
                let _ = stopped.recv().await;
                None
            });
            match next.await {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "peer listener: accept failed");
                    // Back off a little on persistent errors (EMFILE) instead of spinning.
                    async_io::Timer::after(Duration::from_millis(10)).await;
                }
                Some(Ok((stream, _))) => {
                    let (secret, tree) = (secret.clone(), tree.clone());
                    exec.spawn(async move { serve_connection(stream, &secret, &tree).await })
                        .detach();
                }
            }
        }
    }));
}

/// One incoming connection: the handshake, then the channel goes to the target actor. A refusal
/// is logged (with its reason) before the connection is dropped.
async fn serve_connection(
    stream: Async<std::os::unix::net::UnixStream>,
    secret: &[u8],
    tree: &str,
) {
    let outcome = {
        let (mut r, mut w) = (&stream, &stream);
        deadline(
            HANDSHAKE_BOUND,
            handshake::server(&mut r, &mut w, secret, is_local),
        )
        .await
    };
    let uid = match outcome {
        None => return log_refusal(tree, format!("no handshake within {HANDSHAKE_BOUND:?}")),
        Some(Err(e)) => return log_refusal(tree, e.to_string()),
        Some(Ok(uid)) => uid,
    };
    let segment = match deadline(HANDSHAKE_BOUND, transport::accept(&stream)).await {
        None => {
            return log_refusal(
                tree,
                format!("no transport byte within {HANDSHAKE_BOUND:?}"),
            );
        }
        Some(Err(why)) => return log_refusal(tree, why),
        Some(Ok(segment)) => segment,
    };
    let channel = stream
        .into_inner()
        .and_then(|s| transport::channel(s, segment, false));
    match channel {
        Ok(channel) => {
            if !hand_to(&uid, channel) {
                tracing::debug!(%uid, "peer target ended during the handshake");
            }
        }
        Err(e) => tracing::warn!(error = %e, "peer connection: cannot make a channel"),
    }
}

/// Connects to the actor `uid` in process `pid` of `tree`: checks the directory, proves the
/// secret, and returns the channel for its `Hello`.
pub(crate) async fn connect(
    tree: &TreeInfo,
    pid: u32,
    uid: &str,
    bound: Duration,
) -> Result<Channel, DiscoveryError> {
    check_runtime_dir(&tree.dir).inspect_err(|e| log_refusal(&tree.id, e.to_string()))?;
    let path = tree.socket_path(pid);
    let fut = async {
        let stream = Async::<std::os::unix::net::UnixStream>::connect(&path)
            .await
            .map_err(|e| {
                use std::io::ErrorKind::{ConnectionRefused, NotFound};
                match e.kind() {
                    NotFound | ConnectionRefused => DiscoveryError::Gone(format!(
                        "actor {uid} in process {pid}: its process no longer listens: {}: {e}",
                        path.display()
                    )),
                    _ => DiscoveryError::Unreachable(format!(
                        "actor {uid} in process {pid} is unreachable (its process's socket \
                         refused the connection): {}: {e}",
                        path.display()
                    )),
                }
            })?;
        {
            let (mut r, mut w) = (&stream, &stream);
            handshake::client(&mut r, &mut w, &tree.secret, uid)
                .await
                .inspect_err(|e| tracing::warn!(%uid, error = %e, "peer handshake failed"))
                .map_err(|e| match e {
                    HandshakeError::UnknownTarget(_) => {
                        DiscoveryError::Gone(format!("actor {uid} is gone ({e})"))
                    }
                    // The process closed the connection it had accepted: it is ending.
                    HandshakeError::Io(_) => DiscoveryError::Gone(format!(
                        "actor {uid} in process {pid}: the process closed the connection ({e})"
                    )),
                    other => DiscoveryError::Handshake(other),
                })?;
        }
        let segment = transport::offer(&stream).await.map_err(|e| {
            DiscoveryError::Unreachable(format!("cannot choose the peer link's transport: {e}"))
        })?;
        let std_stream = stream
            .into_inner()
            .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        transport::channel(std_stream, segment, true)
            .map_err(|e| DiscoveryError::Unreachable(e.to_string()))
    };
    match deadline(bound, fut).await {
        Some(r) => r,
        None => Err(DiscoveryError::Unreachable(format!(
            "no peer handshake with {uid} within {bound:?}"
        ))),
    }
}

/// The step after the peer handshake: the connector says which transport the link's frames take,
/// with one byte, [`SOCKET`](transport::SOCKET) or [`SHM`](transport::SHM); with `SHM` it
/// attaches a shared-memory segment it made (`SCM_RIGHTS`), and both sides run the link through
/// the segment's rings ([`harrow_ipc::shm`]), the socket carrying only wake-up bytes.
mod transport {
    use std::io;
    use std::os::unix::net::UnixStream;

    use async_io::Async;
    use harrow_ipc::Channel;

    /// The frames go over the socket.
    pub(super) const SOCKET: u8 = 0;
    /// The frames go through the attached segment.
    pub(super) const SHM: u8 = 1;

    #[cfg(target_os = "linux")]
    pub(super) type Segment = harrow_ipc::shm::Segment;
    #[cfg(not(target_os = "linux"))]
    pub(super) type Segment = std::convert::Infallible;

    /// Connector: makes a segment (unless shared memory is off or cannot be had) and sends the
    /// transport byte, with the segment attached.
    #[cfg(target_os = "linux")]
    pub(super) async fn offer(stream: &Async<UnixStream>) -> io::Result<Option<Segment>> {
        use std::io::IoSlice;
        use std::mem::MaybeUninit;
        use std::os::fd::AsFd;

        use harrow_ipc::shm;
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

        let segment = if shm::enabled_by_env() {
            shm::Segment::new()
                .inspect_err(|e| {
                    tracing::debug!(error = %e, "no shared-memory segment: the peer link uses its socket")
                })
                .ok()
        } else {
            None
        };
        let byte = [if segment.is_some() { SHM } else { SOCKET }];
        stream
            .write_with(|s| {
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut ancillary = SendAncillaryBuffer::new(&mut space);
                let fds;
                if let Some(segment) = &segment {
                    fds = [segment.as_fd()];
                    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
                        return Err(io::Error::other("no room for the segment's descriptor"));
                    }
                }
                let sent = sendmsg(
                    s,
                    &[IoSlice::new(&byte)],
                    &mut ancillary,
                    SendFlags::NOSIGNAL,
                )?;
                if sent == 1 {
                    Ok(())
                } else {
                    Err(io::ErrorKind::WriteZero.into())
                }
            })
            .await?;
        Ok(segment)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) async fn offer(stream: &Async<UnixStream>) -> io::Result<Option<Segment>> {
        use futures_lite::AsyncWriteExt;
        let mut w = stream;
        w.write_all(&[SOCKET]).await?;
        Ok(None)
    }

    /// Listener: reads the transport byte and, with `SHM`, the segment attached to it. `Err`
    /// says why the connection is refused.
    #[cfg(target_os = "linux")]
    pub(super) async fn accept(stream: &Async<UnixStream>) -> Result<Option<Segment>, String> {
        use std::io::IoSliceMut;
        use std::mem::MaybeUninit;

        use rustix::net::{
            RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg,
        };

        let mut byte = [0u8; 1];
        let mut fds = Vec::new();
        let got = stream
            .read_with(|s| {
                // Room for two descriptors, so that a peer sending more is seen, not truncated.
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
                let mut ancillary = RecvAncillaryBuffer::new(&mut space);
                let msg = recvmsg(
                    s,
                    &mut [IoSliceMut::new(&mut byte)],
                    &mut ancillary,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for m in ancillary.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes, msg.flags))
            })
            .await
            .map_err(|e| format!("reading the transport byte: {e}"))?;
        match got {
            (0, _) => return Err("the connector hung up before the transport byte".into()),
            (_, flags) if flags.contains(ReturnFlags::CTRUNC) => {
                return Err("the transport byte came with too many descriptors".into());
            }
            _ => {}
        }
        match (byte[0], fds.len()) {
            (SOCKET, 0) => Ok(None),
            (SHM, 1) => {
                let fd = fds.pop().ok_or("no segment")?;
                harrow_ipc::shm::Segment::from_fd(fd)
                    .map(Some)
                    .map_err(|e| format!("the connector's segment: {e}"))
            }
            (b, n) => Err(format!(
                "transport byte {b} with {n} descriptors (expected {SOCKET} with none or {SHM} with one)"
            )),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) async fn accept(stream: &Async<UnixStream>) -> Result<Option<Segment>, String> {
        use futures_lite::AsyncReadExt;
        let mut byte = [0u8; 1];
        let mut r = stream;
        r.read_exact(&mut byte)
            .await
            .map_err(|e| format!("reading the transport byte: {e}"))?;
        match byte[0] {
            SOCKET => Ok(None),
            b => Err(format!(
                "transport byte {b}: only {SOCKET} is supported here"
            )),
        }
    }

    /// The link's channel over `stream`, through `segment` when there is one (the connector takes
    /// the segment's first side).
    pub(super) fn channel(
        stream: UnixStream,
        segment: Option<Segment>,
        connector: bool,
    ) -> io::Result<Channel> {
        match segment {
            #[cfg(target_os = "linux")]
            Some(segment) => {
                let side = if connector {
                    harrow_ipc::shm::Side::First
                } else {
                    harrow_ipc::shm::Side::Second
                };
                harrow_ipc::shm::channel(stream, segment, side, Default::default())
            }
            #[cfg(not(target_os = "linux"))]
            Some(never) => match never {},
            None => {
                let _ = connector;
                harrow_ipc::unix::from_stream(stream, Default::default())
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod transport_tests {
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;

    use async_io::Async;
    use harrow_ipc::Msg;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

    use super::transport;

    /// Sends `byte` with `fds` attached, as a forged connector would.
    fn forge(sock: &UnixStream, byte: u8, fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(ancillary.push(SendAncillaryMessage::ScmRights(fds)));
        }
        sendmsg(
            sock,
            &[IoSlice::new(&[byte])],
            &mut ancillary,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn refusal(send: impl FnOnce(&UnixStream)) -> String {
        let (connector, listener) = UnixStream::pair().unwrap();
        send(&connector);
        let listener = Async::new(listener).unwrap();
        async_io::block_on(transport::accept(&listener)).expect_err("must be refused")
    }

    #[test]
    fn an_offered_segment_carries_the_link_both_ways() {
        let (c, l) = UnixStream::pair().unwrap();
        let (c, l) = (Async::new(c).unwrap(), Async::new(l).unwrap());
        async_io::block_on(async {
            let offered = transport::offer(&c).await.unwrap();
            let accepted = transport::accept(&l).await.unwrap();
            assert_eq!(offered.is_some(), accepted.is_some());
            let connector = transport::channel(c.into_inner().unwrap(), offered, true).unwrap();
            let listener = transport::channel(l.into_inner().unwrap(), accepted, false).unwrap();
            let msg = Msg::CancelAck { teardown_ms: None };
            connector.send(msg.clone()).await.unwrap();
            assert_eq!(listener.recv().await.unwrap(), msg);
            listener.send(msg.clone()).await.unwrap();
            assert_eq!(connector.recv().await.unwrap(), msg);
        });
    }

    #[test]
    fn a_forged_transport_step_is_refused_with_its_reason() {
        let segment = harrow_ipc::shm::Segment::new().unwrap();
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();

        let why = refusal(|s| forge(s, transport::SOCKET, &[segment.as_fd()]));
        assert!(why.contains("1 descriptors"), "{why}");
        let why = refusal(|s| forge(s, transport::SHM, &[]));
        assert!(why.contains("0 descriptors"), "{why}");
        let why = refusal(|s| forge(s, transport::SHM, &[segment.as_fd(), segment.as_fd()]));
        assert!(why.contains("2 descriptors"), "{why}");
        let why = refusal(|s| forge(s, 7, &[]));
        assert!(why.contains("transport byte 7"), "{why}");
        let why = refusal(|s| forge(s, transport::SHM, &[pipe_r.as_fd()]));
        assert!(why.contains("segment"), "{why}");
        let why = refusal(|s| s.shutdown(std::net::Shutdown::Write).unwrap());
        assert!(why.contains("hung up"), "{why}");
    }
}
