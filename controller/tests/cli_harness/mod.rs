//! The `trellis-controller` binary as tests run it: a temp dir with a CA
//! made by `ca init`, a token file and a copy of the demo manifests; `run`
//! on them (killed by its PID on drop), its bound addresses, and a TLS
//! channel that verifies the name a proxy dials.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use trellis_controller::run::BoundAddrs;

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-controller");
pub const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/manifests");
/// What a proxy dials, as ztunnel does with Istio's default CA address.
pub const SERVER_NAME: &str = "istiod.istio-system.svc";
/// The longest any one wait may take: a hang guard, not a performance bound.
pub const STEP: Duration = Duration::from_secs(10);

pub const TOKENS: &str = r#"
tokens:
- token: tok-a
  nodeProxy: { node: node-a }
- token: tok-b
  nodeProxy: { node: node-b }
- token: tok-wp
  waypoint: { spiffeId: "spiffe://cluster.local/ns/demo/sa/waypoint" }
"#;

/// The child process, killed (by its PID) when the test ends however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits at most [`STEP`] for the process to exit.
    pub fn wait_exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the controller did not exit within {STEP:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }
}

/// A temp dir with a CA (made by the binary), the tokens and the demo manifests.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        let setup = Setup { dir };
        let out = ca_init(&setup.ca_dir(), &[])?;
        anyhow::ensure!(out.status.success(), "ca init failed: {out:?}");
        std::fs::write(setup.tokens(), TOKENS)?;
        copy_dir(Path::new(DEMO), &setup.manifests())?;
        Ok(setup)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.path("ca")
    }

    pub fn tokens(&self) -> PathBuf {
        self.path("tokens.yaml")
    }

    pub fn manifests(&self) -> PathBuf {
        self.path("manifests")
    }

    pub fn log(&self) -> String {
        self.log_of("controller")
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    pub fn run_args(&self, name: &str) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "run".into(),
            "--manifests".into(),
            p(self.manifests()),
            "--ca-dir".into(),
            p(self.ca_dir()),
            "--tokens".into(),
            p(self.tokens()),
            "--listen=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            "--poll=100ms".into(),
            "--log=info".into(),
            "--bound-addrs-file".into(),
            p(self.path(&format!("{name}.json"))),
        ]
    }

    /// Starts `run` and waits for its bound addresses.
    pub fn start(&self) -> anyhow::Result<Controller> {
        self.start_named("controller")
    }

    /// Starts a `run` whose log and bound addresses are named `name`: one
    /// of several replicas on the same manifests and CA.
    pub fn start_named(&self, name: &str) -> anyhow::Result<Controller> {
        let bound = self.path(&format!("{name}.json"));
        let log = std::fs::File::create(self.path(&format!("{name}.log")))?;
        let child = Command::new(BIN)
            .args(self.run_args(name))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut proc = Proc(child);
        let deadline = Instant::now() + STEP;
        let addrs = loop {
            if let Ok(text) = std::fs::read_to_string(&bound) {
                break serde_json::from_str::<BoundAddrs>(&text)
                    .with_context(|| format!("bound addrs file: {text}"))?;
            }
            if let Some(status) = proc.0.try_wait()? {
                bail!("the controller exited with {status}: {}", self.log_of(name));
            }
            if Instant::now() > deadline {
                bail!("no bound addrs file within {STEP:?}: {}", self.log_of(name));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let root_pem = std::fs::read_to_string(self.ca_dir().join("root-cert.pem"))?;
        Ok(Controller {
            proc,
            addrs,
            root_pem,
        })
    }
}

pub struct Controller {
    pub proc: Proc,
    pub addrs: BoundAddrs,
    pub root_pem: String,
}

impl Controller {
    /// A tonic channel over TLS trusting the CA's root, verifying [`SERVER_NAME`].
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.root_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(hbone::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let addr = self.addrs.grpc;
        let endpoint = Endpoint::from_static("http://istiod.istio-system.svc");
        let channel = endpoint.connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from(SERVER_NAME).expect("static name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
        Ok(tokio::time::timeout(STEP, channel)
            .await
            .context("tls connect timed out")??)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addrs.admin, path).await
    }

    /// Polls `/metrics` until `metric` reaches at least `min`.
    pub async fn wait_metric(&self, metric: &str, min: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP;
        loop {
            let (_, body) = self.get("/metrics").await?;
            let value = body
                .lines()
                .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
                .and_then(|v| v.parse::<u64>().ok());
            if value.is_some_and(|v| v >= min) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{metric} did not reach {min} within {STEP:?}: {value:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8(buf)?)
    };
    let text = tokio::time::timeout(STEP, fetch)
        .await
        .context("admin request timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").context("no http head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

pub fn ca_init(dir: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .args(extra)
        .output()?)
}

/// Writes a manifest as an editor or `kubectl`-like tool should: a hidden
/// temp file (the controller skips hidden files), then a rename, so a scan
/// never reads half a file.
pub fn write_manifest(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

pub fn csr(id: &str) -> anyhow::Result<String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// The next response on a delta stream, ACKed by its nonce (as both our
/// client and ztunnel do), within [`STEP`].
pub async fn next_acked(
    tx: &tokio::sync::mpsc::Sender<
        trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
    >,
    rx: &mut tonic::Streaming<
        trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    >,
) -> anyhow::Result<trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse> {
    let r = tokio::time::timeout(STEP, rx.message())
        .await
        .context("no xds response in time")??
        .context("xds stream ended")?;
    tx.send(
        trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        },
    )
    .await?;
    Ok(r)
}
