//! AuthorizationPolicy → L4 `Authorization`, as Istio translates for its
//! node proxy: each rule is a group; its `from`, its `to` and each `when`
//! condition are one set of rules each (all must hold); inside a set, each
//! entry is one match (any may hold).
//!
//! A node proxy sees no HTTP, so L7 fields (methods, paths, hosts, request
//! principals, remote IPs, most `when` keys) fail closed:
//! - in an ALLOW rule, the rule is dropped: it can never match, so the
//!   traffic it meant to allow is denied;
//! - in a DENY rule, the L7 fields are ignored: the rule denies all traffic
//!   matching its L4 part, more than asked, never less.
//!
//! Policies with targetRefs belong to waypoints ([`super::authz_l7`]).

use ipnet::IpNet;
use trellis_api::config::{Action, Authorization, Group, Match, Rules, Scope, StringMatch};

use super::labels;
use super::workloads::{translate_err, Source};
use super::TranslateOptions;
use crate::objects::error::ObjectError;
use crate::objects::kinds::istio::{
    AuthzAction, AuthzSpec, Condition, Operation, Rule, Source as From,
};
use crate::objects::kinds::{Kind, Object};
use crate::objects::store::ObjectStore;

pub(crate) fn translate_all(
    store: &ObjectStore,
    opts: &TranslateOptions,
    workloads: &mut [Source],
    errors: &mut Vec<ObjectError>,
) -> Vec<Authorization> {
    let mut out = Vec::new();
    for (key, obj) in store.of_kind(Kind::AuthorizationPolicy) {
        let Object::AuthorizationPolicy(p) = obj else {
            continue;
        };
        if !p.spec.all_target_refs().is_empty() {
            continue;
        }
        let selector = p
            .spec
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|m| !m.is_empty());
        let scope = match selector {
            Some(_) => Scope::WorkloadSelector,
            None if key.namespace == opts.root_namespace => Scope::Global,
            None => Scope::Namespace,
        };
        let auth = match l4(&key.name, &key.namespace, scope, &p.spec) {
            Ok(a) => a,
            Err(msg) => {
                errors.push(translate_err(key, format!("{msg}; the policy is left out")));
                continue;
            }
        };
        if let Some(sel) = selector {
            // A selector in the root namespace selects across the mesh.
            let global = key.namespace == opts.root_namespace;
            for w in workloads.iter_mut() {
                if (global || w.key.namespace == key.namespace) && labels::selects(sel, w.labels) {
                    w.workload.authorization_policies.push(auth.key());
                }
            }
        }
        out.push(auth);
    }
    out
}

/// The L4 form of one policy's spec. `Err` names the field that cannot be read.
pub(crate) fn l4(
    name: &str,
    ns: &str,
    scope: Scope,
    spec: &AuthzSpec,
) -> Result<Authorization, String> {
    let action = match spec.action {
        AuthzAction::Allow => Action::Allow,
        AuthzAction::Deny => Action::Deny,
        // Rejected when the object was read; kept total here.
        AuthzAction::Audit | AuthzAction::Custom => {
            return Err(format!("action {:?} is not supported", spec.action))
        }
    };
    let mut groups = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if action == Action::Allow && has_l7(rule) {
            tracing::debug!(policy = %format!("{ns}/{name}"), rule = i, "ALLOW rule with L7 fields matches nothing at L4");
            continue;
        }
        groups.push(group(&path, rule)?);
    }
    Ok(Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        groups,
    })
}

fn has_l7(rule: &Rule) -> bool {
    rule.from.iter().any(|f| source_l7(&f.source))
        || rule.to.iter().any(|t| op_l7(&t.operation))
        || rule.when.iter().any(|c| !l4_key(&c.key))
}

fn source_l7(s: &From) -> bool {
    !(s.request_principals.is_empty()
        && s.not_request_principals.is_empty()
        && s.remote_ip_blocks.is_empty()
        && s.not_remote_ip_blocks.is_empty())
}

fn op_l7(o: &Operation) -> bool {
    !(o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty())
}

fn l4_key(key: &str) -> bool {
    matches!(
        key,
        "source.ip"
            | "source.namespace"
            | "source.principal"
            | "destination.ip"
            | "destination.port"
    )
}

/// One group; L7 parts are ignored (only DENY rules get here with any).
fn group(path: &str, rule: &Rule) -> Result<Group, String> {
    let mut rules = Vec::new();
    let mut push = |matches: Vec<Match>| {
        // An empty match holds for everything: the set adds nothing.
        if !matches.is_empty() && !matches.iter().any(|m| *m == Match::default()) {
            rules.push(Rules { matches });
        }
    };
    if !rule.from.is_empty() {
        let m = rule
            .from
            .iter()
            .enumerate()
            .map(|(j, f)| source_match(&format!("{path}.from[{j}].source"), &f.source))
            .collect::<Result<Vec<_>, _>>()?;
        push(m);
    }
    if !rule.to.is_empty() {
        let m = rule
            .to
            .iter()
            .enumerate()
            .map(|(j, t)| op_match(&format!("{path}.to[{j}].operation"), &t.operation))
            .collect::<Result<Vec<_>, _>>()?;
        push(m);
    }
    for (j, c) in rule.when.iter().enumerate() {
        if l4_key(&c.key) {
            push(vec![when_match(&format!("{path}.when[{j}]"), c)?]);
        }
    }
    Ok(Group { rules })
}

pub(crate) fn strings(path: &str, v: &[String]) -> Result<Vec<StringMatch>, String> {
    v.iter()
        .map(|s| s.parse().map_err(|e| format!("{path}: {e}")))
        .collect()
}

fn nets(path: &str, v: &[String]) -> Result<Vec<IpNet>, String> {
    v.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("{path}: {s:?} is neither an IP address nor a CIDR like 10.0.0.0/8")
                })
        })
        .collect()
}

fn ports(path: &str, v: &[crate::objects::kinds::istio::PortValue]) -> Result<Vec<u16>, String> {
    v.iter()
        .map(|p| {
            p.port()
                .ok_or_else(|| format!("{path}: {p:?} is not a port number (1-65535)"))
        })
        .collect()
}

fn source_match(path: &str, s: &From) -> Result<Match, String> {
    Ok(Match {
        principals: strings(&format!("{path}.principals"), &s.principals)?,
        not_principals: strings(&format!("{path}.notPrincipals"), &s.not_principals)?,
        namespaces: strings(&format!("{path}.namespaces"), &s.namespaces)?,
        not_namespaces: strings(&format!("{path}.notNamespaces"), &s.not_namespaces)?,
        source_ips: nets(&format!("{path}.ipBlocks"), &s.ip_blocks)?,
        not_source_ips: nets(&format!("{path}.notIpBlocks"), &s.not_ip_blocks)?,
        ..Match::default()
    })
}

fn op_match(path: &str, o: &Operation) -> Result<Match, String> {
    Ok(Match {
        destination_ports: ports(&format!("{path}.ports"), &o.ports)?,
        not_destination_ports: ports(&format!("{path}.notPorts"), &o.not_ports)?,
        ..Match::default()
    })
}

fn when_match(path: &str, c: &Condition) -> Result<Match, String> {
    let mut m = Match::default();
    let (vp, np) = (format!("{path}.values"), format!("{path}.notValues"));
    match c.key.as_str() {
        "source.ip" => {
            m.source_ips = nets(&vp, &c.values)?;
            m.not_source_ips = nets(&np, &c.not_values)?;
        }
        "source.namespace" => {
            m.namespaces = strings(&vp, &c.values)?;
            m.not_namespaces = strings(&np, &c.not_values)?;
        }
        "source.principal" => {
            m.principals = strings(&vp, &c.values)?;
            m.not_principals = strings(&np, &c.not_values)?;
        }
        "destination.ip" => {
            m.destination_ips = nets(&vp, &c.values)?;
            m.not_destination_ips = nets(&np, &c.not_values)?;
        }
        _ => {
            let as_ports = |p: &str, v: &[String]| -> Result<Vec<u16>, String> {
                v.iter()
                    .map(|s| {
                        s.parse::<u16>()
                            .ok()
                            .filter(|n| *n != 0)
                            .ok_or_else(|| format!("{p}: {s:?} is not a port number"))
                    })
                    .collect()
            };
            m.destination_ports = as_ports(&vp, &c.values)?;
            m.not_destination_ports = as_ports(&np, &c.not_values)?;
        }
    }
    Ok(m)
}
