//! Kubernetes mode: a bearer token is a service-account token, checked by
//! the API server with a TokenReview (authentication.k8s.io/v1).
//!
//! Mapping ([`decide`]):
//! - not authenticated → refused, with the API server's reason;
//! - not a service account → refused;
//! - one of the node proxy's service accounts (by default
//!   `istio-system/ztunnel` and `trellis-system/trellis-node-proxy`) →
//!   [`Caller::NodeProxy`] for the node of the pod the token is bound to:
//!   the token's `authentication.kubernetes.io/node-name` claim, else that
//!   pod's `spec.nodeName` (read from the API server). A node proxy token
//!   not bound to a pod is refused: nothing would say which node it serves;
//! - any other service account → [`Caller::Waypoint`] with
//!   `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`: a waypoint, or a VM's
//!   dedicated node proxy, whose token (`kubectl create token <sa>
//!   --audience istio-ca`, as Istio bootstraps VMs) is bound to no pod.
//!
//! Audiences: a token is reviewed first for the configured audiences
//! (Istio's `istio-ca` by default: the projected token of ztunnel and of
//! Istio's proxies is for it, and the API server refuses it for its own
//! audience), then, if refused and [`TokenReviewConfig::api_audience`] is
//! set, for the API server's own audience (a plain service-account token,
//! as `kubectl create token` gives). See [`review_plan`].
//!
//! Accepted tokens are cached for [`TokenReviewConfig::cache_ttl`], so a
//! proxy's reconnects and certificate renewals do not each cost a review.
//! Refusals are not cached: a token refused because its pod was not yet
//! scheduled must work once it is. Instead, at most
//! [`TokenReviewConfig::max_in_flight`] reviews run at once: a flood of
//! unknown tokens (a misconfigured fleet, or an attacker on port 15012)
//! is answered "unavailable, retry" at once rather than passed on to the
//! API server, and known callers, answered from the cache, never wait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{AuthError, Authenticator, Caller};
use crate::kube::{Client, ClientError};

const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

/// The audience of the token Istio mounts for ztunnel and its proxies
/// (`istio-token`), which istiod reviews tokens for.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";

#[derive(Clone, Debug)]
pub struct TokenReviewConfig {
    pub trust_domain: String,
    /// `(namespace, name)` of the service accounts node proxies run as.
    pub node_proxy_accounts: Vec<(String, String)>,
    /// Audiences the token may be for, reviewed together; default Istio's
    /// `istio-ca`.
    pub audiences: Vec<String>,
    /// Also accept a token for the API server's own audience (a second
    /// review, only when the first refuses).
    pub api_audience: bool,
    pub cache_ttl: Duration,
    /// Most tokens cached at once.
    pub cache_size: usize,
    /// Most TokenReviews (and pod lookups) running at once.
    pub max_in_flight: usize,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        TokenReviewConfig {
            trust_domain: "cluster.local".into(),
            node_proxy_accounts: vec![
                ("istio-system".into(), "ztunnel".into()),
                ("trellis-system".into(), "trellis-node-proxy".into()),
            ],
            audiences: vec![ISTIO_CA_AUDIENCE.into()],
            api_audience: true,
            cache_ttl: Duration::from_secs(60),
            cache_size: 4096,
            max_in_flight: 32,
        }
    }
}

/// What a TokenReview's status means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Caller(Caller),
    /// A node proxy whose token names its pod but not the node: read the pod.
    LookupPod {
        namespace: String,
        name: String,
        uid: Option<String>,
    },
    Refuse(AuthError),
}

/// The audience sets to review a token for, in turn, until one accepts it:
/// the configured audiences, then (`None`: a review naming no audience) the
/// API server's own.
pub(crate) fn review_plan(cfg: &TokenReviewConfig) -> Vec<Option<&[String]>> {
    let mut plan = Vec::with_capacity(2);
    if !cfg.audiences.is_empty() {
        plan.push(Some(cfg.audiences.as_slice()));
    }
    if cfg.api_audience || cfg.audiences.is_empty() {
        plan.push(None);
    }
    plan
}

/// Whether a TokenReview status accepted the token.
fn authenticated(status: &Value) -> bool {
    status.get("authenticated").and_then(Value::as_bool) == Some(true)
}

/// Why the API server refused a token, in its words.
fn review_error(status: &Value) -> &str {
    status
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .unwrap_or("the API server did not authenticate it")
}

/// One refusal for every review of a token that was refused, naming the
/// audiences of each, so the operator sees which audience the token lacks.
pub(crate) fn refused(attempts: &[(Option<&[String]>, String)]) -> AuthError {
    let parts: Vec<String> = attempts
        .iter()
        .map(|(aud, why)| match aud {
            Some(a) => format!("for audience {}: {why}", a.join(", ")),
            None => format!("for the API server's audience: {why}"),
        })
        .collect();
    AuthError::Invalid(parts.join("; "))
}

fn first_extra<'a>(user: &'a Value, key: &str) -> Option<&'a str> {
    user.get("extra")?
        .get(key)?
        .as_array()?
        .first()?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The TokenReview `status` → who the caller is.
pub(crate) fn decide(status: &Value, cfg: &TokenReviewConfig) -> Decision {
    if !authenticated(status) {
        return Decision::Refuse(AuthError::Invalid(review_error(status).to_string()));
    }
    let user = status.get("user").unwrap_or(&Value::Null);
    let username = user.get("username").and_then(Value::as_str).unwrap_or("");
    let Some((ns, sa)) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Decision::Refuse(AuthError::Invalid(format!(
            "user {username:?} is not a service account; proxies authenticate with their service account token"
        )));
    };
    let is_node_proxy = cfg
        .node_proxy_accounts
        .iter()
        .any(|(n, s)| n == ns && s == sa);
    if !is_node_proxy {
        return Decision::Caller(Caller::Waypoint {
            spiffe_id: format!("spiffe://{}/ns/{ns}/sa/{sa}", cfg.trust_domain),
        });
    }
    if let Some(node) = first_extra(user, NODE_NAME) {
        return Decision::Caller(Caller::NodeProxy {
            node: node.to_string(),
        });
    }
    match first_extra(user, POD_NAME) {
        Some(pod) => Decision::LookupPod {
            namespace: ns.to_string(),
            name: pod.to_string(),
            uid: first_extra(user, POD_UID).map(str::to_string),
        },
        None => Decision::Refuse(AuthError::Invalid(format!(
            "service account {ns}/{sa} is a node proxy's, but the token is not bound to a pod, so its node is unknown; use the pod's projected service account token"
        ))),
    }
}

/// The node of the bound pod, from the pod object.
pub(crate) fn node_of_pod(pod: &Value, want_uid: Option<&str>) -> Result<String, AuthError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    if let Some(want) = want_uid {
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str);
        if uid != Some(want) {
            return Err(AuthError::Invalid(format!(
                "the token's pod {name} was replaced by another pod of the same name"
            )));
        }
    }
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            AuthError::Invalid(format!(
                "the token's pod {name} is not scheduled to a node yet"
            ))
        })
}

/// Accepted tokens, bounded and short-lived.
struct Cache {
    entries: HashMap<String, (Caller, Instant)>,
}

impl Cache {
    fn get(&mut self, token: &str, now: Instant) -> Option<Caller> {
        match self.entries.get(token) {
            Some((c, until)) if *until > now => Some(c.clone()),
            Some(_) => {
                self.entries.remove(token);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, token: &str, caller: Caller, until: Instant, now: Instant, max: usize) {
        if max == 0 {
            return;
        }
        if self.entries.len() >= max {
            self.entries.retain(|_, (_, u)| *u > now);
        }
        if self.entries.len() >= max {
            // Still full of live entries: start over rather than track
            // ages; the cost is one review per active token.
            self.entries.clear();
        }
        self.entries.insert(token.to_string(), (caller, until));
    }
}

/// Authenticates bearer tokens with the API server's TokenReview.
pub struct TokenReview {
    client: Client,
    cfg: TokenReviewConfig,
    cache: Mutex<Cache>,
    in_flight: tokio::sync::Semaphore,
}

impl TokenReview {
    pub fn new(client: Client, cfg: TokenReviewConfig) -> Self {
        TokenReview {
            client,
            in_flight: tokio::sync::Semaphore::new(cfg.max_in_flight.max(1)),
            cfg,
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
            }),
        }
    }

    fn cached(&self, token: &str) -> Option<Caller> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token, Instant::now())
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some(c) = self.cached(token) {
            return Ok(c);
        }
        let _permit = self.admit()?;
        let mut refusals = Vec::new();
        let mut accepted = None;
        for audiences in review_plan(&self.cfg) {
            let status = self.post_review(token, audiences).await?;
            if authenticated(&status) {
                accepted = Some(status);
                break;
            }
            refusals.push((audiences, review_error(&status).to_string()));
        }
        let Some(status) = accepted else {
            return Err(refused(&refusals));
        };
        let caller = match decide(&status, &self.cfg) {
            Decision::Caller(c) => c,
            Decision::Refuse(e) => return Err(e),
            Decision::LookupPod {
                namespace,
                name,
                uid,
            } => {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
                let pod = match self.client.get(&path).await {
                    Ok(p) => p,
                    Err(e) if e.status() == Some(404) => {
                        return Err(AuthError::Invalid(format!(
                            "the token's pod {namespace}/{name} no longer exists"
                        )))
                    }
                    Err(e) => return Err(unavailable(e)),
                };
                Caller::NodeProxy {
                    node: node_of_pod(&pod, uid.as_deref())?,
                }
            }
        };
        let now = Instant::now();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(
            token,
            caller.clone(),
            now + self.cfg.cache_ttl,
            now,
            self.cfg.cache_size,
        );
        Ok(caller)
    }
}

impl TokenReview {
    /// One TokenReview of `token` for `audiences` (`None`: the API
    /// server's own); its `status`.
    async fn post_review(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Value, AuthError> {
        let mut spec = json!({ "token": token });
        if let Some(a) = audiences {
            spec["audiences"] = json!(a);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let mut answer = self
            .client
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &body)
            .await
            .map_err(unavailable)?;
        Ok(answer
            .get_mut("status")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// A slot for one review, or "unavailable" when all are taken.
    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AuthError> {
        self.in_flight.try_acquire().map_err(|_| {
            AuthError::Unavailable(format!(
                "{} token reviews are already in flight; retry shortly",
                self.cfg.max_in_flight
            ))
        })
    }
}

fn unavailable(e: ClientError) -> AuthError {
    AuthError::Unavailable(format!("TokenReview with the API server failed: {e}"))
}

impl Authenticator for TokenReview {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        Box::pin(self.review(token))
    }
}

#[cfg(test)]
mod tests;
