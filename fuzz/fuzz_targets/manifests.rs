//! The controller's Kubernetes objects (manifest YAML or API server JSON):
//! parse into the object store, then translate into the mesh config and
//! validate what comes out.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trellis_controller::objects::{translate, ObjectStore, TranslateOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut store = ObjectStore::new();
    let _ = store.load_text("fuzz.yaml", text, mode & 1 == 1);
    let opts = TranslateOptions {
        istio_labels: mode & 2 == 2,
        ..TranslateOptions::default()
    };
    let out = translate(&store, &opts);
    let _ = trellis_api::config::validate(&out.config);
    // Replacing the source with nothing leaves an empty store.
    store.remove_source("fuzz.yaml");
    assert!(store.is_empty());
});
