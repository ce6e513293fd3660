//! Which certificate a node proxy presents for a pod: a TLS handshake with
//! the pod's HBONE port (15008), made from a namespace the test picks, that
//! accepts only the pod's identity chained to the mesh root, and returns
//! the chain the proxy sent.
//!
//! The probe's own client certificate is signed by the mesh root in the
//! test (the proxy asks for one); it is the test's, never a proxy's.
//!
//! [`HeldHbone`] is the same kind of hand-made client, for a whole request
//! on a connection opened long before it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use trellis_netns::{NetNs, SocketOpts};

/// The probe's identity, in a namespace no policy of the tests names.
const PROBE_ID: &str = "spiffe://cluster.local/ns/e2e-probe/sa/probe";
/// A hang guard for the connect and the handshake.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The DER certificates in a PEM file (a chain, or one certificate).
pub fn pem_file_ders(path: &Path) -> Result<Vec<Vec<u8>>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bundle =
        hbone::TrustBundle::from_pem(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(bundle.roots().iter().map(|c| c.to_vec()).collect())
}

/// A client TLS config with a certificate for `caller` signed by the mesh
/// root in `ca_dir`, trusting only that root and only the identity `expect`.
fn client_tls(ca_dir: &Path, caller: &str, expect: &str) -> Result<Arc<rustls::ClientConfig>> {
    let root = hbone::DevCa::load_from_dir(ca_dir)
        .map_err(|e| anyhow!("loading the mesh root from {}: {e}", ca_dir.display()))?;
    let caller: hbone::Identity = caller.parse().map_err(|e| anyhow!("{caller}: {e}"))?;
    let cert = root
        .issue(&caller, Duration::from_secs(600))
        .map_err(|e| anyhow!("issuing the probe's certificate: {e}"))?;
    let expected: hbone::Identity = expect.parse().map_err(|e| anyhow!("{expect}: {e}"))?;
    hbone::client_config(&cert, &root.trust_bundle(), &[expected])
        .map_err(|e| anyhow!("probe tls config: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Handshakes with `dst` (a pod's HBONE address) from inside `from`,
/// trusting only `ca_dir/root-cert.pem` and only the identity `expect`;
/// returns the chain the server presented, leaf first.
pub fn hbone_server_chain(
    from: &NetNs,
    dst: SocketAddr,
    ca_dir: &Path,
    expect: &str,
) -> Result<Vec<Vec<u8>>> {
    let cfg = client_tls(ca_dir, PROBE_ID, expect)?;
    runtime()?.block_on(async {
        let socket = trellis_netns::tcp_socket(Some(from), dst, SocketOpts::default())?;
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(dst))
            .await
            .map_err(|_| anyhow!("connecting to {dst} timed out"))??;
        let tls = tokio::time::timeout(TIMEOUT, hbone::tls_connect(tcp, cfg))
            .await
            .map_err(|_| anyhow!("the tls handshake with {dst} timed out"))?
            .map_err(|e| anyhow!("the tls handshake with {dst} (expecting {expect}): {e}"))?;
        let (_, conn) = tls.get_ref();
        let chain = conn
            .peer_certificates()
            .ok_or_else(|| anyhow!("{dst} presented no certificate"))?;
        Ok(chain.iter().map(|c| c.to_vec()).collect())
    })
}

/// A TCP connection to an HBONE port, opened now, whose TLS handshake,
/// CONNECT and HTTP/1.1 request come later ([`HeldHbone::get`]): a client
/// caught between its connect and its first bytes, as any client is for a
/// moment, held there on purpose.
pub struct HeldHbone {
    rt: tokio::runtime::Runtime,
    tcp: tokio::net::TcpStream,
    dst: SocketAddr,
}

impl HeldHbone {
    pub fn connect(from: &NetNs, dst: SocketAddr) -> Result<HeldHbone> {
        let rt = runtime()?;
        let tcp = rt.block_on(async {
            let socket = trellis_netns::tcp_socket(Some(from), dst, SocketOpts::default())?;
            tokio::time::timeout(TIMEOUT, socket.connect(dst))
                .await
                .map_err(|_| anyhow!("connecting to {dst} timed out"))?
                .with_context(|| format!("connecting to {dst}"))
        })?;
        Ok(HeldHbone { rt, tcp, dst })
    }

    /// On the held connection: mTLS as `caller` (expecting `server`), a
    /// CONNECT to `target`, and `GET /` inside; returns the response's
    /// status line.
    pub fn get(
        self,
        ca_dir: &Path,
        caller: &str,
        server: &str,
        target: SocketAddr,
    ) -> Result<String> {
        let cfg = client_tls(ca_dir, caller, server)?;
        let dst = self.dst;
        self.rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tls = tokio::time::timeout(TIMEOUT, hbone::tls_connect(self.tcp, cfg))
                .await
                .map_err(|_| anyhow!("the tls handshake with {dst} timed out"))?
                .map_err(|e| anyhow!("the tls handshake with {dst}: {e}"))?;
            let conn = hbone::ClientConn::handshake(tls, &hbone::H2Settings::default())
                .await
                .map_err(|e| anyhow!("http/2 with {dst}: {e}"))?;
            let req = hbone::ConnectRequest::new(target);
            let mut tunnel = tokio::time::timeout(TIMEOUT, conn.connect(&req))
                .await
                .map_err(|_| anyhow!("CONNECT {target} via {dst} timed out"))?
                .map_err(|e| anyhow!("CONNECT {target} via {dst}: {e}"))?;
            let request = format!("GET / HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n\r\n");
            tunnel.write_all(request.as_bytes()).await?;
            let mut reply = Vec::new();
            tokio::time::timeout(TIMEOUT, tunnel.read_to_end(&mut reply))
                .await
                .map_err(|_| anyhow!("the answer through {dst} timed out"))??;
            let text = String::from_utf8_lossy(&reply);
            let status = text.lines().next().unwrap_or_default().to_string();
            if status.is_empty() {
                bail!("no answer through {dst}: the tunnel closed empty");
            }
            Ok(status)
        })
    }
}
