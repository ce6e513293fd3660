//! The last line: the translation must hand out a config that passes
//! validation, whatever the objects said. Each step above already leaves
//! out what it knows is wrong; whatever validation still refuses is dropped
//! here, item by item, with the validator's message.

use std::collections::BTreeSet;

use trellis_api::config::{validate, ConfigError, LocalConfig};

use crate::objects::error::ObjectError;

/// The config sections whose items can be dropped, as the validator names them.
const SECTIONS: [&str; 6] = [
    "workloads[",
    "services[",
    "policies[",
    "authorizationPolicies[",
    "httpRoutes[",
    "grpcRoutes[",
];

/// Sections whose items mirror their object's `spec` (routes), so the
/// validator's path reads as the manifest's once the item prefix is `spec`.
const SPEC_SECTIONS: [usize; 2] = [4, 5];

/// Which object an item came from, for the operator.
fn item(cfg: &LocalConfig, section: usize, idx: usize) -> Option<(&'static str, String)> {
    match section {
        0 => cfg.workloads.get(idx).map(|w| ("workload", w.uid.clone())),
        1 => cfg
            .services
            .get(idx)
            .map(|s| ("Service", format!("{}/{}", s.namespace, s.name))),
        2 => cfg
            .policies
            .get(idx)
            .map(|p| ("AuthorizationPolicy", p.key())),
        3 => cfg
            .authorization_policies
            .get(idx)
            .map(|p| ("AuthorizationPolicy", format!("{}/{}", p.namespace, p.name))),
        4 => cfg
            .http_routes
            .get(idx)
            .map(|r| ("HTTPRoute", format!("{}/{}", r.namespace, r.name))),
        _ => cfg
            .grpc_routes
            .get(idx)
            .map(|r| ("GRPCRoute", format!("{}/{}", r.namespace, r.name))),
    }
}

/// Dropping an item can break a reference to it, hence a few rounds.
const MAX_ROUNDS: usize = 4;

pub(crate) fn valid(mut cfg: LocalConfig, errors: &mut Vec<ObjectError>) -> LocalConfig {
    for _ in 0..MAX_ROUNDS {
        let problems = match validate(&cfg) {
            Ok(()) => return cfg,
            Err(ConfigError::Invalid(p)) => p,
            Err(other) => vec![other.to_string()],
        };
        let mut drop: [BTreeSet<usize>; 6] = Default::default();
        for p in &problems {
            let mut what = ("config", "translation".to_string());
            let mut message = p.clone();
            for (i, section) in SECTIONS.iter().enumerate() {
                let Some(rest) = p.strip_prefix(section) else {
                    continue;
                };
                let Some((n, after)) = rest.split_once(']') else {
                    continue;
                };
                let Ok(idx) = n.parse::<usize>() else {
                    continue;
                };
                if let Some(named) = item(&cfg, i, idx) {
                    what = named;
                }
                if SPEC_SECTIONS.contains(&i) {
                    message = format!("spec{after}");
                }
                drop[i].insert(idx);
            }
            errors.push(ObjectError::Translate {
                kind: what.0.into(),
                name: what.1,
                message: format!("{message}; it is left out of the config"),
            });
        }
        if drop.iter().all(BTreeSet::is_empty) {
            // Not tied to an item: keep only the L4 part, which the steps
            // above build to be valid on its own.
            cfg.authorization_policies.clear();
            cfg.http_routes.clear();
            cfg.grpc_routes.clear();
        }
        retain_idx(&mut cfg.workloads, &drop[0]);
        retain_idx(&mut cfg.services, &drop[1]);
        retain_idx(&mut cfg.policies, &drop[2]);
        retain_idx(&mut cfg.authorization_policies, &drop[3]);
        retain_idx(&mut cfg.http_routes, &drop[4]);
        retain_idx(&mut cfg.grpc_routes, &drop[5]);
        prune(&mut cfg);
    }
    match validate(&cfg) {
        Ok(()) => cfg,
        Err(e) => {
            errors.push(ObjectError::Translate {
                kind: "config".into(),
                name: "translation".into(),
                message: format!("{e}; nothing is served from these objects until they are fixed"),
            });
            LocalConfig::default()
        }
    }
}

fn retain_idx<T>(v: &mut Vec<T>, drop: &BTreeSet<usize>) {
    let mut i = 0;
    v.retain(|_| {
        let keep = !drop.contains(&i);
        i += 1;
        keep
    });
}

/// Removes references to items that are gone.
fn prune(cfg: &mut LocalConfig) {
    let uids: BTreeSet<String> = cfg.workloads.iter().map(|w| w.uid.clone()).collect();
    let keys: BTreeSet<String> = cfg.policies.iter().map(|p| p.key()).collect();
    let addrs: BTreeSet<std::net::IpAddr> = cfg
        .workloads
        .iter()
        .flat_map(|w| w.addresses.iter().map(|a| a.to_canonical()))
        .collect();
    for w in &mut cfg.workloads {
        w.authorization_policies.retain(|k| keys.contains(k));
        if w.waypoint
            .is_some_and(|wp| !addrs.contains(&wp.address.to_canonical()))
        {
            w.waypoint = None;
        }
    }
    for s in &mut cfg.services {
        s.endpoints.retain(|u| uids.contains(u));
        if s.waypoint
            .is_some_and(|wp| !addrs.contains(&wp.address.to_canonical()))
        {
            s.waypoint = None;
        }
    }
}
