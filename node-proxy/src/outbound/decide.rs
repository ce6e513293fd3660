//! The outbound routing decision, kept apart from I/O so it can be tested as a
//! table: given the state, the source and the original destination, where
//! does the connection go and how?
//!
//! Waypoints follow Istio ambient: a connection addressed to a service VIP
//! whose service has a waypoint, or to a workload IP whose workload has one,
//! is tunnelled to the waypoint instead of an endpoint. The CONNECT authority
//! stays the original destination (VIP:port or pod ip:port) so the waypoint
//! can apply the service's routes and pick the endpoint itself; the tunnel is
//! opened with the source workload's certificate as usual, so the waypoint
//! authorizes the real caller.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;
use trellis_api::config::{Protocol, Service, WaypointAddress, Workload};
use trellis_core::state::ProxyState;

use crate::settings::HBONE_PORT;
use trellis_core::WorkloadIdentity;

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// Plain TCP to `dst`: the destination is outside the mesh or speaks plain TCP.
    Passthrough {
        dst: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// An HBONE tunnel to `tunnel` (the destination's proxy, or its waypoint)
    /// carrying a stream for `target`.
    Hbone {
        /// The CONNECT authority: an endpoint, or with a waypoint the original
        /// destination (service VIP:port or workload ip:port).
        target: SocketAddr,
        tunnel: SocketAddr,
        expected: Identity,
        /// The workload that terminates the tunnel: with a waypoint, the
        /// waypoint's workload (so `destination_workload` in metrics names the
        /// waypoint; `destination_service` still names the real service).
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
        via_waypoint: bool,
    },
}

impl Route {
    /// The address the application's bytes finally reach, as far as this
    /// proxy knows (with a waypoint, the original destination).
    pub fn target(&self) -> SocketAddr {
        match self {
            Route::Passthrough { dst, .. } => *dst,
            Route::Hbone { target, .. } => *target,
        }
    }

    pub fn workload(&self) -> Option<&Arc<Workload>> {
        match self {
            Route::Passthrough { workload, .. } => workload.as_ref(),
            Route::Hbone { workload, .. } => Some(workload),
        }
    }

    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Route::Passthrough { service, .. } | Route::Hbone { service, .. } => service.as_ref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("service {service} has no port {port}; check the service's ports in the config")]
    UnknownServicePort { service: String, port: u16 },
    #[error("service {service} port {port} has no healthy endpoint; check its endpoints and their status")]
    NoHealthyEndpoint { service: String, port: u16 },
    // The two below cannot happen with a validated config (core rejects a
    // waypoint address that no workload owns); they keep a state built any
    // other way from panicking or tunnelling without an expected identity.
    #[error(
        "service {service} names waypoint {address}, which is not a workload in the config; \
         add the waypoint's workload (protocol HBONE) or fix the service's waypoint address"
    )]
    UnknownServiceWaypoint { service: String, address: IpAddr },
    #[error(
        "workload {workload} names waypoint {address}, which is not a workload in the config; \
         add the waypoint's workload (protocol HBONE) or fix the workload's waypoint address"
    )]
    UnknownWorkloadWaypoint { workload: String, address: IpAddr },
}

/// Who opened the connection.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The enrolled workload the connection was captured from.
    pub workload: &'a Workload,
    /// The connection's source address.
    pub ip: IpAddr,
}

impl Source<'_> {
    /// Whether the source is the waypoint at `wp`: traffic the waypoint sends
    /// on to the real destination must not be sent back to it. The address
    /// list covers dedicated mode, where the peer address can be loopback.
    fn is_waypoint(&self, wp: &WaypointAddress) -> bool {
        let wp_ip = wp.address.to_canonical();
        self.ip.to_canonical() == wp_ip
            || self
                .workload
                .addresses
                .iter()
                .any(|a| a.to_canonical() == wp_ip)
    }
}

/// Decides the route for a connection from `src` to `orig_dst`. `pick`
/// chooses one of the service endpoints (load balancing is the caller's
/// policy, so tests can make it deterministic).
pub fn decide(
    state: &ProxyState,
    src: Source<'_>,
    orig_dst: SocketAddr,
    pick: impl FnOnce(&[(Arc<Workload>, SocketAddr)]) -> Option<usize>,
) -> Result<Route, DecideError> {
    if let Some(svc) = state.service_by_vip(orig_dst.ip()) {
        // Checked before the waypoint too: the waypoint could not map an
        // unknown port either, and the error here names the cause.
        if !svc.ports.iter().any(|p| p.port == orig_dst.port()) {
            return Err(DecideError::UnknownServicePort {
                service: svc.hostname.clone(),
                port: orig_dst.port(),
            });
        }
        if let Some(wp) = svc.waypoint.as_ref().filter(|wp| !src.is_waypoint(wp)) {
            // Endpoint health is the waypoint's business: it answers 503
            // itself, which an HTTP client understands better than a reset.
            let unknown = || DecideError::UnknownServiceWaypoint {
                service: svc.hostname.clone(),
                address: wp.address,
            };
            return to_waypoint(state, wp, orig_dst, Some(svc.clone())).ok_or_else(unknown);
        }
        let endpoints = state.endpoints(svc, orig_dst.port());
        let no_endpoint = || DecideError::NoHealthyEndpoint {
            service: svc.hostname.clone(),
            port: orig_dst.port(),
        };
        let i = pick(&endpoints).ok_or_else(no_endpoint)?;
        let (wl, target) = endpoints.get(i).cloned().ok_or_else(no_endpoint)?;
        return Ok(to_workload(wl, target, Some(svc.clone())));
    }
    match state.workload_by_ip(orig_dst.ip()) {
        Some(wl) => match wl.waypoint.as_ref().filter(|wp| !src.is_waypoint(wp)) {
            Some(wp) => {
                let unknown = || DecideError::UnknownWorkloadWaypoint {
                    workload: format!("{}/{}", wl.namespace, wl.name),
                    address: wp.address,
                };
                to_waypoint(state, wp, orig_dst, None).ok_or_else(unknown)
            }
            None => Ok(to_workload(wl.clone(), orig_dst, None)),
        },
        None => Ok(Route::Passthrough {
            dst: orig_dst,
            workload: None,
            service: None,
        }),
    }
}

/// What the state lacks to route to `orig_dst`: the destination address
/// itself when it is neither a service VIP nor a workload, or the waypoint's
/// address when the destination has a waypoint no workload owns. With
/// on-demand config the caller fetches it and decides again; otherwise (or
/// if the controller does not know it either) [`decide`] says what to do.
pub fn missing(state: &ProxyState, orig_dst: SocketAddr) -> Option<IpAddr> {
    let waypoint = match state.service_by_vip(orig_dst.ip()) {
        Some(svc) => svc.waypoint.as_ref(),
        None => match state.workload_by_ip(orig_dst.ip()) {
            Some(wl) => wl.waypoint.as_ref(),
            None => return Some(orig_dst.ip()),
        },
    };
    waypoint
        .map(|wp| wp.address)
        .filter(|&ip| state.workload_by_ip(ip).is_none())
}

/// The tunnel to waypoint `wp` for `orig_dst`, or None if no workload owns
/// the waypoint's address (then there is no identity to expect from it).
fn to_waypoint(
    state: &ProxyState,
    wp: &WaypointAddress,
    orig_dst: SocketAddr,
    service: Option<Arc<Service>>,
) -> Option<Route> {
    let wl = state.workload_by_ip(wp.address)?;
    // A waypoint terminates HBONE itself, whatever protocol its workload
    // record declares, so there is no TCP fallback here.
    Some(Route::Hbone {
        target: orig_dst,
        tunnel: SocketAddr::new(wp.address, wp.hbone_mtls_port),
        expected: wl.identity(),
        workload: wl.clone(),
        service,
        via_waypoint: true,
    })
}

fn to_workload(wl: Arc<Workload>, target: SocketAddr, service: Option<Arc<Service>>) -> Route {
    match wl.protocol {
        Protocol::Hbone => Route::Hbone {
            target,
            tunnel: SocketAddr::new(target.ip(), HBONE_PORT),
            expected: wl.identity(),
            workload: wl,
            service,
            via_waypoint: false,
        },
        Protocol::Tcp => Route::Passthrough {
            dst: target,
            workload: Some(wl),
            service,
        },
    }
}

#[cfg(test)]
mod tests;
