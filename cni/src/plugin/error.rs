//! The CNI error result: what the plugin prints on stdout when it fails,
//! with a code from the CNI spec (or ours, 100 and up) and a message an
//! operator can act on.

use serde::Serialize;

/// Error codes. 1–99 are the CNI spec's; 100+ are Trellis's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The network config's `cniVersion` is not one we support.
    IncompatibleVersion = 1,
    /// A network config field has a value we do not support.
    UnsupportedField = 2,
    /// A required `CNI_*` variable is missing or malformed.
    InvalidEnv = 4,
    /// stdin is not valid JSON of the expected shape.
    Decode = 6,
    /// The network config is valid JSON but wrong (e.g. no prevResult).
    InvalidConfig = 7,
    /// The Trellis CNI agent's socket cannot be reached.
    AgentUnreachable = 100,
    /// The node proxy did not confirm the capture in time (or none is connected).
    CaptureTimeout = 101,
    /// The node proxy refused the pod.
    CaptureRefused = 102,
    /// The agent failed (netns, capture rules) or answered nonsense.
    AgentFailed = 103,
    /// The agent could not read the pod or its namespace from the API server.
    ApiUnavailable = 104,
}

/// A failed invocation, printed as the CNI error JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trellis-cni error {}: {msg}{}", *code as u32, details_suffix(details))]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

fn details_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error result JSON of the spec, in the config's version.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let out = Out {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        };
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }
}
