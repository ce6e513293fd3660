//! The proxy's view of the mesh, indexed for the data path, and the one
//! update path ([`StateStore::apply`]) that every config source uses.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ahash::{AHashMap, AHashSet};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::info;
use trellis_api::Update;

use trellis_api::config::{
    self, Authorization, ConfigError, HealthStatus, LocalConfig, Scope, Service, Workload,
};

/// The key a workload uses to name a service it belongs to.
fn service_key(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.hostname)
}

/// An immutable, indexed snapshot of a validated [`LocalConfig`].
#[derive(Debug)]
pub struct ProxyState {
    config: LocalConfig,
    version: u64,
    by_ip: AHashMap<IpAddr, Arc<Workload>>,
    by_uid: AHashMap<String, Arc<Workload>>,
    by_node: AHashMap<String, Vec<Arc<Workload>>>,
    by_vip: AHashMap<IpAddr, Arc<Service>>,
    /// Services each workload (by uid) is an endpoint of.
    services_of: AHashMap<String, Vec<Arc<Service>>>,
    /// Endpoints of each service, by `namespace/hostname`: the union of the
    /// service's own `endpoints` list (manifests) and of the workloads that
    /// name the service (xDS, where membership travels on the workload).
    members: AHashMap<String, Vec<Arc<Workload>>>,
    /// Indices into `config.policies`.
    global_policies: Vec<usize>,
    namespace_policies: AHashMap<String, Vec<usize>>,
    policy_by_key: AHashMap<String, usize>,
}

impl ProxyState {
    /// Validates and indexes `config`. The first state has version 1.
    pub fn new(config: LocalConfig) -> Result<ProxyState, ConfigError> {
        config::validate(&config)?;
        Ok(Self::index(config, 1))
    }

    fn index(config: LocalConfig, version: u64) -> ProxyState {
        let mut by_ip = AHashMap::new();
        let mut by_uid = AHashMap::new();
        let mut by_node: AHashMap<String, Vec<Arc<Workload>>> = AHashMap::new();
        for w in &config.workloads {
            let w = Arc::new(w.clone());
            for ip in &w.addresses {
                by_ip.insert(ip.to_canonical(), w.clone());
            }
            by_node.entry(w.node.clone()).or_default().push(w.clone());
            by_uid.insert(w.uid.clone(), w);
        }
        let mut by_vip = AHashMap::new();
        let mut services_of: AHashMap<String, Vec<Arc<Service>>> = AHashMap::new();
        let mut members: AHashMap<String, Vec<Arc<Workload>>> = AHashMap::new();
        let mut by_key: AHashMap<String, Arc<Service>> = AHashMap::new();
        let mut listed: AHashSet<(String, &str)> = AHashSet::new();
        for s in &config.services {
            let s = Arc::new(s.clone());
            for vip in &s.vips {
                by_vip.insert(vip.to_canonical(), s.clone());
            }
            let list = members.entry(service_key(&s)).or_default();
            for uid in &s.endpoints {
                // A dangling uid is possible in a partial (xDS) view.
                if let Some(w) = by_uid.get(uid) {
                    listed.insert((service_key(&s), w.uid.as_str()));
                    list.push(Arc::clone(w));
                    services_of.entry(uid.clone()).or_default().push(s.clone());
                }
            }
            by_key.insert(service_key(&s), s);
        }
        for w in &config.workloads {
            for key in &w.services {
                // Unknown services are skipped: on demand, the service may
                // arrive later, and the index is rebuilt when it does.
                let Some(s) = by_key.get(key) else { continue };
                if listed.contains(&(key.clone(), w.uid.as_str())) {
                    continue;
                }
                if let Some(w) = by_uid.get(&w.uid) {
                    members.entry(key.clone()).or_default().push(Arc::clone(w));
                    services_of
                        .entry(w.uid.clone())
                        .or_default()
                        .push(s.clone());
                }
            }
        }
        let mut global_policies = Vec::new();
        let mut namespace_policies: AHashMap<String, Vec<usize>> = AHashMap::new();
        let mut policy_by_key = AHashMap::new();
        for (i, p) in config.policies.iter().enumerate() {
            match p.scope {
                Scope::Global => global_policies.push(i),
                Scope::Namespace => namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(i),
                Scope::WorkloadSelector => {}
            }
            policy_by_key.insert(p.key(), i);
        }
        ProxyState {
            config,
            version,
            by_ip,
            by_uid,
            by_node,
            by_vip,
            services_of,
            members,
            global_policies,
            namespace_policies,
            policy_by_key,
        }
    }

    /// Increases by one on every applied change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The config this state was built from, for config dumps.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The workload owning `ip`; IPv4-mapped IPv6 addresses match their IPv4 form.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    pub fn service_by_vip(&self, vip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&vip.to_canonical())
    }

    /// Workloads whose `node` is `node`, in config order.
    pub fn workloads_on_node(&self, node: &str) -> &[Arc<Workload>] {
        self.by_node.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The first service that has `workload` as an endpoint and maps some
    /// port to `target_port`: what a destination reports as its service.
    pub fn service_for_workload_port(
        &self,
        workload: &Workload,
        target_port: u16,
    ) -> Option<Arc<Service>> {
        self.services_of
            .get(&workload.uid)?
            .iter()
            .find(|s| s.ports.iter().any(|p| p.target_port == target_port))
            .cloned()
    }

    /// Healthy endpoints of `service` for `service_port`, as (workload,
    /// workload address : target port). Addresses are picked in the family
    /// of the service's first VIP when the workload has one.
    /// Empty if the service has no such port.
    pub fn endpoints(
        &self,
        service: &Service,
        service_port: u16,
    ) -> Vec<(Arc<Workload>, SocketAddr)> {
        let family_of = service.vips.first().copied();
        self.endpoints_via(service, family_of, service_port)
    }

    /// Like [`ProxyState::endpoints`], preferring addresses of the family of
    /// `vip` (the address the client actually dialled, for dual-stack services).
    pub fn endpoints_via(
        &self,
        service: &Service,
        vip: Option<IpAddr>,
        service_port: u16,
    ) -> Vec<(Arc<Workload>, SocketAddr)> {
        let Some(port) = service.ports.iter().find(|p| p.port == service_port) else {
            return Vec::new();
        };
        let want_v4 = vip.map(|v| v.to_canonical().is_ipv4());
        self.members
            .get(&service_key(service))
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter(|w| w.status == HealthStatus::Healthy)
            .filter_map(|w| {
                let same_family = want_v4.and_then(|v4| {
                    w.addresses
                        .iter()
                        .find(|a| a.to_canonical().is_ipv4() == v4)
                });
                let ip = same_family.or_else(|| w.addresses.first())?;
                Some((w.clone(), SocketAddr::new(*ip, port.target_port)))
            })
            .collect()
    }

    /// The policies that apply to `workload`: GLOBAL ones, NAMESPACE ones of
    /// its namespace, and the ones it lists (each policy at most once).
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Authorization> + 'a {
        let ns = self
            .namespace_policies
            .get(&workload.namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let listed = workload
            .authorization_policies
            .iter()
            .filter_map(|key| self.policy_by_key.get(key).copied())
            .filter(move |&i| {
                // Already yielded through their scope.
                let p = &self.config.policies[i];
                match p.scope {
                    Scope::Global => false,
                    Scope::Namespace => p.namespace != workload.namespace,
                    Scope::WorkloadSelector => true,
                }
            });
        self.global_policies
            .iter()
            .chain(ns)
            .copied()
            .chain(listed)
            .filter_map(|i| self.config.policies.get(i))
    }
}

/// Holds the current [`ProxyState`]. Reads are lock-free (arc-swap); updates
/// go through [`StateStore::apply`] only.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<ProxyState>,
    /// Serialises updates so two writers cannot both claim the next version.
    update: Mutex<()>,
    versions: watch::Sender<u64>,
    /// Whether the source has delivered its first whole view (always, for a
    /// file; after the first answer per type, for xDS). Readiness waits on it.
    synced: AtomicBool,
}

impl StateStore {
    pub fn new(state: ProxyState) -> StateStore {
        let (versions, _) = watch::channel(state.version);
        StateStore {
            current: ArcSwap::from_pointee(state),
            update: Mutex::new(()),
            versions,
            synced: AtomicBool::new(true),
        }
    }

    /// A store whose source has not delivered yet: not ready until
    /// [`StateStore::mark_synced`].
    pub fn unsynced(state: ProxyState) -> StateStore {
        let store = StateStore::new(state);
        store.synced.store(false, Ordering::Relaxed);
        store
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The current snapshot. Cheap; drop it before awaiting (arc-swap guards
    /// are meant to be short-lived) or use [`StateStore::snapshot`].
    pub fn load(&self) -> arc_swap::Guard<Arc<ProxyState>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holding across awaits.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Applies `update` (a whole config or a delta), validates the result
    /// and makes it current, returning the new version. On error the current
    /// state is untouched. A result equal to the current config changes
    /// nothing and returns the current version, so subscribers only wake for
    /// real changes.
    pub fn apply(&self, update: Update) -> Result<u64, ConfigError> {
        let summary = update.summary();
        // A poisoned lock only means another writer panicked; the state it
        // guards lives in `current`, which is always whole.
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        // A snapshot claims to be the whole mesh, so its references must
        // resolve; a delta extends a view that may be partial (xDS on demand).
        let partial = matches!(update, Update::Delta { .. });
        let config = update.apply_to(&old.config);
        if partial {
            config::validate_partial(&config)?;
        } else {
            config::validate(&config)?;
        }
        if old.config == config {
            return Ok(old.version);
        }
        let version = old.version + 1;
        let next = ProxyState::index(config, version);
        info!(
            version,
            update = %summary,
            workloads = next.config.workloads.len(),
            services = next.config.services.len(),
            policies = next.config.policies.len(),
            "config applied"
        );
        self.current.store(Arc::new(next));
        self.versions.send_replace(version);
        Ok(version)
    }

    /// Versions as they are applied; the receiver starts at the current one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// `find` on the current state, retried at each new version until it
    /// gives something or `within` passes (then None).
    ///
    /// Why: a pod's traffic can arrive before its config. The CNI enrolls
    /// the pod before its app starts, but the controller learns the pod's
    /// address only from the status the kubelet writes afterwards, so the
    /// app's first connection may reach its node proxy a moment before the
    /// config naming it does. Waiting here (cold path only) turns that race
    /// into a short delay instead of a refused connection.
    pub async fn wait_for<T>(
        &self,
        within: std::time::Duration,
        find: impl Fn(&ProxyState) -> Option<T>,
    ) -> Option<T> {
        let mut versions = self.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Marked seen before the look: a version applied after it wakes us.
            versions.borrow_and_update();
            if let Some(found) = find(&self.load()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, versions.changed()).await {
                Ok(Ok(())) => continue,
                // The deadline passed, or the store is gone.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
