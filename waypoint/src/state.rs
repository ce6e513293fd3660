//! What the request path reads: the compiled config snapshot (routes and
//! policies, rebuilt off the data path whenever the config changes) and the
//! per-rule runtime state (limiters, breakers, ejections, balancer latency),
//! which outlives config changes as long as the rule's policy is unchanged.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use trellis_api::config::l7::{
    CircuitBreaker as CircuitBreakerCfg, LoadBalancer, OutlierDetection, RateLimit, TrafficPolicy,
};
use trellis_api::config::{LocalConfig, Service};
use trellis_core::state::{ProxyState, StateStore};

use crate::authz::PolicySet;
use crate::lb::Balancer;
use crate::resilience::adaptive::AdaptiveLimiter;
use crate::resilience::circuit::CircuitBreaker;
use crate::resilience::outlier::OutlierDetector;
use crate::resilience::ratelimit::{Gcra, KeyedGcra};
use crate::resilience::retry::RetryBudget;
use crate::route::{RouteTable, Rule};
use crate::upstream::Endpoint;

/// An immutable view of one config version, compiled for the request path.
#[derive(Debug)]
pub struct Compiled {
    pub state: Arc<ProxyState>,
    pub routes: RouteTable,
    pub authz: PolicySet,
    /// This waypoint's total limit, if its `waypoints` entry sets one.
    pub total_limit: Option<RateLimit>,
    /// Healthy endpoints of every service port, by namespace then name, so
    /// a request borrows its candidates instead of building them.
    endpoints: EndpointIndex,
}

/// Namespace -> name -> (service port, its endpoints); nested maps so a
/// lookup borrows `&str`s instead of building a key.
type EndpointIndex = AHashMap<Box<str>, AHashMap<Box<str>, Vec<(u16, Arc<EndpointSet>)>>>;

/// The healthy endpoints of one service port, and their addresses in the
/// same order (what the balancer picks from).
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
    pub addrs: Vec<SocketAddr>,
}

impl Compiled {
    pub fn build(state: Arc<ProxyState>, namespace: &str, name: &str) -> Compiled {
        let cfg: &LocalConfig = state.config();
        let total_limit = cfg
            .waypoints
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .and_then(|w| w.total_rate_limit);
        let mut endpoints = EndpointIndex::new();
        for svc in &cfg.services {
            let ports = svc
                .ports
                .iter()
                .map(|p| {
                    let endpoints: Vec<Endpoint> = state
                        .endpoints(svc, p.port)
                        .into_iter()
                        .map(|(workload, addr)| Endpoint { addr, workload })
                        .collect();
                    let addrs = endpoints.iter().map(|e| e.addr).collect();
                    (p.port, Arc::new(EndpointSet { endpoints, addrs }))
                })
                .collect();
            endpoints
                .entry(svc.namespace.as_str().into())
                .or_default()
                .insert(svc.name.as_str().into(), ports);
        }
        Compiled {
            routes: RouteTable::build(cfg),
            authz: PolicySet::build(cfg),
            total_limit,
            state,
            endpoints,
        }
    }

    /// The healthy endpoints of `service`'s `port`; None for a port the
    /// service does not have.
    pub fn endpoints(&self, service: &Service, port: u16) -> Option<&Arc<EndpointSet>> {
        self.endpoints
            .get(service.namespace.as_str())?
            .get(service.name.as_str())?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, set)| set)
    }
}

/// The compiled snapshot, swapped atomically when the store changes.
pub struct Snapshot {
    current: ArcSwap<Compiled>,
    namespace: String,
    name: String,
}

impl Snapshot {
    pub fn new(store: &StateStore, namespace: &str, name: &str) -> Snapshot {
        Snapshot {
            current: ArcSwap::from_pointee(Compiled::build(store.snapshot(), namespace, name)),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn load(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    /// Recompiles from the store's current state (called on the admin thread).
    pub fn refresh(&self, store: &StateStore) {
        let state = store.snapshot();
        if state.version() == self.current.load().state.version() {
            return;
        }
        let c = Compiled::build(state, &self.namespace, &self.name);
        tracing::info!(version = c.state.version(), "waypoint config compiled");
        self.current.store(Arc::new(c));
    }

    /// Keeps the snapshot in step with the store until the store is dropped.
    pub async fn follow(self: Arc<Self>, store: Arc<StateStore>) {
        let mut rx = store.subscribe();
        while rx.changed().await.is_ok() {
            self.refresh(&store);
        }
    }
}

/// Runtime state of one backend of a rule. The circuit breaker and the
/// outlier detector belong to the destination service (shared by every rule
/// that sends to it with the same settings): they protect and judge the
/// destination, whichever route the request took.
pub struct BackendRuntime {
    pub circuit: Option<Arc<CircuitBreaker>>,
    pub outlier: Option<Arc<OutlierDetector>>,
    pub balancer: Balancer,
}

/// Runtime state of one route rule.
pub struct RuleRuntime {
    /// The policy this state was built for; a changed policy gets fresh state.
    policy: TrafficPolicy,
    pub rate: Option<Gcra>,
    pub per_caller: Option<KeyedGcra>,
    pub adaptive: Option<Arc<AdaptiveLimiter>>,
    pub budget: Option<RetryBudget>,
    pub backends: Vec<BackendRuntime>,
}

impl RuleRuntime {
    fn new(rule: &Rule, shared: &Shared, now: Instant) -> RuleRuntime {
        let p = &rule.policy;
        let lb = p.load_balancer.unwrap_or_default();
        let backends = rule
            .backends
            .iter()
            .map(|b| {
                let dst = b.service.hostname.as_str();
                BackendRuntime {
                    circuit: p.circuit_breaker.as_ref().map(|c| shared.circuit(dst, c)),
                    outlier: p.outlier_detection.as_ref().map(|o| shared.outlier(dst, o)),
                    balancer: Balancer::new(&lb as &LoadBalancer),
                }
            })
            .collect();
        RuleRuntime {
            policy: p.clone(),
            rate: p.rate_limit.as_ref().map(|r| Gcra::new(r, now)),
            per_caller: p.per_caller_rate_limit.as_ref().map(KeyedGcra::new),
            adaptive: p.adaptive_concurrency.as_ref().map(AdaptiveLimiter::new),
            budget: p.retry.as_ref().map(|r| RetryBudget::new(&r.budget)),
            backends,
        }
    }

    fn fits(&self, rule: &Rule) -> bool {
        self.policy == rule.policy && self.backends.len() == rule.backends.len()
    }
}

/// Per-destination state, by service hostname and settings: rules with the
/// same settings for one destination share it; other settings get their own.
#[derive(Default)]
struct Shared {
    circuits: ByDestination<CircuitBreakerCfg, CircuitBreaker>,
    outliers: ByDestination<OutlierDetection, OutlierDetector>,
}

/// State of type `T` by destination hostname and its settings `C`.
type ByDestination<C, T> = Mutex<AHashMap<String, Vec<(C, Arc<T>)>>>;

/// The entry of `map` for (`dst`, `cfg`), made by `make` if missing. Entries
/// no rule holds any more (a changed config) are dropped on the way.
fn shared_entry<C: PartialEq + Copy, T>(
    map: &ByDestination<C, T>,
    dst: &str,
    cfg: &C,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let list = map.entry(dst.to_string()).or_default();
    list.retain(|(_, t)| Arc::strong_count(t) > 1);
    if let Some((_, t)) = list.iter().find(|(c, _)| c == cfg) {
        return t.clone();
    }
    let t = make();
    list.push((*cfg, t.clone()));
    t
}

impl Shared {
    fn circuit(&self, dst: &str, cfg: &CircuitBreakerCfg) -> Arc<CircuitBreaker> {
        shared_entry(&self.circuits, dst, cfg, || CircuitBreaker::new(cfg))
    }

    fn outlier(&self, dst: &str, cfg: &OutlierDetection) -> Arc<OutlierDetector> {
        shared_entry(&self.outliers, dst, cfg, || {
            Arc::new(OutlierDetector::new(cfg))
        })
    }
}

/// Rule runtimes by rule key, per-destination state, and the waypoint-wide
/// total limiter.
#[derive(Default)]
pub struct Runtimes {
    rules: RwLock<AHashMap<Arc<str>, Arc<RuleRuntime>>>,
    shared: Shared,
    total: RwLock<Option<(RateLimit, Arc<Gcra>)>>,
}

impl Runtimes {
    /// The runtime of `rule`, created on first use or when its policy changed.
    pub fn rule(&self, rule: &Rule) -> Arc<RuleRuntime> {
        {
            let map = self.rules.read().unwrap_or_else(|p| p.into_inner());
            if let Some(rt) = map.get(&rule.key).filter(|rt| rt.fits(rule)) {
                return rt.clone();
            }
        }
        let mut map = self.rules.write().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = map.get(&rule.key).filter(|rt| rt.fits(rule)) {
            return rt.clone();
        }
        let rt = Arc::new(RuleRuntime::new(rule, &self.shared, Instant::now()));
        map.insert(rule.key.clone(), rt.clone());
        rt
    }

    /// The total limiter for `limit`, rebuilt when the limit changes.
    pub fn total(&self, limit: Option<RateLimit>) -> Option<Arc<Gcra>> {
        let limit = limit?;
        {
            let t = self.total.read().unwrap_or_else(|p| p.into_inner());
            if let Some((l, g)) = t.as_ref() {
                if *l == limit {
                    return Some(g.clone());
                }
            }
        }
        let mut t = self.total.write().unwrap_or_else(|p| p.into_inner());
        let g = Arc::new(Gcra::new(&limit, Instant::now()));
        *t = Some((limit, g.clone()));
        Some(g)
    }

    /// Adaptive limits by rule key, for metrics and /config_dump.
    pub fn adaptive_limits(&self) -> Vec<(Arc<str>, u32)> {
        let map = self.rules.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .filter_map(|(k, rt)| rt.adaptive.as_ref().map(|a| (k.clone(), a.limit())))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::config::{Dur, Service};

    fn service(name: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.svc.cluster.local"),
            vips: vec![],
            ports: vec![],
            endpoints: vec![],
            waypoint: None,
        })
    }

    fn rule(key: &str, svc: &Arc<Service>, max_requests: u32) -> Rule {
        let mut r = Rule::default_for(svc.clone());
        r.key = key.into();
        r.policy.circuit_breaker = Some(CircuitBreakerCfg {
            max_requests,
            max_pending: 0,
            pending_timeout: Dur(std::time::Duration::from_secs(1)),
        });
        r
    }

    #[test]
    fn rules_to_one_destination_share_its_circuit_breaker() {
        let rts = Runtimes::default();
        let web = service("web");
        let a = rts.rule(&rule("demo/r/a", &web, 2));
        let b = rts.rule(&rule("demo/r/b", &web, 2));
        let other = rts.rule(&rule("demo/r/c", &web, 5));
        let elsewhere = rts.rule(&rule("demo/r/d", &service("api"), 2));
        let cb = |rt: &RuleRuntime| rt.backends[0].circuit.clone().expect("breaker");
        assert!(
            Arc::ptr_eq(&cb(&a), &cb(&b)),
            "same destination and settings"
        );
        assert!(!Arc::ptr_eq(&cb(&a), &cb(&other)), "other settings");
        assert!(!Arc::ptr_eq(&cb(&a), &cb(&elsewhere)), "other destination");
    }

    #[test]
    fn a_rule_keeps_its_runtime_until_its_policy_changes() {
        let rts = Runtimes::default();
        let web = service("web");
        let first = rts.rule(&rule("demo/r/a", &web, 2));
        assert!(Arc::ptr_eq(&first, &rts.rule(&rule("demo/r/a", &web, 2))));
        let changed = rts.rule(&rule("demo/r/a", &web, 3));
        assert!(!Arc::ptr_eq(&first, &changed));
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn compiled_endpoint_sets_match_the_state_and_skip_unknown_ports() {
        let yaml = include_str!("../../api/examples/waypoint-config.yaml");
        let cfg = trellis_api::config::parse(yaml).unwrap();
        let state = Arc::new(ProxyState::new(cfg).unwrap());
        let c = Compiled::build(state.clone(), "demo", "waypoint");
        let reviews = state
            .config()
            .services
            .iter()
            .find(|s| s.name == "reviews")
            .unwrap()
            .clone();
        let set = c
            .endpoints(&reviews, 80)
            .expect("port 80 is a service port");
        let want: Vec<SocketAddr> = state
            .endpoints(&reviews, 80)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert_eq!(set.addrs, want);
        assert_eq!(set.addrs.len(), 2);
        // The balancer's index into `addrs` must name the same endpoint.
        for (e, a) in set.endpoints.iter().zip(&set.addrs) {
            assert_eq!(e.addr, *a);
            assert_eq!(a.port(), 8080, "the target port, not the service port");
        }
        assert!(c.endpoints(&reviews, 81).is_none());
        let mut other = reviews.clone();
        other.namespace = "elsewhere".into();
        assert!(c.endpoints(&other, 80).is_none());
    }
}
