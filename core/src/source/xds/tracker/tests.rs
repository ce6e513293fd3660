use super::*;
use trellis_api::pb::envoy::service::discovery::v3::Resource as PbResource;
use trellis_api::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// Decodes test bodies: the Any's value is the workload uid (or "bad").
fn decode(_: &str, _: &str, any: &prost_types::Any) -> Result<Resource, String> {
    let uid = String::from_utf8(any.value.clone()).map_err(|e| e.to_string())?;
    if uid == "bad" {
        return Err("does not decode".into());
    }
    let yaml = format!(
        "{{uid: {uid}, name: {uid}, namespace: demo, serviceAccount: sa, addresses: [], node: n1}}"
    );
    serde_yaml_ng::from_str(&yaml)
        .map(Resource::Workload)
        .map_err(|e| e.to_string())
}

fn res(name: &str, version: &str, body: &str, aliases: &[&str]) -> PbResource {
    PbResource {
        name: name.into(),
        version: version.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value: body.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn resp(
    t: &str,
    nonce: &str,
    resources: Vec<PbResource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: t.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

fn tracker() -> Tracker {
    Tracker::new(
        Node {
            id: "trellis~n1".into(),
            ..Default::default()
        },
        &[ADDRESS_TYPE, AUTHORIZATION_TYPE],
    )
}

fn keys(u: &Option<Update>) -> (Vec<String>, Vec<String>) {
    match u {
        Some(Update::Delta { upserts, removals }) => (
            upserts.iter().map(|r| r.key().name).collect(),
            removals.iter().map(|k| k.name.clone()).collect(),
        ),
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[test]
fn first_requests_are_wildcard_per_type_with_the_node_once() {
    let t = tracker();
    let reqs = t.initial_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].type_url, ADDRESS_TYPE);
    assert_eq!(reqs[1].type_url, AUTHORIZATION_TYPE);
    assert!(reqs.iter().all(|r| r.resource_names_subscribe == ["*"]));
    assert!(reqs.iter().all(|r| r.initial_resource_versions.is_empty()));
    assert_eq!(
        reqs[0].node.as_ref().map(|n| n.id.as_str()),
        Some("trellis~n1")
    );
    assert!(reqs[1].node.is_none());
    assert!(!t.synced());
}

#[test]
fn add_update_remove_map_xds_names_to_config_keys() {
    // (response, expected upserts, expected removals, expected errors)
    type Step = (
        DeltaDiscoveryResponse,
        &'static [&'static str],
        &'static [&'static str],
        usize,
    );
    let steps: Vec<Step> = vec![
        (
            resp(
                ADDRESS_TYPE,
                "1",
                vec![res("a", "v1", "a", &[]), res("b", "v1", "b", &[])],
                &[],
            ),
            &["a", "b"],
            &[],
            0,
        ),
        // An update of one, a removal of the other.
        (
            resp(ADDRESS_TYPE, "2", vec![res("a", "v2", "a", &[])], &["b"]),
            &["a"],
            &["b"],
            0,
        ),
        // The same xDS name now decodes to another uid: the old key goes.
        (
            resp(ADDRESS_TYPE, "3", vec![res("a", "v3", "a2", &[])], &[]),
            &["a2"],
            &["a"],
            0,
        ),
        // A bad resource is reported; the good one next to it is applied.
        (
            resp(
                ADDRESS_TYPE,
                "4",
                vec![res("c", "v1", "bad", &[]), res("d", "v1", "d", &[])],
                &[],
            ),
            &["d"],
            &[],
            1,
        ),
        // Removing a name never held changes nothing.
        (resp(ADDRESS_TYPE, "5", vec![], &["never"]), &[], &[], 0),
    ];
    let mut t = tracker();
    for (i, (r, up, rm, errs)) in steps.into_iter().enumerate() {
        let h = t.on_response(&r, decode);
        assert_eq!(h.nonce, r.nonce, "step {i}");
        assert_eq!(h.errors.len(), errs, "step {i}: {:?}", h.errors);
        if up.is_empty() && rm.is_empty() {
            assert_eq!(h.update, None, "step {i}");
        } else {
            let (u, r) = keys(&h.update);
            assert_eq!(u, up, "step {i} upserts");
            assert_eq!(r, rm, "step {i} removals");
        }
    }
    assert_eq!(t.held(ADDRESS_TYPE), 2, "a (as a2) and d");
    assert!(!t.synced(), "authorization has not answered yet");
    t.on_response(&resp(AUTHORIZATION_TYPE, "6", vec![], &[]), decode);
    assert!(t.synced(), "an empty first response counts");
}

#[test]
fn reconnect_sends_held_versions_and_on_demand_names() {
    let mut t = tracker();
    t.on_response(
        &resp(ADDRESS_TYPE, "1", vec![res("a", "v1", "a", &[])], &[]),
        decode,
    );
    t.subscribe("net/10.0.0.9").expect("new name");
    let reqs = t.initial_requests();
    assert_eq!(reqs[0].resource_names_subscribe, ["*", "net/10.0.0.9"]);
    assert_eq!(
        reqs[0]
            .initial_resource_versions
            .get("a")
            .map(String::as_str),
        Some("v1")
    );
    assert!(reqs[1].initial_resource_versions.is_empty());
}

#[test]
fn on_demand_hit_and_miss_are_answered_once() {
    let mut t = tracker();
    let req = t.subscribe("net/10.0.0.9").expect("first ask sends");
    assert_eq!(req.type_url, ADDRESS_TYPE);
    assert_eq!(req.resource_names_subscribe, ["net/10.0.0.9"]);
    assert!(t.subscribe("net/10.0.0.9").is_none(), "asked once");
    assert_eq!(t.lookup("net/10.0.0.9"), Some(Lookup::Pending));
    t.subscribe("demo/missing.svc").expect("second name");

    // Hit: the resource comes under its canonical name, with the alias.
    let h = t.on_response(
        &resp(
            ADDRESS_TYPE,
            "1",
            vec![res("uid-9", "v1", "uid-9", &["net/10.0.0.9"])],
            &[],
        ),
        decode,
    );
    assert_eq!(h.answered, ["net/10.0.0.9"]);
    assert_eq!(t.lookup("net/10.0.0.9"), Some(Lookup::Answered));
    // Miss: the name comes back removed; nothing to apply.
    let h = t.on_response(
        &resp(ADDRESS_TYPE, "2", vec![], &["demo/missing.svc"]),
        decode,
    );
    assert_eq!(h.answered, ["demo/missing.svc"]);
    assert_eq!(h.update, None);
    assert_eq!(t.lookup("demo/missing.svc"), Some(Lookup::Answered));
    assert_eq!(t.lookup("never/asked"), None);
}

#[test]
fn a_refused_update_restores_the_held_versions() {
    let mut t = tracker();
    t.on_response(
        &resp(
            ADDRESS_TYPE,
            "1",
            vec![res("a", "v1", "a", &[]), res("b", "v1", "b", &[])],
            &[],
        ),
        decode,
    );
    t.on_response(
        &resp(
            ADDRESS_TYPE,
            "2",
            vec![res("a", "v2", "a", &[]), res("c", "v1", "c", &[])],
            &["b"],
        ),
        decode,
    );
    t.refused();
    let versions = &t.initial_requests()[0].initial_resource_versions;
    let mut got: Vec<_> = versions.iter().map(|(k, v)| format!("{k}={v}")).collect();
    got.sort();
    assert_eq!(got, ["a=v1", "b=v1"]);
}

#[test]
fn ack_and_nack_carry_the_nonce_and_the_reason() {
    let ack = Tracker::answer(ADDRESS_TYPE, "n1", None);
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    assert!(ack.resource_names_subscribe.is_empty());
    let nack = Tracker::answer(ADDRESS_TYPE, "n2", Some("c: does not decode".into()));
    assert_eq!(nack.response_nonce, "n2");
    let detail = nack.error_detail.expect("nack has detail");
    assert_eq!(detail.code, 3);
    assert!(detail.message.contains("does not decode"));
}
