//! The `trellis-controller` binary, run for real: `ca init`, and `run` on a
//! copy of the demo manifests, driven by a delta ADS client and a CA client
//! over TLS, and by edits to the manifests while it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_api::pb::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_api::pb::istio::v1::auth::IstioCertificateRequest;
use trellis_controller::run::BoundAddrs;
use trellis_controller::xds::{ADDRESS, AUTHORIZATION, CONFIG_OBJECT};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-controller");
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/manifests");
/// What a proxy dials, as ztunnel does with Istio's default CA address.
const SERVER_NAME: &str = "istiod.istio-system.svc";
/// The longest any one wait may take: a hang guard, not a performance bound.
const STEP: Duration = Duration::from_secs(10);

const TOKENS: &str = r#"
tokens:
- token: tok-a
  nodeProxy: { node: node-a }
- token: tok-b
  nodeProxy: { node: node-b }
- token: tok-wp
  waypoint: { spiffeId: "spiffe://cluster.local/ns/demo/sa/waypoint" }
"#;

// The demo's pods on node-b; the client pod is on node-a.
const SERVER_0: &str = "Kubernetes//Pod/demo/server-0";
const SERVER_1: &str = "Kubernetes//Pod/demo/server-1";
const CLIENT: &str = "Kubernetes//Pod/demo/client";

/// A pod on node-b, written into the manifests while the controller runs.
fn extra_pod(name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels: {{ app: server, version: v3 }}
spec:
  serviceAccountName: server
  nodeName: node-b
  containers: [{{ name: server, image: trellis/echo }}]
status:
  phase: Running
  podIP: {ip}
"#
    )
}

fn pod_uid(name: &str) -> String {
    format!("Kubernetes//Pod/demo/{name}")
}

/// The child process, killed (by its PID) when the test ends however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits at most [`STEP`] for the process to exit.
    fn wait_exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
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

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }
}

/// A temp dir with a CA (made by the binary), the tokens and the demo manifests.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        let setup = Setup { dir };
        let out = ca_init(&setup.ca_dir(), &[])?;
        anyhow::ensure!(out.status.success(), "ca init failed: {out:?}");
        std::fs::write(setup.tokens(), TOKENS)?;
        copy_dir(Path::new(DEMO), &setup.manifests())?;
        Ok(setup)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_dir(&self) -> PathBuf {
        self.path("ca")
    }

    fn tokens(&self) -> PathBuf {
        self.path("tokens.yaml")
    }

    fn manifests(&self) -> PathBuf {
        self.path("manifests")
    }

    fn log(&self) -> String {
        self.log_of("controller")
    }

    fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn run_args(&self, name: &str) -> Vec<String> {
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
    fn start(&self) -> anyhow::Result<Controller> {
        self.start_named("controller")
    }

    /// Starts a `run` whose log and bound addresses are named `name`: one
    /// of several replicas on the same manifests and CA.
    fn start_named(&self, name: &str) -> anyhow::Result<Controller> {
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

struct Controller {
    proc: Proc,
    addrs: BoundAddrs,
    root_pem: String,
}

impl Controller {
    /// A tonic channel over TLS trusting the CA's root, verifying [`SERVER_NAME`].
    async fn channel(&self) -> anyhow::Result<Channel> {
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

    /// A delta stream as `token`'s node proxy, subscribed to every Address
    /// and Authorization, with the first response of each type received.
    async fn subscribe(&self, token: &str) -> anyhow::Result<(Delta, State)> {
        self.subscribe_to(token, &[ADDRESS, AUTHORIZATION], &State::default())
            .await
    }

    /// [`subscribe`](Self::subscribe) as a proxy reconnecting with what it
    /// holds: `held`'s versions go in `initial_resource_versions`.
    async fn resume(&self, token: &str, held: &State) -> anyhow::Result<(Delta, State)> {
        self.subscribe_to(token, &[ADDRESS, AUTHORIZATION], held)
            .await
    }

    /// A delta stream as `token`'s caller, subscribed to everything of
    /// `types` (holding what `held` holds), with the first response of each
    /// received.
    async fn subscribe_to(
        &self,
        token: &str,
        types: &[&'static str],
        held: &State,
    ) -> anyhow::Result<(Delta, State)> {
        let (tx, mut reqs) = mpsc::channel(8);
        let mut request =
            tonic::Request::new(futures_util::stream::poll_fn(move |cx| reqs.poll_recv(cx)));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        for &type_url in types {
            tx.send(DeltaDiscoveryRequest {
                type_url: type_url.into(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions: held.versions_of(type_url),
                ..Default::default()
            })
            .await?;
        }
        let rx = AggregatedDiscoveryServiceClient::new(self.channel().await?)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        let mut delta = Delta { tx, rx };
        let mut state = State::default();
        while !types.iter().all(|t| state.seen.contains(t)) {
            let r = delta.next().await?;
            state.apply(&r);
        }
        Ok((delta, state))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addrs.admin, path).await
    }

    /// Polls `/metrics` until `metric` reaches at least `min`.
    async fn wait_metric(&self, metric: &str, min: u64) -> anyhow::Result<()> {
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

/// What a client holds, by type, as the responses say.
#[derive(Default)]
struct State {
    addresses: std::collections::BTreeSet<String>,
    authorizations: std::collections::BTreeSet<String>,
    /// Config objects by name, decoded.
    configs: std::collections::BTreeMap<String, trellis_api::update::Resource>,
    seen: Vec<&'static str>,
    removed: Vec<String>,
    /// (type, name) -> version, as the last response that carried it said.
    versions: std::collections::BTreeMap<(&'static str, String), String>,
    /// Resources received, counted per response.
    received: usize,
}

impl State {
    fn versions_of(&self, type_url: &str) -> std::collections::HashMap<String, String> {
        self.versions
            .iter()
            .filter(|((t, _), _)| *t == type_url)
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect()
    }

    fn apply(&mut self, r: &DeltaDiscoveryResponse) {
        let (set, t) = match r.type_url.as_str() {
            ADDRESS => (&mut self.addresses, ADDRESS),
            AUTHORIZATION => (&mut self.authorizations, AUTHORIZATION),
            CONFIG_OBJECT => {
                for res in &r.resources {
                    let any = res.resource.as_ref().expect("a resource");
                    let decoded = trellis_api::xds::decode(CONFIG_OBJECT, &res.name, any)
                        .unwrap_or_else(|e| panic!("{}: {e}", res.name));
                    self.configs.insert(res.name.clone(), decoded);
                }
                for name in &r.removed_resources {
                    self.configs.remove(name);
                    self.removed.push(name.clone());
                }
                self.seen.push(CONFIG_OBJECT);
                return;
            }
            other => panic!("unexpected type {other}"),
        };
        for res in &r.resources {
            set.insert(res.name.clone());
            self.versions
                .insert((t, res.name.clone()), res.version.clone());
        }
        self.received += r.resources.len();
        for name in &r.removed_resources {
            set.remove(name);
            self.removed.push(name.clone());
        }
        self.seen.push(t);
    }
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    /// The next response, ACKed.
    async fn next(&mut self) -> anyhow::Result<DeltaDiscoveryResponse> {
        let r = tokio::time::timeout(STEP, self.rx.message())
            .await
            .context("no xds response in time")??
            .context("xds stream ended")?;
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await?;
        Ok(r)
    }

    /// Applies responses to `state` until `done` holds.
    async fn until(
        &mut self,
        state: &mut State,
        what: &str,
        done: impl Fn(&State) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP;
        while !done(state) {
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            let r = self.next().await.with_context(|| what.to_string())?;
            state.apply(&r);
        }
        Ok(())
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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

fn ca_init(dir: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .args(extra)
        .output()?)
}

/// Writes a manifest as an editor or `kubectl`-like tool should: a hidden
/// temp file (the controller skips hidden files), then a rename, so a scan
/// never reads half a file.
fn write_manifest(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
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

fn csr(id: &str) -> anyhow::Result<String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

fn stderr_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "one line expected: {text:?}");
    text
}

#[test]
fn ca_init_writes_the_files_and_refuses_to_overwrite_without_force() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");

    let out = ca_init(&dir, &["--trust-domain", "example.org"])?;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    for file in [
        "root-cert.pem",
        "root-key.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ] {
        let path = dir.join(file);
        assert!(path.is_file(), "{file} not written");
        assert!(
            stdout.contains(&path.display().to_string()),
            "{file} not reported: {stdout}"
        );
    }
    assert!(stdout.contains("example.org"), "{stdout}");
    let root = std::fs::read(dir.join("root-cert.pem"))?;

    let again = ca_init(&dir, &[])?;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let line = stderr_line(&again);
    assert!(line.starts_with("trellis-controller: "), "{line}");
    assert!(
        line.contains("already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(dir.join("root-cert.pem"))?, root, "touched");

    let forced = ca_init(&dir, &["--force"])?;
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(
        std::fs::read(dir.join("root-cert.pem"))?,
        root,
        "not replaced"
    );
    Ok(())
}

#[test]
fn run_fails_with_one_line_when_its_files_are_missing() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let empty = setup.path("empty-ca");
    std::fs::create_dir(&empty)?;
    let missing_tokens = setup.path("no-tokens.yaml");
    let missing_manifests = setup.path("no-manifests");
    // (flag to replace, its value, words the message must contain)
    let cases: [(&str, &Path, &[&str]); 3] = [
        (
            "--ca-dir",
            &empty,
            &["root-cert.pem", "is missing", "ca init", "empty-ca"],
        ),
        (
            "--tokens",
            &missing_tokens,
            &["token file", "no-tokens.yaml"],
        ),
        (
            "--manifests",
            &missing_manifests,
            &["manifests folder", "no-manifests"],
        ),
    ];
    for (flag, value, words) in cases {
        let mut args = setup.run_args("controller");
        let i = args.iter().position(|a| a == flag).expect("flag");
        args[i + 1] = value.display().to_string();
        let out = Command::new(BIN).args(&args).output()?;
        assert_eq!(out.status.code(), Some(1), "{flag}: {out:?}");
        let line = stderr_line(&out);
        assert!(line.starts_with("trellis-controller: "), "{flag}: {line}");
        for w in words {
            assert!(line.contains(w), "{flag}: {w:?} not in {line}");
        }
        assert!(
            !setup.path("controller.json").exists(),
            "{flag}: bound anyway"
        );
    }
    // The CA from a Secret needs the Kubernetes API.
    let mut args = setup.run_args("controller");
    let i = args.iter().position(|a| a == "--ca-dir").expect("flag");
    args[i] = "--ca-secret".into();
    args[i + 1] = "istio-system/cacerts".into();
    let out = Command::new(BIN).args(&args).output()?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = stderr_line(&out);
    assert!(
        line.contains("--ca-secret") && line.contains("--kubeconfig"),
        "{line}"
    );
    Ok(())
}

#[test]
fn run_refuses_bad_flag_values_as_usage_errors() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    // (flag=value, words clap's message must contain)
    let cases = [
        ("--poll=0s", "more than zero"),
        ("--max-cert-validity=soon", "duration"),
        ("--log=info,[", "log filter"),
        ("--trust-domain=Not Valid", "trust domain"),
        ("--listen=localhost", "--listen"),
        ("--server-name=bad name!", "not a valid DNS name"),
        ("--server-name=127.0.0.1", "IP address"),
    ];
    for (flag, words) in cases {
        // Replaces the valid value run_args may hold (given as --flag=value).
        let name = flag.split('=').next().expect("flag name");
        let mut args = setup.run_args("controller");
        args.retain(|a| !a.starts_with(&format!("{name}=")));
        let out = Command::new(BIN).args(args).arg(flag).output()?;
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(words), "{flag}: {words:?} not in {stderr}");
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_nodes_workloads_and_pushes_manifest_edits() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let c = setup.start()?;
    let (status, body) = c.get("/healthz/ready").await?;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (mut delta, mut state) = c.subscribe("tok-b").await?;
    assert_eq!(
        state.addresses.iter().collect::<Vec<_>>(),
        [SERVER_0, SERVER_1],
        "node-b's proxy gets node-b's workloads only"
    );
    assert!(
        state
            .authorizations
            .iter()
            .any(|n| n.contains("server-allow-client")),
        "{:?}",
        state.authorizations
    );

    let extra = setup.manifests().join("workloads/extra.yaml");
    write_manifest(&extra, &extra_pod("server-2", "198.18.2.22"))?;
    delta
        .until(&mut state, "the added pod", |s| {
            s.addresses.contains(&pod_uid("server-2"))
        })
        .await?;

    std::fs::remove_file(&extra)?;
    delta
        .until(&mut state, "the removed pod", |s| {
            !s.addresses.contains(&pod_uid("server-2"))
        })
        .await?;
    assert_eq!(state.removed, [pod_uid("server-2")]);
    assert!(!state.addresses.contains(CLIENT));

    let (_, metrics) = c.get("/metrics").await?;
    for want in [
        "trellis_controller_config_publishes_total 3",
        "trellis_controller_workloads 4",
        "pilot_xds 1",
        "trellis_controller_xds_streams_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == want), "{want}:\n{metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_the_last_good_state_when_a_manifest_breaks() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let c = setup.start()?;
    let (mut delta, mut state) = c.subscribe("tok-b").await?;
    let extra = setup.manifests().join("extra.yaml");
    write_manifest(&extra, &extra_pod("server-2", "198.18.2.22"))?;
    delta
        .until(&mut state, "the added pod", |s| {
            s.addresses.contains(&pod_uid("server-2"))
        })
        .await?;

    let broken = extra_pod("server-2", "198.18.2.22").replace("status:", "status: [");
    write_manifest(&extra, &broken)?;
    c.wait_metric("trellis_controller_object_errors", 1).await?;
    let log = setup.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("extra.yaml")),
        "the broken file is not reported:\n{log}"
    );

    // The next change is pushed alone: the broken file's pod stays.
    write_manifest(
        &setup.manifests().join("extra-3.yaml"),
        &extra_pod("server-3", "198.18.2.23"),
    )?;
    delta
        .until(&mut state, "the next pod", |s| {
            s.addresses.contains(&pod_uid("server-3"))
        })
        .await?;
    assert!(state.removed.is_empty(), "removed: {:?}", state.removed);
    assert!(state.addresses.contains(&pod_uid("server-2")));
    let (status, _) = c.get("/healthz/ready").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// The routes example: an HTTPRoute on the demo's server, a TrafficPolicy
/// on its `api` rule.
const ROUTES: &str = include_str!("../examples/routes/server.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_routes_with_their_traffic_policy_to_a_waypoint() -> anyhow::Result<()> {
    use trellis_api::Resource;
    const ROUTE: &str = "http-route/demo/server";
    let setup = Setup::new()?;
    let c = setup.start()?;
    let (mut delta, mut state) = c
        .subscribe_to("tok-wp", &[CONFIG_OBJECT], &State::default())
        .await?;
    assert!(!state.configs.contains_key(ROUTE));

    let file = setup.manifests().join("routes.yaml");
    write_manifest(&file, ROUTES)?;
    delta
        .until(&mut state, "the route", |s| s.configs.contains_key(ROUTE))
        .await?;
    let Some(Resource::HttpRoute(r)) = state.configs.get(ROUTE) else {
        bail!(
            "{ROUTE} is not an HTTPRoute: {:?}",
            state.configs.get(ROUTE)
        );
    };
    assert_eq!(r.parent_refs.len(), 1);
    assert_eq!(
        r.parent_refs[0].port,
        Some(80),
        "sectionName http is port 80"
    );
    let api = &r.rules[0];
    let policy = api.policy.as_ref().context("the api rule has the policy")?;
    assert_eq!(policy.retry.as_ref().map(|r| r.attempts), Some(2));
    assert_eq!(
        policy.rate_limit.map(|r| r.requests_per_second),
        Some(200.0)
    );
    assert!(
        r.rules[1].policy.is_none(),
        "the policy names the api rule only"
    );

    // The file goes: so does the route, from the subscriber too.
    std::fs::remove_file(&file)?;
    delta
        .until(&mut state, "the route removed", |s| {
            !s.configs.contains_key(ROUTE)
        })
        .await?;
    assert!(
        state.removed.iter().any(|n| n == ROUTE),
        "{:?}",
        state.removed
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_issues_certificates_for_the_nodes_pods_only() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let c = setup.start()?;
    let mut client = IstioCertificateServiceClient::new(c.channel().await?);
    let ask = |id: &str| -> anyhow::Result<tonic::Request<IstioCertificateRequest>> {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr(id)?,
            validity_duration: 3600,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer tok-b".parse()?);
        Ok(req)
    };

    // The server pods run on node-b.
    let chain = client
        .create_certificate(ask("spiffe://cluster.local/ns/demo/sa/server")?)
        .await?
        .into_inner()
        .cert_chain;
    assert!(chain.len() >= 2, "leaf and CA chain expected: {chain:?}");

    // The client pod runs on node-a.
    let denied = client
        .create_certificate(ask("spiffe://cluster.local/ns/demo/sa/client")?)
        .await
        .expect_err("another node's identity");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_cleanly_on_sigterm_and_sigint() -> anyhow::Result<()> {
    for signal in ["TERM", "INT"] {
        let setup = Setup::new()?;
        let mut c = setup.start()?;
        let (status, _) = c.get("/healthz/ready").await?;
        assert_eq!(status, 200, "SIG{signal}");
        c.proc.signal(signal)?;
        let exit = c.proc.wait_exit()?;
        assert!(exit.success(), "SIG{signal}: {exit}: {}", setup.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_same_folder_and_ca_serve_any_proxy() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let a = setup.start_named("replica-a")?;
    let b = setup.start_named("replica-b")?;
    let (_delta, held) = a.subscribe("tok-b").await?;
    assert!(held.received > 0, "replica a sent node-b's state");

    // A proxy moving to replica b with what a gave it: same content, same
    // versions, so b has nothing to send but the (empty) first answers.
    let (_delta_b, resumed) = b.resume("tok-b", &held).await?;
    assert_eq!(resumed.received, 0, "b resent what the proxy holds");
    assert!(resumed.removed.is_empty(), "removed: {:?}", resumed.removed);
    // A fresh subscription to b gets exactly what a gave, version for version.
    let (_delta_c, fresh) = b.subscribe("tok-b").await?;
    assert_eq!(
        fresh.versions, held.versions,
        "replicas disagree on versions"
    );

    // Certificates from either replica chain to the one root.
    let mut roots = Vec::new();
    for replica in [&a, &b] {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr("spiffe://cluster.local/ns/demo/sa/server")?,
            validity_duration: 3600,
            metadata: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer tok-b".parse()?);
        let chain = IstioCertificateServiceClient::new(replica.channel().await?)
            .create_certificate(req)
            .await?
            .into_inner()
            .cert_chain;
        roots.push(chain.last().cloned().context("empty chain")?);
    }
    assert_eq!(
        roots[0], roots[1],
        "the replicas' chains end in different roots"
    );
    assert_eq!(
        roots[0].trim(),
        a.root_pem.trim(),
        "the chain ends in the mesh root"
    );
    Ok(())
}
