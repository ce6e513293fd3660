//! A development certificate authority: a self-signed root that issues workload certs.
//!
//! Meant for development, tests, demos and the file-based mode. It keeps its
//! key in memory and on disk in plain PEM; production uses an external CA.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::{check_trust_domain, Identity};
use crate::tls::{TlsError, TrustBundle, WorkloadCert};

/// File name of the root certificate in a CA directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the root private key in a CA directory.
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// How long a generated root is valid.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this far in the past so small clock skew between nodes
/// does not make a fresh certificate "not valid yet".
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the development CA could not be created, loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("invalid trust domain {trust_domain:?}: {reason} (allowed: lowercase letters, digits, '.', '-', '_')")]
    TrustDomain {
        /// As given.
        trust_domain: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Reading or writing a CA file failed.
    #[error("cannot {action} {path}: {source}; check the directory exists and is writable/readable by this process")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The root certificate PEM could not be used.
    #[error("root certificate: {0}")]
    RootCert(#[source] TlsError),
    /// The root certificate is not a CA certificate.
    #[error("root certificate is not a CA (basicConstraints CA:true missing); check the file is the root, not a leaf")]
    NotCa,
    /// The root key is unreadable or does not belong to the root certificate.
    #[error("root key: {0}; check root-key.pem belongs to root-cert.pem")]
    RootKey(String),
    /// The requested validity cannot be represented.
    #[error("validity {0:?} is out of range for a certificate")]
    Validity(Duration),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// An issued certificate could not be loaded back (a bug if it happens).
    #[error("issued certificate is unusable: {0}")]
    Issued(#[source] TlsError),
}

/// A self-signed ECDSA P-256 root CA that issues SPIFFE workload certificates.
pub struct DevCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime, d: Duration, add: bool) -> Result<OffsetDateTime, CaError> {
    let shifted = if add {
        t.checked_add(d)
    } else {
        t.checked_sub(d)
    };
    shifted
        .map(OffsetDateTime::from)
        .ok_or(CaError::Validity(d))
}

impl DevCa {
    /// Generates a new root for `trust_domain` (used in its subject for recognisability).
    pub fn generate(trust_domain: &str) -> Result<DevCa, CaError> {
        check_trust_domain(trust_domain).map_err(|reason| CaError::TrustDomain {
            trust_domain: trust_domain.into(),
            reason,
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_name(trust_domain, "dev root", &key);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now, BACKDATE, false)?;
        params.not_after = to_offset(now, ROOT_VALIDITY, true)?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key,
        })
    }

    /// Loads a root from PEM, checking it is a CA and the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CaError> {
        let certs =
            crate::tls::parse_certs_pem(cert_pem, "root certificate").map_err(CaError::RootCert)?;
        let cert_der = certs[0].clone();
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::RootKey(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::RootCert(TlsError::BadCertificate(e.to_string())))?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa);
        }
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            return Err(CaError::RootKey(
                "key does not match the certificate's public key".into(),
            ));
        }
        Ok(DevCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
            key_pem: key_pem.to_owned(),
        })
    }

    /// The root certificate as PEM.
    pub fn root_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root private key as PEM.
    pub fn root_key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `root-cert.pem` and `root-key.pem` (mode 0600) into `dir`, creating it.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io {
                action: "write",
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(ROOT_CERT_FILE);
        fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))?;
        let key_path = dir.join(ROOT_KEY_FILE);
        write_private(&key_path, self.key_pem.as_bytes()).map_err(io(&key_path))
    }

    /// Loads a CA written by [`DevCa::write_to_dir`].
    pub fn load_from_dir(dir: &Path) -> Result<DevCa, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| CaError::Io {
                action: "read",
                path,
                source,
            })
        };
        DevCa::from_pem(&read(ROOT_CERT_FILE)?, &read(ROOT_KEY_FILE)?)
    }

    /// A trust bundle holding just this root.
    pub fn trust_bundle(&self) -> TrustBundle {
        TrustBundle::from_ders(vec![self.cert_der.clone()])
    }

    /// Issues a leaf for `id`, valid for `validity`; its chain is `[leaf, root]`.
    pub fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, CaError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let params = leaf_params(id, now, validity)?;
        let leaf = params.signed_by(&key, &issuer)?;
        let chain_pem = format!("{}{}", leaf.pem(), self.cert_pem);
        WorkloadCert::from_pem(&chain_pem, &key.serialize_pem()).map_err(CaError::Issued)
    }
}

/// A CA's subject: the trust domain as organisation, and a common name with
/// the CA's `role` and a per-key suffix. Verifiers match issuers by subject
/// first, so two CAs with one name would make a foreign certificate fail as
/// a bad signature instead of an unknown issuer.
pub fn ca_name(trust_domain: &str, role: &str, key: &KeyPair) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    let tag: String = key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(DnType::CommonName, format!("trellis {role} ca {tag}"));
    dn
}

/// A workload certificate's shape, as Istio issues them: empty subject, the
/// identity only in the URI SAN, server and client auth, valid from
/// [`BACKDATE`] before `now` (clock skew) for `validity`.
pub fn leaf_params(
    id: &Identity,
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(id.to_string())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(now, BACKDATE, false)?;
    params.not_after = to_offset(now, validity, true)?;
    Ok(params)
}

/// Writes a secret file readable only by its owner, tightening an existing file too.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let mut f = opts.open(path)?;
        // `mode` only applies when the file is created; fix up an existing one.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = opts.open(path)?;
        f.write_all(data)?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_save_load_round_trip() {
        let ca = DevCa::generate("cluster.local").expect("generate");
        let id = Identity::new("cluster.local", "default", "web");
        let cert = ca.issue(&id, Duration::from_secs(3600)).expect("issue");
        assert_eq!(cert.identity(), &id);
        assert_eq!(cert.chain().len(), 2);
        let left = cert
            .not_after()
            .duration_since(SystemTime::now())
            .expect("future");
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("ca");
        ca.write_to_dir(&sub).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(sub.join(ROOT_KEY_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = DevCa::load_from_dir(&sub).expect("load");
        assert_eq!(loaded.root_cert_pem(), ca.root_cert_pem());
        let cert2 = loaded
            .issue(&id, Duration::from_secs(60))
            .expect("issue from loaded");
        assert_eq!(
            cert2.chain()[1],
            cert.chain()[1],
            "same root in both chains"
        );
        assert_eq!(loaded.trust_bundle(), ca.trust_bundle());
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(
            DevCa::generate("Bad Domain"),
            Err(CaError::TrustDomain { .. })
        ));
        let ca = DevCa::generate("td").expect("generate");
        let other = DevCa::generate("td").expect("generate");
        let err = DevCa::from_pem(ca.root_cert_pem(), other.root_key_pem()).unwrap_err();
        assert!(matches!(err, CaError::RootKey(_)), "{err}");
        let leaf = ca
            .issue(&Identity::new("td", "a", "b"), Duration::from_secs(60))
            .expect("issue");
        let err = DevCa::from_pem(leaf.chain_pem(), leaf.key_pem()).unwrap_err();
        assert!(matches!(err, CaError::NotCa), "{err}");
        let missing = DevCa::load_from_dir(Path::new("/nonexistent/trellis-ca")).unwrap_err();
        assert!(missing.to_string().contains("root-cert.pem"), "{missing}");
    }
}
