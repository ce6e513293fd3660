//! Which certificate a node proxy presents for a pod: a TLS handshake with
//! the pod's HBONE port (15008), made from a namespace the test picks, that
//! accepts only the pod's identity chained to the mesh root, and returns
//! the chain the proxy sent.
//!
//! The probe's own client certificate is signed by the mesh root in the
//! test (the proxy asks for one); it is the test's, never a proxy's.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
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

/// Handshakes with `dst` (a pod's HBONE address) from inside `from`,
/// trusting only `ca_dir/root-cert.pem` and only the identity `expect`;
/// returns the chain the server presented, leaf first.
pub fn hbone_server_chain(
    from: &NetNs,
    dst: SocketAddr,
    ca_dir: &Path,
    expect: &str,
) -> Result<Vec<Vec<u8>>> {
    let root = hbone::DevCa::load_from_dir(ca_dir)
        .map_err(|e| anyhow!("loading the mesh root from {}: {e}", ca_dir.display()))?;
    let probe: hbone::Identity = PROBE_ID.parse().map_err(|e| anyhow!("{PROBE_ID}: {e}"))?;
    let cert = root
        .issue(&probe, Duration::from_secs(600))
        .map_err(|e| anyhow!("issuing the probe's certificate: {e}"))?;
    let expected: hbone::Identity = expect.parse().map_err(|e| anyhow!("{expect}: {e}"))?;
    let cfg = hbone::client_config(&cert, &root.trust_bundle(), &[expected])
        .map_err(|e| anyhow!("probe tls config: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
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
