//! W3C baggage carrying a workload's metadata across an HBONE tunnel.
//!
//! Istio ambient's ztunnel sends the source workload's metadata in a
//! `baggage` header on the CONNECT request, and the destination answers with
//! its own in the 200 response, so each end can label metrics for a peer it
//! does not hold in its state. The keys are OpenTelemetry resource
//! attributes, as ztunnel uses them: `k8s.cluster.name`,
//! `k8s.namespace.name`, `k8s.<kind>.name` (the workload's name),
//! `service.name` (canonical service), `service.version` (canonical
//! revision), `cloud.region` and `cloud.availability_zone`.
//!
//! The baggage only feeds metric labels, so parsing never fails: a malformed
//! member is skipped, an unknown key ignored, and anything past the W3C
//! size limit dropped.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use trellis_api::config::Workload;

/// The W3C baggage header name.
pub const HEADER: HeaderName = HeaderName::from_static("baggage");

/// Most bytes of baggage read, over all header values (the W3C limit).
/// A peer's baggage becomes metric label values, so a larger one would only
/// be a way to make this proxy allocate and export more.
pub const MAX_LEN: usize = 8192;

/// Workload kinds whose `k8s.<kind>.name` names the workload (ztunnel
/// sends deployment, cronjob, job or pod; the other controllers are
/// OpenTelemetry keys of the same shape).
const WORKLOAD_KINDS: [&str; 7] = [
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "cronjob",
    "job",
    "pod",
];

/// The key Trellis names its workloads with. The config model has no
/// controller kind, and its xDS translation announces every workload as a
/// pod (`WorkloadType::Pod`), so the baggage says the same.
const OWN_WORKLOAD_KEY: &str = "k8s.pod.name";

/// A peer's metadata as read from its baggage; `None` where it said nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub canonical_service: Option<String>,
    pub canonical_revision: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
}

/// The baggage header value describing `w`.
///
/// Canonical service and revision carry the same fallbacks the metric
/// labels use for a known workload, so a peer labelling from this baggage
/// reports what this proxy would. The config model has no locality, so
/// `cloud.*` is never sent.
pub fn encode(w: &Workload) -> String {
    let members = [
        ("k8s.cluster.name", w.cluster_id.as_deref()),
        ("k8s.namespace.name", Some(w.namespace.as_str())),
        (OWN_WORKLOAD_KEY, Some(w.name.as_str())),
        ("service.name", Some(w.canonical_name())),
        ("service.version", Some(w.canonical_revision())),
    ];
    encode_members(&members)
}

/// A header map holding only `w`'s baggage: the extra headers of an HBONE
/// CONNECT (source workload) or of its 200 (destination workload).
pub fn headers(w: &Workload) -> HeaderMap {
    let mut map = HeaderMap::new();
    // The encoding is printable ASCII only, so this cannot fail; if it ever
    // did, the tunnel goes without baggage rather than failing.
    match HeaderValue::try_from(encode(w)) {
        Ok(v) => {
            map.insert(HEADER, v);
        }
        Err(e) => tracing::debug!(workload = %w.uid, error = %e, "cannot send baggage"),
    }
    map
}

/// Writes `key=value` members, percent-encoding values, skipping empty ones.
fn encode_members(members: &[(&str, Option<&str>)]) -> String {
    let len: usize = members
        .iter()
        .filter_map(|(k, v)| v.map(|v| k.len() + v.len() + 2))
        .sum();
    let mut out = String::with_capacity(len);
    for (key, value) in members {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

impl Baggage {
    /// The header value for this metadata (used by tests and by peers that
    /// hold no [`Workload`]).
    pub fn encode(&self) -> String {
        encode_members(&[
            ("k8s.cluster.name", self.cluster.as_deref()),
            ("k8s.namespace.name", self.namespace.as_deref()),
            (OWN_WORKLOAD_KEY, self.workload.as_deref()),
            ("service.name", self.canonical_service.as_deref()),
            ("service.version", self.canonical_revision.as_deref()),
            ("cloud.region", self.region.as_deref()),
            ("cloud.availability_zone", self.zone.as_deref()),
        ])
    }

    /// Reads the metadata from all `baggage` header values, in order.
    ///
    /// Values past [`MAX_LEN`] bytes in total are ignored whole; a member
    /// repeated later overrides the earlier one; an empty value clears it.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Baggage {
        let mut out = Baggage::default();
        let mut budget = MAX_LEN;
        for value in values {
            if value.len() > budget {
                break;
            }
            budget -= value.len();
            for member in value.split(|&b| b == b',') {
                out.apply(member);
            }
        }
        out
    }

    /// Reads the metadata from the `baggage` headers of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Baggage {
        Baggage::parse(headers.get_all(HEADER).iter().map(HeaderValue::as_bytes))
    }

    /// True when the peer said nothing this proxy uses.
    pub fn is_empty(&self) -> bool {
        *self == Baggage::default()
    }

    fn apply(&mut self, member: &[u8]) {
        // Properties (`;k=v` after the value) qualify a member; none of
        // the keys read here has any.
        let kv = member.split(|&b| b == b';').next().unwrap_or_default();
        let Some(eq) = kv.iter().position(|&b| b == b'=') else {
            return;
        };
        let Some(slot) = self.slot(trim(&kv[..eq])) else {
            return;
        };
        if let Some(value) = percent_decode(trim(&kv[eq + 1..])) {
            *slot = (!value.is_empty()).then_some(value);
        }
    }

    fn slot(&mut self, key: &[u8]) -> Option<&mut Option<String>> {
        Some(match key {
            b"k8s.cluster.name" => &mut self.cluster,
            b"k8s.namespace.name" => &mut self.namespace,
            b"service.name" => &mut self.canonical_service,
            b"service.version" => &mut self.canonical_revision,
            b"cloud.region" => &mut self.region,
            b"cloud.availability_zone" => &mut self.zone,
            _ if is_workload_key(key) => &mut self.workload,
            _ => return None,
        })
    }
}

fn is_workload_key(key: &[u8]) -> bool {
    key.strip_prefix(b"k8s.")
        .and_then(|k| k.strip_suffix(b".name"))
        .is_some_and(|kind| WORKLOAD_KINDS.iter().any(|k| k.as_bytes() == kind))
}

/// Strips the optional white space W3C allows around keys and values.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A byte W3C allows unencoded in a value (`baggage-octet`), less `%`,
/// which always starts an escape.
fn is_plain(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x24 | 0x26..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

fn percent_encode(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// Decodes a value; `None` if it has a byte W3C does not allow, a broken
/// escape, or is not UTF-8 once decoded.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = hex(*raw.get(i + 1)?)?;
            let lo = hex(*raw.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
