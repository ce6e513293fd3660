//! Pure decisions of the source: how an API object becomes a store
//! document (what a watch line means is `trellis_kube::watch::step`). No
//! I/O here; the loop in [`super::source`] does what these return.

use serde_json::Value;

use super::resources::Resource;
use crate::objects::kinds::{parse_document, DocResult, Rejected};
use crate::objects::{DocRef, ObjectKey};

/// The store key and source name of an API object, or None when it has
/// no name (the API server never sends one).
pub(crate) fn key_of(res: &Resource, object: &Value) -> Option<(ObjectKey, String)> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = if res.kind.namespaced() {
        meta.get("namespace").and_then(Value::as_str).unwrap_or("")
    } else {
        ""
    };
    let source = source_name(res, namespace, name);
    Some((
        ObjectKey {
            kind: res.kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        source,
    ))
}

/// One store source per object, so an update replaces and a delete
/// removes exactly that object: `kube:Pod/ns/name`, `kube:Namespace/name`.
pub fn source_name(res: &Resource, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("kube:{}/{name}", res.kind.name())
    } else {
        format!("kube:{}/{namespace}/{name}", res.kind.name())
    }
}

/// Prepares an API object for the store's parser: list items lack
/// apiVersion and kind, and managedFields is bookkeeping nobody reads.
// DocResult is the store's own document type, handed straight to
// ObjectStore::replace_docs; boxing it here would only be undone there.
#[allow(clippy::result_large_err)]
pub(crate) fn to_doc(res: &Resource, mut object: Value, key: ObjectKey, source: &str) -> DocResult {
    if let Some(map) = object.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(res.api_version()));
        map.entry("kind")
            .or_insert_with(|| Value::String(res.kind.name().to_string()));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    let doc = DocRef {
        source: source.to_string(),
        index: 1,
    };
    match parse_document(&doc, object) {
        Ok(Some((k, o))) => Ok((doc, k, o)),
        Ok(None) => Err((
            doc.clone(),
            Rejected {
                key: Some(key),
                error: crate::objects::ObjectError::Malformed {
                    doc,
                    message: "empty object".into(),
                },
            },
        )),
        Err(error) => Err((
            doc,
            Rejected {
                key: Some(key),
                error,
            },
        )),
    }
}

#[cfg(test)]
mod tests;
