//! The ZDS server: the node proxy connects here (as ztunnel connects to
//! Istio's CNI agent), gets a snapshot of every enrolled pod, then each new
//! pod and each removal, and acknowledges every one.
//!
//! One task owns the connection, so requests never interleave on it: the
//! plugin handler asks it for work through a channel. A newer connection
//! replaces an older one (a node proxy being replaced during an upgrade).
//!
//! Capture rules: the agent installs them in the pod's netns after the node
//! proxy's Ack, when its listeners are there to receive what the rules
//! redirect; they stay when the node proxy restarts, so a pod never talks
//! uncaptured while its proxy is away (README, CNI section, says why).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use trellis_netns::redirect::{self, RedirectConfig};
use trellis_netns::seqpacket::{SeqpacketConn, SeqpacketListener};
use trellis_netns::NetNs;

use super::protocol::{self, Answer, PacketMeta, ProtocolError};
use super::registry::{Capture, Registry, SnapshotItem};
use crate::wire::PodRef;

/// Work for the connection's task.
pub enum Op {
    /// A pod was inserted in the registry: send it if a proxy is connected.
    Add { uid: String },
    /// A pod is gone: tell the proxy, then remove the rules.
    Del {
        uid: String,
        /// The pod's netns, when still known, to remove the rules from.
        netns: Option<Arc<NetNs>>,
        done: oneshot::Sender<()>,
    },
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("node proxy connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node proxy closed the connection")]
    Closed,
    #[error("the node proxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

pub struct ZdsServer {
    pub listener: SeqpacketListener,
    pub registry: Arc<Registry>,
    /// True while a node proxy is connected (past its snapshot).
    pub connected: watch::Sender<bool>,
    /// How long one request may wait for its Ack before the connection is
    /// given up as broken.
    pub ack_timeout: Duration,
}

impl ZdsServer {
    pub async fn run(self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut conn: Option<SeqpacketConn> = None;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(c) => {
                        // The new proxy replaces the old: drop it before the
                        // snapshot, so only one proxy serves each pod.
                        conn = None;
                        self.connected.send_replace(false);
                        match self.handshake(&c).await {
                            Ok(n) => {
                                info!(pods = n, "node proxy connected; snapshot sent");
                                conn = Some(c);
                                self.connected.send_replace(true);
                            }
                            Err(e) => warn!(error = %e, "node proxy connection dropped during its snapshot"),
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot accept a node proxy connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    if let Err(e) = self.apply(conn.as_ref(), op).await {
                        warn!(error = %e, "node proxy connection dropped; pods wait for the next one");
                        conn = None;
                        self.connected.send_replace(false);
                    }
                }
                closed = idle(conn.as_ref()) => {
                    match closed {
                        Ok(None) => info!("node proxy disconnected"),
                        Ok(Some(_)) => warn!("node proxy sent a message nobody asked for; dropping the connection"),
                        Err(e) => warn!(error = %e, "node proxy connection failed"),
                    }
                    conn = None;
                    self.connected.send_replace(false);
                }
            }
        }
    }

    /// Hello, every pod, SnapshotSent. Returns the number of pods sent.
    async fn handshake(&self, c: &SeqpacketConn) -> Result<usize, ExchangeError> {
        let hello = self.recv(c).await?;
        protocol::parse_hello(&hello.0, hello.1)?;
        let items = self.registry.snapshot();
        for item in &items {
            self.add(c, item).await?;
        }
        match self.exchange(c, &protocol::snapshot_sent(), None).await? {
            Answer::Ack => Ok(items.len()),
            Answer::Nack(e) => {
                warn!(error = %e, "node proxy refused SnapshotSent");
                Ok(items.len())
            }
        }
    }

    async fn apply(&self, c: Option<&SeqpacketConn>, op: Op) -> Result<(), ExchangeError> {
        match op {
            Op::Add { uid } => {
                let (Some(c), Some(item)) = (c, self.registry.get(&uid)) else {
                    // No proxy: the pod waits in the registry for the next snapshot.
                    return Ok(());
                };
                self.add(c, &item).await
            }
            Op::Del { uid, netns, done } => {
                let result = match c {
                    Some(c) => self.exchange(c, &protocol::del(&uid), None).await.map(|a| {
                        if let Answer::Nack(e) = a {
                            // A proxy that never had the pod says so; it is released all the same.
                            info!(pod = %uid, answer = %e, "node proxy answered DelWorkload with an error");
                        }
                    }),
                    None => Ok(()),
                };
                // Rules go after the proxy has let go, so no packet is ever
                // redirected to a port nobody serves while the pod lives.
                if let Some(ns) = netns {
                    remove_rules(uid.clone(), ns).await;
                }
                info!(pod = %uid, "pod released");
                let _ = done.send(());
                result
            }
        }
    }

    /// Sends one pod with its netns fd and records the answer; installs the
    /// rules once the proxy serves it.
    async fn add(&self, c: &SeqpacketConn, item: &SnapshotItem) -> Result<(), ExchangeError> {
        let uid = item.pod.uid.clone();
        let answer = self
            .exchange(c, &protocol::add(&item.pod), Some(item.netns.as_ref()))
            .await?;
        let state = match answer {
            Answer::Nack(e) => {
                warn!(pod = %uid, error = %e, "node proxy refused the pod");
                Capture::Refused(e)
            }
            Answer::Ack if self.registry.needs_rules(&uid) => {
                match install_rules(&item.pod, item.netns.clone()).await {
                    Ok(()) => {
                        self.registry.set_rules_installed(&uid);
                        Capture::Captured
                    }
                    Err(e) => Capture::RulesFailed(e),
                }
            }
            Answer::Ack => Capture::Captured,
        };
        if state == Capture::Captured {
            info!(pod = %uid, namespace = %item.pod.namespace, name = %item.pod.name, "pod captured");
        }
        self.registry.set_state(&uid, &item.netns, state);
        Ok(())
    }

    async fn exchange(
        &self,
        c: &SeqpacketConn,
        msg: &[u8],
        fd: Option<&NetNs>,
    ) -> Result<Answer, ExchangeError> {
        c.send(msg, fd.map(|n| n.as_fd())).await?;
        let (data, meta) = self.recv(c).await?;
        Ok(protocol::parse_answer(&data, meta)?)
    }

    async fn recv(&self, c: &SeqpacketConn) -> Result<(Vec<u8>, PacketMeta), ExchangeError> {
        let p = tokio::time::timeout(self.ack_timeout, c.recv(protocol::MAX_PACKET))
            .await
            .map_err(|_| ExchangeError::Timeout(self.ack_timeout))??
            .ok_or(ExchangeError::Closed)?;
        let meta = PacketMeta {
            fds: p.fds.len(),
            truncated: p.truncated || p.fds_truncated,
        };
        // Any fds the proxy sent are closed here, with the packet.
        Ok((p.data, meta))
    }
}

/// Resolves when an idle connection has something to say (only EOF is
/// expected); never, without a connection.
async fn idle(c: Option<&SeqpacketConn>) -> std::io::Result<Option<()>> {
    match c {
        Some(c) => c.recv(protocol::MAX_PACKET).await.map(|p| p.map(drop)),
        None => std::future::pending().await,
    }
}

async fn install_rules(pod: &PodRef, ns: Arc<NetNs>) -> Result<(), String> {
    let who = format!("{}/{}", pod.namespace, pod.name);
    let res =
        tokio::task::spawn_blocking(move || redirect::install(&ns, &RedirectConfig::default()))
            .await
            .map_err(|e| format!("rule installer task failed: {e}"))?;
    res.map_err(|e| {
        warn!(pod = %who, error = %e, "cannot install capture rules");
        format!("cannot install capture rules for pod {who}: {e}")
    })
}

async fn remove_rules(uid: String, ns: Arc<NetNs>) {
    let res = tokio::task::spawn_blocking(move || redirect::remove(&ns)).await;
    if let Ok(Err(e)) = res {
        // The netns usually goes with the pod; nothing left to clean then.
        info!(pod = %uid, error = %e, "capture rules not removed");
    }
}
