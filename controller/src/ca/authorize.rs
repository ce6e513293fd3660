//! Which caller may have which identity: a pure decision, tested as a table.
//!
//! A node proxy asks for the identities of the pods on its node (naming each
//! pod's identity in the CSR, and in the `ImpersonatedIdentity` metadata key
//! as ztunnel does); any other caller (a waypoint, or the dedicated node
//! proxy of a VM authenticated with its WorkloadEntry's service account
//! token) asks for its own identity only: the token's service account.

use std::collections::{BTreeMap, BTreeSet};

use trellis_api::config::LocalConfig;

use crate::auth::Caller;

/// The metadata key a node proxy sets to the identity it asks for on a pod's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// SPIFFE ID -> the nodes where workloads with that identity are scheduled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshIndex {
    nodes: BTreeMap<String, BTreeSet<String>>,
}

impl MeshIndex {
    /// Indexes the workloads of `mesh` by SPIFFE ID.
    pub fn new(mesh: &LocalConfig) -> MeshIndex {
        let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in &mesh.workloads {
            let entry = nodes.entry(w.spiffe_id()).or_default();
            if !w.node.is_empty() {
                entry.insert(w.node.clone());
            }
        }
        MeshIndex { nodes }
    }

    /// The nodes running workloads with identity `spiffe_id`.
    pub fn nodes_of(&self, spiffe_id: &str) -> Option<&BTreeSet<String>> {
        self.nodes.get(spiffe_id)
    }
}

/// Why a certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the csr asks for {csr} but the ImpersonatedIdentity metadata says {impersonated}; they must agree")]
    Disagree { csr: String, impersonated: String },
    #[error("{node} asked for {identity}, but no workload with that identity is scheduled on {node} ({elsewhere})")]
    NotOnNode {
        node: String,
        identity: String,
        elsewhere: String,
    },
    #[error("a caller with the token of {own} asked for {identity}; a waypoint or a VM's node proxy may have its own identity only: give it a token of {identity}'s service account")]
    NotOwn { own: String, identity: String },
}

impl Denied {
    /// True when the request itself is malformed rather than not allowed.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, Denied::Disagree { .. })
    }
}

/// The identity asked for: the CSR's SAN, which the `ImpersonatedIdentity`
/// metadata (when sent) must match.
pub fn requested_identity(
    csr_identity: &str,
    impersonated: Option<&str>,
) -> Result<String, Denied> {
    match impersonated {
        Some(imp) if imp != csr_identity => Err(Denied::Disagree {
            csr: csr_identity.into(),
            impersonated: imp.into(),
        }),
        _ => Ok(csr_identity.to_owned()),
    }
}

/// Whether `caller` may have a certificate for `identity` in `mesh`.
pub fn authorize(caller: &Caller, identity: &str, mesh: &MeshIndex) -> Result<(), Denied> {
    match caller {
        Caller::NodeProxy { node } => {
            let nodes = mesh.nodes_of(identity);
            if nodes.is_some_and(|n| n.contains(node)) {
                return Ok(());
            }
            let elsewhere = match nodes {
                None => "no workload in the mesh has it".to_owned(),
                Some(n) if n.is_empty() => "its workloads are not scheduled yet".to_owned(),
                Some(n) => format!(
                    "it runs on {}",
                    n.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            Err(Denied::NotOnNode {
                node: node.clone(),
                identity: identity.into(),
                elsewhere,
            })
        }
        Caller::Waypoint { spiffe_id } if spiffe_id == identity => Ok(()),
        Caller::Waypoint { spiffe_id } => Err(Denied::NotOwn {
            own: spiffe_id.clone(),
            identity: identity.into(),
        }),
    }
}

#[cfg(test)]
mod tests;
