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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use trellis_api::pb::istio::workload::zds::{
        workload_request::Payload as Req, workload_response::Payload as Resp, Ack, Version,
        WorkloadRequest, WorkloadResponse, ZdsHello,
    };

    /// What the fake ztunnel saw: the added pod's uid and service account,
    /// the fds that came with it, and whether the snapshot's end came.
    #[derive(Debug, PartialEq)]
    struct Seen {
        uid: String,
        service_account: String,
        fds: usize,
        snapshot_sent: bool,
    }

    /// ztunnel's side: hello, then an Ack (with `add_error`) to the add,
    /// and a clean Ack to SnapshotSent if it comes.
    fn fake_ztunnel(path: &Path, add_error: &str) -> Seen {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = SeqpacketConn::connect(path).unwrap();
            let hello = ZdsHello {
                version: Version::V1 as i32,
            };
            c.send(&hello.encode_to_vec(), None).await.unwrap();
            let ack = |error: &str| {
                WorkloadResponse {
                    payload: Some(Resp::Ack(Ack {
                        error: error.into(),
                    })),
                }
                .encode_to_vec()
            };
            let p = c.recv(MAX_PACKET).await.unwrap().unwrap();
            let Some(Req::Add(add)) = WorkloadRequest::decode(p.data.as_slice()).unwrap().payload
            else {
                panic!("the first request is not an AddWorkload");
            };
            c.send(&ack(add_error), None).await.unwrap();
            let mut seen = Seen {
                uid: add.uid,
                service_account: add.workload_info.unwrap_or_default().service_account,
                fds: p.fds.len(),
                snapshot_sent: false,
            };
            // After a refusal the server gives up and closes.
            if let Ok(Some(p)) = c.recv(MAX_PACKET).await {
                let req = WorkloadRequest::decode(p.data.as_slice()).unwrap();
                seen.snapshot_sent = matches!(req.payload, Some(Req::SnapshotSent(_)));
                c.send(&ack(""), None).await.unwrap();
            }
            seen
        })
    }

    #[test]
    fn hands_the_pod_and_its_netns_over_and_names_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let pod = PodRef {
            namespace: "bench".into(),
            name: "client".into(),
            uid: "Kubernetes//Pod/bench/client".into(),
            service_account: "client".into(),
        };
        let netns = NetNs::open("/proc/self/ns/net").unwrap();
        // (ztunnel's answer to the add, error containing; "" = served)
        let cases = [
            ("", ""),
            (
                "no such netns",
                "ztunnel refused AddWorkload: no such netns",
            ),
        ];
        for (i, (answer, want_err)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("zds-{i}.sock"));
            let mut server = ZdsServer::bind(&path).unwrap();
            let peer_path = path.clone();
            let peer = std::thread::spawn(move || fake_ztunnel(&peer_path, answer));
            let got = server.serve(&pod, &netns);
            drop(server);
            let seen = peer.join().unwrap();
            assert_eq!(
                (seen.uid.as_str(), seen.service_account.as_str(), seen.fds),
                ("Kubernetes//Pod/bench/client", "client", 1),
                "{answer:?}"
            );
            match got {
                Ok(()) => {
                    assert_eq!(want_err, "", "{answer:?}");
                    assert!(seen.snapshot_sent, "no SnapshotSent after the add");
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(!want_err.is_empty() && e.contains(want_err), "{e}");
                    assert!(!seen.snapshot_sent, "a snapshot after a refusal");
                }
            }
        }
    }
}
