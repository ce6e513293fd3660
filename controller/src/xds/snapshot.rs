//! What the xDS server serves: per type URL, the resources by canonical name,
//! each with a content-hash version, the node it belongs to (workloads) and
//! the aliases it can be looked up by on demand.
//!
//! The first [`Snapshot`] is built whole; each mesh change after it is a
//! [`SnapshotPatch`] of the previous one, sharing every entry it does not
//! touch and naming the ones it does ([`Changes`]). It is published as
//! `Arc<Snapshot>` on a `tokio::sync::watch` channel; the delta engine
//! diffs each client against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::cow_map::CowMap;

/// `istio.workload.Address` (a Workload or a Service).
pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
/// `istio.security.Authorization`.
pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
/// Trellis's waypoint config, `trellis.config.v1.ConfigObject`.
pub const CONFIG_OBJECT: &str = "type.googleapis.com/trellis.config.v1.ConfigObject";

/// The type URLs this server knows; requests for others are ignored.
pub const TYPE_URLS: [&str; 3] = [ADDRESS, AUTHORIZATION, CONFIG_OBJECT];

/// One resource as served.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Content hash of the resource: the same bytes give the same version on
    /// every replica and after a restart, so a client's
    /// `initial_resource_versions` from another replica still match.
    pub version: String,
    pub resource: prost_types::Any,
    /// The node a workload runs on; `None` for services and other types.
    pub node: Option<String>,
    /// Other names that resolve to this resource on demand (e.g. `network/ip`).
    pub aliases: Vec<String>,
    /// Canonical names of the same type sent along when this resource is
    /// asked for by name (a service's endpoint workloads).
    pub members: Vec<String>,
}

/// The resources of one type URL. Cloning shares everything (see
/// [`CowMap`]); a patched snapshot copies only the shards it changes.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: CowMap<Arc<Entry>>,
    /// alias -> canonical name.
    aliases: CowMap<String>,
    /// node -> canonical names of the entries on it, so a node proxy's
    /// wildcard is found without scanning the mesh (1,000 streams x 100k
    /// entries per change otherwise).
    by_node: CowMap<Arc<BTreeSet<String>>>,
}

impl Table {
    /// The entry named `name` (canonical), or reached by the alias `name`,
    /// with its canonical name.
    pub fn resolve(&self, name: &str) -> Option<(&str, &Arc<Entry>)> {
        if let Some(found) = self.entries.get_key_value(name) {
            return Some(found);
        }
        let canonical = self.aliases.get(name)?;
        self.entries.get_key_value(canonical)
    }

    /// The entry named `name` (canonical only).
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    /// The entries on `node`, by canonical name.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = (&'a str, &'a Arc<Entry>)> {
        self.by_node
            .get(node)
            .into_iter()
            .flat_map(|names| names.iter())
            .filter_map(|n| self.entries.get_key_value(n))
    }

    /// All entries by canonical name, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Arc<Entry>)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `entry` as `name`, which must not be present. The checks are
    /// those of a whole build: a name and its aliases are unique per table.
    fn insert(
        &mut self,
        type_url: &str,
        name: String,
        entry: Arc<Entry>,
    ) -> Result<(), SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::EmptyName {
                type_url: type_url.to_string(),
            });
        }
        if entry.resource.type_url != type_url {
            return Err(SnapshotError::TypeMismatch {
                type_url: type_url.to_string(),
                name,
                any_type_url: entry.resource.type_url.clone(),
            });
        }
        if self.entries.contains_key(&name) {
            return Err(SnapshotError::Duplicate {
                type_url: type_url.to_string(),
                name,
            });
        }
        if let Some(other) = self.aliases.get(&name) {
            return Err(SnapshotError::AliasTaken {
                type_url: type_url.to_string(),
                alias: name.clone(),
                name,
                other: other.clone(),
            });
        }
        for alias in &entry.aliases {
            let other = self
                .aliases
                .get(alias)
                .cloned()
                .or_else(|| self.entries.contains_key(alias).then(|| alias.clone()))
                .or_else(|| (*alias == name).then(|| name.clone()));
            if let Some(other) = other {
                return Err(SnapshotError::AliasTaken {
                    type_url: type_url.to_string(),
                    name,
                    alias: alias.clone(),
                    other,
                });
            }
        }
        for alias in &entry.aliases {
            self.aliases.insert(alias.clone(), name.clone());
        }
        if let Some(node) = &entry.node {
            Arc::make_mut(self.by_node.entry_or_insert_with(node, Arc::default))
                .insert(name.clone());
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Takes `name` out with its aliases and node index.
    fn remove(&mut self, name: &str) -> Option<Arc<Entry>> {
        let entry = self.entries.remove(name)?;
        for alias in &entry.aliases {
            if self.aliases.get(alias).map(String::as_str) == Some(name) {
                self.aliases.remove(alias);
            }
        }
        if let Some(node) = &entry.node {
            if let Some(names) = self.by_node.get_mut(node) {
                Arc::make_mut(names).remove(name);
                if names.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
        Some(entry)
    }
}

/// Which resources differ from the snapshot this one was patched from.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// The version of that snapshot.
    pub parent: String,
    /// Per type URL, the canonical names added, changed (content, node,
    /// aliases or members) or removed.
    pub names: BTreeMap<String, BTreeSet<String>>,
}

/// Everything the server serves at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    tables: BTreeMap<String, Table>,
    /// The sum of every entry's hash: a patch updates it with the entries it
    /// touches instead of hashing the whole mesh again.
    sum: u128,
    version: String,
    changes: Option<Arc<Changes>>,
}

static EMPTY: std::sync::OnceLock<Table> = std::sync::OnceLock::new();

impl Snapshot {
    pub fn builder() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// A new snapshot made of this one and some changes.
    pub fn patch(&self) -> SnapshotPatch {
        SnapshotPatch {
            base: self.clone(),
            removed: Vec::new(),
            upserts: Vec::new(),
        }
    }

    /// The table of `type_url` (empty if it has no resources).
    pub fn table(&self, type_url: &str) -> &Table {
        self.tables
            .get(type_url)
            .unwrap_or_else(|| EMPTY.get_or_init(Table::default))
    }

    /// A hash over every resource's type, name, version, node, aliases and
    /// members (`system_version_info`): equal for equal contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What changed from the snapshot this one was patched from; `None` for
    /// a snapshot built whole.
    pub fn changes(&self) -> Option<&Changes> {
        self.changes.as_deref()
    }

    fn seal(mut self) -> Snapshot {
        self.version = format!("{:032x}", self.sum);
        self
    }
}

/// Why a resource could not be added to a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("xds snapshot: {type_url} resource {name:?} is added twice; each name must be unique per type")]
    Duplicate { type_url: String, name: String },
    #[error("xds snapshot: alias {alias:?} of {type_url} resource {name:?} is already the name or an alias of {other:?}")]
    AliasTaken {
        type_url: String,
        name: String,
        alias: String,
        other: String,
    },
    #[error("xds snapshot: resource {name:?} is added under type {type_url} but its Any holds {any_type_url}; pack it with the matching message")]
    TypeMismatch {
        type_url: String,
        name: String,
        any_type_url: String,
    },
    #[error("xds snapshot: a {type_url} resource has an empty name")]
    EmptyName { type_url: String },
    #[error("xds snapshot: members set on {type_url} resource {name:?}, which was not added")]
    NoSuchEntry { type_url: String, name: String },
}

fn new_entry(
    any: prost_types::Any,
    node: Option<String>,
    aliases: Vec<String>,
    members: Vec<String>,
) -> Entry {
    Entry {
        version: content_version(&any),
        resource: any,
        node,
        aliases,
        members,
    }
}

/// Collects resources, then [`SnapshotBuilder::build`]s a [`Snapshot`].
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    snapshot: Snapshot,
}

impl SnapshotBuilder {
    /// Adds `any` as the `type_url` resource `name`. `node` is the node a
    /// workload runs on (it scopes node proxies' wildcard subscriptions);
    /// `aliases` are other names that find it on demand.
    pub fn add(
        &mut self,
        type_url: &str,
        name: impl Into<String>,
        node: Option<String>,
        aliases: Vec<String>,
        any: prost_types::Any,
    ) -> Result<&mut Self, SnapshotError> {
        let entry = Arc::new(new_entry(any, node, aliases, Vec::new()));
        let table = self
            .snapshot
            .tables
            .entry(type_url.to_string())
            .or_default();
        table.insert(type_url, name.into(), entry)?;
        Ok(self)
    }

    /// Sets what is sent along with `name` when a client asks for it by
    /// name (see [`Entry::members`]). `name` must have been added.
    pub fn members(
        &mut self,
        type_url: &str,
        name: &str,
        members: Vec<String>,
    ) -> Result<&mut Self, SnapshotError> {
        let entry = self
            .snapshot
            .tables
            .get_mut(type_url)
            .and_then(|t| t.entries.get_mut(name))
            .ok_or_else(|| SnapshotError::NoSuchEntry {
                type_url: type_url.to_string(),
                name: name.to_string(),
            })?;
        Arc::make_mut(entry).members = members;
        Ok(self)
    }

    /// Adds every object `trellis_api::xds::encode_config` produced.
    pub fn add_all(
        &mut self,
        objects: Vec<trellis_api::xds::XdsObject>,
    ) -> Result<&mut Self, SnapshotError> {
        for o in objects {
            let members = o.members;
            let name = o.name.clone();
            self.add(o.type_url, o.name, o.node, o.aliases, o.resource)?;
            if !members.is_empty() {
                self.members(o.type_url, &name, members)?;
            }
        }
        Ok(self)
    }

    pub fn build(mut self) -> Snapshot {
        let mut sum = 0u128;
        for (type_url, table) in &self.snapshot.tables {
            for (name, e) in table.entries() {
                sum = sum.wrapping_add(entry_hash(type_url, name, e));
            }
        }
        self.snapshot.sum = sum;
        self.snapshot.seal()
    }
}

/// A snapshot being derived from another: removals and upserts are
/// collected, then [`SnapshotPatch::apply`] makes the new snapshot. The
/// base is never modified, so a failed patch leaves the published one.
#[derive(Debug)]
pub struct SnapshotPatch {
    base: Snapshot,
    removed: Vec<(String, String)>,
    upserts: Vec<(String, String, Entry)>,
}

impl SnapshotPatch {
    /// `name` of `type_url` is gone (nothing if it was not there).
    pub fn remove(&mut self, type_url: &str, name: impl Into<String>) -> &mut Self {
        self.removed.push((type_url.to_string(), name.into()));
        self
    }

    /// `name` of `type_url` is now `any` with this node, these aliases and
    /// members; added if new. Unchanged resources keep their entry.
    pub fn upsert(&mut self, object: trellis_api::xds::XdsObject) -> &mut Self {
        let entry = new_entry(object.resource, object.node, object.aliases, object.members);
        self.upserts
            .push((object.type_url.to_string(), object.name, entry));
        self
    }

    /// The new snapshot, with its [`Changes`] against the base. Every
    /// touched name is taken out before any is put back, so the result is
    /// the same whatever order the changes came in, and the checks are
    /// those of a whole build.
    pub fn apply(self) -> Result<Snapshot, SnapshotError> {
        let SnapshotPatch {
            base,
            removed,
            upserts,
        } = self;
        let parent = base.version.clone();
        let mut next = base;
        next.changes = None;
        let mut old: HashMap<(String, String), Arc<Entry>> = HashMap::new();
        let touched = removed
            .iter()
            .map(|(t, n)| (t, n))
            .chain(upserts.iter().map(|(t, n, _)| (t, n)));
        for (type_url, name) in touched {
            let Some(table) = next.tables.get_mut(type_url.as_str()) else {
                continue;
            };
            if let Some(e) = table.remove(name) {
                next.sum = next.sum.wrapping_sub(entry_hash(type_url, name, &e));
                old.insert((type_url.clone(), name.clone()), e);
            }
        }
        let mut changes = Changes {
            parent,
            names: BTreeMap::new(),
        };
        let mut put: BTreeSet<(String, String)> = BTreeSet::new();
        for (type_url, name, entry) in upserts {
            let key = (type_url, name);
            // An unchanged resource keeps its shared entry and is no change.
            let entry = match old.get(&key) {
                Some(e) if **e == entry => e.clone(),
                _ => {
                    changes
                        .names
                        .entry(key.0.clone())
                        .or_default()
                        .insert(key.1.clone());
                    Arc::new(entry)
                }
            };
            next.sum = next.sum.wrapping_add(entry_hash(&key.0, &key.1, &entry));
            let table = next.tables.entry(key.0.clone()).or_default();
            table.insert(&key.0, key.1.clone(), entry)?;
            put.insert(key);
        }
        for (key, _) in old {
            if !put.contains(&key) {
                changes.names.entry(key.0).or_default().insert(key.1);
            }
        }
        next.tables.retain(|_, t| !t.is_empty());
        next.changes = Some(Arc::new(changes));
        Ok(next.seal())
    }
}

/// One entry's share of the snapshot version: everything a client can be
/// sent about it, so equal versions serve equal contents (streams skip a
/// snapshot whose version they have already reconciled).
fn entry_hash(type_url: &str, name: &str, e: &Entry) -> u128 {
    let mut h = Fnv128::new();
    h.write(type_url.as_bytes());
    h.write(name.as_bytes());
    h.write(e.version.as_bytes());
    h.write(e.node.as_deref().unwrap_or("").as_bytes());
    h.write(&[u8::from(e.node.is_some())]);
    for list in [&e.aliases, &e.members] {
        h.write(&(list.len() as u64).to_le_bytes());
        for x in list {
            h.write(x.as_bytes());
        }
    }
    h.0
}

/// FNV-1a (128 bit) of the Any: a fixed algorithm with no per-process seed,
/// so versions agree across replicas and restarts.
fn content_version(any: &prost_types::Any) -> String {
    let mut h = Fnv128::new();
    h.write(any.type_url.as_bytes());
    h.write(&any.value);
    h.hex()
}

struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Fnv128(Self::OFFSET)
    }

    /// Each field is followed by its length so ("ab","c") != ("a","bc").
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes
            .iter()
            .chain((bytes.len() as u64).to_le_bytes().iter())
        {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}
