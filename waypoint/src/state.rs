//! What the request path reads: the compiled config snapshot (routes and
//! policies, rebuilt off the data path whenever the config changes) and the
//! per-rule runtime state (limiters, breakers, ejections, balancer latency),
//! which outlives config changes as long as the rule's policy is unchanged.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use trellis_core::config::l7::{
    CircuitBreaker as CircuitBreakerCfg, LoadBalancer, RateLimit, TrafficPolicy,
};
use trellis_core::config::LocalConfig;
use trellis_core::state::{ProxyState, StateStore};

use crate::authz::PolicySet;
use crate::lb::Balancer;
use crate::resilience::adaptive::AdaptiveLimiter;
use crate::resilience::circuit::CircuitBreaker;
use crate::resilience::outlier::OutlierDetector;
use crate::resilience::ratelimit::{Gcra, KeyedGcra};
use crate::resilience::retry::RetryBudget;
use crate::route::{RouteTable, Rule};

/// An immutable view of one config version, compiled for the request path.
#[derive(Debug)]
pub struct Compiled {
    pub state: Arc<ProxyState>,
    pub routes: RouteTable,
    pub authz: PolicySet,
    /// This waypoint's total limit, if its `waypoints` entry sets one.
    pub total_limit: Option<RateLimit>,
}

impl Compiled {
    pub fn build(state: Arc<ProxyState>, namespace: &str, name: &str) -> Compiled {
        let cfg: &LocalConfig = state.config();
        let total_limit = cfg
            .waypoints
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .and_then(|w| w.total_rate_limit);
        Compiled {
            routes: RouteTable::build(cfg),
            authz: PolicySet::build(cfg),
            total_limit,
            state,
        }
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

/// Runtime state of one backend of a rule.
pub struct BackendRuntime {
    pub circuit: Option<Arc<CircuitBreaker>>,
    pub outlier: Option<OutlierDetector>,
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
    fn new(rule: &Rule, now: Instant) -> RuleRuntime {
        let p = &rule.policy;
        let lb = p.load_balancer.unwrap_or_default();
        let backends = rule
            .backends
            .iter()
            .map(|_| BackendRuntime {
                circuit: p
                    .circuit_breaker
                    .as_ref()
                    .map(|c: &CircuitBreakerCfg| CircuitBreaker::new(c)),
                outlier: p.outlier_detection.as_ref().map(OutlierDetector::new),
                balancer: Balancer::new(&lb as &LoadBalancer),
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

/// Rule runtimes by rule key, plus the waypoint-wide total limiter.
#[derive(Default)]
pub struct Runtimes {
    rules: RwLock<AHashMap<Arc<str>, Arc<RuleRuntime>>>,
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
        let rt = Arc::new(RuleRuntime::new(rule, Instant::now()));
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
