//! CSRs at the CA: parse and verify (PEM, or DER wrapped into PEM), decide
//! who may have the identity, and sign with a real CA.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use trellis_api::config::LocalConfig;
use trellis_controller::auth::Caller;
use trellis_controller::ca::authorize::{authorize, requested_identity, MeshIndex};
use trellis_controller::ca::keys::{init, Ca};
use trellis_controller::ca::sign::{sign, Csr};

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("trellis-fuzz-ca-{}", std::process::id()));
        let ca = init(&dir, "cluster.local", true).expect("ca init");
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pem = if mode & 1 == 1 {
        let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let Ok(csr) = Csr::parse(&pem) else {
        return;
    };
    let id = csr.identity().to_string();
    assert!(id.starts_with("spiffe://"), "{id}");
    let impersonated = (mode & 2 == 2).then_some("spiffe://cluster.local/ns/a/sa/b");
    if let Ok(identity) = requested_identity(&id, impersonated) {
        let caller = Caller::Waypoint {
            spiffe_id: identity.clone(),
        };
        authorize(&caller, &identity, &MeshIndex::new(&LocalConfig::default())).unwrap();
    }
    let chain = sign(
        ca(),
        &csr,
        Some(Duration::from_secs(u64::from(mode))),
        Duration::from_secs(3600),
    )
    .expect("a parsed csr signs");
    assert!(chain.len() >= 2);
});
