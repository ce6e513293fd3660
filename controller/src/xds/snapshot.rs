//! What the xDS server serves: per type URL, the resources by canonical name,
//! each with a content-hash version, the node it belongs to (workloads) and
//! the aliases it can be looked up by on demand.
//!
//! The lead rebuilds a whole [`Snapshot`] whenever the mesh changes and
//! publishes it as `Arc<Snapshot>` on a `tokio::sync::watch` channel; the
//! delta engine diffs each client against it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// The resources of one type URL.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: BTreeMap<String, Arc<Entry>>,
    /// alias -> canonical name.
    aliases: HashMap<String, String>,
    /// node -> canonical names of the entries on it, so a node proxy's
    /// wildcard is found without scanning the mesh (1,000 streams x 100k
    /// entries per change otherwise).
    by_node: HashMap<String, Vec<String>>,
}

impl Table {
    /// The entry named `name` (canonical), or reached by the alias `name`,
    /// with its canonical name.
    pub fn resolve(&self, name: &str) -> Option<(&str, &Arc<Entry>)> {
        if let Some((k, e)) = self.entries.get_key_value(name) {
            return Some((k.as_str(), e));
        }
        let canonical = self.aliases.get(name)?;
        let (k, e) = self.entries.get_key_value(canonical)?;
        Some((k.as_str(), e))
    }

    /// The entries on `node`, by canonical name.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = (&'a str, &'a Arc<Entry>)> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|n| self.entries.get_key_value(n))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// All entries by canonical name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Arc<Entry>)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Everything the server serves at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    tables: HashMap<String, Table>,
    version: String,
}

static EMPTY: std::sync::OnceLock<Table> = std::sync::OnceLock::new();

impl Snapshot {
    pub fn builder() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// The table of `type_url` (empty if it has no resources).
    pub fn table(&self, type_url: &str) -> &Table {
        self.tables
            .get(type_url)
            .unwrap_or_else(|| EMPTY.get_or_init(Table::default))
    }

    /// A hash over every resource's name and version: informational
    /// (`system_version_info`), equal for equal contents.
    pub fn version(&self) -> &str {
        &self.version
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

/// Collects resources, then [`SnapshotBuilder::build`]s a [`Snapshot`].
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    tables: HashMap<String, Table>,
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
        let name = name.into();
        if name.is_empty() {
            return Err(SnapshotError::EmptyName {
                type_url: type_url.to_string(),
            });
        }
        if any.type_url != type_url {
            return Err(SnapshotError::TypeMismatch {
                type_url: type_url.to_string(),
                name,
                any_type_url: any.type_url,
            });
        }
        let table = self.tables.entry(type_url.to_string()).or_default();
        if table.entries.contains_key(&name) {
            return Err(SnapshotError::Duplicate {
                type_url: type_url.to_string(),
                name,
            });
        }
        if let Some(other) = table.aliases.get(&name) {
            return Err(SnapshotError::AliasTaken {
                type_url: type_url.to_string(),
                alias: name.clone(),
                name,
                other: other.clone(),
            });
        }
        for alias in &aliases {
            let other = table
                .aliases
                .get(alias)
                .cloned()
                .or_else(|| table.entries.contains_key(alias).then(|| alias.clone()))
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
        for alias in &aliases {
            table.aliases.insert(alias.clone(), name.clone());
        }
        let version = content_version(&any);
        if let Some(n) = &node {
            table
                .by_node
                .entry(n.clone())
                .or_default()
                .push(name.clone());
        }
        table.entries.insert(
            name,
            Arc::new(Entry {
                version,
                resource: any,
                node,
                aliases,
                members: Vec::new(),
            }),
        );
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

    pub fn build(self) -> Snapshot {
        let mut h = Fnv128::new();
        let mut types: Vec<_> = self.tables.iter().collect();
        types.sort_by(|a, b| a.0.cmp(b.0));
        for (type_url, table) in types {
            h.write(type_url.as_bytes());
            for (name, e) in &table.entries {
                h.write(name.as_bytes());
                h.write(e.version.as_bytes());
            }
        }
        Snapshot {
            tables: self.tables,
            version: h.hex(),
        }
    }
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
