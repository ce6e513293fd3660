use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::*;
use crate::waypoints::desired::Refusal;

const NOW: &str = "2030-01-02T03:04:05Z";
const EARLIER: &str = "2029-12-31T00:00:00Z";

fn ok(ip: &str) -> Outcome {
    Outcome::Programmed {
        cluster_ip: Some(ip.into()),
    }
}

/// The status the Gateway API CRD defaults a new Gateway to.
fn pending() -> Value {
    json!({"conditions": [
        {"type": "Accepted", "status": "Unknown", "reason": "Pending", "message": "Waiting for controller", "lastTransitionTime": "1970-01-01T00:00:00Z"},
        {"type": "Programmed", "status": "Unknown", "reason": "Pending", "message": "Waiting for controller", "lastTransitionTime": "1970-01-01T00:00:00Z"},
    ]})
}

/// `desired` for `outcome` at generation 2, written as if at [`EARLIER`]:
/// what a Gateway holds after the controller's write.
fn written(outcome: &Outcome) -> Value {
    desired(outcome, 2, &pending(), EARLIER).expect("a first write")
}

/// (type, status, reason, lastTransitionTime) of each condition.
fn summary(status: &Value) -> Vec<[String; 4]> {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            ["type", "status", "reason", "lastTransitionTime"]
                .map(|f| c[f].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// The conditions wanted, written as (status, reason, lastTransitionTime)
/// of Accepted, then of Programmed.
type Conds = [(&'static str, &'static str, &'static str); 2];

fn expand(c: &Conds) -> Vec<[String; 4]> {
    ["Accepted", "Programmed"]
        .iter()
        .zip(c)
        .map(|(t, (s, r, at))| [*t, s, r, at].map(str::to_string))
        .collect()
}

#[test]
fn status_follows_the_outcome_and_keeps_transition_times() {
    let ip9 = ok("10.96.0.9");
    let failed = Outcome::Failed("the API server answered 500".into());
    let conflict = Outcome::Conflict("Deployment demo/wp already exists".into());
    let refused = Outcome::Refused(Refusal {
        reason: "ListenersNotValid",
        message: "listener \"web\" has protocol HTTP".into(),
    });
    let no_ip = Outcome::Programmed { cluster_ip: None };
    let accepted_then = ("True", "Accepted", EARLIER);
    let accepted_now = ("True", "Accepted", NOW);
    // (case, outcome, current status, generation, conditions wanted (None:
    //  no write), the address wanted)
    type Case = (
        &'static str,
        Outcome,
        Value,
        i64,
        Option<Conds>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "first programmed write over the CRD's defaults",
            ip9.clone(),
            pending(),
            2,
            Some([accepted_now, ("True", "Programmed", NOW)]),
            Some("10.96.0.9"),
        ),
        (
            "already says it: no write",
            ip9.clone(),
            written(&ip9),
            2,
            None,
            None,
        ),
        (
            "a new generation is observed; times stay",
            ip9.clone(),
            written(&ip9),
            3,
            Some([accepted_then, ("True", "Programmed", EARLIER)]),
            Some("10.96.0.9"),
        ),
        (
            "a new address: Programmed still holds, its time stays",
            ok("10.96.0.10"),
            written(&ip9),
            2,
            Some([accepted_then, ("True", "Programmed", EARLIER)]),
            Some("10.96.0.10"),
        ),
        (
            "an apply fails: Programmed turns False now, the address stays",
            failed.clone(),
            written(&ip9),
            2,
            Some([accepted_then, ("False", "Pending", NOW)]),
            Some("10.96.0.9"),
        ),
        (
            "still failing with the same message: no write",
            failed.clone(),
            written(&failed),
            2,
            None,
            None,
        ),
        (
            "a name conflict",
            conflict,
            pending(),
            2,
            Some([accepted_now, ("False", "Invalid", NOW)]),
            None,
        ),
        (
            "refused: Accepted False with the reason, no address",
            refused,
            written(&ip9),
            2,
            Some([
                ("False", "ListenersNotValid", NOW),
                ("False", "Invalid", NOW),
            ]),
            None,
        ),
        (
            "applied without a ClusterIP",
            no_ip,
            pending(),
            2,
            Some([accepted_now, ("False", "AddressNotAssigned", NOW)]),
            None,
        ),
    ];
    for (case, outcome, current, generation, conds, address) in cases {
        let got = desired(&outcome, generation, &current, NOW);
        match (got, conds) {
            (None, None) => {}
            (Some(s), Some(want)) => {
                assert_eq!(summary(&s), expand(&want), "{case}");
                let addresses = address.map(|ip| json!([{"type": "IPAddress", "value": ip}]));
                assert_eq!(s.get("addresses").cloned(), addresses, "{case}");
                for c in s["conditions"].as_array().expect("conditions") {
                    assert_eq!(c["observedGeneration"], generation, "{case}");
                    assert!(
                        c["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "{case}: {c}"
                    );
                }
            }
            (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn messages_carry_the_address_and_the_error() {
    let s = desired(&ok("10.96.0.9"), 1, &Value::Null, NOW).expect("write");
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.96.0.9")),
        "{s}"
    );
    let s = desired(
        &Outcome::Failed("HTTP 500: etcd".into()),
        1,
        &Value::Null,
        NOW,
    )
    .expect("write");
    assert!(
        s["conditions"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTP 500: etcd") && m.contains("retrying")),
        "{s}"
    );
}

#[test]
fn only_a_programmed_outcome_with_an_address_counts_as_programmed() {
    assert!(ok("10.0.0.1").programmed());
    for o in [
        Outcome::Programmed { cluster_ip: None },
        Outcome::Failed("x".into()),
        Outcome::Conflict("x".into()),
    ] {
        assert!(!o.programmed(), "{o:?}");
    }
}

#[test]
fn times_are_rfc3339_utc_seconds() {
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let cases = [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_893_553_445, "2030-01-02T03:04:05Z"),
    ];
    for (secs, want) in cases {
        assert_eq!(rfc3339(at(secs)), want);
    }
}
