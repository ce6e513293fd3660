//! Kubernetes mode: what the API server says of a pod at ADD. Read fresh
//! for every sandbox (two GETs) rather than from a watch cache: a pod
//! created right after `kubectl label namespace` must see the label, and a
//! node adds a few pods a second at most.

use serde_json::Value;
use trellis_kube::labels::Labels;
use trellis_kube::{Client, ClientError};

use super::enroll::PodFacts;
use crate::wire::PodRef;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read namespace {namespace} from the API server: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot read pod {namespace}/{name} from the API server: {source}")]
    Pod {
        namespace: String,
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("pod {namespace}/{name} has uid {api} in the API server but the runtime's sandbox is for uid {runtime}: the pod was deleted and made again; the runtime will retry with the new one")]
    UidMismatch {
        namespace: String,
        name: String,
        api: String,
        runtime: String,
    },
}

/// Reads pods and namespaces with the agent's service account.
#[derive(Clone, Debug)]
pub struct KubeFacts {
    pub client: Client,
}

impl KubeFacts {
    pub async fn facts(&self, pod: &PodRef) -> Result<PodFacts, KubeError> {
        let ns_path = format!("/api/v1/namespaces/{}", pod.namespace);
        let pod_path = format!("{ns_path}/pods/{}", pod.name);
        let (ns, p) = tokio::join!(self.client.get(&ns_path), self.client.get(&pod_path));
        let namespace_labels = match ns {
            Ok(v) => Some(labels_of(&v)),
            // A namespace being deleted, or a race: not labelled.
            Err(e) if e.status() == Some(404) => None,
            Err(source) => {
                return Err(KubeError::Namespace {
                    namespace: pod.namespace.clone(),
                    source,
                })
            }
        };
        let p = p.map_err(|source| KubeError::Pod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            source,
        })?;
        facts_of(pod, namespace_labels, &p)
    }
}

/// The pure part: a pod object read back, checked against the sandbox.
fn facts_of(
    pod: &PodRef,
    namespace_labels: Option<Labels>,
    object: &Value,
) -> Result<PodFacts, KubeError> {
    let api_uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    // PodRef.uid is the container id when the runtime passed no
    // K8S_POD_UID; only a real uid can be compared.
    if !api_uid.is_empty() && looks_like_uid(&pod.uid) && api_uid != pod.uid {
        return Err(KubeError::UidMismatch {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            api: api_uid.to_string(),
            runtime: pod.uid.clone(),
        });
    }
    let service_account = object
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    Ok(PodFacts {
        namespace_labels,
        pod_labels: labels_of(object),
        service_account,
    })
}

/// `metadata.labels` of an API object (non-string values dropped).
pub(crate) fn labels_of(object: &Value) -> Labels {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A Kubernetes uid: 36 characters, hyphens at 8, 13, 18, 23.
fn looks_like_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0f5e8a52-3c1b-4a8e-9d7e-2b6a1c9f0e11";
    const OTHER: &str = "aaaaaaaa-3c1b-4a8e-9d7e-2b6a1c9f0e11";

    fn pod(uid: &str) -> PodRef {
        PodRef {
            namespace: "demo".into(),
            name: "web-0".into(),
            uid: uid.into(),
            service_account: String::new(),
        }
    }

    /// (name, sandbox uid, object, Ok(service account, labels) or Err)
    type Case<'a> = (&'a str, &'a str, Value, Result<(&'a str, usize), ()>);

    #[test]
    fn pod_objects_become_facts() {
        let full = json!({"metadata": {"uid": UID, "labels": {"app": "web", "n": 1}},
                          "spec": {"serviceAccountName": "web"}});
        let bare = json!({"metadata": {"uid": UID}, "spec": {}});
        let cases: Vec<Case> = vec![
            (
                "labels and service account",
                UID,
                full.clone(),
                Ok(("web", 1)),
            ),
            (
                "no service account is default",
                UID,
                bare.clone(),
                Ok(("default", 0)),
            ),
            (
                "container id instead of a uid",
                "c0ffee",
                full.clone(),
                Ok(("web", 1)),
            ),
            ("a recreated pod", OTHER, full.clone(), Err(())),
        ];
        for (name, uid, object, want) in cases {
            let got = facts_of(&pod(uid), None, &object);
            match (got, want) {
                (Ok(f), Ok((sa, n))) => {
                    assert_eq!(f.service_account, sa, "{name}");
                    assert_eq!(
                        f.pod_labels.len(),
                        n,
                        "{name}: non-string labels are dropped"
                    );
                }
                (Err(e), Err(())) => {
                    assert!(
                        e.to_string().contains("deleted and made again"),
                        "{name}: {e}"
                    )
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn uids_are_recognised() {
        assert!(looks_like_uid(UID));
        assert!(!looks_like_uid("c0ffee"));
        assert!(!looks_like_uid(&UID.replace('-', "x")));
    }
}
