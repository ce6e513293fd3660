//! One access log line per connection, written when the connection closes.
//!
//! The line is the message of a `tracing` event with target "access", so an
//! operator can route or filter it apart from the proxy's own logs
//! (`RUST_LOG=access=info,...`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shape of the access log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `key=value` pairs; values with spaces or quotes are quoted.
    #[default]
    Text,
    /// One JSON object, built with serde_json so it is always valid.
    Json,
}

/// What is logged about one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogEntry<'a> {
    pub src_addr: SocketAddr,
    pub dst_addr: SocketAddr,
    pub src_workload: &'a str,
    pub dst_workload: &'a str,
    pub src_identity: &'a str,
    pub dst_identity: &'a str,
    /// "inbound", "outbound", ... as the proxy names its listeners.
    pub direction: &'a str,
    /// Bytes sent back to the client (response direction).
    pub bytes_sent: u64,
    /// Bytes received from the client (request direction).
    pub bytes_received: u64,
    pub duration: Duration,
    pub response_flags: &'a str,
    /// Why the connection failed or was refused; `None` if it ran its course.
    pub error: Option<&'a str>,
}

impl AccessLogEntry<'_> {
    pub fn render(&self, format: AccessLogFormat) -> String {
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
        match format {
            AccessLogFormat::Json => {
                let mut v = serde_json::json!({
                    "src.addr": self.src_addr.to_string(),
                    "dst.addr": self.dst_addr.to_string(),
                    "src.workload": self.src_workload,
                    "dst.workload": self.dst_workload,
                    "src.identity": self.src_identity,
                    "dst.identity": self.dst_identity,
                    "direction": self.direction,
                    "bytes_sent": self.bytes_sent,
                    "bytes_received": self.bytes_received,
                    "duration_ms": (duration_ms * 1000.0).round() / 1000.0,
                    "response_flags": self.response_flags,
                });
                if let (Some(e), Some(map)) = (self.error, v.as_object_mut()) {
                    map.insert("error".into(), e.into());
                }
                v.to_string()
            }
            AccessLogFormat::Text => {
                let mut s = String::with_capacity(256);
                // Writing to a String cannot fail.
                let _ = write!(s, "src.addr={} dst.addr={}", self.src_addr, self.dst_addr);
                for (k, v) in [
                    ("src.workload", self.src_workload),
                    ("dst.workload", self.dst_workload),
                    ("src.identity", self.src_identity),
                    ("dst.identity", self.dst_identity),
                    ("direction", self.direction),
                    ("response_flags", self.response_flags),
                ] {
                    push_pair(&mut s, k, v);
                }
                let _ = write!(
                    s,
                    " bytes_sent={} bytes_received={} duration_ms={duration_ms:.3}",
                    self.bytes_sent, self.bytes_received
                );
                if let Some(e) = self.error {
                    push_pair(&mut s, "error", e);
                }
                s
            }
        }
    }

    /// Writes the line as an info event with target "access".
    pub fn emit(&self, format: AccessLogFormat) {
        let line = self.render(format);
        tracing::info!(target: "access", "{line}");
    }
}

/// Appends ` key=value`, quoting the value when it would break the line's
/// key=value structure.
fn push_pair(s: &mut String, key: &str, value: &str) {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if plain {
        let _ = write!(s, " {key}={value}");
    } else {
        let _ = write!(s, " {key}={value:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(error: Option<&'static str>) -> AccessLogEntry<'static> {
        AccessLogEntry {
            src_addr: "10.0.1.1:40000".parse().unwrap(),
            dst_addr: "10.0.2.1:8080".parse().unwrap(),
            src_workload: "client",
            dst_workload: "server",
            src_identity: "spiffe://cluster.local/ns/demo/sa/client",
            dst_identity: "spiffe://cluster.local/ns/demo/sa/server",
            direction: "outbound",
            bytes_sent: 20,
            bytes_received: 10,
            duration: Duration::from_micros(1500),
            response_flags: "-",
            error,
        }
    }

    #[test]
    fn text_line_has_every_field_and_quotes_awkward_values() {
        let line = entry(Some("denied: \"DENY policy demo/x matched\"\nnext"))
            .render(AccessLogFormat::Text);
        assert_eq!(
            line,
            "src.addr=10.0.1.1:40000 dst.addr=10.0.2.1:8080 src.workload=client dst.workload=server \
             src.identity=spiffe://cluster.local/ns/demo/sa/client dst.identity=spiffe://cluster.local/ns/demo/sa/server \
             direction=outbound response_flags=- bytes_sent=20 bytes_received=10 duration_ms=1.500 \
             error=\"denied: \\\"DENY policy demo/x matched\\\"\\nnext\""
        );
        assert!(!line.contains('\n'), "one line per connection");
        let ok = entry(None).render(AccessLogFormat::Text);
        assert!(!ok.contains("error="), "{ok}");
    }

    #[test]
    fn json_line_is_valid_json_with_typed_fields() {
        let line = entry(Some("upstream said \"no\"\n")).render(AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["src.addr"], "10.0.1.1:40000");
        assert_eq!(
            v["dst.identity"],
            "spiffe://cluster.local/ns/demo/sa/server"
        );
        assert_eq!(v["bytes_sent"], 20);
        assert_eq!(v["bytes_received"], 10);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["error"], "upstream said \"no\"\n");
        let ok: serde_json::Value =
            serde_json::from_str(&entry(None).render(AccessLogFormat::Json)).expect("valid json");
        assert!(ok.get("error").is_none());
    }
}
