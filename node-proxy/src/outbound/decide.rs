//! The outbound routing decision, kept apart from I/O so it can be tested as a
//! table: given the state and the original destination, where does the
//! connection go and how?

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::Identity;
use trellis_core::config::{Protocol, Service, Workload};
use trellis_core::state::ProxyState;

use crate::settings::HBONE_PORT;

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// Plain TCP to `dst`: the destination is outside the mesh or speaks plain TCP.
    Passthrough {
        dst: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// An HBONE tunnel to `tunnel` (the destination's proxy) carrying a stream for `target`.
    Hbone {
        target: SocketAddr,
        tunnel: SocketAddr,
        expected: Identity,
        workload: Arc<Workload>,
        service: Option<Arc<Service>>,
    },
}

impl Route {
    /// The address the application's bytes finally reach.
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
}

/// Decides the route for a connection to `orig_dst`. `pick` chooses one of the
/// service endpoints (load balancing is the caller's policy, so tests can make it deterministic).
pub fn decide(
    state: &ProxyState,
    orig_dst: SocketAddr,
    pick: impl FnOnce(&[(Arc<Workload>, SocketAddr)]) -> Option<usize>,
) -> Result<Route, DecideError> {
    if let Some(svc) = state.service_by_vip(orig_dst.ip()) {
        if !svc.ports.iter().any(|p| p.port == orig_dst.port()) {
            return Err(DecideError::UnknownServicePort {
                service: svc.hostname.clone(),
                port: orig_dst.port(),
            });
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
        Some(wl) => Ok(to_workload(wl.clone(), orig_dst, None)),
        None => Ok(Route::Passthrough {
            dst: orig_dst,
            workload: None,
            service: None,
        }),
    }
}

fn to_workload(wl: Arc<Workload>, target: SocketAddr, service: Option<Arc<Service>>) -> Route {
    match wl.protocol {
        Protocol::Hbone => Route::Hbone {
            target,
            tunnel: SocketAddr::new(target.ip(), HBONE_PORT),
            expected: wl.identity(),
            workload: wl,
            service,
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
