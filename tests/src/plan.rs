//! Checking a topology request and assigning addresses, before any
//! namespace exists, so a bad request creates nothing.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use crate::topology::{Result, TopologyError};

pub(crate) struct PodSpec {
    pub node: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
}

/// A host outside the cluster, linked to one node.
pub(crate) struct HostSpec {
    pub node: String,
    pub name: String,
}

/// The most hosts: each has its own 198.19.<k>.0/24, below the services'
/// 198.19.128.0/20.
pub(crate) const MAX_HOSTS: usize = 100;

pub(crate) struct Plan {
    pub nodes: Vec<String>,
    /// (node, pod, address)
    pub pods: Vec<(String, String, Ipv4Addr)>,
    /// (node, host, k): the host's link is 198.19.<k>.0/24.
    pub hosts: Vec<(String, String, u8)>,
}

/// Validates names and assigns addresses before anything is created.
pub(crate) fn plan(
    nodes: &[String],
    pod_specs: &[PodSpec],
    host_specs: &[HostSpec],
) -> Result<Plan> {
    let mut seen = HashSet::new();
    let names = nodes
        .iter()
        .chain(pod_specs.iter().map(|p| &p.name))
        .chain(host_specs.iter().map(|h| &h.name));
    for name in names {
        let ok = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(TopologyError::BadName(name.clone()));
        }
        if name == "fabric" {
            return Err(TopologyError::Reserved(name.clone()));
        }
        if !seen.insert(name.as_str()) {
            return Err(TopologyError::Duplicate(name.clone()));
        }
    }
    if nodes.len() > 254 {
        return Err(TopologyError::TooManyNodes);
    }
    if host_specs.len() > MAX_HOSTS {
        return Err(TopologyError::TooManyHosts(MAX_HOSTS));
    }
    let mut hosts = Vec::new();
    for (k, h) in host_specs.iter().enumerate() {
        if !nodes.contains(&h.node) {
            return Err(TopologyError::Unknown(h.node.clone()));
        }
        hosts.push((h.node.clone(), h.name.clone(), k as u8 + 1));
    }
    let index_of = |node: &str| nodes.iter().position(|n| n == node).map(|i| i as u8 + 1);
    let mut used: HashSet<Ipv4Addr> = HashSet::new();
    for p in pod_specs {
        if let Some(ip) = p.ip {
            let index = index_of(&p.node).ok_or_else(|| TopologyError::Unknown(p.node.clone()))?;
            let [a, b, c, d] = ip.octets();
            if [a, b, c] != [198, 18, index] || !(2..=254).contains(&d) || !used.insert(ip) {
                return Err(TopologyError::BadPodAddress {
                    pod: p.name.clone(),
                    node: p.node.clone(),
                    index,
                    ip,
                });
            }
        }
    }
    let mut pods = vec![];
    for p in pod_specs {
        let index = index_of(&p.node).ok_or_else(|| TopologyError::Unknown(p.node.clone()))?;
        let ip = match p.ip {
            Some(ip) => ip,
            None => {
                let free = (2..=254u8)
                    .map(|d| Ipv4Addr::new(198, 18, index, d))
                    .find(|ip| !used.contains(ip))
                    .ok_or_else(|| TopologyError::TooManyPods {
                        node: p.node.clone(),
                        pod: p.name.clone(),
                    })?;
                used.insert(free);
                free
            }
        };
        pods.push((p.node.clone(), p.name.clone(), ip));
    }
    Ok(Plan {
        nodes: nodes.to_vec(),
        pods,
        hosts,
    })
}
