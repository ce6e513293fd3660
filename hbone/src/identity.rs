//! SPIFFE workload identities of the form `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! This is the only identity shape Istio ambient uses; parsing is strict so a
//! certificate with a surprising URI SAN is rejected instead of half-understood.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The URI does not start with `spiffe://`.
    #[error("invalid identity {uri:?}: must start with \"spiffe://\" (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")]
    Scheme {
        /// The offending input.
        uri: String,
    },
    /// The trust domain is empty or has characters SPIFFE does not allow.
    #[error("invalid identity {uri:?}: trust domain {trust_domain:?} {reason} (allowed: lowercase letters, digits, '.', '-', '_')")]
    TrustDomain {
        /// The offending input.
        uri: String,
        /// The trust domain as found.
        trust_domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service-account>`.
    #[error("invalid identity {uri:?}: path must be /ns/<namespace>/sa/<service-account>")]
    Path {
        /// The offending input.
        uri: String,
    },
    /// The namespace or service account segment is invalid.
    #[error("invalid identity {uri:?}: {part} {value:?} {reason} (allowed: letters, digits, '.', '-', '_'; not \".\" or \"..\")")]
    Segment {
        /// The offending input.
        uri: String,
        /// Which segment: "namespace" or "service account".
        part: &'static str,
        /// The segment as found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A SPIFFE workload identity: trust domain, namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts without validating them (use `parse` for untrusted input).
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Identity {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace part.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account part.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Checks a trust domain against the SPIFFE character set; returns the reason on failure.
pub(crate) fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("is empty");
    }
    let ok = td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err("has a character outside the allowed set");
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), &'static str> {
    if seg.is_empty() {
        return Err("is empty");
    }
    // "." and ".." would make the URI path ambiguous after normalisation.
    if seg == "." || seg == ".." {
        return Err("is a relative path segment");
    }
    let ok = seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err("has a character outside the allowed set");
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Err(IdentityError::Scheme { uri: uri.into() });
        };
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(td).map_err(|reason| IdentityError::TrustDomain {
            uri: uri.into(),
            trust_domain: td.into(),
            reason,
        })?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, ns, sa_key, sa] = parts.as_slice() else {
            return Err(IdentityError::Path { uri: uri.into() });
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(IdentityError::Path { uri: uri.into() });
        }
        for (part, value) in [("namespace", ns), ("service account", sa)] {
            check_segment(value).map_err(|reason| IdentityError::Segment {
                uri: uri.into(),
                part,
                value: (*value).into(),
                reason,
            })?;
        }
        Ok(Identity::new(td, *ns, *sa))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let good = [
            (
                "spiffe://cluster.local/ns/default/sa/bookinfo",
                ("cluster.local", "default", "bookinfo"),
            ),
            (
                "spiffe://td_1-x/ns/A.b-c_d/sa/SA-1",
                ("td_1-x", "A.b-c_d", "SA-1"),
            ),
        ];
        for (uri, (td, ns, sa)) in good {
            let id: Identity = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id, Identity::new(td, ns, sa));
            assert_eq!(id.to_string(), uri, "display must round-trip");
        }

        type Check = fn(&IdentityError) -> bool;
        let bad: [(&str, Check); 13] = [
            ("", |e| matches!(e, IdentityError::Scheme { .. })),
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::Scheme { .. })
            }),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::Scheme { .. })
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdentityError::TrustDomain { .. })
            }),
            ("spiffe://Cluster.Local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::TrustDomain { .. })
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/sa/a/ns/b", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(
                    e,
                    IdentityError::Segment {
                        part: "namespace",
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a/sa/", |e| {
                matches!(
                    e,
                    IdentityError::Segment {
                        part: "service account",
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/../sa/b", |e| {
                matches!(e, IdentityError::Segment { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
                matches!(e, IdentityError::Segment { .. })
            }),
        ];
        for (uri, check) in bad {
            match uri.parse::<Identity>() {
                Ok(id) => panic!("{uri:?} parsed as {id}"),
                Err(e) => {
                    assert!(check(&e), "{uri:?}: unexpected error {e:?}");
                    assert!(e.to_string().contains("invalid identity"), "{e}");
                }
            }
        }
    }

    #[test]
    fn serde_uses_the_uri_string() {
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"spiffe://cluster.local/ns/ns1/sa/sa1\"");
        let back: Identity = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
        let err = serde_json::from_str::<Identity>("\"spiffe://x/ns/a\"").unwrap_err();
        assert!(err.to_string().contains("path must be"), "{err}");
    }
}
