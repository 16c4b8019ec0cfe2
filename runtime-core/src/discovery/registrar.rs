//! The registrar: the tree's table of live actors, kept by the root.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use harrow_ipc::ActorId;
use harrow_ipc::wait::{Event, deadline, wait_until_some};
use serde::{Deserialize, Serialize};

/// One live actor, as the registrar knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActorEntry {
    /// The actor.
    pub id: ActorId,
    /// Extra names it registered under (besides `id.name`).
    pub names: Vec<String>,
    /// The process it runs in, on its own host (peers in the same process connect in memory,
    /// others of its host domain over the process's unix socket).
    pub pid: u32,
    /// Its backend (`"root"`, `"thread"`, `"process"`, `"subint"`, ...).
    pub backend: String,
    /// Its parent's uid (none for the root).
    pub parent: Option<String>,
    /// Registration order (lookups by name return the lowest).
    pub seq: u64,
    /// Its host domain (see `docs/DISCOVERY.md`): peers of the same domain connect directly,
    /// others through the tree. Empty when unknown (then it is reached directly).
    #[serde(default)]
    pub domain: String,
    /// The uids from the root down to it (itself last), filled in by the registrar's answers:
    /// the way a routed link travels.
    #[serde(default)]
    pub route: Vec<String>,
}

impl ActorEntry {
    /// A new entry (its `seq` is set by the registrar).
    pub fn new(id: ActorId, pid: u32, backend: impl Into<String>, parent: Option<String>) -> Self {
        ActorEntry {
            id,
            names: Vec::new(),
            pid,
            backend: backend.into(),
            parent,
            seq: 0,
            domain: String::new(),
            route: Vec::new(),
        }
    }

    /// The same entry in host domain `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// Whether the actor answers to `name` (its own name or an extra one).
    pub fn answers_to(&self, name: &str) -> bool {
        self.id.name == name || self.names.iter().any(|n| n == name)
    }
}

/// The table. Lookups by name return the live actor that **claimed that name first** (its own
/// name when it registered, an extra name when it was added), so the answer does not change
/// while that actor lives.
#[derive(Debug, Default)]
pub(crate) struct Registrar {
    state: Mutex<State>,
    changed: Event,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<ActorEntry>,
    next_seq: u64,
    /// When each live actor (by uid) claimed each of its extra names: a number of the same
    /// sequence as `ActorEntry::seq`, which is when it claimed its own name.
    claims: HashMap<(String, String), u64>,
}

impl State {
    /// Records the claims of `uid` on those of `names` it had not claimed yet.
    fn claim(&mut self, uid: &str, names: &[String]) {
        for n in names {
            let key = (uid.to_owned(), n.clone());
            if !self.claims.contains_key(&key) {
                self.next_seq += 1;
                self.claims.insert(key, self.next_seq);
            }
        }
    }

    /// When `e` claimed `name`, if it answers to it (the earlier of its two claims, should its
    /// own name be among its extra names too).
    fn claimed(&self, e: &ActorEntry, name: &str) -> Option<u64> {
        let own = (e.id.name == name).then_some(e.seq);
        let extra = self
            .claims
            .get(&(e.id.uid.clone(), name.to_owned()))
            .copied();
        match (own, extra) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl State {
    /// Each live actor's parent, by uid.
    fn parents(&self) -> HashMap<&str, Option<&str>> {
        self.entries
            .iter()
            .map(|e| (e.id.uid.as_str(), e.parent.as_deref()))
            .collect()
    }

    /// `e` with its route: the uids from the root down to it, following the parents (cut short,
    /// and so unusable for routing, if a parent is missing, which only a racing removal causes).
    fn routed_with(&self, parents: &HashMap<&str, Option<&str>>, e: &ActorEntry) -> ActorEntry {
        let mut route = vec![e.id.uid.clone()];
        let mut parent = e.parent.as_deref();
        while let Some(p) = parent {
            if route.len() > self.entries.len() {
                break; // a cycle: impossible with uids, but never loop
            }
            route.push(p.to_owned());
            parent = parents.get(p).copied().flatten();
        }
        route.reverse();
        let mut e = e.clone();
        e.route = route;
        e
    }

    fn routed(&self, e: &ActorEntry) -> ActorEntry {
        self.routed_with(&self.parents(), e)
    }
}

impl Registrar {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `entry` (or, for a uid already there, adds its names: a re-registration).
    pub(crate) fn register(&self, mut entry: ActorEntry) {
        {
            let mut st = self.lock();
            let uid = entry.id.uid.clone();
            let names = entry.names.clone();
            if let Some(old) = st.entries.iter_mut().find(|e| e.id.uid == entry.id.uid) {
                for n in entry.names {
                    if !old.names.contains(&n) {
                        old.names.push(n);
                    }
                }
            } else {
                st.next_seq += 1;
                entry.seq = st.next_seq;
                st.entries.push(entry);
            }
            st.claim(&uid, &names);
        }
        self.changed.notify(usize::MAX);
    }

    /// Adds extra names to a live actor. False when no actor has that uid.
    pub(crate) fn add_names(&self, uid: &str, names: Vec<String>) -> bool {
        let found = {
            let mut st = self.lock();
            match st.entries.iter_mut().find(|e| e.id.uid == uid) {
                Some(e) => {
                    for n in &names {
                        if !e.names.contains(n) {
                            e.names.push(n.clone());
                        }
                    }
                    st.claim(uid, &names);
                    true
                }
                None => false,
            }
        };
        self.changed.notify(usize::MAX);
        found
    }

    /// Removes the actor `uid` and every actor below it (a subtree ends with its top).
    pub(crate) fn remove(&self, uid: &str) -> Vec<ActorId> {
        let mut st = self.lock();
        let mut gone = vec![uid.to_owned()];
        let mut removed = Vec::new();
        while let Some(u) = gone.pop() {
            st.claims.retain(|(uid, _), _| *uid != u);
            st.entries.retain(|e| {
                if e.id.uid == u {
                    removed.push(e.id.clone());
                    false
                } else if e.parent.as_deref() == Some(u.as_str()) {
                    gone.push(e.id.uid.clone());
                    true
                } else {
                    true
                }
            });
        }
        removed
    }

    pub(crate) fn find(&self, name: &str) -> Option<ActorEntry> {
        let st = self.lock();
        st.entries
            .iter()
            .filter_map(|e| Some((st.claimed(e, name)?, e)))
            .min_by_key(|(claimed, _)| *claimed)
            .map(|(_, e)| st.routed(e))
    }

    pub(crate) fn find_uid(&self, uid: &str) -> Option<ActorEntry> {
        let st = self.lock();
        st.entries
            .iter()
            .find(|e| e.id.uid == uid)
            .map(|e| st.routed(e))
    }

    pub(crate) fn list(&self) -> Vec<ActorEntry> {
        let st = self.lock();
        let parents = st.parents();
        let mut v: Vec<ActorEntry> = st
            .entries
            .iter()
            .map(|e| st.routed_with(&parents, e))
            .collect();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// Waits (bounded) until an actor answers to `name`.
    pub(crate) async fn wait(&self, name: &str, bound: Duration) -> Option<ActorEntry> {
        deadline(bound, wait_until_some(&self.changed, || self.find(name))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_by_its_first_claimant_while_it_lives() {
        let r = Registrar::default();
        let s1 = ActorId::new("s1");
        let s2 = ActorId::new("s2");
        r.register(ActorEntry::new(s1.clone(), 1, "thread", None));
        r.register(ActorEntry::new(s2.clone(), 1, "process", None));
        // s2 registered later but claims the name first: it holds it until it is gone.
        assert!(r.add_names(&s2.uid, vec!["svc".into()]));
        assert!(r.add_names(&s1.uid, vec!["svc".into()]));
        assert_eq!(r.find("svc").unwrap().id, s2);
        // Claiming it again does not move s1 ahead.
        assert!(r.add_names(&s1.uid, vec!["svc".into()]));
        assert_eq!(r.find("svc").unwrap().id, s2);
        r.remove(&s2.uid);
        assert_eq!(r.find("svc").unwrap().id, s1);
        // An actor's own name was claimed when it registered.
        let late = ActorId::new("late");
        r.register(ActorEntry::new(late.clone(), 1, "thread", None));
        assert!(r.add_names(&s1.uid, vec!["late".into()]));
        assert_eq!(r.find("late").unwrap().id, late);
    }

    #[test]
    fn earliest_wins_and_subtrees_go_together() {
        let r = Registrar::default();
        let a = ActorId::new("w");
        let b = ActorId::new("w");
        let c = ActorId::new("c");
        r.register(ActorEntry::new(a.clone(), 1, "thread", None));
        r.register(ActorEntry::new(b.clone(), 1, "thread", Some(a.uid.clone())));
        r.register(ActorEntry::new(c.clone(), 1, "thread", Some(b.uid.clone())));
        assert_eq!(r.find("w").unwrap().id, a);
        assert_eq!(
            r.find("c").unwrap().route,
            vec![a.uid.clone(), b.uid.clone(), c.uid.clone()]
        );
        assert_eq!(r.find_uid(&b.uid).unwrap().id, b);
        assert!(r.add_names(&c.uid, vec!["alias".into()]));
        assert_eq!(r.find("alias").unwrap().id, c);
        let removed = r.remove(&a.uid);
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(r.list().is_empty());
        assert!(r.find("w").is_none());
    }
}
