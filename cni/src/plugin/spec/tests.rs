use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

const FULL: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/var/run/netns/p1"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/usr/lib/cni"),
    (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1",
    ),
];

fn with(changes: &[(&str, Option<&str>)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> =
        FULL.iter().map(|(k, v)| (*k, v.to_string())).collect();
    for (k, val) in changes {
        v.retain(|(kk, _)| kk != k);
        if let Some(val) = val {
            let key: &'static str = FULL
                .iter()
                .map(|(k, _)| *k)
                .find(|kk| kk == k)
                .expect("known key");
            v.push((key, val.to_string()));
        }
    }
    v
}

fn parse(changes: &[(&str, Option<&str>)]) -> Result<Invocation, CniError> {
    let pairs = with(changes);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    parse_env(env(&refs))
}

fn pod(ns: &str, name: &str, uid: &str) -> Option<PodRef> {
    Some(PodRef {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        service_account: String::new(),
    })
}

#[test]
fn env_table() {
    // (case, changes to FULL, expected pod or error code and a fragment of the message)
    type Want = Result<Option<PodRef>, (Code, &'static str)>;
    type Case<'a> = (&'a str, Vec<(&'a str, Option<&'a str>)>, Want);
    let cases: Vec<Case> = vec![
        ("full ADD", vec![], Ok(pod("demo", "web-0", "u-1"))),
        (
            "no uid: the sandbox id keys the pod",
            vec![(
                "CNI_ARGS",
                Some("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0"),
            )],
            Ok(pod("demo", "web-0", "c1")),
        ),
        ("no CNI_ARGS: not a pod", vec![("CNI_ARGS", None)], Ok(None)),
        (
            "CNI_ARGS without K8S keys",
            vec![("CNI_ARGS", Some("IgnoreUnknown=1"))],
            Ok(None),
        ),
        (
            "namespace without name",
            vec![("CNI_ARGS", Some("K8S_POD_NAMESPACE=demo"))],
            Err((Code::InvalidEnv, "no K8S_POD_NAME")),
        ),
        (
            "name without namespace",
            vec![("CNI_ARGS", Some("K8S_POD_NAME=x"))],
            Err((Code::InvalidEnv, "no K8S_POD_NAMESPACE")),
        ),
        (
            "malformed CNI_ARGS entry",
            vec![("CNI_ARGS", Some("K8S_POD_NAMESPACE"))],
            Err((Code::InvalidEnv, "not KEY=VALUE")),
        ),
        (
            "no command",
            vec![("CNI_COMMAND", None)],
            Err((Code::InvalidEnv, "CNI_COMMAND is not set")),
        ),
        (
            "unknown command",
            vec![("CNI_COMMAND", Some("GC"))],
            Err((Code::InvalidEnv, "CNI_COMMAND=GC is not supported")),
        ),
        (
            "every missing variable named at once",
            vec![
                ("CNI_NETNS", None),
                ("CNI_IFNAME", None),
                ("CNI_PATH", Some("")),
            ],
            Err((Code::InvalidEnv, "CNI_IFNAME, CNI_PATH, CNI_NETNS")),
        ),
        (
            "DEL without netns is fine",
            vec![("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", None)],
            Ok(pod("demo", "web-0", "u-1")),
        ),
        (
            "CHECK needs netns",
            vec![("CNI_COMMAND", Some("CHECK")), ("CNI_NETNS", None)],
            Err((Code::InvalidEnv, "CNI_NETNS")),
        ),
        (
            "VERSION needs nothing else",
            vec![
                ("CNI_COMMAND", Some("VERSION")),
                ("CNI_CONTAINERID", None),
                ("CNI_NETNS", None),
            ],
            Ok(None),
        ),
    ];
    for (name, changes, want) in cases {
        let got = parse(&changes);
        match (got, want) {
            (Ok(inv), Ok(pod)) => assert_eq!(inv.pod, pod, "{name}"),
            (Err(e), Err((code, frag))) => {
                assert_eq!(e.code, code, "{name}: {e}");
                assert!(e.msg.contains(frag), "{name}: {:?} lacks {frag:?}", e.msg);
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

const PREV: &str =
    r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"198.18.0.2/24"}]}"#;

#[test]
fn conf_table() {
    let ok_add = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"trellis-cni","prevResult":{PREV}}}"#
    );
    type Case<'a> = (&'a str, String, Command, Result<(), (Code, &'a str)>);
    let cases: Vec<Case> = vec![
        ("chained ADD", ok_add.clone(), Command::Add, Ok(())),
        (
            "not JSON",
            "{cniVersion".into(),
            Command::Add,
            Err((Code::Decode, "cannot parse the network config")),
        ),
        (
            "no cniVersion",
            r#"{"name":"k8s"}"#.into(),
            Command::Add,
            Err((Code::Decode, "cniVersion")),
        ),
        (
            "old version",
            r#"{"cniVersion":"0.2.0","name":"k8s"}"#.into(),
            Command::Del,
            Err((Code::IncompatibleVersion, "0.2.0")),
        ),
        (
            "ADD not chained",
            r#"{"cniVersion":"1.0.0","name":"k8s"}"#.into(),
            Command::Add,
            Err((Code::InvalidConfig, "no prevResult")),
        ),
        (
            "DEL needs no prevResult",
            r#"{"cniVersion":"1.0.0","name":"k8s"}"#.into(),
            Command::Del,
            Ok(()),
        ),
        (
            "prevResult not an object",
            r#"{"cniVersion":"1.0.0","name":"k8s","prevResult":[1]}"#.into(),
            Command::Add,
            Err((Code::InvalidConfig, "must be an object")),
        ),
        (
            "CHECK on 0.3.1",
            r#"{"cniVersion":"0.3.1","name":"k8s"}"#.into(),
            Command::Check,
            Err((Code::IncompatibleVersion, "CHECK needs")),
        ),
        (
            "zero timeout",
            r#"{"cniVersion":"1.0.0","name":"k8s","captureTimeoutMs":0}"#.into(),
            Command::Del,
            Err((Code::UnsupportedField, "captureTimeoutMs")),
        ),
        (
            "wrong type for failOpen",
            r#"{"cniVersion":"1.0.0","name":"k8s","failOpen":"yes"}"#.into(),
            Command::Del,
            Err((Code::Decode, "failOpen")),
        ),
    ];
    for (name, stdin, cmd, want) in cases {
        match (parse_conf(stdin.as_bytes(), cmd), want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err((code, frag))) => {
                assert_eq!(e.code, code, "{name}: {e}");
                assert!(e.msg.contains(frag), "{name}: {:?} lacks {frag:?}", e.msg);
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    let conf = parse_conf(ok_add.as_bytes(), Command::Add).unwrap();
    assert_eq!(conf.capture_timeout_ms, DEFAULT_CAPTURE_TIMEOUT_MS);
    assert!(!conf.fail_open, "fail-closed by default");
    assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_PLUGIN_SOCKET));
}

#[test]
fn error_json_has_code_and_message() {
    let e =
        CniError::new(Code::CaptureTimeout, "no node proxy").with_details("check the daemonset");
    let v: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["code"], 101);
    assert_eq!(v["msg"], "no node proxy");
    assert_eq!(v["details"], "check the daemonset");
}
