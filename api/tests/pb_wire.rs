//! The generated messages speak Istio's and Envoy's wire format: fields sit
//! at the numbers istiod and ztunnel use, and messages survive a round trip,
//! including inside a delta xDS response as `Any`.

use prost::Message;
use trellis_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use trellis_api::pb::istio::workload::{address, Address, Workload, WorkloadStatus};

const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";

fn workload() -> Workload {
    Workload {
        uid: "cluster1//Pod/demo/client-0".into(),
        name: "client-0".into(),
        namespace: "demo".into(),
        addresses: vec![vec![10, 0, 1, 1]],
        node: "node1".into(),
        service_account: "client".into(),
        trust_domain: "cluster.local".into(),
        status: WorkloadStatus::Healthy as i32,
        ..Default::default()
    }
}

#[test]
fn workload_fields_sit_at_istios_numbers() {
    // Hand-encoded: node (field 9) is tag 9 << 3 | 2 = 0x4a, length 1, "n";
    // uid (field 20) is tag 20 << 3 | 2 = 0xa2 0x01, length 1, "u".
    // prost writes fields in field-number order, so node comes first.
    let bytes = [0x4a, 0x01, b'n', 0xa2, 0x01, 0x01, b'u'];
    let w = Workload::decode(&bytes[..]).expect("decodes");
    assert_eq!(w.uid, "u");
    assert_eq!(w.node, "n");
    let ours = Workload {
        uid: "u".into(),
        node: "n".into(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(ours, bytes, "our encoder writes the same bytes");
}

#[test]
fn an_address_round_trips_inside_a_delta_response() {
    let addr = Address {
        r#type: Some(address::Type::Workload(workload())),
    };
    let resp = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE.into(),
        nonce: "n1".into(),
        resources: vec![Resource {
            name: "cluster1//Pod/demo/client-0".into(),
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE.into(),
                value: addr.encode_to_vec(),
            }),
            ..Default::default()
        }],
        removed_resources: vec!["demo/gone.demo.svc.cluster.local".into()],
        ..Default::default()
    };
    let back = DeltaDiscoveryResponse::decode(resp.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, resp);
    let any = back.resources[0].resource.as_ref().expect("resource");
    let decoded = Address::decode(any.value.as_slice()).expect("address decodes");
    assert_eq!(decoded, addr);
    assert!(
        Address::decode(&[0xff, 0xff][..]).is_err(),
        "garbage is an error, not a panic"
    );
}
