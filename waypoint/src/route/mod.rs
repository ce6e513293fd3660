//! The route table: which rule, and which backend, a request to a service
//! goes to. Pure: [`RouteTable::build`] compiles a validated config once and
//! [`RouteTable::decide`] answers per request without I/O and, except for a
//! redirect's `Location`, without allocating.
//!
//! Semantics are Gateway API HTTPRoute and GRPCRoute attached to Services
//! (GAMMA). A service (port) with no route attached forwards to itself. With
//! routes, the most specific matching rule wins: exact path over prefix,
//! longer prefix, more header matches, more query matches, a method match,
//! then config order (standing in for Gateway API's creation time). gRPC
//! requests try the gRPC routes first and fall back to the HTTP routes.

mod matcher;
mod redirect;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use trellis_api::config::l7::{
    BackendRef, GrpcRouteRule, HttpFilter, HttpRouteRule, ParentRef, Timeouts, TrafficPolicy,
};
use trellis_api::config::{LocalConfig, Service};

use crate::filters::Filters;
use matcher::{host_matches, is_grpc, GrpcMatch, HostMatch, HttpMatch};
pub use redirect::Redirect;

/// The request as routing sees it.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    /// The Host header or :authority, without the port.
    pub host: &'a str,
}

#[derive(Debug)]
pub enum Decision {
    /// Send to `rule.backends[backend]`, chosen by weight.
    Forward {
        rule: Arc<Rule>,
        backend: usize,
        /// The path prefix of the match that selected the rule (no trailing
        /// '/', "" for the root), for ReplacePrefixMatch in
        /// [`Filters::apply_request`]; None when it matched an exact path.
        prefix: Option<Arc<str>>,
    },
    /// Answer `status` with `Location: location`; nothing is forwarded.
    Redirect {
        status: http::StatusCode,
        location: String,
        rule: Arc<Rule>,
    },
    /// Routes attach to the service (port) but none matches: answer 404.
    NoRoute,
    /// The matched rule has no backend to send to (none, or all weight 0): answer 500.
    NoBackend { rule: Arc<Rule> },
}

#[derive(Debug)]
pub struct Rule {
    /// Stable id for metrics and per-rule state: `<ns>/<route>/<rule name or
    /// index>`, or `default/<svc ns>/<svc name>` for a service's implicit route.
    pub key: Arc<str>,
    /// `<ns>/<route name>`, or "" for the implicit route.
    pub route_name: Arc<str>,
    pub grpc: bool,
    /// Rule-level filters; a picked backend may add its own.
    pub filters: Filters,
    pub backends: Vec<Backend>,
    /// None: no timeout (also for `0s`).
    pub request_timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    /// `TrafficPolicy::default()` (everything off) when the rule has none.
    pub policy: TrafficPolicy,
    /// Set when the rule answers with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
}

#[derive(Debug)]
pub struct Backend {
    pub service: Arc<Service>,
    /// The service port; None means the port the request arrived on.
    pub port: Option<u16>,
    pub weight: u32,
    pub filters: Filters,
}

impl Rule {
    /// The implicit route of a service without routes: all of it, to itself.
    pub fn default_for(service: Arc<Service>) -> Rule {
        Rule {
            key: format!("default/{}/{}", service.namespace, service.name).into(),
            route_name: "".into(),
            grpc: false,
            filters: Filters::default(),
            backends: vec![Backend {
                service,
                port: None,
                weight: 1,
                filters: Filters::default(),
            }],
            request_timeout: None,
            per_try_timeout: None,
            policy: TrafficPolicy::default(),
            redirect: None,
        }
    }

    /// The backend for `roll` in [0, 1): backend i owns the share
    /// [w0+..+w(i-1), w0+..+wi) of the total weight, so weight 0 is never
    /// picked. None when no backend has weight.
    pub fn pick_backend(&self, roll: f64) -> Option<usize> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let roll = if roll.is_finite() {
            roll.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The float product can round up to `total`; clamp to the last unit.
        let target = ((roll * total as f64) as u64).min(total - 1);
        let mut upto = 0u64;
        self.backends.iter().position(|b| {
            upto += u64::from(b.weight);
            target < upto
        })
    }
}

/// One match of one rule, as attached to one service.
#[derive(Debug)]
struct Candidate<M> {
    /// The parentRef's port; None attaches to every port.
    port: Option<u16>,
    hosts: Arc<[HostMatch]>,
    matcher: M,
    prefix: Option<Arc<str>>,
    rule: Arc<Rule>,
}

impl<M> Candidate<M> {
    fn applies(&self, port: u16, host: &str) -> bool {
        self.port.is_none_or(|p| p == port) && host_matches(&self.hosts, host)
    }
}

#[derive(Debug)]
struct ServiceRoutes {
    default: Arc<Rule>,
    /// A route attaches to every port of the service.
    all_ports: bool,
    /// Ports routes attach to by parentRef port.
    ports: Vec<u16>,
    /// Sorted by precedence, so the first that matches wins.
    http: Vec<Candidate<HttpMatch>>,
    grpc: Vec<Candidate<GrpcMatch>>,
}

impl ServiceRoutes {
    fn attach(&mut self, port: Option<u16>) {
        match port {
            None => self.all_ports = true,
            Some(p) if !self.ports.contains(&p) => self.ports.push(p),
            Some(_) => {}
        }
    }

    fn attached(&self, port: u16) -> bool {
        self.all_ports || self.ports.contains(&port)
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// namespace → service name → routes; nested so a lookup by `&str` allocates nothing.
    services: AHashMap<Box<str>, AHashMap<Box<str>, ServiceRoutes>>,
    rules: Vec<Arc<Rule>>,
}

/// The parts of HTTPRoute and GRPCRoute rules compiled alike.
struct RuleSpec<'a> {
    name: Option<&'a str>,
    filters: &'a [HttpFilter],
    backend_refs: &'a [BackendRef],
    timeouts: Option<&'a Timeouts>,
    policy: Option<&'a TrafficPolicy>,
}

impl<'a> From<&'a HttpRouteRule> for RuleSpec<'a> {
    fn from(r: &'a HttpRouteRule) -> Self {
        RuleSpec {
            name: r.name.as_deref(),
            filters: &r.filters,
            backend_refs: &r.backend_refs,
            timeouts: r.timeouts.as_ref(),
            policy: r.policy.as_ref(),
        }
    }
}

impl<'a> From<&'a GrpcRouteRule> for RuleSpec<'a> {
    fn from(r: &'a GrpcRouteRule) -> Self {
        RuleSpec {
            name: r.name.as_deref(),
            filters: &r.filters,
            backend_refs: &r.backend_refs,
            timeouts: r.timeouts.as_ref(),
            policy: r.policy.as_ref(),
        }
    }
}

/// What the builder needs of a compiled HTTP or gRPC match.
trait RouteMatch: Clone {
    /// The matched path prefix, for ReplacePrefixMatch (HTTP only).
    fn prefix(&self) -> Option<Arc<str>>;
}

impl RouteMatch for HttpMatch {
    fn prefix(&self) -> Option<Arc<str>> {
        HttpMatch::prefix(self)
    }
}

impl RouteMatch for GrpcMatch {
    fn prefix(&self) -> Option<Arc<str>> {
        None
    }
}

/// A rule's compiled matches; a rule without matches matches everything.
fn compile_matches<T, M>(
    matches: &[T],
    compile: impl Fn(&T) -> Option<M>,
    any: impl Fn() -> M,
) -> Vec<M> {
    if matches.is_empty() {
        vec![any()]
    } else {
        matches.iter().filter_map(compile).collect()
    }
}

/// State while building: services by (namespace, name).
struct Builder<'a> {
    services: AHashMap<(&'a str, &'a str), (Arc<Service>, ServiceRoutes)>,
    rules: Vec<Arc<Rule>>,
}

impl<'a> Builder<'a> {
    fn rule(
        &mut self,
        ns: &str,
        route: &str,
        index: usize,
        grpc: bool,
        spec: RuleSpec<'_>,
    ) -> Arc<Rule> {
        let route_name: Arc<str> = format!("{ns}/{route}").into();
        let key = match spec.name {
            Some(n) => format!("{route_name}/{n}"),
            None => format!("{route_name}/{index}"),
        };
        let backends = spec
            .backend_refs
            .iter()
            .filter_map(|b| {
                let bns = b.namespace.as_deref().unwrap_or(ns);
                let Some((svc, _)) = self.services.get(&(bns, b.name.as_str())) else {
                    tracing::warn!(rule = %key, backend = %format!("{bns}/{}", b.name), "backend skipped: no such service");
                    return None;
                };
                Some(Backend {
                    service: svc.clone(),
                    port: b.port,
                    weight: b.weight,
                    filters: Filters::compile(&b.filters),
                })
            })
            .collect();
        let nonzero = |d: Option<trellis_api::config::Dur>| d.map(|d| d.0).filter(|d| !d.is_zero());
        let redirect = spec
            .filters
            .iter()
            .find_map(|f| f.request_redirect.as_ref())
            .map(Redirect::compile);
        let rule = Arc::new(Rule {
            key: key.into(),
            route_name,
            grpc,
            filters: Filters::compile(spec.filters),
            backends,
            request_timeout: nonzero(spec.timeouts.and_then(|t| t.request)),
            per_try_timeout: nonzero(spec.timeouts.and_then(|t| t.backend_request)),
            policy: spec.policy.cloned().unwrap_or_default(),
            redirect,
        });
        self.rules.push(rule.clone());
        rule
    }

    /// Compiles one route's rules and adds them, as candidates, to every
    /// service its parentRefs name; `slot` picks the HTTP or gRPC list.
    #[allow(clippy::too_many_arguments)]
    fn attach<M: RouteMatch>(
        &mut self,
        ns: &'a str,
        name: &str,
        hostnames: &[String],
        parents: &'a [ParentRef],
        grpc: bool,
        rules: Vec<(RuleSpec<'_>, Vec<M>)>,
        slot: impl Fn(&mut ServiceRoutes) -> &mut Vec<Candidate<M>>,
    ) {
        let hosts: Arc<[HostMatch]> = hostnames.iter().map(|h| HostMatch::compile(h)).collect();
        let mut compiled = Vec::new();
        for (i, (spec, matches)) in rules.into_iter().enumerate() {
            let rule = self.rule(ns, name, i, grpc, spec);
            compiled.extend(matches.into_iter().map(|m| (m, rule.clone())));
        }
        for p in parents {
            let Some(routes) = self.parent(ns, p) else {
                continue;
            };
            slot(routes).extend(compiled.iter().map(|(m, rule)| Candidate {
                port: p.port,
                hosts: hosts.clone(),
                prefix: m.prefix(),
                matcher: m.clone(),
                rule: rule.clone(),
            }));
        }
    }

    /// The routes of the service a parentRef names, marked attached on its port.
    fn parent(&mut self, route_ns: &'a str, p: &'a ParentRef) -> Option<&mut ServiceRoutes> {
        if p.kind != "Service" {
            tracing::warn!(kind = %p.kind, name = %p.name, "parentRef skipped: not a Service");
            return None;
        }
        let ns = p.namespace.as_deref().unwrap_or(route_ns);
        match self.services.get_mut(&(ns, p.name.as_str())) {
            Some((_, routes)) => {
                routes.attach(p.port);
                Some(routes)
            }
            None => {
                tracing::warn!(service = %format!("{ns}/{}", p.name), "parentRef skipped: no such service");
                None
            }
        }
    }
}

impl RouteTable {
    /// Compiles the routes of an already validated config. Infallible: bad
    /// entries were rejected by validation; anything odd is skipped with a warning.
    pub fn build(cfg: &LocalConfig) -> RouteTable {
        let mut b = Builder {
            services: AHashMap::new(),
            rules: Vec::new(),
        };
        for s in &cfg.services {
            let svc = Arc::new(s.clone());
            let default = Arc::new(Rule::default_for(svc.clone()));
            b.rules.push(default.clone());
            let routes = ServiceRoutes {
                default,
                all_ports: false,
                ports: Vec::new(),
                http: Vec::new(),
                grpc: Vec::new(),
            };
            b.services.insert((&s.namespace, &s.name), (svc, routes));
        }

        for r in &cfg.http_routes {
            let rules: Vec<_> = r
                .rules
                .iter()
                .map(|rule| {
                    (
                        rule.into(),
                        compile_matches(&rule.matches, HttpMatch::compile, HttpMatch::any),
                    )
                })
                .collect();
            b.attach(
                &r.namespace,
                &r.name,
                &r.hostnames,
                &r.parent_refs,
                false,
                rules,
                |routes| &mut routes.http,
            );
        }
        for r in &cfg.grpc_routes {
            let rules: Vec<_> = r
                .rules
                .iter()
                .map(|rule| {
                    (
                        rule.into(),
                        compile_matches(&rule.matches, GrpcMatch::compile, GrpcMatch::any),
                    )
                })
                .collect();
            b.attach(
                &r.namespace,
                &r.name,
                &r.hostnames,
                &r.parent_refs,
                true,
                rules,
                |routes| &mut routes.grpc,
            );
        }

        let mut services: AHashMap<Box<str>, AHashMap<Box<str>, ServiceRoutes>> = AHashMap::new();
        for ((ns, name), (_, mut routes)) in b.services {
            // Stable sorts: equal precedence keeps config order (route, then rule, then match).
            routes.http.sort_by_key(|c| c.matcher.precedence());
            routes.grpc.sort_by_key(|c| c.matcher.precedence());
            services
                .entry(ns.into())
                .or_default()
                .insert(name.into(), routes);
        }
        RouteTable {
            services,
            rules: b.rules,
        }
    }

    /// Decides what to do with a request to `service` (the service whose VIP
    /// the client dialled) on service `port`. `roll` in [0, 1) picks the backend.
    pub fn decide(
        &self,
        service: &Service,
        port: u16,
        req: &RequestView<'_>,
        roll: f64,
    ) -> Decision {
        let routes = self
            .services
            .get(service.namespace.as_str())
            .and_then(|m| m.get(service.name.as_str()));
        let Some(routes) = routes else {
            // Only when the caller's config is newer than the table: the
            // implicit route, built on the spot (the one allocating path).
            let rule = Arc::new(Rule::default_for(Arc::new(service.clone())));
            return outcome(&rule, None, req, port, roll);
        };
        if !routes.attached(port) {
            return outcome(&routes.default, None, req, port, roll);
        }
        if is_grpc(req.headers) {
            if let Some(c) = routes
                .grpc
                .iter()
                .find(|c| c.applies(port, req.host) && c.matcher.matches(req))
            {
                return outcome(&c.rule, None, req, port, roll);
            }
        }
        match routes
            .http
            .iter()
            .find(|c| c.applies(port, req.host) && c.matcher.matches(req))
        {
            Some(c) => outcome(&c.rule, c.prefix.as_ref(), req, port, roll),
            None => Decision::NoRoute,
        }
    }

    /// Every rule in the table, implicit ones included, each once (for
    /// per-rule state and metrics set up ahead of traffic).
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter()
    }
}

fn outcome(
    rule: &Arc<Rule>,
    prefix: Option<&Arc<str>>,
    req: &RequestView<'_>,
    port: u16,
    roll: f64,
) -> Decision {
    if let Some(r) = &rule.redirect {
        return Decision::Redirect {
            status: r.status,
            location: r.location(req, port, prefix.map(|p| &**p)),
            rule: rule.clone(),
        };
    }
    match rule.pick_backend(roll) {
        Some(backend) => Decision::Forward {
            rule: rule.clone(),
            backend,
            prefix: prefix.cloned(),
        },
        None => Decision::NoBackend { rule: rule.clone() },
    }
}
