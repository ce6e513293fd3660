//! The demo's control plane: `trellis-controller run` in process, in
//! manifests mode with its CA, on loopback ports chosen by the kernel. The
//! demo's proxies get their config over xDS and their certificates from it,
//! each authenticated by a bootstrap token, and hold no CA key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use tokio::sync::oneshot;
use trellis_controller::cli::{Cli, Command};
use trellis_controller::run::BoundAddrs;
use trellis_core::cli::{CommonFlags, ControlFlags};

/// The name the proxies check the controller's certificate against (one of
/// the names `run` puts in its serving certificate by default).
const SERVER_NAME: &str = "istiod.istio-system.svc";
/// Who may connect: a token per node (its proxies may have certificates for
/// that node's pods only), and one for the waypoint's own identity.
const TOKENS: &str = r#"tokens:
- token: demo-node1
  nodeProxy: {node: node1}
- token: demo-node2
  nodeProxy: {node: node2}
- token: demo-waypoint
  waypoint: {spiffeId: "spiffe://cluster.local/ns/demo/sa/waypoint"}
"#;

/// A running in-process controller; stopped by [`ControlPlane::stop`] or on drop.
pub struct ControlPlane {
    addrs: BoundAddrs,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Makes a dev CA in `dir/ca` and serves the manifests in `manifests`.
    /// Returns once both ports are bound and the first scan is published.
    pub fn start(dir: &Path, manifests: &Path) -> Result<ControlPlane> {
        let ca_dir = dir.join("ca");
        trellis_controller::ca::init(&ca_dir, "cluster.local", false)
            .context("creating the demo CA")?;
        let tokens = dir.join("tokens.yaml");
        std::fs::write(&tokens, TOKENS).context("writing the token file")?;
        for (who, token) in [
            ("node1", "demo-node1"),
            ("node2", "demo-node2"),
            ("waypoint", "demo-waypoint"),
        ] {
            std::fs::write(dir.join(format!("token-{who}")), token)
                .with_context(|| format!("writing {who}'s token"))?;
        }
        let cli = Cli::try_parse_from([
            "trellis-controller".as_ref(),
            "run".as_ref(),
            "--manifests".as_ref(),
            manifests.as_os_str(),
            "--ca-dir".as_ref(),
            ca_dir.as_os_str(),
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--listen=127.0.0.1:0".as_ref(),
            "--admin-addr=127.0.0.1:0".as_ref(),
            // Edits to the manifests reach the mesh within this.
            "--poll=200ms".as_ref(),
        ])
        .map_err(|e| anyhow!("the demo's controller flags: {e}"))?;
        let Command::Run(args) = cli.command else {
            return Err(anyhow!(
                "the demo's controller flags did not parse as `run`"
            ));
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Its own thread and runtime, as in the real binary: the proxies'
        // workers never share a scheduler with xDS pushes or signing.
        let thread = std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("controller runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    match trellis_controller::run::start(&args, shutdown).await {
                        Ok(running) => {
                            let _ = ready_tx.send(Ok(running.addrs()));
                            if let Err(e) = running.wait().await {
                                tracing::error!(error = %e, "the demo's controller stopped");
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("starting the controller: {e}")));
                        }
                    }
                });
            })
            .context("spawning the controller thread")?;
        let addrs = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the controller did not start within 10s"))??;
        Ok(ControlPlane {
            addrs,
            dir: dir.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The controller's Prometheus text.
    pub fn metrics_text(&self) -> Result<String> {
        match crate::cluster::http(self.addrs.admin, "GET", "/metrics", "")? {
            (200, body) => Ok(body),
            (code, body) => Err(anyhow!("controller /metrics answered {code}: {body}")),
        }
    }

    /// What the controller has served, as an operator reads it.
    pub fn summary_lines(&self) -> Result<Vec<String>> {
        let text = self.metrics_text()?;
        let get = |name| crate::demo::sum_metric(&text, name);
        Ok(vec![
            format!(
                "controller: {} xDS streams open (pilot_xds), {} responses pushed, {} NACKs",
                get("pilot_xds"),
                get("pilot_xds_pushes"),
                get("pilot_total_xds_rejects"),
            ),
            format!(
                "controller: {} workload certificates issued, {} requests refused; {} workloads, {} services published",
                get("citadel_server_success_cert_issuance_count"),
                get("trellis_controller_cert_refused_total"),
                get("trellis_controller_workloads"),
                get("trellis_controller_services"),
            ),
        ])
    }

    /// The control flags of a proxy authenticated as `who` (`node1`,
    /// `node2` or `waypoint`): xDS and CA at the controller, its root, its token.
    pub fn flags(&self, who: &str) -> CommonFlags {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        CommonFlags {
            config: None,
            ca_dir: None,
            control: ControlFlags {
                xds_address: Some(self.addrs.grpc.to_string()),
                ca_address: None,
                root: Some(self.dir.join("ca").join("root-cert.pem")),
                control_plane_name: SERVER_NAME.into(),
                token_file: Some(self.dir.join(format!("token-{who}"))),
                network: String::new(),
            },
            admin_addr: any_port,
            metrics_addr: any_port,
            readiness_addr: any_port,
            bound_addrs_file: None,
            config_poll: Duration::from_secs(1),
            log_format: trellis_core::logging::LogFormat::Text,
            log: "info".into(),
            max_connections: 0,
            max_pending_handshakes: 0,
        }
    }

    /// Stops serving and waits (open streams drain first, briefly).
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shut();
    }
}
