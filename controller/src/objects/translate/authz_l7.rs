//! AuthorizationPolicies with targetRefs → waypoint `L7Policy`.
//!
//! Only what the waypoint model expresses is translated; a policy using
//! anything else (ipBlocks, request principals, remote IPs, a `when` key the
//! waypoint does not know, a target that is neither a Service nor a Gateway)
//! is left for later with a debug note, not an error: it is valid Istio,
//! Trellis just does not enforce it yet.

use trellis_api::config::l7::{
    L7Action, L7Condition, L7From, L7Operation, L7Policy, L7Rule, L7Source, L7To, ParentRef,
};

use super::authz::strings;
use super::workloads::translate_err;
use crate::objects::error::ObjectError;
use crate::objects::kinds::istio::{AuthorizationPolicy, AuthzAction, PortValue};
use crate::objects::kinds::{Kind, Object};
use crate::objects::store::ObjectStore;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

pub(crate) fn translate_all(store: &ObjectStore, errors: &mut Vec<ObjectError>) -> Vec<L7Policy> {
    let mut out = Vec::new();
    for (key, obj) in store.of_kind(Kind::AuthorizationPolicy) {
        let Object::AuthorizationPolicy(p) = obj else {
            continue;
        };
        if p.spec.all_target_refs().is_empty() {
            continue;
        }
        match l7(&key.name, &key.namespace, p) {
            Ok(Some(pol)) => out.push(pol),
            Ok(None) => {}
            Err(msg) => errors.push(translate_err(key, format!("{msg}; the policy is left out"))),
        }
    }
    out
}

/// `Ok(None)`: not expressible yet (noted at debug level).
fn l7(name: &str, ns: &str, p: &AuthorizationPolicy) -> Result<Option<L7Policy>, String> {
    let later = |why: &str| {
        tracing::debug!(policy = %format!("{ns}/{name}"), reason = why, "waypoint policy not translated yet");
        Ok(None)
    };
    let action = match p.spec.action {
        AuthzAction::Allow => L7Action::Allow,
        AuthzAction::Deny => L7Action::Deny,
        AuthzAction::Audit | AuthzAction::Custom => return later("action"),
    };
    let mut target_refs = Vec::new();
    let mut whole_waypoint = false;
    for t in p.spec.all_target_refs() {
        if t.namespace.as_deref().is_some_and(|n| n != ns) {
            return later("targetRef in another namespace");
        }
        match (t.group.as_str(), t.kind.as_str()) {
            ("" | "core", "Service") => target_refs.push(ParentRef {
                kind: "Service".into(),
                group: None,
                name: t.name.clone(),
                namespace: None,
                port: None,
            }),
            // A policy on the waypoint itself covers every service it fronts.
            (GATEWAY_GROUP, "Gateway") => whole_waypoint = true,
            _ => return later("targetRef kind"),
        }
    }
    if whole_waypoint {
        target_refs.clear();
    }
    let mut rules = Vec::new();
    for (i, r) in p.spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let mut from = Vec::new();
        for (j, f) in r.from.iter().enumerate() {
            let s = &f.source;
            if !(s.ip_blocks.is_empty()
                && s.not_ip_blocks.is_empty()
                && s.request_principals.is_empty()
                && s.not_request_principals.is_empty()
                && s.remote_ip_blocks.is_empty()
                && s.not_remote_ip_blocks.is_empty())
            {
                return later("source field");
            }
            let sp = format!("{path}.from[{j}].source");
            from.push(L7From {
                source: L7Source {
                    principals: strings(&format!("{sp}.principals"), &s.principals)?,
                    not_principals: strings(&format!("{sp}.notPrincipals"), &s.not_principals)?,
                    namespaces: strings(&format!("{sp}.namespaces"), &s.namespaces)?,
                    not_namespaces: strings(&format!("{sp}.notNamespaces"), &s.not_namespaces)?,
                },
            });
        }
        let mut to = Vec::new();
        for (j, t) in r.to.iter().enumerate() {
            let o = &t.operation;
            let op = format!("{path}.to[{j}].operation");
            let ports = |f: &str, v: &[PortValue]| -> Result<Vec<u16>, String> {
                v.iter()
                    .map(|p| {
                        p.port()
                            .ok_or_else(|| format!("{op}.{f}: {p:?} is not a port number"))
                    })
                    .collect()
            };
            to.push(L7To {
                operation: L7Operation {
                    hosts: strings(&format!("{op}.hosts"), &o.hosts)?,
                    not_hosts: strings(&format!("{op}.notHosts"), &o.not_hosts)?,
                    methods: strings(&format!("{op}.methods"), &o.methods)?,
                    not_methods: strings(&format!("{op}.notMethods"), &o.not_methods)?,
                    paths: strings(&format!("{op}.paths"), &o.paths)?,
                    not_paths: strings(&format!("{op}.notPaths"), &o.not_paths)?,
                    ports: ports("ports", &o.ports)?,
                    not_ports: ports("notPorts", &o.not_ports)?,
                },
            });
        }
        let mut when = Vec::new();
        for (j, c) in r.when.iter().enumerate() {
            let known = c.key.starts_with("request.headers[")
                || matches!(
                    c.key.as_str(),
                    "source.principal" | "source.namespace" | "source.ip"
                );
            if !known {
                return later("when key");
            }
            let cp = format!("{path}.when[{j}]");
            when.push(L7Condition {
                key: c.key.clone(),
                values: strings(&format!("{cp}.values"), &c.values)?,
                not_values: strings(&format!("{cp}.notValues"), &c.not_values)?,
            });
        }
        rules.push(L7Rule { from, to, when });
    }
    Ok(Some(L7Policy {
        name: name.into(),
        namespace: ns.into(),
        target_refs,
        action,
        rules,
    }))
}
