//! Workload and Service against `istio.workload.{Workload, Service}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ConvertError;
use crate::config::l7::WaypointAddress;
use crate::config::{HealthStatus, Protocol, Service, ServicePort, Workload};
use crate::pb::istio::workload as wpb;

pub(super) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub(super) fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|o| IpAddr::V6(Ipv6Addr::from(o)).to_canonical()),
        _ => None,
    }
}

fn ip_field(name: &str, field: &str, b: &[u8]) -> Result<IpAddr, ConvertError> {
    ip_from_bytes(b).ok_or_else(|| {
        ConvertError::field(
            name,
            field,
            format!("{} bytes is not an IPv4 (4) or IPv6 (16) address", b.len()),
        )
    })
}

fn port_field(name: &str, field: &str, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| ConvertError::field(name, field, format!("{p} is not a TCP port")))
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn waypoint_to_pb(w: &WaypointAddress, network: &str) -> wpb::GatewayAddress {
    wpb::GatewayAddress {
        destination: Some(wpb::gateway_address::Destination::Address(
            wpb::NetworkAddress {
                network: network.to_string(),
                address: ip_bytes(w.address),
                length: None,
            },
        )),
        hbone_mtls_port: u32::from(w.hbone_mtls_port),
    }
}

fn waypoint_from_pb(
    name: &str,
    g: &Option<wpb::GatewayAddress>,
) -> Result<Option<WaypointAddress>, ConvertError> {
    let Some(g) = g else { return Ok(None) };
    let address = match &g.destination {
        Some(wpb::gateway_address::Destination::Address(a)) => {
            ip_field(name, "waypoint.address", &a.address)?
        }
        Some(wpb::gateway_address::Destination::Hostname(h)) => {
            return Err(ConvertError::Unsupported {
                name: name.to_string(),
                what: format!("a waypoint by hostname ({}/{})", h.namespace, h.hostname),
                hint: "the controller must send the waypoint's address".into(),
            })
        }
        None => return Ok(None),
    };
    let port = match g.hbone_mtls_port {
        0 => 15008,
        p => port_field(name, "waypoint.hboneMtlsPort", p)?,
    };
    Ok(Some(WaypointAddress {
        address,
        hbone_mtls_port: port,
    }))
}

/// `services` are the services the workload is an endpoint of; their port
/// maps go with it, as Istio's workload API carries membership.
pub fn workload_to_pb(w: &Workload, services: &[&Service], network: &str) -> wpb::Workload {
    let services = services
        .iter()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| wpb::Port {
                    service_port: u32::from(p.port),
                    target_port: u32::from(p.target_port),
                    app_protocol: 0,
                })
                .collect();
            (
                format!("{}/{}", s.namespace, s.hostname),
                wpb::PortList { ports },
            )
        })
        .collect();
    wpb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w.addresses.iter().map(|ip| ip_bytes(*ip)).collect(),
        network: network.to_string(),
        tunnel_protocol: match w.protocol {
            Protocol::Hbone => wpb::TunnelProtocol::Hbone as i32,
            Protocol::Tcp => wpb::TunnelProtocol::None as i32,
        },
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: w.waypoint.as_ref().map(|x| waypoint_to_pb(x, network)),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone().unwrap_or_default(),
        canonical_revision: w.canonical_revision.clone().unwrap_or_default(),
        workload_type: wpb::WorkloadType::Pod as i32,
        workload_name: w.name.clone(),
        services,
        authorization_policies: w.authorization_policies.clone(),
        status: match w.status {
            HealthStatus::Healthy => wpb::WorkloadStatus::Healthy as i32,
            HealthStatus::Unhealthy => wpb::WorkloadStatus::Unhealthy as i32,
        },
        cluster_id: w.cluster_id.clone().unwrap_or_default(),
        ..Default::default()
    }
}

pub fn workload_from_pb(w: &wpb::Workload) -> Result<Workload, ConvertError> {
    let name = w.uid.as_str();
    if w.uid.is_empty() {
        return Err(ConvertError::field(
            &w.name,
            "uid",
            "must not be empty; workloads are named by uid",
        ));
    }
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, b)| ip_field(name, &format!("addresses[{i}]"), b))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match wpb::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wpb::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(wpb::TunnelProtocol::None) => Protocol::Tcp,
        Ok(wpb::TunnelProtocol::LegacyIstioMtls) => {
            return Err(ConvertError::Unsupported {
                name: name.to_string(),
                what: "tunnel protocol LEGACY_ISTIO_MTLS (an Istio sidecar)".into(),
                hint: "move the workload to ambient mode, or keep it out of the Trellis mesh"
                    .into(),
            })
        }
        Err(_) => {
            return Err(ConvertError::field(
                name,
                "tunnelProtocol",
                format!("{} is not a known tunnel protocol", w.tunnel_protocol),
            ))
        }
    };
    let status = match wpb::WorkloadStatus::try_from(w.status) {
        Ok(wpb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        // An unknown status is treated as unhealthy: sending traffic to a
        // workload nobody vouched for is the worse mistake.
        _ => HealthStatus::Unhealthy,
    };
    // Map order is not on the wire; sort so equal workloads compare equal.
    let mut services: Vec<String> = w.services.keys().cloned().collect();
    services.sort();
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: opt(&w.service_account).unwrap_or_else(|| "default".into()),
        trust_domain: opt(&w.trust_domain).unwrap_or_else(|| "cluster.local".into()),
        addresses,
        node: w.node.clone(),
        protocol,
        status,
        authorization_policies: w.authorization_policies.clone(),
        canonical_name: opt(&w.canonical_name),
        canonical_revision: opt(&w.canonical_revision),
        cluster_id: opt(&w.cluster_id),
        waypoint: waypoint_from_pb(name, &w.waypoint)?,
        services,
    })
}

pub fn service_to_pb(s: &Service, network: &str) -> wpb::Service {
    wpb::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .vips
            .iter()
            .map(|ip| wpb::NetworkAddress {
                network: network.to_string(),
                address: ip_bytes(*ip),
                length: None,
            })
            .collect(),
        ports: s
            .ports
            .iter()
            .map(|p| wpb::Port {
                service_port: u32::from(p.port),
                target_port: u32::from(p.target_port),
                app_protocol: 0,
            })
            .collect(),
        waypoint: s.waypoint.as_ref().map(|x| waypoint_to_pb(x, network)),
        ..Default::default()
    }
}

pub fn service_from_pb(s: &wpb::Service) -> Result<Service, ConvertError> {
    let name = format!("{}/{}", s.namespace, s.hostname);
    let vips = s
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip_field(&name, &format!("addresses[{i}]"), &a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let port = port_field(&name, &format!("ports[{i}].servicePort"), p.service_port)?;
            // Istio sends target port 0 when the workloads' own port maps
            // say; Trellis keeps one target per service port, so fall back
            // to the service port, which is what such services use.
            let target_port = match p.target_port {
                0 => port,
                t => port_field(&name, &format!("ports[{i}].targetPort"), t)?,
            };
            Ok(ServicePort { port, target_port })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips,
        ports,
        endpoints: Vec::new(),
        waypoint: waypoint_from_pb(&name, &s.waypoint)?,
    })
}
