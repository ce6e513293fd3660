//! L4 Authorization against `istio.security.Authorization`. The shapes
//! match one to one: a config `Group` is a wire `Rule`, a config `Rules` a
//! wire `Clause`.

use ipnet::IpNet;

use super::workload::{ip_bytes, ip_from_bytes};
use super::ConvertError;
use crate::config::{Action, Authorization, Group, Match, Rules, Scope, StringMatch};
use crate::pb::istio::security as spb;

fn string_match_to_pb(m: &StringMatch) -> spb::StringMatch {
    use spb::string_match::MatchType;
    let t = match m {
        StringMatch::Exact(s) => MatchType::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
        StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
        StringMatch::Presence => MatchType::Presence(()),
    };
    spb::StringMatch {
        match_type: Some(t),
    }
}

fn string_match_from_pb(
    name: &str,
    field: &str,
    m: &spb::StringMatch,
) -> Result<StringMatch, ConvertError> {
    use spb::string_match::MatchType;
    match &m.match_type {
        Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
        Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
        Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err(ConvertError::field(
            name,
            field,
            "a string match with no exact, prefix, suffix or presence",
        )),
    }
}

fn net_to_pb(n: &IpNet) -> spb::Address {
    spb::Address {
        address: ip_bytes(n.addr()),
        length: u32::from(n.prefix_len()),
    }
}

fn net_from_pb(name: &str, field: &str, a: &spb::Address) -> Result<IpNet, ConvertError> {
    let ip = ip_from_bytes(&a.address).ok_or_else(|| {
        ConvertError::field(
            name,
            field,
            format!("{} bytes is not an IP address", a.address.len()),
        )
    })?;
    let len = u8::try_from(a.length).ok();
    len.and_then(|l| IpNet::new(ip, l).ok())
        .map(|n| n.trunc())
        .ok_or_else(|| {
            ConvertError::field(
                name,
                field,
                format!("/{} is not a prefix length for {ip}", a.length),
            )
        })
}

fn ports_from_pb(name: &str, field: &str, ports: &[u32]) -> Result<Vec<u16>, ConvertError> {
    ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .map_err(|_| ConvertError::field(name, field, format!("{p} is not a TCP port")))
        })
        .collect()
}

fn match_to_pb(m: &Match) -> spb::Match {
    let sm = |v: &[StringMatch]| v.iter().map(string_match_to_pb).collect();
    let nets = |v: &[IpNet]| v.iter().map(net_to_pb).collect();
    spb::Match {
        namespaces: sm(&m.namespaces),
        not_namespaces: sm(&m.not_namespaces),
        principals: sm(&m.principals),
        not_principals: sm(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: m.destination_ports.iter().map(|p| u32::from(*p)).collect(),
        not_destination_ports: m
            .not_destination_ports
            .iter()
            .map(|p| u32::from(*p))
            .collect(),
        ..Default::default()
    }
}

/// A service-account match as the principal it stands for: any trust
/// domain, that namespace and account.
fn service_account_principal(sa: &spb::ServiceAccountMatch) -> StringMatch {
    StringMatch::Suffix(format!("/ns/{}/sa/{}", sa.namespace, sa.service_account))
}

fn match_from_pb(name: &str, path: &str, m: &spb::Match) -> Result<Match, ConvertError> {
    let sm = |field: &str, v: &[spb::StringMatch]| {
        v.iter()
            .enumerate()
            .map(|(i, x)| string_match_from_pb(name, &format!("{path}.{field}[{i}]"), x))
            .collect::<Result<Vec<_>, _>>()
    };
    let nets = |field: &str, v: &[spb::Address]| {
        v.iter()
            .enumerate()
            .map(|(i, x)| net_from_pb(name, &format!("{path}.{field}[{i}]"), x))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut principals = sm("principals", &m.principals)?;
    principals.extend(m.service_accounts.iter().map(service_account_principal));
    let mut not_principals = sm("notPrincipals", &m.not_principals)?;
    not_principals.extend(m.not_service_accounts.iter().map(service_account_principal));
    Ok(Match {
        namespaces: sm("namespaces", &m.namespaces)?,
        not_namespaces: sm("notNamespaces", &m.not_namespaces)?,
        principals,
        not_principals,
        source_ips: nets("sourceIps", &m.source_ips)?,
        not_source_ips: nets("notSourceIps", &m.not_source_ips)?,
        destination_ips: nets("destinationIps", &m.destination_ips)?,
        not_destination_ips: nets("notDestinationIps", &m.not_destination_ips)?,
        destination_ports: ports_from_pb(
            name,
            &format!("{path}.destinationPorts"),
            &m.destination_ports,
        )?,
        not_destination_ports: ports_from_pb(
            name,
            &format!("{path}.notDestinationPorts"),
            &m.not_destination_ports,
        )?,
    })
}

pub fn authorization_to_pb(p: &Authorization) -> spb::Authorization {
    spb::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            Scope::Global => spb::Scope::Global,
            Scope::Namespace => spb::Scope::Namespace,
            Scope::WorkloadSelector => spb::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            Action::Allow => spb::Action::Allow,
            Action::Deny => spb::Action::Deny,
        } as i32,
        rules: p
            .groups
            .iter()
            .map(|g| spb::Rule {
                clauses: g
                    .rules
                    .iter()
                    .map(|r| spb::Clause {
                        matches: r.matches.iter().map(match_to_pb).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: false,
        extensions: Vec::new(),
    }
}

pub fn authorization_from_pb(p: &spb::Authorization) -> Result<Authorization, ConvertError> {
    let name = format!("{}/{}", p.namespace, p.name);
    if p.dry_run {
        // Enforcing a dry-run policy would break traffic the operator only
        // meant to observe; ignoring it silently would hide that it exists.
        return Err(ConvertError::Unsupported {
            name,
            what: "a dry-run policy".into(),
            hint: "Trellis enforces policies or not at all; remove the dry-run annotation to enforce it".into(),
        });
    }
    let scope = match spb::Scope::try_from(p.scope) {
        Ok(spb::Scope::Global) => Scope::Global,
        Ok(spb::Scope::Namespace) => Scope::Namespace,
        Ok(spb::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => {
            return Err(ConvertError::field(
                &name,
                "scope",
                format!("{} is not a known scope", p.scope),
            ))
        }
    };
    let action = match spb::Action::try_from(p.action) {
        Ok(spb::Action::Allow) => Action::Allow,
        Ok(spb::Action::Deny) => Action::Deny,
        Err(_) => {
            return Err(ConvertError::field(
                &name,
                "action",
                format!("{} is not a known action", p.action),
            ))
        }
    };
    let groups = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let rules = rule
                .clauses
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let matches = c
                        .matches
                        .iter()
                        .enumerate()
                        .map(|(k, m)| {
                            match_from_pb(
                                &name,
                                &format!("rules[{i}].clauses[{j}].matches[{k}]"),
                                m,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Rules { matches })
                })
                .collect::<Result<Vec<_>, ConvertError>>()?;
            Ok(Group { rules })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope,
        action,
        groups,
    })
}
