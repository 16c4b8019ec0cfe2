//! Discovery from Python: `harrow.find_actor`, `find_actor_by_uid`, `lookup_actor`,
//! `wait_for_actor`, `query_actors`, `Actor.register_names`, and a peer portal's
//! `cancel_actor(timeout)`. Like every other operation of a Python actor, each runs as a task on
//! the actor's executor (the Rust discovery API of its `ActorCtx`) and the interpreter thread
//! waits for it with its GIL released.
//!
//! A peer portal is the same [`PyPortal`] as a child's or the parent's (no child handle, not the
//! parent), so `run`, `open_context` and `cancel_actor` work on it unchanged.

use std::sync::Arc;
use std::time::Duration;

use harrow_ipc::Value;
use harrow_runtime_core::{ActorEntry, DiscoveryError};

use super::{ActorEnv, Fail, Handle, OpFuture, Out, PyPortal};

/// The longest bound Python may give a discovery wait (a year): larger ones are refused rather
/// than overflowing the runtime's deadlines.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The discovery operations (codes 200.. of the native entry point, beside [`super::Op`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub(crate) enum DiscOp {
    /// `harrow.find_actor(name)` (argument: the name) -> `(portal handle, entry)` or None.
    Find = 200,
    /// `harrow.find_actor_by_uid(uid)` (argument: the uid) -> `(portal handle, entry)` or None.
    FindUid = 201,
    /// `harrow.wait_for_actor(name, timeout)` (argument `[name, seconds]`) -> `(portal handle,
    /// entry)`, or the timeout's message (a str: Python raises `TimeoutError` with it).
    Wait = 202,
    /// `harrow.lookup_actor(name)` (argument: the name) -> the entry or None (no connection).
    Lookup = 203,
    /// `harrow.query_actors()` -> a list of entries.
    Query = 204,
    /// `current_actor().register_names(*names)` (argument: a list of str) -> None.
    RegisterNames = 205,
    /// `peer.cancel_actor(timeout)` (target: the portal, argument: seconds or None for the
    /// actor's `cancel_ack` bound) -> whether it acknowledged.
    PeerCancel = 206,
}

impl DiscOp {
    pub(crate) fn from_i64(op: i64) -> Option<DiscOp> {
        use DiscOp::*;
        Some(match op {
            200 => Find,
            201 => FindUid,
            202 => Wait,
            203 => Lookup,
            204 => Query,
            205 => RegisterNames,
            206 => PeerCancel,
            _ => return None,
        })
    }
}

/// A registrar entry as Python gets it: `{name, uid, names, pid, backend, parent}` (`parent`:
/// the parent's uid, None for the root).
pub(crate) fn entry_value(e: &ActorEntry) -> Value {
    Value::Map(vec![
        ("name".into(), Value::Str(e.id.name.clone())),
        ("uid".into(), Value::Str(e.id.uid.clone())),
        (
            "names".into(),
            Value::List(e.names.iter().cloned().map(Value::Str).collect()),
        ),
        ("pid".into(), Value::Int(i64::from(e.pid))),
        ("backend".into(), Value::Str(e.backend.clone())),
        (
            "parent".into(),
            e.parent.clone().map_or(Value::Null, Value::Str),
        ),
    ])
}

/// How a discovery failure reaches Python: `harrow.HarrowError` with the runtime's message.
fn fail(e: DiscoveryError) -> Fail {
    Fail::Runtime(e.to_string())
}

/// A bound in seconds from Python (None: `default`).
fn bound(arg: Option<&Value>, default: Duration) -> Result<Duration, Fail> {
    let secs = match arg {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Int(i)) => *i as f64,
        Some(Value::Float(f)) => *f,
        Some(other) => {
            return Err(Fail::Usage(format!(
                "a timeout is a number of seconds, not {other:?}"
            )));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(Fail::Usage(format!(
            "a timeout is a finite number of seconds >= 0, not {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= MAX_WAIT)
        .ok_or_else(|| {
            Fail::Usage(format!(
                "a timeout of {secs} s is too long (at most a year)"
            ))
        })
}

fn name_arg(op: DiscOp, v: &Value) -> Result<String, Fail> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| Fail::Usage(format!("{op:?} needs a str, not {v:?}")))
}

/// A portal found by discovery, with its registrar entry.
fn found(portal: harrow_portal::Portal, entry: &ActorEntry) -> Out {
    Out::Opened(
        Handle::Portal(Arc::new(PyPortal {
            portal,
            child: None,
            is_parent: false,
        })),
        entry_value(entry),
    )
}

impl ActorEnv {
    /// Starts discovery operation `op`. Errors in the input are returned at once; the future
    /// does the rest on the actor's executor.
    pub(crate) fn discovery_op(
        &self,
        op: DiscOp,
        target: Option<&Handle>,
        arg: Value,
    ) -> Result<OpFuture, Fail> {
        let actor = self.base.actor.clone();
        match op {
            DiscOp::Find | DiscOp::FindUid => {
                let key = name_arg(op, &arg)?;
                let task = self.spawn(async move {
                    let entry = if op == DiscOp::Find {
                        actor.lookup_actor(&key).await
                    } else {
                        // By uid: the entry of exactly that actor.
                        match actor.query_actors().await {
                            Ok(all) => Ok(all.into_iter().find(|e| e.id.uid == key)),
                            Err(e) => Err(e),
                        }
                    }
                    .map_err(fail)?;
                    match entry {
                        Some(e) => Ok(found(actor.portal_to(&e).await.map_err(fail)?, &e)),
                        None => Ok(Out::None),
                    }
                });
                Ok(Box::pin(task))
            }
            DiscOp::Wait => {
                let (name, secs) = match &arg {
                    Value::List(v) if v.len() == 2 => (name_arg(op, &v[0])?, v.get(1)),
                    other => {
                        return Err(Fail::Usage(format!(
                            "internal: want [name, timeout], got {other:?}"
                        )));
                    }
                };
                let timeout = match secs {
                    None | Some(Value::Null) => {
                        return Err(Fail::Usage(
                            "wait_for_actor needs a timeout in seconds (waits are bounded)".into(),
                        ));
                    }
                    s => bound(s, Duration::ZERO)?,
                };
                let task = self.spawn(async move {
                    // The registrar's entry first (bounded by the timeout), then the link: the
                    // same steps as `ActorCtx::wait_for_actor`, keeping the entry for Python.
                    match actor.wait_for_actor(&name, timeout).await {
                        Ok(portal) => {
                            let uid = portal.peer().uid.clone();
                            let entry = actor
                                .query_actors()
                                .await
                                .ok()
                                .and_then(|all| all.into_iter().find(|e| e.id.uid == uid));
                            match entry {
                                Some(e) => Ok(found(portal, &e)),
                                // It ended meanwhile: its identity is all we know.
                                None => {
                                    let id = portal.peer().clone();
                                    let e = ActorEntry::new(id, 0, "", None);
                                    Ok(found(portal, &e))
                                }
                            }
                        }
                        Err(e @ DiscoveryError::Timeout { .. }) => Ok(Out::Str(e.to_string())),
                        Err(e) => Err(fail(e)),
                    }
                });
                Ok(Box::pin(task))
            }
            DiscOp::Lookup => {
                let name = name_arg(op, &arg)?;
                let task = self.spawn(async move {
                    match actor.lookup_actor(&name).await.map_err(fail)? {
                        Some(e) => Ok(Out::Value(entry_value(&e))),
                        None => Ok(Out::None),
                    }
                });
                Ok(Box::pin(task))
            }
            DiscOp::Query => {
                let task = self.spawn(async move {
                    let all = actor.query_actors().await.map_err(fail)?;
                    Ok(Out::Value(Value::List(
                        all.iter().map(entry_value).collect(),
                    )))
                });
                Ok(Box::pin(task))
            }
            DiscOp::RegisterNames => {
                let names: Vec<String> = match &arg {
                    Value::List(v) => v
                        .iter()
                        .map(|n| name_arg(op, n))
                        .collect::<Result<_, _>>()?,
                    other => return Err(Fail::Usage(format!("{op:?} needs names, not {other:?}"))),
                };
                if names.iter().any(String::is_empty) {
                    return Err(Fail::Usage("a name cannot be empty".into()));
                }
                let task = self.spawn(async move {
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    actor.register_names(&refs).await.map_err(fail)?;
                    Ok(Out::None)
                });
                Ok(Box::pin(task))
            }
            DiscOp::PeerCancel => {
                let Some(Handle::Portal(p)) = target else {
                    return Err(Fail::Usage("internal: cancel_actor needs a portal".into()));
                };
                let p = p.clone();
                let timeout = bound(Some(&arg), actor.timeouts().cancel_ack)?;
                let task = self.spawn(async move { p.portal.cancel_actor(timeout).await });
                Ok(Box::pin(async move { Ok(Out::Bool(task.await)) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harrow_ipc::ActorId;

    #[test]
    fn op_codes_round_trip() {
        for i in 200..207 {
            let op = DiscOp::from_i64(i).expect("a known op");
            assert_eq!(op as i64, i);
        }
        assert_eq!(DiscOp::from_i64(207), None);
        assert_eq!(DiscOp::from_i64(199), None);
        assert_eq!(DiscOp::from_i64(0), None);
    }

    #[test]
    fn bounds_are_checked() {
        let d = Duration::from_millis(200);
        assert_eq!(bound(None, d).ok(), Some(d));
        assert_eq!(bound(Some(&Value::Null), d).ok(), Some(d));
        assert_eq!(
            bound(Some(&Value::Int(2)), d).ok(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            bound(Some(&Value::Float(0.5)), d).ok(),
            Some(Duration::from_millis(500))
        );
        for bad in [
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(-1.0),
            Value::Int(-1),
            Value::Float(1e30),
            Value::Str("1".into()),
        ] {
            assert!(
                matches!(bound(Some(&bad), d), Err(Fail::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn entries_cross_as_maps() {
        let id = ActorId::new("svc");
        let mut e = ActorEntry::new(id.clone(), 42, "subint", Some("p-uid".into()));
        e.names.push("alias".into());
        let v = entry_value(&e);
        assert_eq!(v.get("name").and_then(Value::as_str), Some("svc"));
        assert_eq!(v.get("uid").and_then(Value::as_str), Some(id.uid.as_str()));
        assert_eq!(v.get("pid").and_then(Value::as_i64), Some(42));
        assert_eq!(v.get("backend").and_then(Value::as_str), Some("subint"));
        assert_eq!(v.get("parent").and_then(Value::as_str), Some("p-uid"));
        assert_eq!(
            v.get("names"),
            Some(&Value::List(vec![Value::Str("alias".into())]))
        );
        let root = entry_value(&ActorEntry::new(ActorId::new("root"), 1, "root", None));
        assert_eq!(root.get("parent"), Some(&Value::Null));
    }
}
