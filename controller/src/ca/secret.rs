//! The CA's files from a Kubernetes Secret (Istio's `cacerts` layout:
//! `root-cert.pem`, `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`), read once
//! through the API at start, so the key never has to be mounted on disk.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::keys::{Ca, KeyFiles, KeysError};
use crate::kube::{Client, ClientError};

/// Why the CA could not be read from its Secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("--ca-secret {0:?}: give it as <namespace>/<name>, e.g. istio-system/cacerts")]
    Name(String),
    #[error("cannot read the CA secret {name}: {source}; the controller needs get on secrets in that namespace")]
    Api {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("CA secret {name}: {detail}")]
    Shape { name: String, detail: String },
    #[error(transparent)]
    Keys(#[from] KeysError),
}

/// `namespace/name`, both non-empty and without further slashes.
pub fn parse_name(s: &str) -> Result<(&str, &str), SecretError> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(SecretError::Name(s.into())),
    }
}

/// The Secret's `data`, base64-decoded by key.
pub fn decode_data(name: &str, secret: &Value) -> Result<BTreeMap<String, Vec<u8>>, SecretError> {
    let shape = |detail: String| SecretError::Shape {
        name: name.into(),
        detail,
    };
    let data = match secret.get("data") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(shape("data is not a map".into())),
        None => return Err(shape("it has no data".into())),
    };
    data.iter()
        .map(|(key, v)| {
            let text = v
                .as_str()
                .ok_or_else(|| shape(format!("data.{key} is not a string")))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| shape(format!("data.{key} is not base64: {e}")))?;
            Ok((key.clone(), bytes))
        })
        .collect()
}

/// Reads and checks the CA from the Secret `namespace/name`.
pub async fn load(client: &Client, secret: &str) -> Result<Ca, SecretError> {
    let (ns, name) = parse_name(secret)?;
    let value = client
        .get(&format!("/api/v1/namespaces/{ns}/secrets/{name}"))
        .await
        .map_err(|source| SecretError::Api {
            name: secret.into(),
            source,
        })?;
    let data = decode_data(secret, &value)?;
    Ok(Ca::from_files(&KeyFiles::Secret {
        name: secret,
        data: &data,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespace_slash_name() {
        for (input, ok) in [
            ("istio-system/cacerts", Some(("istio-system", "cacerts"))),
            ("cacerts", None),
            ("/cacerts", None),
            ("istio-system/", None),
            ("a/b/c", None),
        ] {
            assert_eq!(parse_name(input).ok(), ok, "{input}");
        }
    }

    #[test]
    fn data_is_decoded_and_bad_shapes_are_named() {
        let ok = serde_json::json!({"data": {"ca-cert.pem": "aGVsbG8="}});
        let data = decode_data("ns/s", &ok).expect("decodes");
        assert_eq!(data["ca-cert.pem"], b"hello");
        for (secret, want) in [
            (serde_json::json!({}), "no data"),
            (serde_json::json!({"data": []}), "not a map"),
            (
                serde_json::json!({"data": {"k": 1}}),
                "data.k is not a string",
            ),
            (
                serde_json::json!({"data": {"k": "%%"}}),
                "data.k is not base64",
            ),
        ] {
            let e = decode_data("ns/s", &secret)
                .expect_err("bad shape")
                .to_string();
            assert!(e.contains(want) && e.contains("ns/s"), "{e}");
        }
    }

    #[test]
    fn a_missing_key_names_the_secret_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ca::init(dir.path(), "cluster.local", false).expect("init");
        let mut data = BTreeMap::new();
        for file in ["root-cert.pem", "ca-cert.pem", "cert-chain.pem"] {
            data.insert(
                file.to_string(),
                std::fs::read(dir.path().join(file)).expect("read"),
            );
        }
        let files = KeyFiles::Secret {
            name: "istio-system/cacerts",
            data: &data,
        };
        let e = Ca::from_files(&files).expect_err("no key").to_string();
        assert!(
            e.contains("istio-system/cacerts") && e.contains("ca-key.pem"),
            "{e}"
        );
        data.insert(
            "ca-key.pem".into(),
            std::fs::read(dir.path().join("ca-key.pem")).expect("read"),
        );
        let files = KeyFiles::Secret {
            name: "istio-system/cacerts",
            data: &data,
        };
        let ca = Ca::from_files(&files).expect("complete secret loads");
        assert_eq!(ca.roots().len(), 1);
    }
}
