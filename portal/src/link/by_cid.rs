//! A link's calls by id: one in place, any more in a map behind it.
//!
//! A link mostly has one call in flight each way (a caller awaits its answer before the next
//! call). Kept in a map, that one call cost an insert and a remove per call: about 230
//! instructions in the ordered map of served calls, about 100 in the hash map of this side's
//! calls, hashing included. [`ByCid`] keeps the first call in a slot of its own, compared by id,
//! and only a second call at the same time goes into the map. The map keeps the properties it
//! was chosen for (served calls: an ordered map, whose cost a peer choosing the ids cannot
//! raise).

use std::collections::BTreeMap;

use harrow_ipc::Cid;

/// The map behind the slot.
pub(super) trait CidMap<V>: Default {
    fn get(&self, cid: &Cid) -> Option<&V>;
    fn get_mut(&mut self, cid: &Cid) -> Option<&mut V>;
    fn insert(&mut self, cid: Cid, value: V);
    fn remove(&mut self, cid: &Cid) -> Option<V>;
    fn len(&self) -> usize;
    fn keys(&self) -> impl Iterator<Item = Cid>;
    fn values<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a;
    fn drain(self) -> impl Iterator<Item = (Cid, V)>;
}

impl<V> CidMap<V> for BTreeMap<Cid, V> {
    fn get(&self, cid: &Cid) -> Option<&V> {
        BTreeMap::get(self, cid)
    }
    fn get_mut(&mut self, cid: &Cid) -> Option<&mut V> {
        BTreeMap::get_mut(self, cid)
    }
    fn insert(&mut self, cid: Cid, value: V) {
        BTreeMap::insert(self, cid, value);
    }
    fn remove(&mut self, cid: &Cid) -> Option<V> {
        BTreeMap::remove(self, cid)
    }
    fn len(&self) -> usize {
        BTreeMap::len(self)
    }
    fn keys(&self) -> impl Iterator<Item = Cid> {
        BTreeMap::keys(self).copied()
    }
    fn values<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        BTreeMap::values(self)
    }
    fn drain(self) -> impl Iterator<Item = (Cid, V)> {
        self.into_iter()
    }
}

impl<V> CidMap<V> for foldhash::HashMap<Cid, V> {
    fn get(&self, cid: &Cid) -> Option<&V> {
        std::collections::HashMap::get(self, cid)
    }
    fn get_mut(&mut self, cid: &Cid) -> Option<&mut V> {
        std::collections::HashMap::get_mut(self, cid)
    }
    fn insert(&mut self, cid: Cid, value: V) {
        std::collections::HashMap::insert(self, cid, value);
    }
    fn remove(&mut self, cid: &Cid) -> Option<V> {
        std::collections::HashMap::remove(self, cid)
    }
    fn len(&self) -> usize {
        std::collections::HashMap::len(self)
    }
    fn keys(&self) -> impl Iterator<Item = Cid> {
        std::collections::HashMap::keys(self).copied()
    }
    fn values<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        std::collections::HashMap::values(self)
    }
    fn drain(self) -> impl Iterator<Item = (Cid, V)> {
        self.into_iter()
    }
}

/// Calls by id: the first in place, any more in `M`.
pub(super) struct ByCid<V, M> {
    first: Option<(Cid, V)>,
    more: M,
}

impl<V, M: CidMap<V>> Default for ByCid<V, M> {
    fn default() -> Self {
        ByCid {
            first: None,
            more: M::default(),
        }
    }
}

impl<V, M: CidMap<V>> ByCid<V, M> {
    pub(super) fn get(&self, cid: &Cid) -> Option<&V> {
        match &self.first {
            Some((c, v)) if c == cid => Some(v),
            _ => self.more.get(cid),
        }
    }

    pub(super) fn get_mut(&mut self, cid: &Cid) -> Option<&mut V> {
        match &mut self.first {
            Some((c, v)) if c == cid => Some(v),
            _ => self.more.get_mut(cid),
        }
    }

    pub(super) fn contains_key(&self, cid: &Cid) -> bool {
        self.get(cid).is_some()
    }

    /// Adds `value` for `cid`, which must not be there yet (this side's own ids).
    pub(super) fn insert(&mut self, cid: Cid, value: V) {
        debug_assert!(!self.contains_key(&cid), "call id {cid} inserted twice");
        if self.first.is_none() {
            self.first = Some((cid, value));
        } else {
            self.more.insert(cid, value);
        }
    }

    /// Adds `value` for `cid` unless `cid` is there already (a peer's ids): then `value` comes
    /// back and nothing changes.
    pub(super) fn insert_new(&mut self, cid: Cid, value: V) -> Result<(), V> {
        if self.contains_key(&cid) {
            return Err(value);
        }
        self.insert(cid, value);
        Ok(())
    }

    pub(super) fn remove(&mut self, cid: &Cid) -> Option<V> {
        match &self.first {
            Some((c, _)) if c == cid => self.first.take().map(|(_, v)| v),
            _ => self.more.remove(cid),
        }
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.first.iter().map(|(_, v)| v).chain(self.more.values())
    }

    /// Every id, in ascending order.
    pub(super) fn cids(&self) -> Vec<Cid> {
        let mut cids: Vec<Cid> = self.first.iter().map(|(c, _)| *c).collect();
        cids.extend(self.more.keys());
        cids.sort_unstable();
        cids
    }

    /// Takes every call out, in ascending order of id, and leaves the map empty.
    pub(super) fn take_sorted(&mut self) -> Vec<(Cid, V)> {
        let ByCid { first, more } = std::mem::take(self);
        let mut all: Vec<(Cid, V)> = first.into_iter().chain(more.drain()).collect();
        all.sort_unstable_by_key(|(c, _)| *c);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<M: CidMap<&'static str>>() {
        let mut calls: ByCid<&'static str, M> = ByCid::default();
        assert!(calls.is_empty());
        // The first in place, the next ones behind it.
        calls.insert(Cid(8), "eight");
        calls.insert(Cid(2), "two");
        calls.insert(Cid(6), "six");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls.get(&Cid(8)), Some(&"eight"));
        assert_eq!(calls.get(&Cid(2)), Some(&"two"));
        assert_eq!(calls.get(&Cid(4)), None);
        // A peer's id already in use, in place or behind: refused, nothing changes.
        assert_eq!(calls.insert_new(Cid(8), "again"), Err("again"));
        assert_eq!(calls.insert_new(Cid(6), "again"), Err("again"));
        assert_eq!(calls.get(&Cid(8)), Some(&"eight"));
        assert_eq!(calls.cids(), vec![Cid(2), Cid(6), Cid(8)]);
        // The one in place leaves; the next new call takes its place.
        assert_eq!(calls.remove(&Cid(8)), Some("eight"));
        assert_eq!(calls.remove(&Cid(8)), None);
        assert!(!calls.contains_key(&Cid(8)));
        assert_eq!(calls.insert_new(Cid(4), "four"), Ok(()));
        *calls.get_mut(&Cid(4)).expect("in place") = "FOUR";
        *calls.get_mut(&Cid(2)).expect("behind") = "TWO";
        let mut values: Vec<&str> = calls.values().copied().collect();
        values.sort_unstable();
        assert_eq!(values, vec!["FOUR", "TWO", "six"]);
        // All out, in order of id, and nothing left.
        assert_eq!(
            calls.take_sorted(),
            vec![(Cid(2), "TWO"), (Cid(4), "FOUR"), (Cid(6), "six")]
        );
        assert!(calls.is_empty());
        assert_eq!(calls.get(&Cid(2)), None);
        assert!(calls.cids().is_empty());
    }

    #[test]
    fn calls_in_place_and_behind_are_found_refused_and_taken_alike() {
        check::<BTreeMap<Cid, &'static str>>();
        check::<foldhash::HashMap<Cid, &'static str>>();
    }
}
