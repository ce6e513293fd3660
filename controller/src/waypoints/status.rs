//! What a waypoint Gateway's status says: the `Accepted` and `Programmed`
//! conditions and `status.addresses`, from what the manager last did.
//! Pure: it compares with the status the Gateway has and answers `None`
//! when that already says it, so an unchanged Gateway costs no write.
//!
//! A condition keeps its `lastTransitionTime` while its status holds (as
//! Gateway API asks). That is also what keeps two controller replicas from
//! flapping: both compute the same status from the same Gateway, and the
//! only time-dependent field is carried over, not rewritten.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::desired::Refusal;

/// What the manager's last attempt at a Gateway came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every object applied; the Service's ClusterIP once assigned.
    Programmed { cluster_ip: Option<String> },
    /// The Gateway cannot have a waypoint (bad name, listeners, addresses).
    Refused(Refusal),
    /// An object of the same name exists that the controller did not make.
    Conflict(String),
    /// The API server refused or failed an apply; retried.
    Failed(String),
}

impl Outcome {
    /// Whether the Gateway is served: every object applied with an address.
    pub fn programmed(&self) -> bool {
        matches!(
            self,
            Outcome::Programmed {
                cluster_ip: Some(_)
            }
        )
    }
}

const ACCEPTED: &str = "Accepted";
const PROGRAMMED: &str = "Programmed";

/// (type, status, reason, message) of the two conditions, and the addresses.
fn decide(outcome: &Outcome, current: &Value) -> ([[String; 4]; 2], Option<Value>) {
    let cond = |t: &str, ok: bool, reason: &str, message: String| {
        [
            t.to_string(),
            if ok { "True" } else { "False" }.to_string(),
            reason.to_string(),
            message,
        ]
    };
    let accepted = cond(
        ACCEPTED,
        true,
        "Accepted",
        "the controller runs a waypoint for this Gateway".into(),
    );
    match outcome {
        Outcome::Programmed {
            cluster_ip: Some(ip),
        } => (
            [
                accepted,
                cond(
                    PROGRAMMED,
                    true,
                    "Programmed",
                    format!("the waypoint's ServiceAccount, ConfigMap, Deployment and Service are applied; its Service's address is {ip}"),
                ),
            ],
            Some(json!([{"type": "IPAddress", "value": ip}])),
        ),
        Outcome::Programmed { cluster_ip: None } => (
            [
                accepted,
                cond(
                    PROGRAMMED,
                    false,
                    "AddressNotAssigned",
                    "the waypoint's objects are applied, but its Service has no ClusterIP yet".into(),
                ),
            ],
            None,
        ),
        Outcome::Refused(r) => (
            [
                cond(ACCEPTED, false, r.reason, r.message.clone()),
                cond(
                    PROGRAMMED,
                    false,
                    "Invalid",
                    "no waypoint is made for a Gateway that is not accepted".into(),
                ),
            ],
            None,
        ),
        Outcome::Conflict(m) => (
            [accepted, cond(PROGRAMMED, false, "Invalid", m.clone())],
            None,
        ),
        // A failed apply leaves what was there: the address stays as it was.
        Outcome::Failed(m) => (
            [
                accepted,
                cond(
                    PROGRAMMED,
                    false,
                    "Pending",
                    format!("applying the waypoint's objects failed, retrying: {m}"),
                ),
            ],
            addresses_of(current).cloned(),
        ),
    }
}

/// The addresses a status lists; none, null and `[]` are all none.
fn addresses_of(status: &Value) -> Option<&Value> {
    status
        .get("addresses")
        .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
}

/// The status to apply (`{"conditions": [...], "addresses": [...]}`), or
/// `None` when `current` already says it. `now` is RFC 3339.
pub fn desired(outcome: &Outcome, generation: i64, current: &Value, now: &str) -> Option<Value> {
    let (conds, addresses) = decide(outcome, current);
    let existing = |t: &str| -> Option<&Value> {
        current
            .get("conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
    };
    let same =
        |c: &Value, field: &str, want: &str| c.get(field).and_then(Value::as_str) == Some(want);
    let mut unchanged = addresses_of(current) == addresses.as_ref();
    let mut conditions = Vec::new();
    for [t, status, reason, message] in &conds {
        let old = existing(t);
        let holds = old.filter(|c| same(c, "status", status));
        unchanged &= holds.is_some_and(|c| {
            same(c, "reason", reason)
                && same(c, "message", message)
                && c.get("observedGeneration").and_then(Value::as_i64) == Some(generation)
        });
        let since = holds
            .and_then(|c| c.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .unwrap_or(now);
        conditions.push(json!({
            "type": t,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }));
    }
    if unchanged {
        return None;
    }
    let mut status = json!({ "conditions": conditions });
    if let Some(a) = addresses {
        status["addresses"] = a;
    }
    Some(status)
}

/// `t` as Kubernetes writes times: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dt = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests;
