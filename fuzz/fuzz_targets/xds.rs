//! xDS resources as the proxy receives them: a sequence of delta responses,
//! each decoded by the tracker (trellis_api::xds::decode per resource) and
//! applied to the proxy's state store, as core/src/source/xds.rs does.
//!
//! Input: responses, each `[type][len lo][len hi][len bytes]`; the bytes are
//! an encoded DeltaDiscoveryResponse whose type_url is set from `type`
//! (Trellis's three types, or whatever the message carried).
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use trellis_api::config::LocalConfig;
use trellis_api::pb::envoy::config::core::v3::Node;
use trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use trellis_api::xds::TYPES;
use trellis_core::source::xds::tracker::Tracker;
use trellis_core::state::{ProxyState, StateStore};

fuzz_target!(|data: &[u8]| {
    let store = StateStore::new(ProxyState::new(LocalConfig::default()).unwrap());
    let mut tracker = Tracker::new(Node::default(), &TYPES);
    let mut rest = data;
    while let [kind, lo, hi, tail @ ..] = rest {
        let n = (u16::from_le_bytes([*lo, *hi]) as usize).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let Ok(mut resp) = DeltaDiscoveryResponse::decode(bytes) else {
            continue;
        };
        if let Some(t) = TYPES.get(*kind as usize) {
            resp.type_url = (*t).to_string();
        }
        let before = store.version();
        let handled = tracker.on_response(&resp, |t, n, any| {
            trellis_api::xds::decode(t, n, any).map_err(|e| e.to_string())
        });
        if let Some(update) = handled.update {
            if store.apply(update).is_err() {
                tracker.refused();
                // A refused update leaves the state as it was.
                assert_eq!(store.version(), before);
            }
        }
        // What the store holds always validates as a partial view.
        trellis_api::config::validate_partial(store.snapshot().config()).unwrap();
    }
});
