//! The workload identity type: HBONE's SPIFFE identity, re-exported so the
//! config model and the data path share one type.
//!
//! The config model lives in `trellis-api`, which stays free of the data
//! path's crates, so a workload's typed identity is added here, as a trait.

pub use hbone::{Identity, IdentityError};
use trellis_api::config::Workload;

/// The typed SPIFFE identity of a config object.
pub trait WorkloadIdentity {
    fn identity(&self) -> Identity;
}

impl WorkloadIdentity for Workload {
    fn identity(&self) -> Identity {
        Identity::new(
            self.trust_domain.as_str(),
            self.namespace.as_str(),
            self.service_account.as_str(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_identity_agrees_with_the_api_spiffe_id() {
        let yaml = "workloads:\n- {uid: u, name: n, namespace: ns1, serviceAccount: sa1, trustDomain: td.example}\n";
        let cfg = trellis_api::config::parse(yaml).expect("valid");
        let w = &cfg.workloads[0];
        assert_eq!(w.identity().to_string(), w.spiffe_id());
        assert_eq!(w.spiffe_id(), "spiffe://td.example/ns/ns1/sa/sa1");
    }
}
