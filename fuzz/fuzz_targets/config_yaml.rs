//! The proxies' config file (LocalConfig YAML): parse, then validate, whole
//! and partial (the xDS delta view).
#![no_main]
use libfuzzer_sys::fuzz_target;
use trellis_api::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = config::parse(text) {
        let whole = config::validate(&cfg);
        let partial = config::validate_partial(&cfg);
        // A config valid as a whole is valid as a partial view too.
        assert!(whole.is_err() || partial.is_ok(), "{partial:?}");
    }
});
