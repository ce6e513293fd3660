//! Semantic checks on a parsed config. Every check runs, so the operator sees
//! every problem in one pass; each message starts with the path of the
//! offending field.

use std::net::IpAddr;

use ahash::{AHashMap, AHashSet};

use super::LocalConfig;

/// Whether references between objects must resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refs {
    /// The config is the whole mesh (a file, the controller's view).
    MustResolve,
    /// The config is a proxy's partial view (on-demand xDS): a workload may
    /// name a policy or a service the proxy has not received.
    MayDangle,
}

pub(super) fn problems(cfg: &LocalConfig, refs: Refs) -> Vec<String> {
    let mut out = Vec::new();
    // Policy keys first: workloads refer to them.
    let policy_keys: AHashSet<String> = cfg.policies.iter().map(|p| p.key()).collect();
    workloads(cfg, &policy_keys, refs, &mut out);
    services(cfg, refs, &mut out);
    policies(cfg, &mut out);
    super::validate_l7::problems(cfg, refs, &mut out);
    out
}

pub(super) fn non_empty(out: &mut Vec<String>, path: &str, field: &str, value: &str) -> bool {
    if value.trim().is_empty() {
        out.push(format!("{path}.{field}: must not be empty"));
        false
    } else {
        true
    }
}

/// SPIFFE trust domains allow lowercase letters, digits, '.', '-' and '_'.
fn valid_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// SPIFFE path segments allow letters, digits, '.', '-' and '_', but not "." or "..".
fn valid_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn workloads(cfg: &LocalConfig, policy_keys: &AHashSet<String>, refs: Refs, out: &mut Vec<String>) {
    let service_keys: AHashSet<String> = cfg
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.hostname))
        .collect();
    let mut uids: AHashMap<&str, usize> = AHashMap::new();
    let mut ips: AHashMap<IpAddr, usize> = AHashMap::new();
    for (i, w) in cfg.workloads.iter().enumerate() {
        let path = format!("workloads[{i}]");
        if non_empty(out, &path, "uid", &w.uid) {
            if let Some(j) = uids.insert(&w.uid, i) {
                out.push(format!(
                    "{path}.uid: {:?} is already the uid of workloads[{j}]; uids must be unique",
                    w.uid
                ));
            }
        }
        non_empty(out, &path, "name", &w.name);
        if non_empty(out, &path, "namespace", &w.namespace) && !valid_path_segment(&w.namespace) {
            out.push(format!(
                "{path}.namespace: {:?} cannot be part of a SPIFFE identity; use letters, digits, '.', '-' and '_'",
                w.namespace
            ));
        }
        if non_empty(out, &path, "serviceAccount", &w.service_account)
            && !valid_path_segment(&w.service_account)
        {
            out.push(format!(
                "{path}.serviceAccount: {:?} cannot be part of a SPIFFE identity; use letters, digits, '.', '-' and '_'",
                w.service_account
            ));
        }
        if !valid_trust_domain(&w.trust_domain) {
            out.push(format!(
                "{path}.trustDomain: {:?} is not a SPIFFE trust domain; use lowercase letters, digits, '.', '-' and '_'",
                w.trust_domain
            ));
        }
        for (k, ip) in w.addresses.iter().enumerate() {
            // Normalise so ::ffff:10.0.0.1 and 10.0.0.1 are seen as the same address.
            let ip = ip.to_canonical();
            match ips.insert(ip, i) {
                Some(j) if j == i => {
                    out.push(format!("{path}.addresses[{k}]: {ip} is listed twice"));
                }
                Some(j) => out.push(format!(
                    "{path}.addresses[{k}]: {ip} is also an address of workloads[{j}] (uid {:?}); an IP belongs to one workload",
                    cfg.workloads[j].uid
                )),
                None => {}
            }
        }
        for (k, r) in w.authorization_policies.iter().enumerate() {
            let well_formed = matches!(r.split_once('/'), Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/'));
            if !well_formed {
                out.push(format!(
                    "{path}.authorizationPolicies[{k}]: {r:?} must be <namespace>/<name>"
                ));
            } else if refs == Refs::MustResolve && !policy_keys.contains(r) {
                out.push(format!(
                    "{path}.authorizationPolicies[{k}]: no policy {r:?} in policies; check its namespace and name"
                ));
            }
        }
        for (k, key) in w.services.iter().enumerate() {
            let well_formed = matches!(key.split_once('/'), Some((ns, h)) if !ns.is_empty() && !h.is_empty() && !h.contains('/'));
            if !well_formed {
                out.push(format!(
                    "{path}.services[{k}]: {key:?} must be <namespace>/<hostname>"
                ));
            } else if refs == Refs::MustResolve && !service_keys.contains(key) {
                out.push(format!(
                    "{path}.services[{k}]: no service with namespace/hostname {key:?} in services"
                ));
            }
        }
    }
}

fn services(cfg: &LocalConfig, refs: Refs, out: &mut Vec<String>) {
    let uids: AHashSet<&str> = cfg.workloads.iter().map(|w| w.uid.as_str()).collect();
    let mut vips: AHashMap<IpAddr, usize> = AHashMap::new();
    for (i, s) in cfg.services.iter().enumerate() {
        let path = format!("services[{i}]");
        non_empty(out, &path, "name", &s.name);
        non_empty(out, &path, "namespace", &s.namespace);
        non_empty(out, &path, "hostname", &s.hostname);
        for (k, vip) in s.vips.iter().enumerate() {
            let vip = vip.to_canonical();
            match vips.insert(vip, i) {
                Some(j) if j == i => out.push(format!("{path}.vips[{k}]: {vip} is listed twice")),
                Some(j) => out.push(format!(
                    "{path}.vips[{k}]: {vip} is also a VIP of services[{j}] ({}/{}); a VIP belongs to one service",
                    cfg.services[j].namespace, cfg.services[j].name
                )),
                None => {}
            }
        }
        let mut ports: AHashSet<u16> = AHashSet::new();
        for (k, p) in s.ports.iter().enumerate() {
            if p.port == 0 {
                out.push(format!(
                    "{path}.ports[{k}].port: 0 is not a usable port; use the port clients connect to"
                ));
            } else if !ports.insert(p.port) {
                out.push(format!(
                    "{path}.ports[{k}].port: {} is listed twice; a service port maps to one target port",
                    p.port
                ));
            }
            if p.target_port == 0 {
                out.push(format!(
                    "{path}.ports[{k}].targetPort: 0 is not a usable port; use the port the pods listen on"
                ));
            }
        }
        for (k, uid) in s.endpoints.iter().enumerate() {
            if refs == Refs::MustResolve && !uids.contains(uid.as_str()) {
                out.push(format!(
                    "{path}.endpoints[{k}]: no workload has uid {uid:?}; endpoints are workload uids"
                ));
            }
        }
    }
}

fn policies(cfg: &LocalConfig, out: &mut Vec<String>) {
    let mut keys: AHashMap<String, usize> = AHashMap::new();
    for (i, p) in cfg.policies.iter().enumerate() {
        let path = format!("policies[{i}]");
        let name_ok = non_empty(out, &path, "name", &p.name);
        let ns_ok = non_empty(out, &path, "namespace", &p.namespace);
        for (field, v) in [("name", &p.name), ("namespace", &p.namespace)] {
            if v.contains('/') {
                out.push(format!(
                    "{path}.{field}: {v:?} must not contain '/'; workloads refer to policies as <namespace>/<name>"
                ));
            }
        }
        if name_ok && ns_ok {
            if let Some(j) = keys.insert(p.key(), i) {
                out.push(format!(
                    "{path}: {:?} is already defined by policies[{j}]; namespace/name must be unique",
                    p.key()
                ));
            }
        }
    }
}
