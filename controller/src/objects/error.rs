//! The one error type of the objects side: what an operator reads when a
//! manifest is rejected or cannot be translated. Its `Display` is the whole
//! operator message.

use std::fmt;

use super::kinds::Kind;

/// Where a document came from: the source (a file path, or
/// `kube:<Kind>/<namespace>/<name>` for an object from the API server)
/// and its index in that source (0-based, as `---` separates documents).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocRef {
    pub source: String,
    pub index: usize,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Kubernetes source holds one object per source (kube/event.rs).
        match self.source.strip_prefix("kube:") {
            Some(object) => write!(f, "Kubernetes object {object}"),
            None => write!(f, "file {}, document {}", self.source, self.index),
        }
    }
}

/// Why an object was rejected, or dropped from the translation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The document is not YAML/JSON, or not a mapping.
    #[error("{doc}: not a valid manifest: {message}; fix the YAML syntax there")]
    Malformed { doc: DocRef, message: String },
    /// apiVersion/kind is not one Trellis reads.
    #[error("{doc}: unsupported kind {api_version}/{kind}{}; supported kinds are: {}", name_part(.name), Kind::supported_list())]
    UnknownKind {
        doc: DocRef,
        api_version: String,
        kind: String,
        name: Option<String>,
    },
    /// The document has the right kind but does not fit its schema
    /// (a wrong type, a missing or unknown field, an unsupported value).
    #[error("{doc}: {kind} {name}: {message}")]
    Invalid {
        doc: DocRef,
        kind: String,
        name: String,
        message: String,
    },
    /// Two sources define the same object; the first (by source name) wins.
    #[error("{kind} {name} is defined twice: in {first} and in {second}; the one in {first} is used, remove the other")]
    Duplicate {
        kind: String,
        name: String,
        first: DocRef,
        second: DocRef,
    },
    /// A valid object that cannot be turned into config; it is left out (or
    /// translated without the offending part, as the message says).
    #[error("{kind} {name}: {message}")]
    Translate {
        kind: String,
        name: String,
        message: String,
    },
}

fn name_part(name: &Option<String>) -> String {
    match name {
        Some(n) => format!(" (named {n})"),
        None => String::new(),
    }
}
