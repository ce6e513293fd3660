//! Bootstrap tokens from a YAML file, for manifests mode (no Kubernetes to
//! ask with a TokenReview):
//!
//! ```yaml
//! tokens:
//! - token: "s3cret-a"
//!   nodeProxy: { node: node-a }
//! - token: "s3cret-w"
//!   waypoint: { spiffeId: "spiffe://cluster.local/ns/default/sa/waypoint" }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::Deserialize;

use super::{AuthError, Authenticator, Caller};

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("token file {path}, entry #{index}: {reason}")]
    Entry {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    token: String,
    #[serde(default)]
    node_proxy: Option<NodeProxy>,
    #[serde(default)]
    waypoint: Option<Waypoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeProxy {
    node: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Waypoint {
    spiffe_id: String,
}

/// Callers known by their bootstrap tokens.
pub struct TokenFile {
    entries: Vec<(Vec<u8>, Caller)>,
}

impl std::fmt::Debug for TokenFile {
    // Never print the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl TokenFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<TokenFile, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TokenFile::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TokenFile, TokenFileError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| TokenFileError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut entries: Vec<(Vec<u8>, Caller)> = Vec::with_capacity(file.tokens.len());
        for (index, e) in file.tokens.into_iter().enumerate() {
            let bad = |reason: String| TokenFileError::Entry {
                path: path.to_path_buf(),
                index,
                reason,
            };
            let token = e.token.trim();
            if token.is_empty() {
                return Err(bad("token is empty".into()));
            }
            if let Some(first) = entries.iter().position(|(t, _)| t == token.as_bytes()) {
                return Err(bad(format!(
                    "token repeats entry #{first}'s; each caller needs its own"
                )));
            }
            let caller = match (e.node_proxy, e.waypoint) {
                (Some(n), None) if !n.node.is_empty() => Caller::NodeProxy { node: n.node },
                (Some(_), None) => return Err(bad("nodeProxy.node is empty".into())),
                (None, Some(w)) => {
                    w.spiffe_id
                        .parse::<hbone::Identity>()
                        .map_err(|err| bad(format!("waypoint.spiffeId: {err}")))?;
                    Caller::Waypoint {
                        spiffe_id: w.spiffe_id,
                    }
                }
                (None, None) => {
                    return Err(bad("give one of nodeProxy or waypoint".into()));
                }
                (Some(_), Some(_)) => {
                    return Err(bad("give nodeProxy or waypoint, not both".into()));
                }
            };
            entries.push((token.as_bytes().to_vec(), caller));
        }
        Ok(TokenFile { entries })
    }

    /// The caller holding `token`, comparing every entry in full so the time
    /// taken does not tell how much of a guess was right.
    pub fn lookup(&self, token: &str) -> Option<&Caller> {
        let mut found = None;
        for (t, caller) in &self.entries {
            if constant_time_eq(t, token.as_bytes()) {
                found = Some(caller);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret enough to hide; the content is.
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        let result = self
            .lookup(token)
            .cloned()
            .ok_or_else(|| AuthError::Invalid("not in the bootstrap token file".into()));
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests;
