//! nginx as a plain reverse proxy in the proxy pod: one process (no master,
//! no daemon, so killing it by PID leaves nothing behind), one worker,
//! `access_log off`, upstream keep-alive. HTTP/1.1 on one port; HTTP/2
//! cleartext with prior knowledge (`listen ... http2`) on another, proxied
//! to the upstream over HTTP/1.1 keep-alive (nginx's `proxy_pass` speaks
//! only HTTP/1.x upstream); gRPC via `grpc_pass` over HTTP/2. Each mode is
//! used only if `nginx -t` accepts it on the installed build; the report
//! says which were not.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use trellis_e2e::ChildGuard;

use super::client::Proto;
use super::mesh::{L7Topo, NGINX_GRPC_PORT, NGINX_HTTP1_PORT, NGINX_HTTP2_PORT};
use super::{GRPC_PORT, HTTP_PORT, ROUTE_HEADER};
use crate::harness::servers::nginx_conf;
use crate::harness::topo::wait_listening;

/// Per protocol: None if supported, else why not (nginx -t's complaint).
pub type Support = BTreeMap<Proto, Option<String>>;

fn main_conf(d: &Path, servers: &str, upstream_ip: std::net::IpAddr) -> String {
    nginx_conf(
        d,
        &format!(
            r#"    upstream http_backend {{
        server {upstream_ip}:{HTTP_PORT};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    upstream grpc_backend {{
        server {upstream_ip}:{GRPC_PORT};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
{servers}"#
        ),
    )
}

/// The `server` block for one protocol, listening on `ip`.
fn server_block(proto: Proto, ip: std::net::IpAddr) -> String {
    let (h, v) = ROUTE_HEADER;
    let http_location = format!(
        "proxy_pass http://http_backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header {h} {v};"
    );
    match proto {
        Proto::Http1 => format!(
            "    server {{\n        listen {ip}:{NGINX_HTTP1_PORT} backlog=4096;\n        location / {{ {http_location} }}\n    }}\n"
        ),
        Proto::Http2 => format!(
            "    server {{\n        listen {ip}:{NGINX_HTTP2_PORT} http2 backlog=4096;\n        location / {{ {http_location} }}\n    }}\n"
        ),
        Proto::Grpc => format!(
            "    server {{\n        listen {ip}:{NGINX_GRPC_PORT} http2 backlog=4096;\n        location / {{ grpc_pass grpc://grpc_backend; grpc_set_header {h} {v}; }}\n    }}\n"
        ),
    }
}

/// Asks `nginx -t` about each protocol's server block on its own (before
/// nginx runs: the test binds the ports).
pub fn probe(t: &L7Topo) -> Result<Support> {
    let dir = tempfile::Builder::new()
        .prefix("trellis-l7-nginx-probe-")
        .tempdir()?;
    let mut support = Support::new();
    for proto in Proto::ALL {
        let conf = main_conf(
            dir.path(),
            &server_block(proto, t.proxy.ip),
            t.plain_server.ip,
        );
        let path = dir.path().join(format!("{}.conf", proto.key()));
        std::fs::write(&path, conf)?;
        let prefix = format!("{}/", dir.path().display());
        // nginx -t binds the listeners: test inside the proxy pod.
        let out = Command::new("ip")
            .args(["netns", "exec", t.proxy.netns_name()])
            .args(["nginx", "-t", "-q", "-p", &prefix, "-c"])
            .arg(&path)
            .output()
            .context("running nginx -t")?;
        let verdict = if out.status.success() {
            None
        } else {
            Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
        };
        support.insert(proto, verdict);
    }
    Ok(support)
}

/// The running nginx; killed when dropped.
pub struct NginxProxy {
    pub pid: u32,
    guard: ChildGuard,
    _dir: tempfile::TempDir,
}

impl NginxProxy {
    /// Starts nginx in the proxy pod, pinned to `cpu`, with a server block
    /// for each supported protocol, proxying to the plain server pod.
    pub fn start(t: &L7Topo, support: &Support, cpu: usize) -> Result<NginxProxy> {
        Self::start_wrapped(t, support, cpu, &[], Duration::from_secs(10))
    }

    /// [`start`](Self::start) with nginx run under `wrapper` (a command and
    /// its arguments that exec it, such as valgrind), allowed `ready_within`
    /// to listen.
    pub fn start_wrapped(
        t: &L7Topo,
        support: &Support,
        cpu: usize,
        wrapper: &[&str],
        ready_within: Duration,
    ) -> Result<NginxProxy> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-l7-nginx-")
            .tempdir()?;
        let d = dir.path();
        let servers: String = support
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(p, _)| server_block(*p, t.proxy.ip))
            .collect();
        if servers.is_empty() {
            bail!("the installed nginx accepts none of the benchmark's modes: {support:?}");
        }
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, main_conf(d, &servers, t.plain_server.ip))?;
        let cpu_s = cpu.to_string();
        let conf_s = conf.display().to_string();
        let prefix = format!("{}/", d.display());
        let mut argv: Vec<&str> = vec!["taskset", "-c", &cpu_s];
        argv.extend_from_slice(wrapper);
        argv.extend_from_slice(&["nginx", "-p", &prefix, "-c", &conf_s]);
        let guard = t.bt.topo.spawn(&t.proxy.name, &argv)?;
        let ns = t.proxy.netns()?;
        for (proto, why) in support {
            if why.is_none() {
                let port = t.nginx_target(*proto).dst.port();
                wait_listening(&ns, port, ready_within)
                    .with_context(|| format!("nginx did not start; its log:\n{}", guard.log()))?;
            }
        }
        Ok(NginxProxy {
            pid: guard.pid(),
            guard,
            _dir: dir,
        })
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!("nginx exited ({status}); its log:\n{}", self.guard.log());
        }
        Ok(())
    }
}

/// `nginx -v`, e.g. "nginx/1.22.1".
pub fn version() -> String {
    Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .map(|s| s.trim_start_matches("nginx version: ").to_string())
        .unwrap_or_default()
}
