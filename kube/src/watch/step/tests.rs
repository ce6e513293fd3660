use serde_json::{json, Value};

use super::*;

fn line(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[test]
fn watch_lines_become_steps() {
    let pod = json!({"metadata": {"name": "a", "namespace": "n", "resourceVersion": "7"}});
    let no_rv = json!({"metadata": {"name": "a"}});
    let cases: Vec<(&str, Vec<u8>, Step)> = vec![
        (
            "added",
            line(json!({"type": "ADDED", "object": pod})),
            Step::Upsert {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "modified",
            line(json!({"type": "MODIFIED", "object": pod})),
            Step::Upsert {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "deleted",
            line(json!({"type": "DELETED", "object": pod})),
            Step::Delete {
                object: pod.clone(),
                rv: Some("7".into()),
            },
        ),
        (
            "bookmark",
            line(json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})),
            Step::Bookmark { rv: "9".into() },
        ),
        (
            "bookmark without rv",
            line(json!({"type": "BOOKMARK", "object": no_rv})),
            Step::Restart {
                message: "bookmark without a resourceVersion".into(),
            },
        ),
        (
            "410 error",
            line(
                json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (5)"}}),
            ),
            Step::Relist {
                message: "too old resource version: 1 (5)".into(),
            },
        ),
        (
            "gone by reason only",
            line(json!({"type": "ERROR", "object": {"reason": "Gone", "message": "m"}})),
            Step::Relist {
                message: "m".into(),
            },
        ),
        (
            "other error",
            line(json!({"type": "ERROR", "object": {"code": 500, "message": "etcd down"}})),
            Step::Restart {
                message: "watch error 500: etcd down".into(),
            },
        ),
        (
            "no object",
            line(json!({"type": "ADDED"})),
            Step::Restart {
                message: "watch event \"ADDED\" has no object".into(),
            },
        ),
        (
            "unknown type",
            line(json!({"type": "SYNC", "object": pod})),
            Step::Restart {
                message: "unknown watch event type \"SYNC\"".into(),
            },
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(classify(&input), want, "{name}");
    }
    assert!(
        matches!(classify(b"{not json"), Step::Restart { message } if message.starts_with("unreadable watch event"))
    );
}
