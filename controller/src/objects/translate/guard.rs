//! The last line: the translation must hand out a config that passes
//! validation, whatever the objects said. Each step above already leaves
//! out what it knows is wrong; whatever validation still refuses is dropped
//! here, item by item, with the validator's message.

use std::collections::BTreeSet;

use trellis_api::config::{validate, ConfigError, LocalConfig};

use crate::objects::error::ObjectError;

/// The config sections whose items can be dropped, as the validator names them.
const SECTIONS: [&str; 4] = [
    "workloads[",
    "services[",
    "policies[",
    "authorizationPolicies[",
];

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
        _ => cfg
            .authorization_policies
            .get(idx)
            .map(|p| ("AuthorizationPolicy", format!("{}/{}", p.namespace, p.name))),
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
        let mut drop: [BTreeSet<usize>; 4] = Default::default();
        for p in &problems {
            let mut what = ("config", "translation".to_string());
            for (i, section) in SECTIONS.iter().enumerate() {
                if let Some(idx) = p
                    .strip_prefix(section)
                    .and_then(|r| r.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    if let Some(named) = item(&cfg, i, idx) {
                        what = named;
                    }
                    drop[i].insert(idx);
                }
            }
            errors.push(ObjectError::Translate {
                kind: what.0.into(),
                name: what.1,
                message: format!("{p}; it is left out of the config"),
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
