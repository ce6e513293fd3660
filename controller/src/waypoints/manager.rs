//! The waypoint manager's I/O: it receives the [`Plans`] after each change
//! of the controller's store, applies what changed, writes Gateway
//! status, and deletes left-over objects. Every failure is logged with the
//! object and the API server's message, counted, and retried after the
//! shared [`Backoff`]; none stops the controller.
//!
//! A pass:
//! 1. per Gateway whose objects differ from what was last applied: read
//!    each object first and stop at one the controller did not make (so a
//!    Gateway never takes over someone's Deployment), then server-side
//!    apply them all;
//! 2. write the Gateway's status when it says something else;
//! 3. after a Gateway left the plans (and at start, and every resync):
//!    list what the controller made and delete what no plan wants, once a
//!    fresh read of the Gateway confirms it is gone or not a waypoint.
//!
//! Every `resync` the pass re-applies everything, which puts back an object
//! changed or deleted by hand (the manager does not watch its objects).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::desired::{GatewayRef, Managed, ManagedKind, Plan, Plans};
use super::metrics::WaypointMetrics;
use super::status::{self, Outcome};
use super::sweep::{leftovers, made_by_us, ours_for, verdict, Made, Verdict};
use super::{FIELD_MANAGER, GATEWAY_API_VERSION, MANAGED_BY};
use crate::kube::{Backoff, Client, ClientError};

/// `app.kubernetes.io/managed-by=trellis-controller`, query-encoded.
const SELECTOR: &str = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dtrellis-controller";

#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("{kind} {namespace}/{name} already exists and was not made by trellis-controller for Gateway {gateway} (it lacks the {MANAGED_BY}={FIELD_MANAGER} label or an ownerReference to the Gateway); nothing was applied for this Gateway: delete or rename that {kind}, or rename the Gateway")]
    Conflict {
        kind: ManagedKind,
        namespace: String,
        name: String,
        gateway: GatewayRef,
    },
    #[error("reading {kind} {namespace}/{name} before applying it failed: {source}")]
    Read {
        kind: ManagedKind,
        namespace: String,
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("applying {kind} {namespace}/{name} failed: {source}")]
    Apply {
        kind: ManagedKind,
        namespace: String,
        name: String,
        #[source]
        source: ClientError,
    },
}

/// Tuning; the defaults suit a cluster, tests shorten them.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// Re-apply everything and look for left-overs at least this often.
    pub resync: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Istio's `istio-waypoint` class is a waypoint class too.
    pub istio_labels: bool,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            resync: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            istio_labels: false,
        }
    }
}

/// What was last done for one Gateway.
struct Done {
    /// The uid and objects last applied in full (None: not yet, or failed).
    applied: Option<(String, Vec<Managed>)>,
    outcome: Outcome,
    /// The Gateway generation and status the last status decision was
    /// made from.
    status_seen: Option<(i64, Value)>,
}

pub struct Manager {
    client: Client,
    opts: ManagerOptions,
    metrics: Arc<WaypointMetrics>,
    done: BTreeMap<GatewayRef, Done>,
}

impl Manager {
    pub fn new(client: Client, opts: ManagerOptions, metrics: Arc<WaypointMetrics>) -> Manager {
        Manager {
            client,
            opts,
            metrics,
            done: BTreeMap::new(),
        }
    }

    /// Runs until `plans` has no sender left (or the future is dropped).
    pub async fn run(mut self, mut plans: watch::Receiver<Arc<Plans>>) {
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let mut resync_at = Instant::now() + self.opts.resync;
        let mut sweep = true;
        let mut seen: BTreeSet<GatewayRef> = BTreeSet::new();
        loop {
            let current = plans.borrow_and_update().clone();
            if Instant::now() >= resync_at {
                self.done.clear();
                sweep = true;
                resync_at = Instant::now() + self.opts.resync;
            }
            if seen.iter().any(|g| !current.contains_key(g)) {
                sweep = true;
            }
            seen = current.keys().cloned().collect();
            self.done.retain(|g, _| current.contains_key(g));

            let mut ok = true;
            for plan in current.values() {
                ok &= self.reconcile(plan).await;
            }
            if sweep {
                match self.sweep(&current).await {
                    true => sweep = false,
                    false => ok = false,
                }
            }
            let programmed = self
                .done
                .values()
                .filter(|d| d.outcome.programmed())
                .count();
            self.metrics
                .programmed
                .store(programmed as u64, Ordering::Relaxed);

            let wait = if ok {
                backoff.reset();
                resync_at.saturating_duration_since(Instant::now())
            } else {
                backoff.next_delay()
            };
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Applies one Gateway's objects if needed and writes its status;
    /// false when something is left to retry.
    async fn reconcile(&mut self, plan: &Plan) -> bool {
        let gw = &plan.gateway;
        let prev = self.done.remove(gw);
        let (outcome, applied) = match &plan.objects {
            Err(refusal) => (Outcome::Refused(refusal.clone()), None),
            Ok(objects) => match prev.as_ref().and_then(|d| Some((d.applied.as_ref()?, d))) {
                Some(((uid, last), d)) if *uid == plan.uid && last == objects => {
                    (d.outcome.clone(), d.applied.clone())
                }
                _ => match self.apply_all(plan, objects).await {
                    Ok(cluster_ip) => {
                        info!(gateway = %gw, cluster_ip = cluster_ip.as_deref().unwrap_or(""), "waypoint objects applied");
                        // Without an address it is applied again on the retry.
                        let applied = cluster_ip
                            .is_some()
                            .then(|| (plan.uid.clone(), objects.clone()));
                        (Outcome::Programmed { cluster_ip }, applied)
                    }
                    Err(e) => {
                        warn!(gateway = %gw, error = %e, "waypoint not applied; retrying");
                        WaypointMetrics::add(&self.metrics.apply_errors);
                        let outcome = match e {
                            WaypointError::Conflict { .. } => Outcome::Conflict(e.to_string()),
                            _ => Outcome::Failed(e.to_string()),
                        };
                        (outcome, None)
                    }
                },
            },
        };
        if let Outcome::Refused(r) = &outcome {
            if prev.as_ref().map(|d| &d.outcome) != Some(&outcome) {
                warn!(gateway = %gw, reason = r.reason, message = %r.message, "waypoint Gateway not accepted; what runs for it is left as it is");
            }
        }
        // The status was decided from this same input last time: the write
        // (if one was needed) is done, even if the store has not caught up.
        let seen = (plan.generation, plan.status.clone());
        let decided = prev
            .as_ref()
            .is_some_and(|d| d.outcome == outcome && d.status_seen.as_ref() == Some(&seen));
        let status_ok = decided || self.write_status(plan, &outcome).await;
        let ok = status_ok
            && matches!(
                outcome,
                Outcome::Refused(_)
                    | Outcome::Programmed {
                        cluster_ip: Some(_)
                    }
            );
        self.done.insert(
            gw.clone(),
            Done {
                // A failed status write is retried: forget what it was decided from.
                status_seen: status_ok.then_some(seen),
                applied,
                outcome,
            },
        );
        ok
    }

    /// Reads every object first (nothing is applied when one is someone
    /// else's), then applies them in order; the Service's ClusterIP.
    async fn apply_all(
        &self,
        plan: &Plan,
        objects: &[Managed],
    ) -> Result<Option<String>, WaypointError> {
        let gw = &plan.gateway;
        for m in objects {
            match self.client.get(&m.kind.path(&gw.namespace, &m.name)).await {
                Ok(existing) if !ours_for(m.kind, &existing, gw) => {
                    return Err(WaypointError::Conflict {
                        kind: m.kind,
                        namespace: gw.namespace.clone(),
                        name: m.name.clone(),
                        gateway: gw.clone(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(source) => {
                    return Err(WaypointError::Read {
                        kind: m.kind,
                        namespace: gw.namespace.clone(),
                        name: m.name.clone(),
                        source,
                    })
                }
            }
        }
        let mut cluster_ip = None;
        for m in objects {
            let path = m.kind.path(&gw.namespace, &m.name);
            let answer = self
                .client
                .apply(&path, FIELD_MANAGER, &m.body)
                .await
                .map_err(|source| WaypointError::Apply {
                    kind: m.kind,
                    namespace: gw.namespace.clone(),
                    name: m.name.clone(),
                    source,
                })?;
            WaypointMetrics::add(&self.metrics.applies);
            if m.kind == ManagedKind::Service {
                cluster_ip = answer
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .filter(|ip| !ip.is_empty() && *ip != "None")
                    .map(str::to_string);
            }
        }
        Ok(cluster_ip)
    }

    /// Writes the status the outcome calls for, if the Gateway does not
    /// already say it; false when the write failed.
    async fn write_status(&self, plan: &Plan, outcome: &Outcome) -> bool {
        let now = status::rfc3339(SystemTime::now());
        let Some(status) = status::desired(outcome, plan.generation, &plan.status, &now) else {
            return true;
        };
        self.apply_status(&plan.gateway, Some(status)).await
    }

    /// Server-side apply of the Gateway's status; `None` withdraws what the
    /// controller wrote (its field manager then owns no status field).
    async fn apply_status(&self, gw: &GatewayRef, status: Option<Value>) -> bool {
        let mut body = json!({
            "apiVersion": GATEWAY_API_VERSION,
            "kind": "Gateway",
            "metadata": {"name": gw.name, "namespace": gw.namespace},
        });
        if let Some(s) = status {
            body["status"] = s;
        }
        let path = format!(
            "/apis/{GATEWAY_API_VERSION}/namespaces/{}/gateways/{}/status",
            gw.namespace, gw.name
        );
        match self.client.apply(&path, FIELD_MANAGER, &body).await {
            Ok(_) => {
                WaypointMetrics::add(&self.metrics.status_writes);
                true
            }
            // Deleted meanwhile: the sweep deals with what it leaves.
            Err(e) if e.status() == Some(404) => true,
            Err(e) => {
                warn!(gateway = %gw, error = %e, "writing the Gateway's status failed; retrying");
                WaypointMetrics::add(&self.metrics.apply_errors);
                false
            }
        }
    }

    /// Lists what the controller made and deletes what no plan wants;
    /// false when something is left to retry.
    async fn sweep(&mut self, plans: &Plans) -> bool {
        let mut made: Vec<Made> = Vec::new();
        for kind in ManagedKind::ALL {
            let path = format!("{}?{SELECTOR}", kind.collection_path());
            match self.client.get(&path).await {
                Ok(list) => made.extend(
                    list.get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|item| made_by_us(kind, item)),
                ),
                Err(e) => {
                    warn!(kind = %kind, error = %e, "listing the waypoint objects the controller made failed; retrying");
                    WaypointMetrics::add(&self.metrics.apply_errors);
                    return false;
                }
            }
        }
        let mut ok = true;
        for (gw, objects) in leftovers(made, plans) {
            let path = format!(
                "/apis/{GATEWAY_API_VERSION}/namespaces/{}/gateways/{}",
                gw.namespace, gw.name
            );
            let read = self.client.get(&path).await;
            let v = verdict(
                read.as_ref().map_err(ClientError::status),
                self.opts.istio_labels,
            );
            match &v {
                Verdict::Keep(why) => {
                    info!(gateway = %gw, objects = objects.len(), reason = %why, "left-over waypoint objects kept");
                    if let Err(e) = read {
                        warn!(gateway = %gw, error = %e, "reading the Gateway failed");
                        WaypointMetrics::add(&self.metrics.apply_errors);
                        ok = false;
                    }
                    continue;
                }
                Verdict::Delete | Verdict::DeleteAndClearStatus => {}
            }
            for m in &objects {
                ok &= self.delete(&gw, m).await;
            }
            if v == Verdict::DeleteAndClearStatus {
                ok &= self.apply_status(&gw, None).await;
            }
        }
        ok
    }

    async fn delete(&self, gw: &GatewayRef, m: &Made) -> bool {
        let path = m.kind.path(&gw.namespace, &m.name);
        // Only the object that was listed: one recreated meanwhile under
        // the same name (by anyone) has another uid and is left alone.
        let options = json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": m.uid},
            "propagationPolicy": "Background",
        });
        match self.client.delete(&path, &options).await {
            Ok(_) => {
                info!(gateway = %gw, kind = %m.kind, name = %m.name, "left-over waypoint object deleted");
                WaypointMetrics::add(&self.metrics.deletes);
                true
            }
            Err(e) if matches!(e.status(), Some(404 | 409)) => true,
            Err(e) => {
                warn!(gateway = %gw, kind = %m.kind, name = %m.name, error = %e, "deleting a left-over waypoint object failed; retrying");
                WaypointMetrics::add(&self.metrics.apply_errors);
                false
            }
        }
    }
}
