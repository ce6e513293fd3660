//! What runs in the server pod: a Rust echo server (in this process, on its
//! own pinned thread), nginx and iperf3 (child processes pinned with taskset).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_e2e::{ChildGuard, Pod, Topology};
use trellis_netns::{self as netns, ListenOpts, NetNs};

use crate::harness::sys;
use crate::harness::topo::wait_listening;

/// Echoes every byte back; one tokio task per connection on a single
/// current-thread runtime pinned to one CPU. Holds idle connections cheaply.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    _thread: sys::ServerThread,
}

impl EchoServer {
    pub fn start(ns: &NetNs, addr: SocketAddr, cpu: usize) -> Result<EchoServer> {
        let std_l = netns::tcp_listener(
            Some(ns),
            addr,
            ListenOpts {
                backlog: 4096,
                ..Default::default()
            },
        )
        .with_context(|| format!("echo server: listening on {addr}"))?;
        let rt = sys::runtime()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let thread = sys::ServerThread::spawn("bench-echo".into(), move |mut stopped| {
            if let Err(e) = sys::pin_current_thread(cpu) {
                eprintln!("echo server: cannot pin to CPU {cpu}: {e}");
            }
            rt.block_on(async move {
                let l = match tokio::net::TcpListener::from_std(std_l) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("echo server: {e}");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        r = l.accept() => {
                            let Ok((mut s, _)) = r else { continue };
                            count.fetch_add(1, Ordering::Relaxed);
                            let _ = s.set_nodelay(true);
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 16 * 1024];
                                loop {
                                    match s.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => {
                                            if s.write_all(&buf[..n]).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
            });
        })?;
        Ok(EchoServer {
            addr,
            accepted,
            _thread: thread,
        })
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Size of the static file nginx serves: larger than one TCP segment (MSS
/// 1448 on the topology's veths), as most real responses are.
pub const HTTP_BODY_BYTES: usize = 4096;

/// nginx with a minimal config: no daemon, no master process (one process,
/// so killing it leaves nothing behind), one worker, access_log off.
pub struct Nginx {
    pub addr: SocketAddr,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

/// An nginx.conf for one worker on one CPU, no master, no access log,
/// long keep-alive, every temp path under `d`; `http` goes inside the
/// `http` block (servers, upstreams).
pub fn nginx_conf(d: &std::path::Path, http: &str) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{
    worker_connections 16384;
    multi_accept on;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}}}
"#,
        d = d.display()
    )
}

impl Nginx {
    pub fn start(topo: &Topology, pod: &Pod, port: u16, cpu: usize) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-bench-nginx-")
            .tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("www"))?;
        std::fs::write(d.join("www/index.html"), "x".repeat(HTTP_BODY_BYTES))?;
        let addr = SocketAddr::new(pod.ip, port);
        let conf = nginx_conf(
            d,
            &format!(
                r#"    default_type text/html;
    # As Debian's default nginx.conf: the head goes out in one write, the
    # file in a sendfile of its own. A proxy that leaves Nagle on then
    # holds the body until the client's delayed ACK (about 40 ms).
    sendfile on;
    server {{
        listen {addr} backlog=4096;
        root {d}/www;
        location / {{ }}
    }}
"#,
                d = d.display()
            ),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let cpu_s = cpu.to_string();
        let conf_s = conf_path.display().to_string();
        let prefix_s = format!("{}/", d.display());
        let guard = topo.spawn(
            &pod.name,
            &[
                "taskset", "-c", &cpu_s, "nginx", "-p", &prefix_s, "-c", &conf_s,
            ],
        )?;
        wait_listening(&pod.netns()?, port, Duration::from_secs(10))
            .with_context(|| format!("nginx did not start; its log:\n{}", guard.log()))?;
        Ok(Nginx {
            addr,
            _guard: guard,
            _dir: dir,
        })
    }
}

/// `iperf3 -s` bound to the pod's address, serving tests one after another.
pub struct Iperf3Server {
    pub addr: SocketAddr,
    _guard: ChildGuard,
}

impl Iperf3Server {
    pub fn start(topo: &Topology, pod: &Pod, port: u16, cpu: usize) -> Result<Iperf3Server> {
        let cpu_s = cpu.to_string();
        let ip_s = pod.ip.to_string();
        let port_s = port.to_string();
        let guard = topo.spawn(
            &pod.name,
            &[
                "taskset", "-c", &cpu_s, "iperf3", "-s", "-B", &ip_s, "-p", &port_s,
            ],
        )?;
        wait_listening(&pod.netns()?, port, Duration::from_secs(10))
            .with_context(|| format!("iperf3 -s did not start; its log:\n{}", guard.log()))?;
        Ok(Iperf3Server {
            addr: SocketAddr::new(pod.ip, port),
            _guard: guard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nginx_conf_holds_the_given_http_part_inside_its_http_block() {
        let conf = nginx_conf(
            std::path::Path::new("/t/ngx"),
            "    server {\n        listen 198.18.2.2:80;\n    }\n",
        );
        assert!(
            conf.starts_with("daemon off;\nmaster_process off;\n"),
            "{conf}"
        );
        assert_eq!(
            conf.matches('{').count(),
            conf.matches('}').count(),
            "{conf}"
        );
        let http = conf.find("http {").unwrap();
        let server = conf.find("    server {").unwrap();
        assert!(http < server, "{conf}");
        // The http block ends the file, after the server.
        assert!(conf.ends_with("    }\n}\n"), "{conf}");
        assert!(conf.contains("pid /t/ngx/nginx.pid;"), "{conf}");
        assert!(conf.contains("scgi_temp_path /t/ngx/scgi;"), "{conf}");
    }
}
