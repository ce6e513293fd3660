//! The ZDS server one shared-mode ztunnel needs before it is ready: what
//! istio-cni (or `trellis-cni-agent`) does on a node, cut to the bench's
//! one pod per node. It accepts ztunnel's connection, checks its hello,
//! sends the pod (with its netns fd) and the end of the snapshot, and
//! holds the connection open while ztunnel serves the pod: ztunnel takes
//! a closed connection for a restarting agent.
//!
//! The messages and the checks of ztunnel's answers are the CNI agent's
//! own ([`trellis_cni::agent::protocol`]).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use trellis_cni::agent::protocol::{self, Answer, PacketMeta, MAX_PACKET};
use trellis_cni::wire::PodRef;
use trellis_netns::seqpacket::{SeqpacketConn, SeqpacketListener};
use trellis_netns::NetNs;

/// How long ztunnel gets to connect after it starts, and to answer each request.
const CONNECT_WITHIN: Duration = Duration::from_secs(20);
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A listening ZDS socket, then the connection it served the pod on.
pub struct ZdsServer {
    path: PathBuf,
    // Dropped before the runtime its fds are registered with.
    conn: Option<SeqpacketConn>,
    listener: SeqpacketListener,
    rt: tokio::runtime::Runtime,
}

impl ZdsServer {
    /// Listens on `path` (a stale socket file is replaced).
    pub fn bind(path: &Path) -> Result<ZdsServer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the ZDS server's runtime")?;
        let listener = {
            let _in = rt.enter();
            SeqpacketListener::bind(path)
                .with_context(|| format!("binding the ZDS socket {}", path.display()))?
        };
        Ok(ZdsServer {
            path: path.to_path_buf(),
            conn: None,
            listener,
            rt,
        })
    }

    /// Waits for ztunnel's connection and gives it `pod`, whose netns is
    /// `netns`, as the whole snapshot; fails on a refusal, naming it.
    pub fn serve(&mut self, pod: &PodRef, netns: &NetNs) -> Result<()> {
        let path = self.path.display().to_string();
        let conn = self.rt.block_on(async {
            let conn = tokio::time::timeout(CONNECT_WITHIN, self.listener.accept())
                .await
                .with_context(|| {
                    format!("ztunnel did not connect to {path} within {CONNECT_WITHIN:?}")
                })?
                .with_context(|| format!("accepting on {path}"))?;
            let (hello, meta) = recv(&conn).await.context("ztunnel's hello")?;
            protocol::parse_hello(&hello, meta)?;
            ask(&conn, &protocol::add(pod), Some(netns), "AddWorkload").await?;
            ask(&conn, &protocol::snapshot_sent(), None, "SnapshotSent").await?;
            anyhow::Ok(conn)
        })?;
        self.conn = Some(conn);
        Ok(())
    }
}

async fn recv(conn: &SeqpacketConn) -> Result<(Vec<u8>, PacketMeta)> {
    let packet = tokio::time::timeout(ANSWER_WITHIN, conn.recv(MAX_PACKET))
        .await
        .with_context(|| format!("no answer from ztunnel within {ANSWER_WITHIN:?}"))?
        .context("reading from ztunnel")?
        .context("ztunnel closed the ZDS connection")?;
    let meta = PacketMeta {
        fds: packet.fds.len(),
        truncated: packet.truncated,
    };
    Ok((packet.data, meta))
}

/// Sends one request (with the netns fd for an add) and reads its Ack.
async fn ask(conn: &SeqpacketConn, msg: &[u8], netns: Option<&NetNs>, what: &str) -> Result<()> {
    conn.send(msg, netns.map(|n| n.as_fd()))
        .await
        .with_context(|| format!("sending {what}"))?;
    let (data, meta) = recv(conn)
        .await
        .with_context(|| format!("the answer to {what}"))?;
    match protocol::parse_answer(&data, meta)? {
        Answer::Ack => Ok(()),
        Answer::Nack(e) => bail!("ztunnel refused {what}: {e}"),
    }
}
