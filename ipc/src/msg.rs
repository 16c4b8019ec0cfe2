//! The messages of the wire protocol and the identities they carry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Value;

/// The protocol version spoken by this build. Peers with another version are refused at `Hello`.
pub const PROTOCOL_VERSION: u32 = 6;

/// The identity of one actor: a human-chosen name plus a unique id.
///
/// Two actors may share a name; `uid` tells them apart.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// The name given at spawn time (`"worker-3"`).
    pub name: String,
    /// A unique id, also across hosts (a host tag, pid, time and a counter, in hex).
    pub uid: String,
}

impl ActorId {
    /// A new identity with a freshly generated unique id.
    pub fn new(name: impl Into<String>) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ActorId {
            name: name.into(),
            uid: format!(
                "{:x}-{:x}-{:x}-{:x}",
                host_tag(),
                std::process::id(),
                nanos,
                n
            ),
        }
    }

    /// An identity with an explicit uid (for tests and for decoding).
    pub fn with_uid(name: impl Into<String>, uid: impl Into<String>) -> Self {
        ActorId {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// 32 bits that tell this host (this boot of it) from others, so that ids made on different
/// machines never collide even when pid, time and counter agree: a hash of the kernel's boot id
/// and the host name, or of per-process random state where those cannot be read.
fn host_tag() -> u32 {
    use std::collections::hash_map::{DefaultHasher, RandomState};
    use std::hash::{BuildHasher, Hash, Hasher};
    static TAG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        let mut h = if boot.is_some() || host.is_some() {
            // Fixed keys: the tag is the same for every process of this boot.
            DefaultHasher::new()
        } else {
            RandomState::new().build_hasher()
        };
        boot.hash(&mut h);
        host.hash(&mut h);
        let v = h.finish();
        (v ^ (v >> 32)) as u32
    })
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.name, self.uid)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.name, self.uid)
    }
}

/// A call id, allocated by the caller, unique per channel and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cid(pub u64);

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The path of a remotely callable function: `"module.path:function"`.
///
/// Held as one shared string, so that a clone (every call carries its path to the callee, and
/// both ends keep it for their messages) is a reference count, not an allocation. On the wire
/// it is the two parts, `{ module, function }`.
#[derive(Clone)]
pub struct FnPath {
    /// `"module:function"`.
    path: std::sync::Arc<str>,
    /// Where the `':'` is in `path`.
    colon: usize,
}

/// A string that is not a valid [`FnPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid function path {input:?}: {reason} (expected \"module.path:function\")")]
pub struct FnPathError {
    /// The rejected input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// How many parsed paths a thread keeps for [`FnPath::parse_cached`] before it starts afresh.
const PARSED_PER_THREAD: usize = 64;

thread_local! {
    /// Looked up on every call made or received. foldhash: it holds at most
    /// [`PARSED_PER_THREAD`] paths, so colliding ones a peer sent cost little.
    static PARSED: std::cell::RefCell<foldhash::HashMap<Box<str>, FnPath>> =
        std::cell::RefCell::new(foldhash::HashMap::default());
}

impl FnPath {
    /// Parses `"a.b:c"`. Every dotted module segment and the function must be identifiers.
    pub fn parse(input: &str) -> Result<Self, FnPathError> {
        let colon = FnPath::check(input).map_err(|reason| FnPathError {
            input: input.to_owned(),
            reason,
        })?;
        Ok(FnPath {
            path: input.into(),
            colon,
        })
    }

    /// Where the `':'` of a valid `"a.b:c"` is, or what is wrong with it (no allocation).
    fn check(input: &str) -> Result<usize, &'static str> {
        let (module, function) = input.split_once(':').ok_or("missing ':'")?;
        if function.contains(':') {
            return Err("more than one ':'");
        }
        if module.is_empty() {
            return Err("empty module");
        }
        if function.is_empty() {
            return Err("empty function name");
        }
        if !module.split('.').all(is_identifier) {
            return Err("module is not a dotted sequence of identifiers");
        }
        if !is_identifier(function) {
            return Err("function name is not an identifier");
        }
        Ok(module.len())
    }

    /// [`parse`](Self::parse), remembering the last few paths this thread parsed: a caller
    /// that calls the same functions again gets a shared path instead of a new allocation per
    /// call (which the callee, often on another thread, would free). Invalid input is not kept.
    pub fn parse_cached(input: &str) -> Result<Self, FnPathError> {
        let hit = PARSED.with(|m| m.borrow().get(input).cloned());
        if let Some(path) = hit {
            return Ok(path);
        }
        let path = FnPath::parse(input)?;
        PARSED.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= PARSED_PER_THREAD {
                m.clear();
            }
            m.insert(input.into(), path.clone());
        });
        Ok(path)
    }

    /// `path` (`module:function`, the `':'` at `colon`), shared with this thread's last parsed
    /// or received paths when it is one of them (a valid one is kept for the next time).
    fn joined(path: String, colon: usize) -> FnPath {
        PARSED.with(|m| {
            let mut m = m.borrow_mut();
            if let Some(hit) = m.get(path.as_str()).filter(|p| p.colon == colon) {
                return hit.clone();
            }
            let fresh = FnPath {
                path: path.as_str().into(),
                colon,
            };
            // Only a valid path is kept: `parse_cached` hands out what is kept as parsed.
            if FnPath::check(&path) == Ok(colon) {
                if m.len() >= PARSED_PER_THREAD {
                    m.clear();
                }
                m.insert(path.into_boxed_str(), fresh.clone());
            }
            fresh
        })
    }

    /// The module part (`"a.b"` of `"a.b:c"`).
    pub fn module(&self) -> &str {
        &self.path[..self.colon]
    }

    /// The function part (`"c"` of `"a.b:c"`).
    pub fn function(&self) -> &str {
        &self.path[self.colon + 1..]
    }

    /// The whole path, `"a.b:c"`.
    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl PartialEq for FnPath {
    fn eq(&self, other: &Self) -> bool {
        self.colon == other.colon && self.path == other.path
    }
}

impl Eq for FnPath {}

impl std::hash::Hash for FnPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state);
        self.colon.hash(state);
    }
}

/// By module, then by function.
impl Ord for FnPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.module(), self.function()).cmp(&(other.module(), other.function()))
    }
}

impl PartialOrd for FnPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The wire form: `{ module, function }`.
#[derive(Serialize)]
#[serde(rename = "FnPath")]
struct FnPathParts<'a> {
    module: &'a str,
    function: &'a str,
}

impl Serialize for FnPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FnPathParts {
            module: self.module(),
            function: self.function(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FnPath {
    /// The parts are taken as they come, unchecked, as they always were: a path that is not
    /// valid names no function, and the callee's resolver says so. They are joined straight
    /// into one string, and a path this thread has seen lately is shared rather than kept twice.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("FnPath", &["module", "function"], PathVisitor)
    }
}

/// Appends one string of the input to a buffer.
struct AppendStr<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for AppendStr<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for AppendStr<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push_str(v);
        Ok(())
    }
}

struct PathVisitor;

impl<'de> serde::de::Visitor<'de> for PathVisitor {
    type Value = FnPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a function path { module, function }")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FnPath, A::Error> {
        use serde::de::Error;
        let mut path = String::with_capacity(48);
        seq.next_element_seed(AppendStr(&mut path))?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let colon = path.len();
        path.push(':');
        seq.next_element_seed(AppendStr(&mut path))?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        Ok(FnPath::joined(path, colon))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FnPath, A::Error> {
        use serde::de::Error;
        let (mut module, mut function) = (None::<String>, None::<String>);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "module" => module = Some(map.next_value()?),
                "function" => function = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let module = module.ok_or_else(|| A::Error::missing_field("module"))?;
        let function = function.ok_or_else(|| A::Error::missing_field("function"))?;
        Ok(FnPath::joined(format!("{module}:{function}"), module.len()))
    }
}

impl std::str::FromStr for FnPath {
    type Err = FnPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FnPath::parse(s)
    }
}

impl TryFrom<&str> for FnPath {
    type Error = FnPathError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        FnPath::parse(s)
    }
}

impl fmt::Display for FnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Debug for FnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnPath({self})")
    }
}

/// How a `Start` is to be run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallKind {
    /// One request, one `Return` (or `Error`).
    Unary,
    /// A context: `Started` first, then an optional bidirectional stream, then `Return`.
    Context,
}

/// What kind of failure a [`RemoteError`] reports. Queries on errors branch on this, never on text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The function raised or returned an error (or panicked: see `type_name`).
    Raised,
    /// The call was cancelled; `canceller` says by whom (`ContextCancelled`).
    Cancelled,
    /// No such function in the resolver.
    NotFound,
    /// The function's module is not exposed by the actor's spec.
    ModuleNotExposed,
    /// The arguments did not have the shape the function takes.
    BadArguments,
    /// A protocol rule was broken (`started` twice, a stream before `started`, ...).
    Protocol,
    /// The actor runtime itself failed (spawn, teardown, transport).
    Runtime,
    /// Several failures together (a nursery's): see [`RemoteError::children`].
    Group,
}

/// The type name of a call refused before it started ([`RemoteError::refused`]).
pub const REFUSED_TYPE: &str = "CallRefused";

/// A failure that crossed (or will cross) an actor boundary.
///
/// It stays one value however many hops it travels: each forwarding actor is appended to
/// `relay_path` rather than wrapping the error in another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// The original error's type name (`"ValueError"`, `"my_crate::MyError"`, `"ContextCancelled"`).
    pub type_name: String,
    /// The error's message.
    pub message: String,
    /// A formatted traceback or backtrace, possibly empty.
    pub traceback: String,
    /// The actor in which the error was raised.
    pub source: ActorId,
    /// Every actor that forwarded the error after `source`, in order.
    pub relay_path: Vec<ActorId>,
    /// For cancellations: the actor that asked for the cancel.
    pub canceller: Option<ActorId>,
    /// For groups ([`ErrorKind::Group`]): every failure the group collected, each a whole error
    /// with its own source and relay path (which may be groups themselves).
    pub children: Vec<RemoteError>,
}

impl RemoteError {
    /// A new error raised in `source`, with an empty traceback and relay path.
    pub fn new(
        kind: ErrorKind,
        type_name: impl Into<String>,
        message: impl Into<String>,
        source: ActorId,
    ) -> Self {
        RemoteError {
            kind,
            type_name: type_name.into(),
            message: message.into(),
            traceback: String::new(),
            source,
            relay_path: Vec::new(),
            canceller: None,
            children: Vec::new(),
        }
    }

    /// A group of failures collected in `source` (a nursery's errors), with a summary message.
    pub fn group(message: impl Into<String>, source: ActorId, children: Vec<RemoteError>) -> Self {
        RemoteError {
            children,
            ..RemoteError::new(ErrorKind::Group, "ErrorGroup", message, source)
        }
    }

    /// A `ContextCancelled` raised in `source` on behalf of `canceller`.
    pub fn cancelled(source: ActorId, canceller: ActorId) -> Self {
        let message = format!("cancelled by {canceller}");
        RemoteError {
            canceller: Some(canceller),
            ..RemoteError::new(ErrorKind::Cancelled, "ContextCancelled", message, source)
        }
    }

    /// A call refused unstarted: `func` reached `source` after `source` began to end (cancelled
    /// on behalf of `canceller`), so it never ran. A cancellation ([`is_cancelled`]) whose type
    /// name is [`REFUSED_TYPE`], so that a caller can tell it from a call cancelled while it ran
    /// ([`is_refused`]) and, say, run it elsewhere.
    ///
    /// [`is_cancelled`]: RemoteError::is_cancelled
    /// [`is_refused`]: RemoteError::is_refused
    pub fn refused(source: ActorId, canceller: ActorId, func: &str) -> Self {
        let message = format!(
            "{func} refused: this actor is being cancelled (requested by {canceller}); it did \
             not run"
        );
        RemoteError {
            canceller: Some(canceller),
            ..RemoteError::new(ErrorKind::Cancelled, REFUSED_TYPE, message, source)
        }
    }

    /// Sets the traceback text.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = traceback.into();
        self
    }

    /// Records that `hop` forwarded this error (and with it every member of a group).
    pub fn relayed_by(mut self, hop: ActorId) -> Self {
        self.add_hop(&hop);
        self
    }

    fn add_hop(&mut self, hop: &ActorId) {
        // Iterative, so that no group depth can overflow the stack.
        let mut todo = vec![self];
        while let Some(e) = todo.pop() {
            e.relay_path.push(hop.clone());
            todo.extend(e.children.iter_mut());
        }
    }

    /// Whether this is a group of failures ([`ErrorKind::Group`]).
    pub fn is_group(&self) -> bool {
        self.kind == ErrorKind::Group
    }

    /// Every error of the tree that is not a group, depth first: what actually failed.
    pub fn leaves(&self) -> Vec<&RemoteError> {
        let mut out = Vec::new();
        let mut todo = vec![self];
        while let Some(e) = todo.pop() {
            if e.is_group() {
                todo.extend(e.children.iter().rev());
            } else {
                out.push(e);
            }
        }
        out
    }

    /// Whether this is a `ContextCancelled`.
    pub fn is_cancelled(&self) -> bool {
        self.kind == ErrorKind::Cancelled
    }

    /// Whether this is a call refused before it started ([`RemoteError::refused`]): the function
    /// did not run.
    pub fn is_refused(&self) -> bool {
        self.kind == ErrorKind::Cancelled && self.type_name == REFUSED_TYPE
    }
}

impl RemoteError {
    fn fmt_line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An empty message prints the type alone, as Python prints such an exception.
        if self.message.is_empty() {
            write!(f, "{} (in {}", self.type_name, self.source)?;
        } else {
            write!(
                f,
                "{}: {} (in {}",
                self.type_name, self.message, self.source
            )?;
        }
        for hop in &self.relay_path {
            write!(f, " -> {hop}")?;
        }
        write!(f, ")")
    }
}

/// One line per error; a group's members follow it, indented like Python's `ExceptionGroup`:
///
/// ```text
/// ErrorGroup: 2 failures in nursery (in mid[..])
///   +-- 1: ValueError: boom (in leaf-a[..] -> mid[..])
///   +-- 2: ErrorGroup: 1 failure in nursery (in sub[..] -> mid[..])
///       +-- 1: ValueError: bang (in leaf-b[..] -> sub[..] -> mid[..])
/// ```
impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_line(f)?;
        // Iterative, so that no group depth can overflow the stack.
        let mut todo: Vec<(usize, usize, &RemoteError)> = self
            .children
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (1, i + 1, c))
            .collect();
        while let Some((depth, n, e)) = todo.pop() {
            write!(f, "\n{:width$}+-- {n}: ", "", width = 4 * depth - 2)?;
            e.fmt_line(f)?;
            todo.extend(
                e.children
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, c)| (depth + 1, i + 1, c)),
            );
        }
        Ok(())
    }
}

impl std::error::Error for RemoteError {}

/// One message of the protocol. `docs/PROTOCOL.md` describes each and the exchanges it belongs to.
///
/// The order of the variants is the wire's (bincode sends a variant's index).
/// `codec/small.rs` names the indices of the small ones; `tests/codec_small.rs` fails if they
/// drift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// First message in each direction: identity and protocol version.
    Hello {
        /// The sender's identity.
        actor: ActorId,
        /// The sender's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The sender's process id.
        pid: u32,
        /// The name of the backend the sender runs on (`"thread"`, `"root"`, ...).
        backend: String,
    },
    /// Caller -> callee: run `func`.
    Start {
        /// The call id, chosen by the caller.
        cid: Cid,
        /// The function to run.
        func: FnPath,
        /// Unary call or context.
        kind: CallKind,
        /// The arguments.
        args: Value,
    },
    /// Callee -> caller: the function was found and started.
    StartAck {
        /// The call.
        cid: Cid,
    },
    /// Callee -> caller: a context's first value, exactly once.
    Started {
        /// The call.
        cid: Cid,
        /// The value passed to `started`.
        value: Value,
    },
    /// Either way: one stream item.
    Yield {
        /// The call.
        cid: Cid,
        /// The item.
        value: Value,
    },
    /// Either way: the receiver grants `n` more items, and says how many it has consumed.
    Credit {
        /// The call.
        cid: Cid,
        /// How many more items may be sent (0: a report of `consumed` alone).
        n: u32,
        /// How many items of this stream direction the receiver has consumed so far, in all.
        consumed: u64,
    },
    /// Either way: this side's stream is finished.
    Stop {
        /// The call.
        cid: Cid,
    },
    /// Callee -> caller: the final result.
    Return {
        /// The call.
        cid: Cid,
        /// The result.
        value: Value,
    },
    /// Either way: a failure; `cid = None` is actor-level.
    Error {
        /// The call, if any.
        cid: Option<Cid>,
        /// What failed. Boxed: an error is large and rare, and keeping it out of line keeps
        /// every `Msg` small to move (a stream item is moved several times on its way). The wire
        /// form is the same as unboxed.
        error: Box<RemoteError>,
    },
    /// Caller -> callee: cancel one call.
    Cancel {
        /// The call.
        cid: Cid,
    },
    /// Parent (or peer) -> actor: cancel the whole actor runtime.
    CancelActor {
        /// Why, for logs.
        reason: String,
    },
    /// Actor -> requester: the `CancelActor` was received and the actor's calls have ended
    /// (their cleanup ran, bounded). The answers of those calls precede it on the channel.
    CancelAck {
        /// `Some(ms)` when the actor is still tearing down its own children: it will be done
        /// within `ms` milliseconds, and its parent's wait for its exit honours that (bounded by
        /// the parent). `None` when nothing is left but to exit.
        teardown_ms: Option<u64>,
    },
    /// Either way, after `Hello`: "this side is alive". Sent every
    /// `LinkConfig::heartbeat_interval`; a link that receives nothing at all from its peer for
    /// its heartbeat timeout ends as broken (a silent partition). Carries nothing and is never
    /// answered.
    Heartbeat,
    /// Either way: this side reads no more items of the call's stream (it closed or dropped its
    /// receiving side before the peer's side ended). The peer's later sends fail, and items
    /// already on their way are dropped on arrival.
    StopReading {
        /// The call.
        cid: Cid,
    },
}

impl Msg {
    /// The call this message belongs to, if any.
    pub fn cid(&self) -> Option<Cid> {
        match self {
            Msg::Start { cid, .. }
            | Msg::StartAck { cid }
            | Msg::Started { cid, .. }
            | Msg::Yield { cid, .. }
            | Msg::Credit { cid, .. }
            | Msg::Stop { cid }
            | Msg::StopReading { cid }
            | Msg::Return { cid, .. }
            | Msg::Cancel { cid } => Some(*cid),
            Msg::Error { cid, .. } => *cid,
            Msg::Hello { .. }
            | Msg::CancelActor { .. }
            | Msg::CancelAck { .. }
            | Msg::Heartbeat => None,
        }
    }

    /// A short name of the message kind, for logs and fault injection.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Start { .. } => "Start",
            Msg::StartAck { .. } => "StartAck",
            Msg::Started { .. } => "Started",
            Msg::Yield { .. } => "Yield",
            Msg::Credit { .. } => "Credit",
            Msg::Stop { .. } => "Stop",
            Msg::Return { .. } => "Return",
            Msg::Error { .. } => "Error",
            Msg::Cancel { .. } => "Cancel",
            Msg::CancelActor { .. } => "CancelActor",
            Msg::CancelAck { .. } => "CancelAck",
            Msg::Heartbeat => "Heartbeat",
            Msg::StopReading { .. } => "StopReading",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fn_path_parses_dotted_modules() {
        let p = FnPath::parse("pkg.mod:run_it").unwrap();
        assert_eq!(p.module(), "pkg.mod");
        assert_eq!(p.function(), "run_it");
        assert_eq!(p.to_string(), "pkg.mod:run_it");
    }

    #[test]
    fn fn_path_rejects_malformed_input_and_shows_it() {
        for bad in [
            "", "nocolon", ":f", "m:", "a..b:f", "a.b:c:d", "1a:f", "a:f-g", "a b:f",
        ] {
            let err = FnPath::parse(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn fn_path_parse_cached_shares_valid_paths_and_refuses_bad_ones() {
        let a = FnPath::parse_cached("pkg.mod:run_it").unwrap();
        let b = FnPath::parse_cached("pkg.mod:run_it").unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a.path, &b.path),
            "the second parse is shared"
        );
        assert_eq!(a, FnPath::parse("pkg.mod:run_it").unwrap());
        for bad in ["a.b:c:d", "nocolon", "a:f-g"] {
            assert_eq!(
                FnPath::parse_cached(bad).unwrap_err(),
                FnPath::parse(bad).unwrap_err()
            );
            // Asked again: still refused (nothing invalid is kept).
            assert!(FnPath::parse_cached(bad).is_err());
        }
        // More paths than a thread keeps: every one still comes back right.
        for i in 0..3 * PARSED_PER_THREAD {
            let p = FnPath::parse_cached(&format!("m{i}:f")).unwrap();
            assert_eq!((p.module(), p.function()), (format!("m{i}").as_str(), "f"));
        }
    }

    #[test]
    fn fn_path_wire_form_is_its_two_parts() {
        let cfg = bincode::config::standard();
        let p = FnPath::parse("pkg.mod:run_it").unwrap();
        let bytes = bincode::serde::encode_to_vec(&p, cfg).unwrap();
        let parts = bincode::serde::encode_to_vec(("pkg.mod", "run_it"), cfg).unwrap();
        assert_eq!(bytes, parts);
        let (back, _): (FnPath, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, p);
        assert_eq!((back.module(), back.function()), ("pkg.mod", "run_it"));
        // Received twice: the second is shared with the first.
        let (again, _): (FnPath, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert!(std::sync::Arc::ptr_eq(&back.path, &again.path));
        // A peer's path is taken as it comes, even one that would not parse; its parts stay
        // apart, and it is not handed out as parsed.
        let odd = bincode::serde::encode_to_vec(("a:b", "c"), cfg).unwrap();
        let (odd, _): (FnPath, usize) = bincode::serde::decode_from_slice(&odd, cfg).unwrap();
        assert_eq!((odd.module(), odd.function()), ("a:b", "c"));
        assert_ne!(odd, FnPath::joined("a:b:c".into(), 1));
        assert!(FnPath::parse_cached("a:b:c").is_err());
        // Self-describing formats see a struct with named parts.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"module":"pkg.mod","function":"run_it"}"#);
        assert_eq!(serde_json::from_str::<FnPath>(&json).unwrap(), p);
    }

    #[test]
    fn fn_paths_order_by_module_then_function() {
        let mut v = ["a.b:c", "a:z", "a:b"]
            .map(|s| FnPath::parse(s).unwrap())
            .to_vec();
        v.sort();
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a:b", "a:z", "a.b:c"]);
    }

    #[test]
    fn actor_ids_are_unique() {
        let a = ActorId::new("x");
        let b = ActorId::new("x");
        assert_ne!(a, b);
        assert_eq!(a.name, b.name);
    }

    #[test]
    fn relayed_errors_grow_one_path() {
        let src = ActorId::new("leaf");
        let mid = ActorId::new("mid");
        let top = ActorId::new("top");
        let e = RemoteError::new(ErrorKind::Raised, "ValueError", "boom", src.clone())
            .relayed_by(mid.clone())
            .relayed_by(top.clone());
        assert_eq!(e.relay_path, vec![mid, top]);
        assert_eq!(e.source, src);
        assert!(e.to_string().contains("ValueError: boom"));
    }

    #[test]
    fn an_empty_message_prints_the_type_alone() {
        let src = ActorId::new("leaf");
        let e = RemoteError::new(ErrorKind::Raised, "KeyboardInterrupt", "", src.clone());
        assert_eq!(e.to_string(), format!("KeyboardInterrupt (in {src})"));
        let e = RemoteError::new(ErrorKind::Raised, "ValueError", "boom", src.clone());
        assert_eq!(e.to_string(), format!("ValueError: boom (in {src})"));
    }
}
