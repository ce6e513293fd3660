//! The cluster-in-a-box scenario, one function shared by the test
//! (`tests/tests/e2e_cluster.rs`) and `trellis-demo -- --kube`: each step
//! asserts what traffic does within a deadline (hang guards, not
//! performance bounds), and says what it saw through `say`. A failed check
//! is an error naming the step.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{KubeCluster, APP_NS};
use crate::l7kit::{http1_request, HttpServer};
use crate::manifests::{self, HttpRouteDef, PolicyDef, ServiceDef};
use crate::mesh_kit::{attempt_echo, Attempt};
use crate::{connect, wait_until, Identity, TestServer};

/// One connection.
const T: Duration = Duration::from_secs(10);
/// A change travelling from the API server to traffic.
const PROPAGATION: Duration = Duration::from_secs(30);
/// Requests through the 80/20 route.
const SPLIT_REQUESTS: usize = 200;
/// Connections made with the controller gone.
const WITHOUT_CONTROLLER: usize = 20;

const OPENED: &str = "istio_tcp_connections_opened_total";
const ENROLLED: &str = "trellis_cni_enrolled_pods";

fn payload() -> Vec<u8> {
    (0..64).map(|i| (i * 31 % 251) as u8).collect()
}

/// `from` -> `to` echo, once.
fn echo(c: &KubeCluster, from: &str, to: SocketAddr) -> std::io::Result<Attempt> {
    attempt_echo(Some(&c.pod(from).netns()?), to, &payload(), T)
}

/// Waits until an echo is answered (`answered`) or closed by the mesh.
fn wait_echo(
    c: &KubeCluster,
    from: &str,
    to: SocketAddr,
    answered: bool,
    what: &str,
) -> Result<()> {
    wait_until(PROPAGATION, what, || {
        matches!(
            (echo(c, from, to), answered),
            (Ok(Attempt::Echoed(_)), true) | (Ok(Attempt::Closed), false)
        )
    })?;
    Ok(())
}

/// A Service of [`APP_NS`] with cluster IP 198.19.128.`n` (nothing
/// routes it: the node proxy captures it).
fn service(name: &str, n: u8, app: &str, waypoint: Option<&str>) -> String {
    manifests::service(&ServiceDef {
        namespace: APP_NS.into(),
        name: name.into(),
        cluster_ip: IpAddr::from([198, 19, 128, n]),
        app: app.into(),
        ports: vec![(80, 8080)],
        waypoint: waypoint.map(str::to_string),
    })
}

/// Which backend served one request (the `server` of its JSON answer).
fn served_by(c: &KubeCluster, dst: SocketAddr, path: &str) -> Result<String> {
    let r = http1_request(Some(&c.pod("client").netns()?), dst, "GET", path, &[], b"")?;
    ensure!(
        r.status == 200,
        "GET {path} answered {}: {}",
        r.status,
        r.body
    );
    Ok(r.json()["server"].as_str().unwrap_or("?").to_string())
}

/// Steps 4 and 5: a waypoint Gateway, run as a kubelet would, and an
/// HTTPRoute splitting 80/20 through it. Returns the backends' servers.
fn waypoint_steps(
    c: &mut KubeCluster,
    say: &mut dyn FnMut(String),
) -> Result<(crate::kubelet::KubeletPod, Vec<HttpServer>)> {
    say("\n== 4. kubectl apply a Gateway of class trellis-waypoint".into());
    c.kube
        .apply(&manifests::waypoint_gateway(APP_NS, "waypoint"))?;
    let wp = c.run_waypoint("waypoint", "waypoint-0")?;
    say(format!(
        "   the controller made Deployment {APP_NS}/waypoint; its pod waypoint-0 runs trellis-waypoint (pid {}), ready",
        wp.pid()
    ));

    say(format!(
        "\n== 5. an HTTPRoute on Service web (use-waypoint) splitting 80/20 to web-v1/web-v2 ({SPLIT_REQUESTS} requests)"
    ));
    let mut servers = Vec::new();
    for (pod, app) in [("v1", "web-v1"), ("v2", "web-v2")] {
        let p = c.add_pod("node2", pod, app)?;
        let addr = SocketAddr::new(p.ip.into(), 8080);
        servers.push(HttpServer::start(Some(&p.netns()?), addr, pod)?);
    }
    c.kube.apply(&manifests::stream(&[
        // The parent selects no pod: only the route reaches a backend.
        service("web", 30, "web", Some("waypoint")),
        service("web-v1", 31, "web-v1", None),
        service("web-v2", 32, "web-v2", None),
    ]))?;
    c.kube.apply(&manifests::http_route(&HttpRouteDef {
        namespace: APP_NS.into(),
        name: "web".into(),
        parent_service: "web".into(),
        parent_port: 80,
        backends: vec![("web-v1".into(), 80, 80), ("web-v2".into(), 80, 20)],
    }))?;
    let dst = SocketAddr::new(IpAddr::from([198, 19, 128, 30]), 80);
    let mut last = String::new();
    wait_until(
        PROPAGATION,
        "a request through the route to answer",
        || match served_by(c, dst, "/probe") {
            Ok(s) if s == "v1" || s == "v2" => true,
            Ok(s) => {
                last = s;
                false
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        },
    )
    .map_err(|e| anyhow!("{e}; last: {last}"))?;
    let mut v1 = 0usize;
    for i in 0..SPLIT_REQUESTS {
        match served_by(c, dst, &format!("/split/{i}"))?.as_str() {
            "v1" => v1 += 1,
            "v2" => {}
            other => bail!("request {i} served by {other:?}"),
        }
    }
    // Binomial(200, 0.8): mean 160, sigma 5.66; within 4 sigma.
    let (n, p) = (SPLIT_REQUESTS as f64, 0.8);
    let sigma = (n * p * (1.0 - p)).sqrt();
    let off = (v1 as f64 - n * p).abs();
    ensure!(
        off <= 4.0 * sigma,
        "v1 served {v1} of {SPLIT_REQUESTS}: more than 4 sigma from {}",
        n * p
    );
    // Every request went through the waypoint, as its metrics say.
    let wp_metrics = SocketAddr::new(c.topo.ip_of(super::WAYPOINT_POD)?, 15020);
    let text = c.node("node2").get(wp_metrics, "/metrics")?;
    let through = crate::cluster::sum_samples(
        &text,
        "istio_requests_total",
        &[("reporter", "waypoint"), ("response_code", "200")],
    );
    ensure!(
        through >= SPLIT_REQUESTS as f64,
        "the waypoint counted {through} requests, fewer than {SPLIT_REQUESTS}"
    );
    say(format!(
        "   web-v1 served {v1}, web-v2 {} of {SPLIT_REQUESTS} (80/20 expects {} ± {:.0} at 4 sigma); the waypoint's istio_requests_total{{response_code=200}} = {through}",
        SPLIT_REQUESTS - v1,
        n * p,
        4.0 * sigma
    ));
    Ok((wp, servers))
}

/// Runs the eight steps on a started box.
pub fn run(c: &mut KubeCluster, say: &mut dyn FnMut(String)) -> Result<()> {
    say(format!(
        "== 1. enrollment by namespace label (kubectl label namespace {APP_NS} {}=ambient)",
        manifests::AMBIENT_LABEL
    ));
    let early_ip = c.add_pod("node1", "early", "early")?.ip;
    ensure!(
        !c.pod("early").has_capture_rules()?,
        "a pod of an unlabelled namespace was captured"
    );
    say(format!(
        "   pod early ({early_ip}) made before the label: CNI ADD left it alone, no capture rules"
    ));
    c.enroll_namespace()?;
    wait_until(
        T,
        "the running pod early is captured after the label",
        || c.pod("early").has_capture_rules().unwrap_or(false),
    )?;
    say("   after the label, the running pod early is captured too, without a restart (the agent re-decides the namespace's sandboxes)".into());
    // Both pods as a runtime makes them: CNI ADD returns (the apps may
    // start), and only then does the kubelet report their IPs. The first
    // connection is made inside that window, so it reaches the proxies
    // before the controller can know either pod.
    let server = c.add_pod_unreported("node2", "server", "server")?;
    ensure!(
        server.has_capture_rules()?,
        "server is not captured after ADD"
    );
    let server_ns = server.netns()?;
    let (server_ip, server_id) = (IpAddr::from(server.ip), server.spiffe_id());
    let id_addr = SocketAddr::new(server_ip, 8080);
    let echo_addr = SocketAddr::new(server_ip, 9000);
    let _id = TestServer::identity(Some(&server_ns), id_addr)?;
    let _echo = TestServer::echo(Some(&server_ns), echo_addr)?;
    let client = c.add_pod_unreported("node1", "client", "client")?;
    ensure!(
        client.has_capture_rules()?,
        "client is not captured after ADD"
    );
    let (client_ip, client_id) = (IpAddr::from(client.ip), client.spiffe_id());
    for (node, pod) in [("node1", "client"), ("node2", "server")] {
        let p = c.pod(pod);
        let pods = c.node(node).proxy_pods()?;
        ensure!(
            pods.contains(&p.uid),
            "{node}'s proxy does not serve {pod}: {pods}"
        );
        let dump = c.node(node).proxy_admin_get("/config_dump")?;
        ensure!(
            !dump.contains(&p.ip.to_string()),
            "{node}'s proxy has {pod}'s config before its status was written"
        );
        say(format!(
            "   pod {pod} ({}) on {node}: captured when CNI ADD returned, served by {node}'s proxy over ZDS; no config for it yet (no IP in its status)",
            p.ip
        ));
    }
    let from_client = [("source_principal", client_id.as_str())];
    let before = c.node("node1").proxy_metric(OPENED, &from_client);
    ensure!(
        before == 0.0,
        "node1 counted {before} connections before the first"
    );
    let first = connect(Some(&c.pod("client").netns()?), id_addr, T)
        .context("the first connection client -> server:8080")?;
    // The kubelet reports the server first, then the client: the client's
    // config then finds the server's already at the controller.
    c.report_pod_status("server")?;
    c.report_pod_status("client")?;
    let seen = Identity::read_from(&first)
        .context("the first connection client -> server:8080, made before the pods' config")?;
    wait_until(T, "node1's proxy counts the first connection", || {
        c.node("node1").proxy_metric(OPENED, &from_client) == 1.0
    })?;
    ensure!(
        seen.peer.ip() == client_ip,
        "the server saw {} instead of the client's {client_ip}",
        seen.peer
    );
    say(format!(
        "   first connection client -> server:8080, made before the controller knew either pod, waited for their config and went through node1's proxy; the server saw {}",
        seen.peer
    ));

    say("\n== 2. across nodes: mTLS with both pods' identities".into());
    let mtls = [
        ("reporter", "destination"),
        ("source_principal", client_id.as_str()),
        ("destination_principal", server_id.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    wait_until(T, "node2's proxy reports the mTLS connection", || {
        c.node("node2").proxy_metric(OPENED, &mtls) >= 1.0
    })?;
    match echo(c, "client", echo_addr)? {
        Attempt::Echoed(b) if b == payload() => {}
        other => bail!("client -> server:9000 echo: {other:?}"),
    }
    say(format!(
        "   node2's proxy: {OPENED}{{reporter=destination, source_principal={client_id}, destination_principal={server_id}, connection_security_policy=mutual_tls}}"
    ));

    say("\n== 3. kubectl apply an AuthorizationPolicy: DENY sa/client on app=server".into());
    let deny = PolicyDef {
        namespace: APP_NS.into(),
        name: "deny-client".into(),
        action: "DENY".into(),
        selector_app: "server".into(),
        from_principals: vec![format!("{}/ns/{APP_NS}/sa/client", manifests::TRUST_DOMAIN)],
    };
    c.kube.apply(&manifests::authorization_policy(&deny))?;
    wait_echo(
        c,
        "client",
        echo_addr,
        false,
        "the policy to deny client -> server",
    )?;
    say("   client -> server:9000 closed by the mesh: denied".into());
    c.kube.kubectl(
        &["delete", "authorizationpolicy", "deny-client", "-n", APP_NS],
        None,
    )?;
    wait_echo(
        c,
        "client",
        echo_addr,
        true,
        "client -> server allowed again",
    )?;
    say("   policy deleted: client -> server:9000 echoes again".into());

    let _backends = waypoint_steps(c, say)?;

    say("\n== 6. kubectl delete pod: CNI DEL releases it".into());
    let gone_uid = c.add_pod("node1", "gone", "gone")?.uid.clone();
    let enrolled = c.node("node1").agent_metric(ENROLLED, &[]);
    ensure!(
        enrolled == 3.0,
        "node1's agent enrolled {enrolled} pods, not early, client and gone"
    );
    let runs = c.delete_pod("gone")?;
    ensure!(runs.iter().all(|r| r.success), "CNI DEL failed: {runs:?}");
    let enrolled = c.node("node1").agent_metric(ENROLLED, &[]);
    ensure!(
        enrolled == 2.0,
        "after DEL node1's agent enrolls {enrolled} pods, not early and client"
    );
    wait_until(T, "node1's proxy releases the pod", || {
        c.node("node1")
            .proxy_pods()
            .is_ok_and(|p| !p.contains(&gone_uid))
    })?;
    say(format!(
        "   pod gone: DEL ran ({} plugins), {ENROLLED} on node1 back to 2, gone from node1's proxy /pods",
        runs.len()
    ));

    say("\n== 7. node2's proxy crashes (SIGKILL); the kubelet restarts it".into());
    let node2 = c.node_mut("node2");
    node2.proxy.kill();
    node2.proxy.restart().context("restarting node2's proxy")?;
    let server_uid = c.pod("server").uid.clone();
    let pods = c.node("node2").proxy_pods()?;
    ensure!(
        pods.contains(&server_uid),
        "the restarted proxy lacks server: {pods}"
    );
    wait_echo(
        c,
        "client",
        echo_addr,
        true,
        "traffic to resume after the restart",
    )?;
    say(
        "   the restarted proxy got server from the agent's ZDS snapshot; client -> server echoes"
            .into(),
    );

    say("\n== 8. the controller is killed: traffic keeps flowing".into());
    c.controller.kill();
    for i in 0..WITHOUT_CONTROLLER {
        match echo(c, "client", echo_addr) {
            Ok(Attempt::Echoed(b)) if b == payload() => {}
            other => {
                return Err(anyhow!(
                    "connection {i} with the controller gone: {other:?}"
                ))
            }
        }
    }
    ensure!(
        c.pod("early").has_capture_rules()?,
        "early lost its capture rules"
    );
    say(format!(
        "   {WITHOUT_CONTROLLER} of {WITHOUT_CONTROLLER} connections echoed with no controller"
    ));
    Ok(())
}
