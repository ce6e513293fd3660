//! The CA's key material, in Istio's "cacerts" directory layout:
//!
//! | file | holds |
//! | --- | --- |
//! | `root-cert.pem` | the root(s); two during a root rotation |
//! | `ca-cert.pem` | the signing intermediate |
//! | `ca-key.pem` | the intermediate's key |
//! | `cert-chain.pem` | intermediate(s), then the root |
//! | `root-key.pem` | written by [`init`] only |
//!
//! `root-key.pem` is there so the same directory also works as the proxies'
//! dev `--ca-dir` (which signs with the root itself). In production the root
//! key moves offline: the controller never reads it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// The root certificate(s).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The root key, written by `ca init` only; production keeps it offline.
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// The signing intermediate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing intermediate's key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Intermediate(s), then the root: what follows the leaf in every response.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating keeps a fresh CA valid on nodes whose clocks run a little behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the CA's files could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path} is missing; run `trellis-controller ca init --dir {dir}` or mount Istio's cacerts there")]
    Missing { path: PathBuf, dir: String },
    #[error("secret {secret} has no key {key}; it needs root-cert.pem, ca-cert.pem, ca-key.pem and cert-chain.pem, as Istio's cacerts secret (kubectl create secret generic cacerts -n istio-system --from-file=<ca dir>/ca-cert.pem --from-file=... )")]
    MissingKey { secret: String, key: String },
    #[error("secret {secret} key {key} is not valid UTF-8 text; it must hold PEM")]
    NotText { secret: String, key: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not usable PEM: {detail}")]
    NotPem { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("{path} is not a CA certificate (basicConstraints CA:true missing); it must be a root or an intermediate, not a leaf")]
    NotCa { path: PathBuf },
    #[error(
        "{path} expired or is not yet valid (valid {not_before} to {not_after}); rotate the CA"
    )]
    Expired {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    #[error(
        "{key} does not belong to {cert}: the key's public key differs from the certificate's"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{ca_cert} is not signed by any root in {root_cert}: {detail}")]
    NotChained {
        ca_cert: PathBuf,
        root_cert: PathBuf,
        detail: String,
    },
    #[error("{0} already exists; pass --force to overwrite the CA (every issued certificate will stop verifying)")]
    Exists(PathBuf),
    #[error("invalid trust domain {0:?}: lowercase letters, digits, '.', '-', '_' only")]
    TrustDomain(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded CA: the roots, and the intermediate that signs.
pub struct Ca {
    roots: Vec<CertificateDer<'static>>,
    roots_pem: Vec<String>,
    signing_cert: CertificateDer<'static>,
    signing_key: KeyPair,
    chain_pem: Vec<String>,
}

impl std::fmt::Debug for Ca {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Where the cacerts files are read from.
pub enum KeyFiles<'a> {
    /// A directory (`ca init`'s output, or a mounted Secret).
    Dir(&'a Path),
    /// A Kubernetes Secret's data, read through the API: `namespace/name`
    /// and its keys, already base64-decoded.
    Secret {
        name: &'a str,
        data: &'a std::collections::BTreeMap<String, Vec<u8>>,
    },
}

impl KeyFiles<'_> {
    /// How errors name `file`: its path, or `secret:<ns>/<name>/<file>`.
    fn path(&self, file: &str) -> PathBuf {
        match self {
            KeyFiles::Dir(dir) => dir.join(file),
            KeyFiles::Secret { name, .. } => PathBuf::from(format!("secret:{name}/{file}")),
        }
    }

    fn read(&self, file: &str) -> Result<String, KeysError> {
        match self {
            KeyFiles::Dir(dir) => read(dir, &dir.join(file)),
            KeyFiles::Secret { name, data } => {
                let bytes = data.get(file).ok_or_else(|| KeysError::MissingKey {
                    secret: name.to_string(),
                    key: file.into(),
                })?;
                String::from_utf8(bytes.clone()).map_err(|_| KeysError::NotText {
                    secret: name.to_string(),
                    key: file.into(),
                })
            }
        }
    }

    fn read_certs(&self, file: &str) -> Result<Vec<CertificateDer<'static>>, KeysError> {
        let path = self.path(file);
        let text = self.read(file)?;
        let not_pem = |detail: String| KeysError::NotPem {
            path: path.clone(),
            detail,
        };
        let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| not_pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(not_pem("no CERTIFICATE block".into()));
        }
        Ok(certs)
    }
}

impl Ca {
    /// Loads and checks `root-cert.pem`, `ca-cert.pem`, `ca-key.pem` and
    /// `cert-chain.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, KeysError> {
        Ca::from_files(&KeyFiles::Dir(dir))
    }

    /// Loads and checks the same four files from wherever `files` says.
    pub fn from_files(files: &KeyFiles<'_>) -> Result<Ca, KeysError> {
        let root_path = files.path(ROOT_CERT_FILE);
        let ca_path = files.path(CA_CERT_FILE);
        let key_path = files.path(CA_KEY_FILE);
        let chain_path = files.path(CERT_CHAIN_FILE);

        let roots = files.read_certs(ROOT_CERT_FILE)?;
        for root in &roots {
            check_ca(&root_path, root)?;
        }
        let signing = files.read_certs(CA_CERT_FILE)?;
        let signing_cert = signing[0].clone();
        check_ca(&ca_path, &signing_cert)?;
        let key_pem = files.read(CA_KEY_FILE)?;
        let signing_key = KeyPair::from_pem(&key_pem).map_err(|e| KeysError::NotPem {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        let (_, parsed) = parse(&ca_path, &signing_cert)?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&signing_key) {
            return Err(KeysError::KeyMismatch {
                key: key_path,
                cert: ca_path,
            });
        }
        let chain = files.read_certs(CERT_CHAIN_FILE)?;
        for cert in &chain {
            parse(&chain_path, cert)?;
        }
        // The signing cert must chain to a root, or every leaf would be refused
        // by every peer; say so now rather than at the first handshake.
        chained(&roots, &signing_cert, &chain).map_err(|detail| KeysError::NotChained {
            ca_cert: ca_path.clone(),
            root_cert: root_path.clone(),
            detail,
        })?;
        Ok(Ca {
            roots_pem: roots.iter().map(|d| to_pem(d)).collect(),
            roots,
            signing_cert,
            signing_key,
            chain_pem: chain.iter().map(|d| to_pem(d)).collect(),
        })
    }

    /// The root(s) as DER: the mesh's trust bundle.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The root(s) as PEM, concatenated: what proxies trust.
    pub fn roots_pem(&self) -> String {
        self.roots_pem.concat()
    }

    /// What follows the leaf in an issued chain: intermediate(s), then root.
    pub fn chain_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// An rcgen issuer for the signing intermediate.
    pub(crate) fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, rcgen::Error> {
        Issuer::from_ca_cert_der(&self.signing_cert, &self.signing_key)
    }
}

/// Creates a new root (10 years) and signing intermediate (1 year) in `dir`,
/// in the layout [`Ca::load`] reads, plus `root-key.pem`. Key files are mode
/// 0600. Refuses to overwrite any of the files unless `force`.
/// Backs `trellis-controller ca init --dir <dir> [--trust-domain ..] [--force]`.
pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<Ca, KeysError> {
    let probe = format!("spiffe://{trust_domain}/ns/a/sa/b");
    if probe.parse::<hbone::Identity>().is_err() {
        return Err(KeysError::TrustDomain(trust_domain.into()));
    }
    let files = [
        ROOT_CERT_FILE,
        ROOT_KEY_FILE,
        CA_CERT_FILE,
        CA_KEY_FILE,
        CERT_CHAIN_FILE,
    ];
    if !force {
        if let Some(existing) = files.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
            return Err(KeysError::Exists(existing));
        }
    }
    let now = SystemTime::now();

    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut root = ca_params(trust_domain, "root", &root_key, now, ROOT_VALIDITY)?;
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root_cert = root.self_signed(&root_key)?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut inter = ca_params(
        trust_domain,
        "intermediate",
        &ca_key,
        now,
        INTERMEDIATE_VALIDITY,
    )?;
    // The intermediate signs leafs only, never another CA.
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let root_issuer = Issuer::new(root, &root_key);
    let ca_cert = inter.signed_by(&ca_key, &root_issuer)?;

    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| KeysError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let write = |name: &str, data: &str, private: bool| {
        let path = dir.join(name);
        write_file(&path, data.as_bytes(), private).map_err(io("write", &path))
    };
    write(ROOT_KEY_FILE, &root_key.serialize_pem(), true)?;
    write(CA_KEY_FILE, &ca_key.serialize_pem(), true)?;
    write(ROOT_CERT_FILE, &root_cert.pem(), false)?;
    write(CA_CERT_FILE, &ca_cert.pem(), false)?;
    write(
        CERT_CHAIN_FILE,
        &format!("{}{}", ca_cert.pem(), root_cert.pem()),
        false,
    )?;
    Ca::load(dir)
}

fn ca_params(
    trust_domain: &str,
    role: &str,
    key: &KeyPair,
    now: SystemTime,
    validity: Duration,
) -> Result<CertificateParams, KeysError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = hbone::ca::ca_name(trust_domain, role, key);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(now.checked_sub(BACKDATE))?;
    params.not_after = offset(now.checked_add(validity))?;
    Ok(params)
}

pub(crate) fn offset(t: Option<SystemTime>) -> Result<OffsetDateTime, rcgen::Error> {
    // Only a validity of centuries gets here.
    t.map(OffsetDateTime::from).ok_or(rcgen::Error::Time)
}

fn read(dir: &Path, path: &Path) -> Result<String, KeysError> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            KeysError::Missing {
                path: path.to_path_buf(),
                dir: dir.display().to_string(),
            }
        } else {
            KeysError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn parse<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<(&'a [u8], x509_parser::certificate::X509Certificate<'a>), KeysError> {
    x509_parser::parse_x509_certificate(der).map_err(|e| KeysError::BadCert {
        path: path.to_path_buf(),
        detail: format!("not valid X.509: {e}"),
    })
}

fn check_ca(path: &Path, der: &CertificateDer<'_>) -> Result<(), KeysError> {
    let (_, cert) = parse(path, der)?;
    if !cert.is_ca() {
        return Err(KeysError::NotCa {
            path: path.to_path_buf(),
        });
    }
    if !cert.validity().is_valid() {
        return Err(KeysError::Expired {
            path: path.to_path_buf(),
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
        });
    }
    Ok(())
}

/// Whether `signing` chains to one of `roots` through `chain` (webpki decides).
fn chained(
    roots: &[CertificateDer<'static>],
    signing: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
) -> Result<(), String> {
    // The signing cert is itself a root (a one-level CA): fine.
    if roots.contains(signing) {
        return Ok(());
    }
    for root in roots {
        let (_, r) = x509_parser::parse_x509_certificate(root).map_err(|e| e.to_string())?;
        let mut child = signing.clone();
        // Walk up at most chain.len() + 1 links.
        for _ in 0..=chain.len() {
            let (_, c) = x509_parser::parse_x509_certificate(&child).map_err(|e| e.to_string())?;
            if c.verify_signature(Some(r.public_key())).is_ok() {
                return Ok(());
            }
            let parent = chain.iter().find(|p| {
                x509_parser::parse_x509_certificate(p)
                    .map(|(_, p)| p.subject() == c.issuer() && p.subject() != c.subject())
                    .unwrap_or(false)
            });
            match parent {
                Some(p) => child = p.clone(),
                None => break,
            }
        }
    }
    Err("no root's key verifies it (is cert-chain.pem from another CA?)".into())
}

pub(crate) fn to_pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes `data`; a private file is readable by its owner only, even if it existed.
fn write_file(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if private {
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        if private {
            // `mode` applies at creation only; tighten an existing file too.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(data)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        let mut f = opts.open(path)?;
        f.write_all(data)?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests;
