//! Each rendered container's arguments and environment, parsed by the
//! binary's own clap definitions (the same types its `main` parses) and
//! their checks, and held against the other components: the address a node
//! proxy dials is the controller's Service and a name in its certificate,
//! its token is for an audience the controller reviews, the sockets the
//! node proxy and the CNI agent share are one host path, and every probe
//! and scrape annotation names a port the binary listens on.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use clap::{CommandFactory, Parser};
use trellis_controller::auth::token_review::TokenReviewConfig;
use trellis_controller::cli::{Cli as ControllerCli, Command as ControllerCommand, RunArgs};
use trellis_e2e::deploy::{
    Container, MountSource, PodFacts, Rendered, Variant, CNI_AGENT, CONTROLLER, NAMESPACE,
    NODE_PROXY,
};
use trellis_node_proxy::settings::{Mode, Settings as NodeProxySettings};

use super::render;

/// The pod the downward API describes in these checks.
fn pod(name: &str) -> PodFacts {
    PodFacts {
        node_name: "node-a".into(),
        pod_name: format!("{name}-x7k2p"),
        namespace: NAMESPACE.into(),
    }
}

/// The `--long` names of a clap command's arguments, and the long name of
/// the argument each environment variable feeds.
fn flags_of(cmd: &clap::Command) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut longs = BTreeSet::new();
    let mut envs = Vec::new();
    for a in cmd.get_arguments() {
        if let Some(long) = a.get_long() {
            longs.insert(format!("--{long}"));
            if let Some(env) = a.get_env() {
                envs.push((env.to_string_lossy().to_string(), format!("--{long}")));
            }
        }
    }
    (longs, envs)
}

/// `program args...` plus each environment variable as the flag it feeds,
/// so the parser sees the values a pod would give it without this test
/// process's environment taking part. Variables in `skip` are left out.
fn argv(c: &Container, cmd: &clap::Command, pod: &PodFacts) -> Result<Vec<OsString>, String> {
    let (_, envs) = flags_of(cmd);
    let mut out: Vec<OsString> = vec![c.program().unwrap_or_default().into()];
    out.extend(c.args.iter().map(OsString::from));
    for (name, value) in c.env_values(pod)? {
        let flag = envs
            .iter()
            .find(|(env, _)| *env == name)
            .map(|(_, flag)| flag)
            .ok_or_else(|| format!("env {name} feeds no flag of {}", cmd.get_name()))?;
        out.push(format!("{flag}={value}").into());
    }
    Ok(out)
}

fn controller_run(r: &Rendered) -> (Container, RunArgs) {
    let c = r.controller().expect("controller");
    assert_eq!(c.program(), Some("trellis-controller"));
    let argv = argv(&c, &ControllerCli::command(), &pod(CONTROLLER)).expect("argv");
    let cli = ControllerCli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("trellis-controller refuses {argv:?}:\n{e}"));
    let ControllerCommand::Run(run) = cli.command else {
        panic!("not `run`: {argv:?}");
    };
    (c, *run)
}

fn node_proxy_settings(c: &Container, pod: &PodFacts) -> Result<NodeProxySettings, String> {
    let argv = argv(c, &NodeProxySettings::command(), pod)?;
    let s = NodeProxySettings::try_parse_from(&argv).map_err(|e| e.to_string())?;
    s.validate().map_err(|errs| errs.join("; "))?;
    Ok(s)
}

fn port_of(addr: &SocketAddr) -> u16 {
    assert!(
        addr.ip().is_unspecified(),
        "{addr} is not reachable from outside the pod (kubelet, Prometheus, proxies)"
    );
    addr.port()
}

#[test]
fn controller_args_are_accepted_and_serve_the_service_name() {
    let base = render(Variant::Base);
    let service = base.get("Service", CONTROLLER).expect("service");
    for v in Variant::ALL {
        let (c, run) = controller_run(&render(v));
        assert!(run.in_cluster && run.kubeconfig.is_none() && run.manifests.is_none());
        assert_eq!(run.ca_secret.as_deref(), Some("trellis-system/cacerts"));
        assert_eq!(run.istio_labels, v == Variant::IstioCompat, "{}", v.rel());
        assert!(run
            .server_names()
            .contains(&format!("{CONTROLLER}.{NAMESPACE}.svc")));
        // The Service's ports lead to what the controller listens on.
        let grpc = port_of(&run.listen);
        let admin = port_of(&run.admin_addr);
        assert_eq!(c.port("grpc-xds"), Some(grpc));
        assert_eq!(c.port("http-monitoring"), Some(admin));
        for (name, port) in [("grpc-xds", 15012), ("http-monitoring", 15014)] {
            let p = service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("Service port {name}"));
            assert_eq!(p["port"], port, "{name}");
            assert_eq!(p["targetPort"], name);
        }
    }
    // A broken copy: without a CA source the controller refuses to start.
    let c = base.controller().expect("controller");
    let mut argv = argv(&c, &ControllerCli::command(), &pod(CONTROLLER)).expect("argv");
    argv.retain(|a| !a.to_string_lossy().starts_with("--ca-secret"));
    let err = ControllerCli::try_parse_from(&argv).expect_err("no CA");
    assert!(err.to_string().contains("--ca-dir"), "{err}");
}

#[test]
fn node_proxy_args_and_env_are_accepted_and_reach_the_controller() {
    let r = render(Variant::Base);
    let (_, controller) = controller_run(&r);
    let np = r.node_proxy().expect("node proxy");
    assert_eq!(np.program(), Some("trellis-node-proxy"));
    let s = node_proxy_settings(&np, &pod(NODE_PROXY)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.mode, Mode::Shared);
    assert_eq!(s.node, "node-a", "NODE_NAME from spec.nodeName");
    assert_eq!(s.cluster_id, controller.cluster_id);
    // Config and certificates from the controller's Service, checked as a
    // name the controller's certificate holds.
    let control = &s.common.control;
    assert_eq!(
        control.xds_address.as_deref(),
        Some(format!("{CONTROLLER}.{NAMESPACE}.svc:{}", controller.listen.port()).as_str())
    );
    assert!(
        controller
            .server_names()
            .contains(&control.control_plane_name),
        "{} is not in the controller's certificate {:?}",
        control.control_plane_name,
        controller.server_names()
    );
    assert!(s.common.config.is_none() && s.common.ca_dir.is_none());
    // The token: projected for an audience the controller reviews, as the
    // service account the controller takes for a node proxy.
    let token = control.token_file.as_ref().expect("--token-file");
    match np.mount_holding(token).map(|m| &m.source) {
        Some(MountSource::Token { audience, path, .. }) => {
            assert!(controller.token_audiences.contains(audience), "{audience}");
            assert_eq!(
                token.file_name().and_then(|f| f.to_str()),
                Some(path.as_str())
            );
        }
        other => panic!("--token-file {} is on {other:?}", token.display()),
    }
    let sa = r.get("DaemonSet", NODE_PROXY).expect("ds")["spec"]["template"]["spec"]
        ["serviceAccountName"]
        .clone();
    assert_eq!(sa, NODE_PROXY);
    assert!(TokenReviewConfig::default()
        .node_proxy_accounts
        .contains(&(NAMESPACE.to_string(), NODE_PROXY.to_string())));
    let root = control.root.as_ref().expect("--control-plane-root");
    assert_eq!(
        np.mount_holding(root).map(|m| &m.source),
        Some(&MountSource::ConfigMap("trellis-ca-root-cert".into()))
    );

    // A rollout upgrades by hand-over (maxSurge: 1 and --auto-takeover),
    // and the kubelet must not cut the old pod's drain short: its grace
    // period outlasts the hand-over drain deadline (and the SIGTERM one).
    for v in Variant::ALL {
        let r = render(v);
        let ds = r.get("DaemonSet", NODE_PROXY).expect("ds");
        let np = r.node_proxy().expect("node proxy");
        let s = node_proxy_settings(&np, &pod(NODE_PROXY)).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.auto_takeover, "{}", v.rel());
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
            serde_json::json!(1),
            "{}",
            v.rel()
        );
        let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        let longest = s.handover_drain_deadline.max(s.drain_deadline).as_secs();
        assert!(
            grace > longest,
            "{}: terminationGracePeriodSeconds {grace} would SIGKILL the old node proxy before \
             its drain deadline ({longest} s) ends",
            v.rel()
        );
    }

    // Broken copies: a misspelled flag, and shared-mode flags in dedicated mode.
    let mut typo = np.clone();
    for a in &mut typo.args {
        *a = a.replace("--zds-socket=", "--zds-sockt=");
    }
    let err = node_proxy_settings(&typo, &pod(NODE_PROXY)).expect_err("typo");
    assert!(err.contains("--zds-sockt"), "{err}");
    let mut dedicated = np.clone();
    for a in &mut dedicated.args {
        *a = a.replace("--mode=shared", "--mode=dedicated");
    }
    let err = node_proxy_settings(&dedicated, &pod(NODE_PROXY)).expect_err("dedicated");
    assert!(err.contains("--zds-socket is for --mode shared"), "{err}");
}

#[test]
fn cni_agent_args_are_accepted_by_its_parser() {
    for v in Variant::ALL {
        let r = render(v);
        let agent = r.cni_agent().expect("agent");
        assert_eq!(agent.program(), Some("trellis-cni-agent"));
        let s = agent_settings(&agent).unwrap_or_else(|e| panic!("{e}"));
        // Kubernetes mode, installing the plugin, told its DaemonSet so an
        // update keeps the CNI entry and an uninstall removes it.
        assert!(s.in_cluster, "{}", v.rel());
        assert!(s.install_cni, "{}", v.rel());
        assert_eq!(
            s.daemonset.as_deref(),
            Some("trellis-system/trellis-cni-agent")
        );
        assert_eq!(s.node_name, "node-a", "NODE_NAME from the downward API");
        assert_eq!(s.istio_labels, v == Variant::IstioCompat, "{}", v.rel());
        // The installer writes into the host's CNI dirs.
        for (dir, host) in [
            (&s.cni_bin_dir, "/opt/cni/bin"),
            (&s.cni_conf_dir, "/etc/cni/net.d"),
        ] {
            match agent.mount_holding(dir).map(|m| &m.source) {
                Some(MountSource::HostPath(h)) => assert_eq!(h, Path::new(host)),
                other => panic!("{} is on {other:?}, not host path {host}", dir.display()),
            }
        }
        // The plugin runs on the host and dials the path written in the CNI
        // config: the sockets must be at the same path inside and outside.
        for path in [&s.zds_socket, &s.plugin_socket, &s.state_file] {
            same_path_on_the_host(&agent, path);
        }
        // The node proxy dials the same ZDS socket through the same host path.
        let np = r.node_proxy().expect("node proxy");
        let zds = np.flag("--zds-socket").expect("--zds-socket");
        assert_eq!(Path::new(zds), s.zds_socket.as_path());
        same_path_on_the_host(&np, Path::new(zds));
    }
    // A broken copy: an unknown flag is refused.
    let mut typo = render(Variant::Base).cni_agent().expect("agent");
    typo.args.push("--zds-sockets=/x".into());
    let err = agent_settings(&typo).expect_err("--zds-sockets was not refused");
    assert!(err.contains("--zds-sockets"), "{err}");
}

/// The agent's settings as its own parser reads the rendered container.
fn agent_settings(agent: &Container) -> Result<trellis_cni::agent::Settings, String> {
    let cmd = trellis_cni::agent::Settings::command();
    let argv = argv(agent, &cmd, &pod(CNI_AGENT))?;
    trellis_cni::agent::Settings::try_parse_from(&argv)
        .map_err(|e| format!("trellis-cni-agent refuses {argv:?}:\n{e}"))
}

fn same_path_on_the_host(c: &Container, path: &Path) {
    match c.mount_holding(path).map(|m| &m.source) {
        Some(MountSource::HostPath(host)) => assert!(
            path.starts_with(host),
            "{}: {} is under host path {} mounted elsewhere",
            c.name,
            path.display(),
            host.display()
        ),
        other => panic!(
            "{}: {} is on {other:?}, not a host path",
            c.name,
            path.display()
        ),
    }
}

/// The port a probe (or a scrape annotation) names, as a number.
fn probe_port(c: &serde_json::Value, probe: &str, container: &Container) -> u16 {
    let p = &c[probe];
    let port = &p
        .get("httpGet")
        .or_else(|| p.get("tcpSocket"))
        .unwrap_or_else(|| panic!("{}: no {probe}", container.name))["port"];
    match port {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .expect("port"),
        serde_json::Value::String(name) => container
            .port(name)
            .unwrap_or_else(|| panic!("{}: {probe} names no port {name}", container.name)),
        other => panic!("{}: {probe} port {other}", container.name),
    }
}

#[test]
fn probes_and_scrape_annotations_name_the_ports_the_binaries_listen_on() {
    let r = render(Variant::Base);
    let (_, controller) = controller_run(&r);
    let np = r.node_proxy().expect("node proxy");
    let proxy = node_proxy_settings(&np, &pod(NODE_PROXY)).expect("settings");
    let agent = r.cni_agent().expect("agent");
    let agent_admin: SocketAddr = agent
        .flag("--admin-addr")
        .expect("--admin-addr")
        .parse()
        .expect("address");
    // (workload kind, name, container, readiness, liveness, metrics)
    type Case<'a> = (&'a str, &'a str, &'a Container, u16, Option<u16>, u16);
    let cases: [Case; 3] = [
        (
            "Deployment",
            CONTROLLER,
            &r.controller().expect("controller"),
            port_of(&controller.admin_addr),
            Some(port_of(&controller.admin_addr)),
            port_of(&controller.admin_addr),
        ),
        (
            "DaemonSet",
            NODE_PROXY,
            &np,
            port_of(&proxy.common.readiness_addr),
            Some(port_of(&proxy.common.readiness_addr)),
            port_of(&proxy.common.metrics_addr),
        ),
        (
            "DaemonSet",
            CNI_AGENT,
            &agent,
            port_of(&agent_admin),
            None,
            port_of(&agent_admin),
        ),
    ];
    for (kind, name, container, ready, live, metrics) in cases {
        let w = r.get(kind, name).expect("workload");
        let pod_spec = &w["spec"]["template"];
        let c = pod_spec["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container.name.as_str()))
            .expect("container");
        assert_eq!(probe_port(c, "readinessProbe", container), ready, "{name}");
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/healthz/ready",
            "{name}"
        );
        if let Some(live) = live {
            assert_eq!(probe_port(c, "livenessProbe", container), live, "{name}");
        }
        let a = &pod_spec["metadata"]["annotations"];
        assert_eq!(a["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(a["prometheus.io/port"], metrics.to_string(), "{name}");
        assert_eq!(a["prometheus.io/path"], "/metrics", "{name}");
        assert!(
            c["resources"]["requests"]["cpu"].is_string()
                && c["resources"]["requests"]["memory"].is_string(),
            "{name}: resource requests"
        );
    }
}
