//! Objects by kind/namespace/name, with per-source bookkeeping.
//!
//! A source is a manifest file (or, later, the Kubernetes watch). Each
//! source's accepted documents are kept on their own; the store's view is
//! rebuilt from all sources, in source-name order, so when two sources
//! define the same object the first one wins, whatever order they were
//! loaded in. A rejected document never removes what it replaces: the last
//! good version of the same object (same key, or same document position if
//! not even the key was readable) stays.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{DocRef, ObjectError};
use super::kinds::{parse_text, DocResult, Kind, Object, ObjectKey};

#[derive(Clone, Debug, Default)]
pub struct ObjectStore {
    /// Accepted documents per source, by document index.
    sources: BTreeMap<String, BTreeMap<usize, (ObjectKey, Object)>>,
    /// The resolved view: each key once, with the document that defined it.
    view: BTreeMap<ObjectKey, (DocRef, Object)>,
    /// Every definition of each key, in precedence order (source name,
    /// then document index): the first is the view's; the others are
    /// duplicates. Kept so a change re-resolves only the keys it touches:
    /// with one source per object (the Kubernetes watch) a full rebuild per
    /// change would make a cluster's initial list quadratic.
    defs: BTreeMap<ObjectKey, BTreeSet<(String, usize)>>,
    /// Duplicate definitions per key, and all of them flattened.
    dup_map: BTreeMap<ObjectKey, Vec<ObjectError>>,
    duplicates: Vec<ObjectError>,
    /// The rejected documents of each source's last load, so the current
    /// problems can be shown at any time, not only when a file changes.
    rejected: BTreeMap<String, Vec<ObjectError>>,
}

impl ObjectStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a source's whole text and replaces that source with it.
    /// Returns the errors of the rejected documents and every duplicate.
    pub fn load_text(&mut self, source: &str, text: &str, json: bool) -> Vec<ObjectError> {
        let docs = parse_text(source, text, json);
        self.replace_source(source, docs)
    }

    /// Replaces the documents of `source`. Rejected documents keep the last
    /// good version of their object from this source.
    pub fn replace_source(&mut self, source: &str, docs: Vec<DocResult>) -> Vec<ObjectError> {
        let mut errors = self.replace_docs(source, docs);
        errors.extend(self.duplicates.iter().cloned());
        errors
    }

    /// [`Self::replace_source`] without the duplicates: for callers that
    /// load several sources and report the duplicates once.
    pub(crate) fn replace_docs(&mut self, source: &str, docs: Vec<DocResult>) -> Vec<ObjectError> {
        let old = self.sources.remove(source).unwrap_or_default();
        let mut touched = self.forget_defs(source, &old);
        let mut new: BTreeMap<usize, (ObjectKey, Object)> = BTreeMap::new();
        let mut errors = Vec::new();
        for doc in docs {
            match doc {
                Ok((d, key, object)) => {
                    new.insert(d.index, (key, object));
                }
                Err((d, rejected)) => {
                    let kept = match &rejected.key {
                        Some(key) => old.iter().find(|(_, (k, _))| k == key),
                        None => old.get_key_value(&d.index),
                    };
                    if let Some((i, (k, o))) = kept {
                        // Keep it under its old index unless a new document sits there.
                        let idx = if new.contains_key(i) { d.index } else { *i };
                        new.entry(idx).or_insert_with(|| (k.clone(), o.clone()));
                    }
                    errors.push(rejected.error);
                }
            }
        }
        for (index, (key, _)) in &new {
            self.defs
                .entry(key.clone())
                .or_default()
                .insert((source.to_string(), *index));
            touched.insert(key.clone());
        }
        if !new.is_empty() {
            self.sources.insert(source.to_string(), new);
        }
        if errors.is_empty() {
            self.rejected.remove(source);
        } else {
            self.rejected.insert(source.to_string(), errors.clone());
        }
        self.refresh(touched);
        errors
    }

    /// Records a problem with a whole source (it could not be read); its
    /// objects stay as they were.
    pub(crate) fn source_failed(&mut self, source: &str, error: ObjectError) {
        self.rejected.insert(source.to_string(), vec![error]);
    }

    /// Every current problem: rejected documents of every source, in source
    /// order, then duplicate definitions.
    pub fn errors(&self) -> Vec<ObjectError> {
        let mut out: Vec<ObjectError> = self.rejected.values().flatten().cloned().collect();
        out.extend(self.duplicates.iter().cloned());
        out
    }

    /// Forgets a source (its file was deleted). Returns whether it was known.
    pub fn remove_source(&mut self, source: &str) -> bool {
        let had_errors = self.rejected.remove(source).is_some();
        let old = self.sources.remove(source);
        let known = old.is_some() || had_errors;
        if let Some(old) = old {
            let touched = self.forget_defs(source, &old);
            self.refresh(touched);
        }
        known
    }

    /// Drops `source`'s definitions from `defs`; returns the keys touched.
    fn forget_defs(
        &mut self,
        source: &str,
        docs: &BTreeMap<usize, (ObjectKey, Object)>,
    ) -> BTreeSet<ObjectKey> {
        let mut touched = BTreeSet::new();
        for (index, (key, _)) in docs {
            if let Some(set) = self.defs.get_mut(key) {
                set.remove(&(source.to_string(), *index));
                if set.is_empty() {
                    self.defs.remove(key);
                }
            }
            touched.insert(key.clone());
        }
        touched
    }

    /// Re-resolves `touched` keys: the first definition (by source name,
    /// then document index) is the view's, whatever order sources were
    /// loaded in; the others are reported as duplicates.
    fn refresh(&mut self, touched: BTreeSet<ObjectKey>) {
        let dups_before = !self.dup_map.is_empty();
        for key in touched {
            self.view.remove(&key);
            self.dup_map.remove(&key);
            let Some(defs) = self.defs.get(&key) else {
                continue;
            };
            let mut first: Option<DocRef> = None;
            for (source, index) in defs {
                let doc = DocRef {
                    source: source.clone(),
                    index: *index,
                };
                match &first {
                    None => {
                        let object = self
                            .sources
                            .get(source)
                            .and_then(|d| d.get(index))
                            .map(|(_, o)| o.clone());
                        if let Some(object) = object {
                            self.view.insert(key.clone(), (doc.clone(), object));
                            first = Some(doc);
                        }
                    }
                    Some(f) => {
                        self.dup_map
                            .entry(key.clone())
                            .or_default()
                            .push(ObjectError::Duplicate {
                                kind: key.kind.name().into(),
                                name: display_name(&key),
                                first: f.clone(),
                                second: doc,
                            })
                    }
                }
            }
        }
        if dups_before || !self.dup_map.is_empty() {
            self.duplicates = self.dup_map.values().flatten().cloned().collect();
        }
    }

    /// Duplicate definitions currently in the store.
    pub fn duplicates(&self) -> &[ObjectError] {
        &self.duplicates
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.view.get(key).map(|(_, o)| o)
    }

    /// Where the object in the view was defined.
    pub fn origin(&self, key: &ObjectKey) -> Option<&DocRef> {
        self.view.get(key).map(|(d, _)| d)
    }

    /// Every object, in key order (kind, namespace, name).
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        self.view.iter().map(|(k, (_, o))| (k, o))
    }

    /// The objects of one kind, in key order. Keys sort by kind first, so
    /// this is a range of the view, not a scan of every object (the
    /// translation asks for a few kinds on every change).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        let first = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.view
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(k, (_, o))| (k, o))
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// Names of the sources holding at least one accepted object.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// The keys a source defines (accepted or kept), in document order.
    pub fn source_keys(&self, source: &str) -> Vec<ObjectKey> {
        self.sources
            .get(source)
            .map(|d| d.values().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
}

fn display_name(key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        key.name.clone()
    } else {
        format!("{}/{}", key.namespace, key.name)
    }
}

#[cfg(test)]
mod tests;
