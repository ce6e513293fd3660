//! Where the API server is and how to talk to it: a kubeconfig file (its
//! current context), or the in-cluster service account. Only what Trellis
//! needs is read: the server URL, its CA, and a bearer token
//! (inline or a file, re-read per connection since projected tokens rotate)
//! or a client certificate. `exec` and `auth-provider` plugins are refused
//! with a message, not silently ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// The in-cluster service account, as the kubelet mounts it.
const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {}: {source}; check the path and its permissions", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("not running in a cluster: {0} is unset; pass --kubeconfig instead")]
    NotInCluster(&'static str),
    #[error("bad TLS material for the API server: {0}")]
    Tls(String),
}

/// How requests prove who the caller is.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// Nothing but TLS (a client certificate, if any, is in the TLS config).
    None,
    Token(String),
    /// Read at each new connection.
    TokenFile(PathBuf),
}

/// A resolved connection target.
#[derive(Clone)]
pub struct ApiConfig {
    /// `https://host:port`, no trailing slash.
    pub server: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) credentials: Credentials,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ApiConfig")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
struct Context {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

impl ApiConfig {
    /// The current context of a kubeconfig file. Relative paths in it are
    /// relative to the file's folder, as kubectl reads them.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path, "kubeconfig")?;
        let bad = |message: String| ConfigError::Kubeconfig {
            path: path.to_path_buf(),
            message,
        };
        let kc: Kubeconfig = serde_yaml_ng::from_slice(&text)
            .map_err(|e| bad(format!("not a valid kubeconfig: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = &kc.current_context;
        if ctx_name.is_empty() {
            return Err(bad(
                "current-context is not set; run `kubectl config use-context NAME`".into(),
            ));
        }
        let ctx = find(&kc.contexts, ctx_name).ok_or_else(|| {
            bad(format!(
                "current-context {ctx_name:?} is not among its contexts"
            ))
        })?;
        let cluster = find(&kc.clusters, &ctx.cluster).ok_or_else(|| {
            bad(format!(
                "context {ctx_name:?} names cluster {:?}, which is not defined",
                ctx.cluster
            ))
        })?;
        let default_user = User::default();
        let user = if ctx.user.is_empty() {
            &default_user
        } else {
            find(&kc.users, &ctx.user).ok_or_else(|| {
                bad(format!(
                    "context {ctx_name:?} names user {:?}, which is not defined",
                    ctx.user
                ))
            })?
        };
        if cluster.insecure_skip_tls_verify {
            return Err(bad("insecure-skip-tls-verify is not supported: a service account token must not go to an unverified server; set certificate-authority".into()));
        }
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(bad(format!("user {:?} uses an exec or auth-provider plugin, which Trellis does not run; use a token, a tokenFile or a client certificate", ctx.user)));
        }
        let ca = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => Some(decode_b64(data, "certificate-authority-data").map_err(bad)?),
            (None, Some(p)) => Some(read(&base.join(p), "certificate-authority")?),
            (None, None) => None,
        };
        let cert = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(data), _) => Some(decode_b64(data, "client-certificate-data").map_err(bad)?),
            (None, Some(p)) => Some(read(&base.join(p), "client-certificate")?),
            (None, None) => None,
        };
        let key = match (&user.client_key_data, &user.client_key) {
            (Some(data), _) => Some(decode_b64(data, "client-key-data").map_err(bad)?),
            (None, Some(p)) => Some(read(&base.join(p), "client-key")?),
            (None, None) => None,
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad(format!("user {:?} has a client certificate without its key, or a key without its certificate", ctx.user))),
        };
        let credentials = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Credentials::Token(t.trim().to_string()),
            (_, Some(p)) => Credentials::TokenFile(base.join(p)),
            _ => Credentials::None,
        };
        Self::build(
            &cluster.server,
            cluster.tls_server_name.as_deref(),
            ca.as_deref(),
            client,
            credentials,
        )
        .map_err(|e| match e {
            ConfigError::Kubeconfig { message, .. } => bad(message),
            e => e,
        })
    }

    /// The service account the pod runs as, and the `kubernetes` Service.
    pub fn in_cluster() -> Result<Self, ConfigError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| ConfigError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .map_err(|_| ConfigError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
        let dir = Path::new(IN_CLUSTER_DIR);
        let ca = read(&dir.join("ca.crt"), "in-cluster CA")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Self::build(
            &format!("https://{host}:{port}"),
            None,
            Some(&ca),
            None,
            Credentials::TokenFile(dir.join("token")),
        )
    }

    fn build(
        server: &str,
        tls_server_name: Option<&str>,
        ca_pem: Option<&[u8]>,
        client: Option<(Vec<u8>, Vec<u8>)>,
        credentials: Credentials,
    ) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Kubeconfig {
            path: PathBuf::new(),
            message,
        };
        let (host, port) = parse_server(server).map_err(bad)?;
        let name = tls_server_name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| bad(format!("server name {name:?} is not a DNS name or IP: {e}")))?;
        // The API server is not a mesh peer: rustls's defaults (TLS 1.2 and
        // 1.3), not the mesh's TLS 1.3-only suite list.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca_pem) = ca_pem else {
            return Err(bad("the cluster has no certificate-authority or certificate-authority-data; Trellis verifies the API server".into()));
        };
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert = cert.map_err(|e| ConfigError::Tls(format!("CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConfigError::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ConfigError::Tls(
                "the CA bundle holds no PEM certificate".into(),
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| ConfigError::Tls(format!("client certificate: {e}")))?;
                let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
                    .map_err(|e| ConfigError::Tls(format!("client key: {e}")))?
                    .ok_or_else(|| {
                        ConfigError::Tls("the client key file holds no PEM key".into())
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ConfigError::Tls(format!("client certificate and key: {e}")))?
            }
        };
        // The watch streams are one request per connection; HTTP/1.1 keeps
        // each stream's failure to itself.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiConfig {
            server: format!("https://{host}:{port}"),
            host,
            port,
            server_name,
            tls: Arc::new(tls),
            credentials,
        })
    }
}

fn find<'a, T>(list: &'a [Named<T>], name: &str) -> Option<&'a T> {
    list.iter()
        .find(|n| n.name == name)
        .and_then(|n| n.value.as_ref())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn decode_b64(data: &str, field: &str) -> Result<Vec<u8>, String> {
    let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| format!("{field} is not base64: {e}"))
}

/// `https://host[:port][/]` → (host, port). Brackets stay on IPv6 hosts.
pub(crate) fn parse_server(server: &str) -> Result<(String, u16), String> {
    let rest = server.strip_prefix("https://").ok_or_else(|| {
        format!(
            "server {server:?} is not an https:// URL; Trellis only talks TLS to the API server"
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(format!(
            "server {server:?} has a path; a path prefix in front of the API server is not supported"
        ));
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err(format!("server {server:?} has no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("server {server:?} has a bad port {p:?}"))?,
        None => 443,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        type Case<'a> = (&'a str, Result<(&'a str, u16), &'a str>);
        let cases: &[Case] = &[
            ("https://127.0.0.1:6443", Ok(("127.0.0.1", 6443))),
            ("https://api.example:443/", Ok(("api.example", 443))),
            ("https://api.example", Ok(("api.example", 443))),
            ("https://[::1]:6443", Ok(("[::1]", 6443))),
            ("https://[::1]", Ok(("[::1]", 443))),
            ("http://127.0.0.1:8080", Err("not an https:// URL")),
            ("https://h:99999", Err("bad port")),
            ("https://h:1/prefix", Err("has a path")),
            ("https://", Err("no host")),
        ];
        for (input, want) in cases {
            let got = parse_server(input);
            match (want, &got) {
                (Ok((h, p)), Ok((gh, gp))) => assert_eq!((*h, *p), (gh.as_str(), *gp), "{input}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input}: {g}"),
                _ => panic!("{input}: got {got:?}"),
            }
        }
    }

    #[test]
    fn kubeconfig_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("clusters: []\n", "current-context is not set"),
            ("current-context: x\n", "is not among its contexts"),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n",
                "cluster \"c\", which is not defined",
            ),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: 'https://h:1', insecure-skip-tls-verify: true}}]\n",
                "insecure-skip-tls-verify is not supported",
            ),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: 'https://h:1'}}]\n",
                "no certificate-authority",
            ),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nclusters: [{name: c, cluster: {server: 'https://h:1'}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n",
                "exec or auth-provider plugin",
            ),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: 'https://h:1', certificate-authority-data: '!!'}}]\n",
                "certificate-authority-data is not base64",
            ),
            (
                "current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\nclusters: [{name: c, cluster: {server: 'https://h:1', certificate-authority: missing.crt}}]\n",
                "missing.crt",
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("kc{i}"));
            std::fs::write(&path, text).unwrap();
            let err = ApiConfig::from_kubeconfig(&path).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
    }
}
