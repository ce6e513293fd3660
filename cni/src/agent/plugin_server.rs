//! Serves the plugin: one JSON request per connection, answered when the
//! node proxy has confirmed (or the request's timeout passed).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use trellis_netns::NetNs;

use super::admin::AgentMetrics;
use super::enroll::{self, Decision, EnrollPolicy, PodFacts};
use super::kube::KubeFacts;
use super::registry::{self, Capture, Inserted, NewPod, Registry, Removed};
use super::relabel::{Sandbox, Sandboxes};
use super::zds_server::Op;
use crate::wire::{Failure, PluginCommand, PluginReply, PluginRequest, MAX_MESSAGE};

/// How long a plugin may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest capture wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long DEL waits for the node proxy to let go of the pod.
const DEL_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Handler {
    pub policy: Arc<EnrollPolicy>,
    /// Kubernetes mode: where labels and service accounts are read.
    pub kube: Option<KubeFacts>,
    pub metrics: Arc<AgentMetrics>,
    /// Kubernetes mode: every sandbox added on this node, enrolled or not,
    /// so a namespace labelled later can enroll its running pods.
    pub sandboxes: Arc<Sandboxes>,
    pub registry: Arc<Registry>,
    pub ops: mpsc::UnboundedSender<Op>,
    pub connected: watch::Receiver<bool>,
}

pub async fn serve(listener: UnixListener, handler: Handler) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handler.clone();
                tokio::spawn(async move { h.connection(stream).await });
            }
            Err(e) => {
                warn!(error = %e, "cannot accept a plugin connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn failed(failure: Failure, message: impl Into<String>) -> PluginReply {
    PluginReply::Failed {
        failure,
        message: message.into(),
    }
}

impl Handler {
    async fn connection(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read.take(MAX_MESSAGE as u64));
        let mut line = String::new();
        let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => failed(Failure::BadRequest, "no request within 5s"),
            Ok(Err(e)) => failed(Failure::BadRequest, format!("cannot read the request: {e}")),
            Ok(Ok(_)) => match serde_json::from_str::<PluginRequest>(&line) {
                Ok(req) => self.handle(req).await,
                Err(e) => failed(
                    Failure::BadRequest,
                    format!("the request is not a plugin request: {e}; plugin and agent versions may differ"),
                ),
            },
        };
        if let PluginReply::Failed { message, .. } = &reply {
            warn!(error = %message, "plugin request failed");
        }
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        let _ = write.write_all(&out).await;
    }

    pub async fn handle(&self, req: PluginRequest) -> PluginReply {
        match req.command {
            PluginCommand::Add => {
                let reply = self.add(req).await;
                let m = &self.metrics;
                let counter = match reply {
                    PluginReply::Captured => &m.add_captured,
                    PluginReply::NotEnrolled { .. } => &m.add_not_enrolled,
                    _ => &m.add_failed,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reply
            }
            PluginCommand::Del => {
                self.metrics
                    .del
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(pod) = &req.pod {
                    self.sandboxes.forget(&pod.uid, &req.container_id);
                }
                self.release(req).await
            }
            PluginCommand::Check => self.check(req).await,
        }
    }

    /// What the API server says of the pod, in Kubernetes mode; none for
    /// sandboxes that are not pods or are in a system namespace (no API
    /// call for what the flags-free rules already skip).
    async fn facts(
        &self,
        pod: Option<&crate::wire::PodRef>,
        budget: Duration,
    ) -> Result<Option<PodFacts>, PluginReply> {
        let (Some(kube), Some(pod)) = (&self.kube, pod) else {
            return Ok(None);
        };
        if enroll::SYSTEM_NAMESPACES.contains(&pod.namespace.as_str()) {
            return Ok(None);
        }
        match tokio::time::timeout(budget, kube.facts(pod)).await {
            Ok(Ok(f)) => Ok(Some(f)),
            Ok(Err(e)) => Err(failed(Failure::Api, e.to_string())),
            Err(_) => Err(failed(
                Failure::Api,
                format!(
                    "the API server did not answer for pod {}/{} within {budget:?}",
                    pod.namespace, pod.name
                ),
            )),
        }
    }

    /// Whether the pod belongs in the mesh now, read fresh; None when the
    /// API server cannot say.
    pub async fn wants(&self, pod: &crate::wire::PodRef) -> Option<bool> {
        let facts = self.facts(Some(pod), MAX_WAIT).await.ok()?;
        Some(enroll::decide(&self.policy, Some(pod), facts.as_ref()) == Decision::Enroll)
    }

    async fn add(&self, req: PluginRequest) -> PluginReply {
        let started = tokio::time::Instant::now();
        if let (Some(_), Some(pod), Some(netns)) = (&self.kube, &req.pod, &req.netns) {
            self.sandboxes.remember(Sandbox {
                pod: pod.clone(),
                netns: netns.into(),
                container_id: req.container_id.clone(),
            });
        }
        let wait = Duration::from_millis(req.timeout_ms).min(MAX_WAIT);
        let facts = match self.facts(req.pod.as_ref(), wait).await {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        let mut pod = match enroll::decide(&self.policy, req.pod.as_ref(), facts.as_ref()) {
            Decision::Skip(reason) => {
                info!(container = %req.container_id, reason = %reason, "pod not enrolled");
                return PluginReply::NotEnrolled {
                    reason: reason.to_string(),
                };
            }
            Decision::Enroll => match req.pod {
                Some(p) => p,
                None => return failed(Failure::BadRequest, "no pod"),
            },
        };
        if let Some(f) = facts {
            pod.service_account = f.service_account;
        }
        let Some(path) = req.netns.as_deref() else {
            return failed(Failure::BadRequest, "ADD without CNI_NETNS");
        };
        let ns = match NetNs::open(path) {
            Ok(ns) => ns,
            Err(e) => {
                return failed(
                    Failure::Agent,
                    format!("pod {}/{}: {e}", pod.namespace, pod.name),
                )
            }
        };
        let id = match registry::netns_id(&ns) {
            Ok(id) => id,
            Err(e) => return failed(Failure::Agent, format!("cannot stat netns {path}: {e}")),
        };
        let uid = pod.uid.clone();
        let who = format!("{}/{}", pod.namespace, pod.name);
        let new = NewPod {
            pod,
            netns: ns,
            netns_path: path.into(),
            netns_id: id,
            container_id: req.container_id.clone(),
        };
        let mut state = match self.registry.insert(new) {
            Inserted::New(rx) => {
                info!(pod = %who, uid = %uid, netns = %path, "pod enrolled; waiting for the node proxy");
                let _ = self.ops.send(Op::Add { uid: uid.clone() });
                rx
            }
            Inserted::Existing(rx) => {
                // A pod refused before is tried again: the proxy may have
                // its config by now.
                if self.registry.retry(&uid) {
                    let _ = self.ops.send(Op::Add { uid: uid.clone() });
                }
                rx
            }
        };
        // The API reads came out of the same budget.
        let wait = wait.saturating_sub(started.elapsed());
        let settled = tokio::time::timeout(wait, state.wait_for(|s| *s != Capture::Pending)).await;
        match settled {
            Ok(Ok(s)) => match s.clone() {
                Capture::Captured => PluginReply::Captured,
                Capture::Refused(e) => failed(Failure::Refused, format!("pod {who}: {e}")),
                Capture::RulesFailed(e) => failed(Failure::Agent, e),
                Capture::Pending => failed(Failure::Timeout, "still pending"),
            },
            Ok(Err(_)) => failed(
                Failure::Agent,
                format!("pod {who} was deleted while being added"),
            ),
            Err(_) if *self.connected.borrow() => failed(
                Failure::Timeout,
                format!("the node proxy did not confirm pod {who} within {wait:?}"),
            ),
            Err(_) => failed(
                Failure::NoProxy,
                format!("no node proxy connected to the agent confirmed pod {who} within {wait:?}"),
            ),
        }
    }

    /// DEL's work: the node proxy lets go of the pod and its rules go. The
    /// sandbox stays known (a relabel releases a pod that still runs).
    pub async fn release(&self, req: PluginRequest) -> PluginReply {
        let Some(pod) = req.pod else {
            return PluginReply::Released;
        };
        let known = match self.registry.remove(&pod.uid, &req.container_id) {
            Removed::Removed(e) => Some(e.netns),
            Removed::OtherSandbox(current) => {
                // A late DEL of the pod's previous sandbox: the pod lives on
                // in its new one, which keeps being served.
                info!(pod = %pod.uid, deleted = %req.container_id, current = %current, "DEL for a previous sandbox; the current one stays enrolled");
                return PluginReply::Released;
            }
            Removed::Unknown => None,
        };
        // An agent restarted since ADD no longer holds the netns; the path,
        // while it exists, still lets it remove the rules.
        let netns = known.or_else(|| {
            req.netns
                .as_deref()
                .and_then(|p| NetNs::open(p).ok())
                .map(Arc::new)
        });
        let (done, wait) = oneshot::channel();
        let _ = self.ops.send(Op::Del {
            uid: pod.uid.clone(),
            netns,
            done,
        });
        if tokio::time::timeout(DEL_WAIT, wait).await.is_err() {
            warn!(pod = %pod.uid, "release not confirmed in time; the node proxy drops the pod at its next snapshot");
        }
        PluginReply::Released
    }

    async fn check(&self, req: PluginRequest) -> PluginReply {
        let wait = Duration::from_millis(req.timeout_ms).min(MAX_WAIT);
        let facts = match self.facts(req.pod.as_ref(), wait).await {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        if let Decision::Skip(reason) =
            enroll::decide(&self.policy, req.pod.as_ref(), facts.as_ref())
        {
            return PluginReply::NotEnrolled {
                reason: reason.to_string(),
            };
        }
        let uid = req.pod.map(|p| p.uid).unwrap_or_default();
        match self.registry.state(&uid) {
            Some(Capture::Captured) => PluginReply::Captured,
            Some(Capture::Pending) => failed(
                Failure::NoProxy,
                format!("pod {uid} is not confirmed by a node proxy yet"),
            ),
            Some(Capture::Refused(e)) => failed(Failure::Refused, e),
            Some(Capture::RulesFailed(e)) => failed(Failure::Agent, e),
            None => PluginReply::Released,
        }
    }
}
