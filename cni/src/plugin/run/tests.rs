use super::*;
use crate::plugin::spec::parse_conf;

fn conf() -> NetConf {
    parse_conf(
        br#"{"cniVersion":"1.0.0","name":"k8s","type":"trellis-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"198.18.0.2/24"}]}}"#,
        Command::Add,
    )
    .unwrap()
}

fn failed(failure: Failure) -> Result<PluginReply, CniError> {
    Ok(PluginReply::Failed {
        failure,
        message: "m".into(),
    })
}

#[test]
fn add_outcome_table() {
    let unreachable = || Err(CniError::new(Code::AgentUnreachable, "no agent"));
    // (case, agent reply, failOpen, Ok = prevResult printed / Err(code))
    type Case<'a> = (
        &'a str,
        Result<PluginReply, CniError>,
        bool,
        Result<(), Code>,
    );
    let cases: Vec<Case> = vec![
        ("captured", Ok(PluginReply::Captured), false, Ok(())),
        (
            "not enrolled",
            Ok(PluginReply::NotEnrolled { reason: "r".into() }),
            false,
            Ok(()),
        ),
        (
            "no proxy, fail-closed",
            failed(Failure::NoProxy),
            false,
            Err(Code::CaptureTimeout),
        ),
        (
            "no proxy, fail-open",
            failed(Failure::NoProxy),
            true,
            Ok(()),
        ),
        (
            "timeout, fail-closed",
            failed(Failure::Timeout),
            false,
            Err(Code::CaptureTimeout),
        ),
        ("timeout, fail-open", failed(Failure::Timeout), true, Ok(())),
        (
            "agent unreachable, fail-closed",
            unreachable(),
            false,
            Err(Code::AgentUnreachable),
        ),
        ("agent unreachable, fail-open", unreachable(), true, Ok(())),
        (
            "refused stays an error when failing open",
            failed(Failure::Refused),
            true,
            Err(Code::CaptureRefused),
        ),
        (
            "rules failed stays an error when failing open",
            failed(Failure::Agent),
            true,
            Err(Code::AgentFailed),
        ),
        (
            "bad request",
            failed(Failure::BadRequest),
            false,
            Err(Code::AgentFailed),
        ),
        (
            "released is nonsense for ADD",
            Ok(PluginReply::Released),
            false,
            Err(Code::AgentFailed),
        ),
    ];
    let c = conf();
    for (name, reply, fail_open, want) in cases {
        match (add_outcome(reply, fail_open, &c), want) {
            (Ok(v), Ok(())) => assert_eq!(Some(v), c.prev_result, "{name}: prevResult untouched"),
            (Err(e), Err(code)) => {
                assert_eq!(e.code, code, "{name}");
                assert!(
                    !e.details.is_empty()
                        || code == Code::AgentUnreachable
                        || code == Code::AgentFailed,
                    "{name}: an actionable hint"
                );
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn del_always_succeeds_unless_the_request_is_wrong() {
    assert!(del_outcome(Err(CniError::new(Code::AgentUnreachable, "x"))).is_ok());
    assert!(del_outcome(Ok(PluginReply::Released)).is_ok());
    assert!(del_outcome(failed(Failure::NoProxy)).is_ok());
    assert_eq!(
        del_outcome(failed(Failure::BadRequest)).unwrap_err().code,
        Code::AgentFailed
    );
}

#[test]
fn prev_result_gets_a_version_only_when_it_has_none() {
    let mut c = conf();
    c.prev_result = Some(serde_json::json!({"ips": []}));
    assert_eq!(result_of(&c)["cniVersion"], "1.0.0");
    c.prev_result = Some(serde_json::json!({"cniVersion": "0.4.0"}));
    assert_eq!(result_of(&c)["cniVersion"], "0.4.0");
}

#[test]
fn version_and_bad_input_never_panic() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(kk, _)| *kk == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let out = run(env(&[("CNI_COMMAND", "VERSION")]), b"");
    assert_eq!(out.exit_code, 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["supportedVersions"].as_array().unwrap().len() >= 4);

    let out = run(env(&[]), b"{}");
    assert_eq!(out.exit_code, 1);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], 4);

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/p"),
    ];
    for garbage in [
        &b""[..],
        b"\xff\xfe",
        b"[]",
        b"{\"cniVersion\": 1}",
        b"null",
    ] {
        let out = run(env(ADD), garbage);
        assert_eq!(out.exit_code, 1, "{garbage:?}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 6, "{garbage:?}: {v}");
    }
}

/// Mutates `base` a few bytes at a time (flip, insert, cut), seeded so a
/// failure reproduces.
fn mutations(base: &[u8], rng: &mut fastrand::Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut b = base.to_vec();
            for _ in 0..rng.usize(1..4) {
                if b.is_empty() {
                    b.push(rng.u8(..));
                    continue;
                }
                let i = rng.usize(..b.len());
                match rng.u8(..3) {
                    0 => b[i] = rng.u8(..),
                    1 => b.insert(i, rng.u8(..)),
                    _ => b.truncate(i),
                }
            }
            b
        })
        .collect()
}

#[test]
fn mutated_and_random_input_never_panics() {
    let mut rng = fastrand::Rng::with_seed(14);
    let base = br#"{"cniVersion":"1.0.0","name":"k8s","type":"trellis-cni","agentSocket":"/nonexistent/s","captureTimeoutMs":5,"failOpen":false,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"198.18.0.2/24"}]}}"#;
    let mut inputs = mutations(base, &mut rng, 1500);
    inputs.extend((0..300).map(|_| (0..rng.usize(..64)).map(|_| rng.u8(..)).collect()));
    let args = [
        "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p",
        "K8S_POD_NAMESPACE=;K8S_POD_NAME=p",
        ";;=;K8S_POD_NAME",
        "\u{0}\u{1}=\u{2}",
    ];
    for (i, stdin) in inputs.iter().enumerate() {
        let command = ["ADD", "DEL", "CHECK", "VERSION", "add"][i % 5];
        let cni_args = args[i % args.len()];
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some(command.to_string()),
            "CNI_ARGS" => Some(cni_args.to_string()),
            "CNI_CONTAINERID" | "CNI_NETNS" | "CNI_IFNAME" | "CNI_PATH" => Some("x".into()),
            _ => None,
        };
        let out = run(env, stdin);
        // Whatever came in, what goes out is JSON (or nothing, for DEL/CHECK).
        if !out.stdout.is_empty() {
            let v: Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("input {i}: output not JSON ({e}): {}", out.stdout));
            if out.exit_code != 0 {
                assert!(v["code"].as_u64().is_some(), "input {i}: {v}");
            }
        }
    }
}
