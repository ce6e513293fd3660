//! A string-keyed map that is cheap to copy and then change: the keys are
//! spread over a fixed number of shards, each behind an `Arc`. A clone
//! shares every shard; a change copies only the shard it touches.
//!
//! Why: a snapshot of 100k resources is published on every mesh change,
//! and most changes touch a handful of them. Copying the previous
//! snapshot's maps whole would cost as much as building them anew; here a
//! change costs the few shards it touches (a few hundred entries each).
//! Iteration order is unspecified (callers that need an order sort).

use std::collections::HashMap;
use std::sync::Arc;

/// Shards per map: at 110k keys about 430 per shard, so copying one on
/// write costs tens of microseconds, and an empty map stays small.
const SHARDS: usize = 256;

type Shard<V> = HashMap<String, V, ahash::RandomState>;

/// Fixed seeds: a key always lands in the same shard in every clone.
fn hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    )
}

#[derive(Debug)]
pub(crate) struct CowMap<V> {
    /// Empty until the first insert, so the many empty tables cost nothing.
    shards: Vec<Arc<Shard<V>>>,
    len: usize,
}

impl<V> Clone for CowMap<V> {
    fn clone(&self) -> Self {
        CowMap {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        CowMap {
            shards: Vec::new(),
            len: 0,
        }
    }
}

fn shard_of(key: &str) -> usize {
    (hasher().hash_one(key) as usize) % SHARDS
}

impl<V: Clone> CowMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, key: &str) -> Option<(&str, &V)> {
        let shard = self.shards.get(shard_of(key))?;
        shard.get_key_value(key).map(|(k, v)| (k.as_str(), v))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The shard of `key`, copied first if another map shares it.
    fn shard_mut(&mut self, key: &str) -> &mut Shard<V> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS)
                .map(|_| Arc::new(Shard::with_hasher(hasher())))
                .collect();
        }
        Arc::make_mut(&mut self.shards[shard_of(key)])
    }

    /// The value of `key` to change in place; copies its shard if shared.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        self.shard_mut(key).get_mut(key)
    }

    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let old = self.shard_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        if !self.contains_key(key) {
            // Not here: leave the shard shared rather than copy it for nothing.
            return None;
        }
        let old = self.shard_mut(key).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value of `key` to change in place, inserting `default()` first
    /// if absent.
    pub fn entry_or_insert_with(&mut self, key: &str, default: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(key) {
            self.len += 1;
        }
        self.shard_mut(key)
            .entry(key.to_string())
            .or_insert_with(default)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter())
            .map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_independent_and_shares_untouched_shards() {
        let mut a: CowMap<u32> = CowMap::default();
        for i in 0..2_000u32 {
            a.insert(format!("k{i}"), i);
        }
        let mut b = a.clone();
        b.insert("k1".into(), 100);
        b.insert("new".into(), 7);
        assert_eq!(b.remove("k2"), Some(2));
        assert_eq!(b.remove("absent"), None);

        assert_eq!((a.len(), b.len()), (2_000, 2_000));
        assert_eq!(a.get("k1"), Some(&1));
        assert_eq!(b.get("k1"), Some(&100));
        assert_eq!(a.get("k2"), Some(&2));
        assert_eq!(b.get("k2"), None);
        assert_eq!(a.get("new"), None);
        assert_eq!(b.get_key_value("new"), Some(("new", &7)));

        // Only the shards of the three keys written were copied.
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 3, "{shared} shards still shared");

        let mut keys: Vec<&str> = b.iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        assert_eq!(keys.len(), 2_000);
        assert!(keys.binary_search(&"new").is_ok());
    }

    #[test]
    fn entry_or_insert_with_counts_new_keys_once() {
        let mut m: CowMap<Vec<u8>> = CowMap::default();
        m.entry_or_insert_with("a", Vec::new).push(1);
        m.entry_or_insert_with("a", Vec::new).push(2);
        m.entry_or_insert_with("b", Vec::new).push(3);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a"), Some(&vec![1, 2]));
        assert!(!m.is_empty());
        assert!(CowMap::<u8>::default().is_empty());
    }
}
