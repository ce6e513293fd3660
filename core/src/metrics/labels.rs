//! The label set of Istio's TCP metrics, typed, and built from what the
//! proxy knows about the two ends of a connection.

use crate::baggage::Baggage;
use crate::identity::Identity;
use trellis_api::config::{Service, Workload};

/// Istio's value for anything the reporter does not know.
pub const UNKNOWN: &str = "unknown";

/// Label names in the order [`ConnectionLabels::values`] returns them.
pub const LABEL_NAMES: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Which end of the connection this proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
    /// An L7 proxy between the two (Istio reports waypoint metrics so).
    Waypoint,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    Unknown,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Unknown => UNKNOWN,
        }
    }
}

/// The labels of one connection. Fields are public so a caller can refine
/// one (say, a service learned later) before opening the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    /// Always "tcp" for this L4 proxy.
    pub request_protocol: &'static str,
    /// Envoy-style flags, "-" when none.
    pub response_flags: &'static str,
    pub connection_security_policy: SecurityPolicy,
}

/// What the reporter knows about one end of a connection.
///
/// The state wins: `baggage` (what the peer said about itself) is used only
/// when `workload` is `None`, so callers need to parse it only then.
#[derive(Clone, Debug, Default)]
pub struct PeerFacts<'a> {
    /// The end's workload, if the state holds it.
    pub workload: Option<&'a Workload>,
    /// A verified identity (or, for the destination, the demanded one).
    pub identity: Option<Identity>,
    /// The end's W3C baggage, from its CONNECT request or response.
    pub baggage: Option<&'a Baggage>,
}

impl<'a> PeerFacts<'a> {
    pub fn new(workload: Option<&'a Workload>, identity: Option<Identity>) -> PeerFacts<'a> {
        PeerFacts {
            workload,
            identity,
            baggage: None,
        }
    }
}

/// One end's labels, with Istio's fallbacks.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Peer {
    pub(super) workload: String,
    pub(super) canonical_service: String,
    pub(super) canonical_revision: String,
    pub(super) namespace: String,
    pub(super) principal: String,
    pub(super) cluster: String,
}

impl Peer {
    /// Chooses each label from the state's workload, else the peer's
    /// baggage, else [`UNKNOWN`]. The namespace prefers a verified identity
    /// over the baggage: a peer cannot claim a namespace its certificate
    /// does not name. The principal only ever comes from the identity.
    pub(super) fn new(facts: PeerFacts<'_>) -> Peer {
        let PeerFacts {
            workload: w,
            identity: id,
            baggage,
        } = facts;
        let unknown = || UNKNOWN.to_string();
        let id_namespace = id.as_ref().map(|i| i.namespace().to_string());
        let principal = id.map(|i| i.to_string()).unwrap_or_else(unknown);
        if let Some(w) = w {
            return Peer {
                workload: w.name.clone(),
                canonical_service: w.canonical_name().to_string(),
                canonical_revision: w.canonical_revision().to_string(),
                namespace: w.namespace.clone(),
                principal,
                cluster: w.cluster_id.clone().unwrap_or_else(unknown),
            };
        }
        let said = |f: fn(&Baggage) -> &Option<String>| {
            baggage.and_then(|b| f(b).clone()).unwrap_or_else(unknown)
        };
        Peer {
            workload: said(|b| &b.workload),
            canonical_service: said(|b| &b.canonical_service),
            canonical_revision: said(|b| &b.canonical_revision),
            namespace: id_namespace.unwrap_or_else(|| said(|b| &b.namespace)),
            principal,
            cluster: said(|b| &b.cluster),
        }
    }
}

impl ConnectionLabels {
    /// Labels for a connection between `source` and `destination`.
    /// Principals come only from the identities given, never from the
    /// workloads: a principal is reported only when it was verified (or,
    /// for the destination, is the one the tunnel demanded).
    pub fn new(
        reporter: Reporter,
        source: Option<&Workload>,
        source_identity: Option<Identity>,
        destination: Option<&Workload>,
        destination_identity: Option<Identity>,
        service: Option<&Service>,
        security: SecurityPolicy,
    ) -> ConnectionLabels {
        ConnectionLabels::for_peers(
            reporter,
            PeerFacts::new(source, source_identity),
            PeerFacts::new(destination, destination_identity),
            service,
            security,
        )
    }

    /// Like [`ConnectionLabels::new`], with a peer's baggage for an end the
    /// state does not hold (see [`PeerFacts`]).
    pub fn for_peers(
        reporter: Reporter,
        source: PeerFacts<'_>,
        destination: PeerFacts<'_>,
        service: Option<&Service>,
        security: SecurityPolicy,
    ) -> ConnectionLabels {
        let src = Peer::new(source);
        let dst = Peer::new(destination);
        let svc = |f: fn(&Service) -> &String| {
            service
                .map(|s| f(s).clone())
                .unwrap_or_else(|| UNKNOWN.to_string())
        };
        ConnectionLabels {
            reporter,
            source_app: src.canonical_service.clone(),
            source_version: src.canonical_revision.clone(),
            source_workload: src.workload,
            source_canonical_service: src.canonical_service,
            source_canonical_revision: src.canonical_revision,
            source_workload_namespace: src.namespace,
            source_principal: src.principal,
            source_cluster: src.cluster,
            destination_service: svc(|s| &s.hostname),
            destination_service_namespace: svc(|s| &s.namespace),
            destination_service_name: svc(|s| &s.name),
            destination_app: dst.canonical_service.clone(),
            destination_version: dst.canonical_revision.clone(),
            destination_workload: dst.workload,
            destination_canonical_service: dst.canonical_service,
            destination_canonical_revision: dst.canonical_revision,
            destination_workload_namespace: dst.namespace,
            destination_principal: dst.principal,
            destination_cluster: dst.cluster,
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: security,
        }
    }

    /// Label values in [`LABEL_NAMES`] order.
    pub fn values(&self) -> [&str; 23] {
        [
            self.reporter.as_str(),
            &self.source_workload,
            &self.source_canonical_service,
            &self.source_canonical_revision,
            &self.source_workload_namespace,
            &self.source_principal,
            &self.source_app,
            &self.source_version,
            &self.source_cluster,
            &self.destination_service,
            &self.destination_service_namespace,
            &self.destination_service_name,
            &self.destination_workload,
            &self.destination_canonical_service,
            &self.destination_canonical_revision,
            &self.destination_workload_namespace,
            &self.destination_principal,
            &self.destination_app,
            &self.destination_version,
            &self.destination_cluster,
            self.request_protocol,
            self.response_flags,
            self.connection_security_policy.as_str(),
        ]
    }
}
