//! Signing: a PKCS#10 CSR in, a workload leaf out.
//!
//! Only the CSR's public key and its SPIFFE URI SAN are taken from it; every
//! other field of the leaf is the CA's choice, so a client cannot ask for a
//! CA bit, a DNS name or a long life.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateSigningRequestParams, SanType};

use super::keys::Ca;

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the csr is not a valid, self-signed PKCS#10 request in PEM: {0}")]
    BadCsr(String),
    #[error("the csr has no spiffe:// uri san; put the workload's spiffe id in it")]
    NoIdentity,
    #[error("the csr has {0} uri sans; exactly one spiffe:// uri is allowed")]
    ManyIdentities(usize),
    #[error("the csr's uri san is not a workload identity: {0}")]
    BadIdentity(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("signing failed: {0}")]
    Leaf(#[from] hbone::CaError),
}

/// A parsed CSR whose self-signature verified.
pub struct Csr {
    request: CertificateSigningRequestParams,
    identity: hbone::Identity,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

impl Csr {
    /// Parses `pem`, verifies its signature and reads its one SPIFFE URI SAN.
    pub fn parse(pem: &str) -> Result<Csr, SignError> {
        let request = CertificateSigningRequestParams::from_pem(pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let uris: Vec<&str> = request
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        let uri = match uris.as_slice() {
            [] => return Err(SignError::NoIdentity),
            [one] => *one,
            many => return Err(SignError::ManyIdentities(many.len())),
        };
        let identity = uri
            .parse::<hbone::Identity>()
            .map_err(|e| SignError::BadIdentity(e.to_string()))?;
        Ok(Csr { request, identity })
    }

    /// The identity the CSR asks for.
    pub fn identity(&self) -> &hbone::Identity {
        &self.identity
    }
}

/// Signs `csr` with the CA's intermediate for `requested` (or `max` when
/// absent or zero), capped at `max`. Returns `[leaf, intermediate(s).., root]`
/// as PEM, as Istio's `IstioCertificateResponse.cert_chain` carries it.
pub fn sign(
    ca: &Ca,
    csr: &Csr,
    requested: Option<Duration>,
    max: Duration,
) -> Result<Vec<String>, SignError> {
    let validity = requested
        .filter(|d| !d.is_zero())
        .map_or(max, |d| d.min(max));
    let now = SystemTime::now();
    let params = hbone::ca::leaf_params(&csr.identity, now, validity)?;
    let request = CertificateSigningRequestParams {
        params,
        public_key: csr.request.public_key.clone(),
    };
    let leaf = request.signed_by(&ca.issuer()?)?;
    let mut chain = Vec::with_capacity(1 + ca.chain_pem().len());
    chain.push(leaf.pem());
    chain.extend(ca.chain_pem().iter().cloned());
    Ok(chain)
}

#[cfg(test)]
mod tests;
