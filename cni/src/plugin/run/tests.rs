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
