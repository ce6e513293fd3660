//! Who can reach the proxies' control inputs, and what they give away
//! (issue 16, sections 5 and 6.5, 6.6): the admin API only on loopback, a
//! runtime log filter that cannot silence the logs by accident, owner-only
//! unix sockets at the CNI agent, and no private key in `/config_dump` or
//! the logs.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use trellis_e2e::cluster::node_proxy_bin;
use trellis_e2e::cni_kit::Agent;
use trellis_e2e::mesh_kit::{Mesh, T};
use trellis_e2e::waypoint_proc::waypoint_bin;
use trellis_e2e::{connect, process};

/// GET /logging, POST a filter, GET again: (POST status, POST body, filter after).
fn set_filter(
    admin: impl Fn(&str, &str) -> (u16, String),
    raw_level: &str,
) -> (u16, String, String) {
    let (status, body) = admin("POST", &format!("/logging?level={raw_level}"));
    let (get, now) = admin("GET", "/logging");
    assert_eq!(get, 200, "{now}");
    (status, body, now.trim().to_string())
}

/// Checks `POST /logging` on one admin server: a percent-encoded filter is
/// decoded and applied; a filter that does not parse (or has no level) is
/// refused with 400 and the old filter stays.
fn logging_endpoint_checks(who: &str, admin: impl Fn(&str, &str) -> (u16, String)) {
    let (status, body, now) = set_filter(&admin, "info%2Ctrellis_core%3Ddebug");
    assert_eq!(status, 200, "{who}: {body}");
    assert_eq!(
        now, "info,trellis_core=debug",
        "{who}: decoded filter applied"
    );

    // (raw level, what the refusal names)
    let refused = [
        ("garbage", "has no level"),
        ("info%2Cgarbage", "has no level"),
        ("trellis%3Dloud", "not one of trace, debug"),
        ("%2C", "empty log filter"),
        ("%zz", "not valid percent-encoded"),
    ];
    for (raw, names) in refused {
        let (status, body, now) = set_filter(&admin, raw);
        assert_eq!(status, 400, "{who}: level={raw} must be refused: {body}");
        assert!(body.contains(names), "{who}: level={raw}: {body}");
        assert_eq!(
            now, "info,trellis_core=debug",
            "{who}: level={raw} kept the old filter"
        );
    }
}

#[test]
fn logging_filter_is_decoded_and_a_bad_one_is_refused_keeping_the_old() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .waypoint("node1", "wp", "demo", "waypoint")
        .start()
        .unwrap();
    let p = m.proxy("node1");
    logging_endpoint_checks("node proxy", |method, path| {
        p.admin(method, path, "").unwrap()
    });
    let wp = m.waypoint("wp");
    logging_endpoint_checks("waypoint", |method, path| {
        wp.admin(method, path, "").unwrap()
    });
}

/// Runs `bin` with `args` and a non-loopback admin address: it must exit
/// non-zero at once, saying why.
fn refuses_admin_addr(bin: &std::path::Path, args: &[&str], addr: &str) {
    let bin_s = bin.to_str().unwrap();
    let argv = [args, &["--admin-addr", addr]].concat();
    match process::run(bin_s, &argv, Duration::from_secs(10)) {
        Ok(out) => panic!("{bin_s} with --admin-addr {addr} started: {out}"),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("exit status: 1")
                    && e.contains(&format!("--admin-addr {addr} must be a loopback address")),
                "{bin_s}: {e}"
            );
        }
    }
}

#[test]
fn proxies_refuse_a_non_loopback_admin_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let ca = dir.path().join("ca");
    let (cfg, ca) = (cfg.to_str().unwrap(), ca.to_str().unwrap());
    let common = ["--config", cfg, "--ca-dir", ca];
    let waypoint = [
        &common[..],
        &["--name", "demo/wp", "--listen", "127.0.0.1:0"],
    ]
    .concat();
    let node = common.to_vec();
    for addr in ["0.0.0.0:15000", "[::]:15000", "198.18.0.1:15000"] {
        refuses_admin_addr(&waypoint_bin().unwrap(), &waypoint, addr);
        refuses_admin_addr(&node_proxy_bin().unwrap(), &node, addr);
    }
}

/// Connects to the unix stream socket `path` as uid/gid 65534 (nobody):
/// the child's exit code says whether the connection was refused.
fn nobody_can_connect(path: &std::path::Path, kind: &str) -> bool {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if sys.argv[2] == "seqpacket" else socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(3)
sys.exit(0)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(kind)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    match status.code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("connect probe as nobody failed oddly: {other:?}"),
    }
}

#[test]
fn cni_agent_sockets_are_owner_only() {
    if !trellis_e2e::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Let nobody reach the directory, so only the sockets' own modes decide.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start(dir.path(), &["demo"]).unwrap();
    for (path, kind) in [
        (&agent.zds_socket, "seqpacket"),
        (&agent.plugin_socket, "stream"),
    ] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
        assert!(
            !nobody_can_connect(path, kind),
            "another user connected to {}",
            path.display()
        );
    }
}

/// Text that would show a private key: PEM armour, rustls' key types, or
/// a line of the dev CA's key file.
fn key_leaks(text: &str, ca_key_pem: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in [
        "PRIVATE KEY",
        "PrivateKeyDer",
        "PrivatePkcs8KeyDer",
        "KeyPair",
    ] {
        if text.contains(marker) {
            found.push(marker.to_string());
        }
    }
    for line in ca_key_pem.lines().filter(|l| !l.starts_with("-----")) {
        if line.len() >= 16 && text.contains(line) {
            found.push(format!("CA key line {line}"));
        }
    }
    found
}

#[test]
fn private_keys_appear_neither_in_config_dump_nor_in_trace_logs() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .waypoint("node1", "wp", "demo", "waypoint")
        .start()
        .unwrap();
    let ca_key = std::fs::read_to_string(m.ca.join("root-key.pem")).unwrap();
    assert!(
        ca_key.contains("PRIVATE KEY"),
        "the probe must know a real key"
    );
    let (n1, n2, wp) = (m.proxy("node1"), m.proxy("node2"), m.waypoint("wp"));
    for (who, status) in [
        (
            "node1",
            n1.admin("POST", "/logging?level=trace", "").unwrap().0,
        ),
        (
            "node2",
            n2.admin("POST", "/logging?level=trace", "").unwrap().0,
        ),
        (
            "waypoint",
            wp.admin("POST", "/logging?level=trace", "").unwrap().0,
        ),
    ] {
        assert_eq!(status, 200, "{who}");
    }
    let check = |who: &str, admin: &dyn Fn(&str, &str) -> (u16, String)| {
        let (status, dump) = admin("GET", "/config_dump");
        assert_eq!(status, 200, "{who}");
        assert!(
            dump.contains("spiffe://"),
            "{who}: the dump shows identities: {dump}"
        );
        assert_eq!(
            key_leaks(&dump, &ca_key),
            Vec::<String>::new(),
            "{who} config_dump"
        );
    };
    // New certificates and TLS handshakes under trace logging.
    let _echo = m.echo("server", 8080);
    let mut s = connect(Some(&m.netns("client")), m.addr("server", 8080), T).unwrap();
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    drop(s);
    // After the exchange both node proxies hold workload certificates.
    check("node1", &|mth, p| n1.admin(mth, p, "").unwrap());
    check("node2", &|mth, p| n2.admin(mth, p, "").unwrap());
    check("waypoint", &|mth, p| wp.admin(mth, p, "").unwrap());
    for (who, log) in [
        ("node1", n1.log()),
        ("node2", n2.log()),
        ("waypoint", wp.log()),
    ] {
        // The waypoint carries no traffic here; its log covers start-up and
        // certificate issuance.
        if who != "waypoint" {
            assert!(
                log.contains("TRACE"),
                "{who} logged at trace: the check saw something"
            );
        }
        assert_eq!(key_leaks(&log, &ca_key), Vec::<String>::new(), "{who} log");
    }
}
