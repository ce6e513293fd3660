//! The bearer token a proxy sends to the controller.
//!
//! A token file is read again for every request (each xDS stream and each
//! CSR; a few per hour): the kubelet rotates a projected service-account
//! token well before it expires (1 h to 12 h), so a token read once at
//! start would be refused at the first reconnect or renewal after that. A
//! read that fails sends the last good token and logs why: the kubelet
//! swaps the file atomically, so a failure is an operator's problem to
//! see, and the controller's answer says whether the old token still
//! works.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tonic::metadata::{Ascii, MetadataValue};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    Empty(String),
}

#[derive(Clone)]
pub struct Token(Arc<Inner>);

enum Inner {
    Literal(String),
    File { path: PathBuf, last: Mutex<String> },
}

impl Token {
    /// A token given as is (tests, benchmarks).
    pub fn literal(token: impl Into<String>) -> Token {
        Token(Arc::new(Inner::Literal(token.into())))
    }

    /// A token file, read now so that a missing or empty file is a start-up
    /// error, then again for every request.
    pub fn file(path: &Path) -> Result<Token, TokenError> {
        let first = read(path)?;
        Ok(Token(Arc::new(Inner::File {
            path: path.to_owned(),
            last: Mutex::new(first),
        })))
    }

    /// The token to send now.
    pub fn current(&self) -> String {
        match &*self.0 {
            Inner::Literal(t) => t.clone(),
            Inner::File { path, last } => {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                match read(path) {
                    Ok(t) => {
                        if *last != t {
                            tracing::info!(file = %path.display(), "token file changed; sending the new token");
                            *last = t;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sending the last token read instead")
                    }
                }
                last.clone()
            }
        }
    }

    /// The `authorization` header value.
    pub fn bearer(&self) -> Result<MetadataValue<Ascii>, tonic::Status> {
        super::bearer(&self.current())
    }
}

fn read(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    Ok(t.to_owned())
}

impl From<String> for Token {
    fn from(t: String) -> Token {
        Token::literal(t)
    }
}

impl From<&str> for Token {
    fn from(t: &str) -> Token {
        Token::literal(t)
    }
}

/// The same source: equal literals, or the same file.
impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        match (&*self.0, &*other.0) {
            (Inner::Literal(a), Inner::Literal(b)) => a == b,
            (Inner::File { path: a, .. }, Inner::File { path: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// Never prints the token itself.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Inner::Literal(_) => f.write_str("Token(literal)"),
            Inner::File { path, .. } => write!(f, "Token(file {})", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_file_is_sent_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("istio-token");
        assert!(matches!(Token::file(&path), Err(TokenError::Read { .. })));
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(Token::file(&path), Err(TokenError::Empty(_))));

        std::fs::write(&path, "first\n").unwrap();
        let t = Token::file(&path).unwrap();
        assert_eq!(t.current(), "first");
        // The kubelet writes a new token beside it and renames it over.
        let next = dir.path().join("..new");
        std::fs::write(&next, "second").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(t.current(), "second");
        assert_eq!(t.bearer().unwrap(), "Bearer second");
        // Gone or emptied: the last good token is still sent.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t.current(), "second");
        std::fs::write(&path, "").unwrap();
        assert_eq!(t.current(), "second");
        assert_eq!(Token::literal("x").current(), "x");
        assert!(
            !format!("{t:?}").contains("second"),
            "Debug never shows the token"
        );
    }
}
