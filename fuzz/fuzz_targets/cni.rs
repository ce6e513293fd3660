//! The CNI plugin's input (its `CNI_*` environment and the network config on
//! stdin) and the agent's reading of the plugin's request line.
//!
//! Input: `NAME=value` lines up to an empty line, then stdin.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trellis_cni::plugin::spec::{parse_args, parse_conf, parse_env};
use trellis_cni::wire::PluginRequest;

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_string())
    };
    if let Ok(inv) = parse_env(get) {
        let _ = parse_conf(stdin, inv.command);
    }
    if let Some(args) = get("CNI_ARGS") {
        let _ = parse_args(&args, "fuzz-container");
    }
    let _ = serde_json::from_slice::<PluginRequest>(stdin);
});
