//! The `trellis-controller` binary, run for real: `ca init`, and `run` on a
//! copy of the demo manifests, driven by a delta ADS client and a CA client
//! over TLS, and by edits to the manifests while it runs.

mod cli_harness;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_api::pb::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_api::pb::istio::v1::auth::IstioCertificateRequest;
use trellis_controller::xds::{ADDRESS, AUTHORIZATION, CONFIG_OBJECT};

use cli_harness::*;

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

impl Controller {
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
        next_acked(&self.tx, &mut self.rx).await
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
