//! A small API server client: JSON requests and watch streams over HTTP/1.1
//! and TLS, one connection per request. Its users make few requests (the
//! controller: a list per kind at start and after a 410, one long watch per
//! kind, TokenReviews behind a cache; the CNI agent: two watches and a GET
//! per pod sandbox), so a pool would add more than it saves, and a watch
//! that owns its connection fails on its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::{ApiConfig, Credentials};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A list or a TokenReview: the whole answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest JSON answer or watch event read. The biggest objects Trellis
/// reads are CRDs' instances; a bigger body means something is wrong.
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the API server {server}: {message}; check the server URL and that it is reachable")]
    Connect { server: String, message: String },
    #[error("TLS with the API server {server} failed: {message}; check the certificate-authority in the kubeconfig")]
    Tls { server: String, message: String },
    #[error("cannot read the API token {path}: {message}")]
    Token { path: String, message: String },
    #[error("HTTP to the API server failed during {what}: {message}")]
    Http { what: String, message: String },
    #[error("the API server did not answer {what} within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("the API server answered {what} with {code}: {message}{}", status_hint(*.code))]
    Status {
        what: String,
        code: u16,
        message: String,
    },
    #[error("the API server's answer to {what} is not what was expected: {message}")]
    Decode { what: String, message: String },
}

fn status_hint(code: u16) -> &'static str {
    match code {
        401 => "; the API server did not accept the credentials: check the kubeconfig's token or client certificate (in a cluster: the service account token)",
        403 => "; the service account lacks an RBAC permission for this request: compare its ClusterRole with the deploy/daemonset RBAC",
        _ => "",
    }
}

impl ClientError {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A cheap handle to the API server; clones share the config.
#[derive(Clone, Debug)]
pub struct Client {
    cfg: Arc<ApiConfig>,
    user_agent: &'static str,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    pub fn new(cfg: ApiConfig) -> Self {
        Client {
            cfg: Arc::new(cfg),
            user_agent: "trellis",
        }
    }

    /// Names the component in the API server's audit log.
    pub fn with_user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = user_agent;
        self
    }

    pub fn server(&self) -> &str {
        &self.cfg.server
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let cfg = &self.cfg;
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
        let connect_err = |message: String| ClientError::Connect {
            server: cfg.server.clone(),
            message,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, cfg.port)))
            .await
            .map_err(|_| {
                connect_err(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(cfg.tls.clone());
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connector.connect(cfg.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| ClientError::Tls {
            server: cfg.server.clone(),
            message: "no handshake within 10 s".into(),
        })?
        .map_err(|e| ClientError::Tls {
            server: cfg.server.clone(),
            message: e.to_string(),
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http {
                what: "the handshake".into(),
                message: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API server connection ended");
            }
        });
        Ok(sender)
    }

    fn authorization(&self) -> Result<Option<String>, ClientError> {
        match &self.cfg.credentials {
            Credentials::None => Ok(None),
            Credentials::Token(t) => Ok(Some(format!("Bearer {t}"))),
            Credentials::TokenFile(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| ClientError::Token {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                Ok(Some(format!("Bearer {}", t.trim())))
            }
        }
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        self.send_as(method, path, body, "application/json").await
    }

    /// [`Client::send`] with the body's content type (a PATCH names its
    /// patch strategy that way).
    async fn send_as(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
        content_type: &'static str,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let what = format!("{method} {}", strip_query(path));
        let mut sender = self.connect().await?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(
                http::header::HOST,
                format!("{}:{}", self.cfg.host, self.cfg.port),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, self.user_agent);
        if let Some(auth) = self.authorization()? {
            req = req.header(http::header::AUTHORIZATION, auth);
        }
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| ClientError::Http {
            what: what.clone(),
            message: e.to_string(),
        })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http {
                what: what.clone(),
                message: e.to_string(),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let body = read_body(resp.into_body(), &what).await.unwrap_or_default();
        Err(ClientError::Status {
            what,
            code,
            message: status_message(&body),
        })
    }

    /// One JSON request, answered within [`REQUEST_TIMEOUT`].
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.request_as(method, path, body, "application/json")
            .await
    }

    async fn request_as(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
        content_type: &'static str,
    ) -> Result<Value, ClientError> {
        let what = format!("{method} {}", strip_query(path));
        let fut = async {
            let resp = self.send_as(method, path, body, content_type).await?;
            let bytes = read_body(resp.into_body(), &what).await?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                what: what.clone(),
                message: e.to_string(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                what: what.clone(),
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(http::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(http::Method::POST, path, Some(body)).await
    }

    /// Server-side apply of `object` (a full object of the fields this
    /// manager owns) as `field_manager`, taking over fields another
    /// manager set (`force`): the same apply from any replica is a no-op.
    /// JSON is YAML, so the body goes as JSON.
    pub async fn apply(
        &self,
        path: &str,
        field_manager: &str,
        object: &Value,
    ) -> Result<Value, ClientError> {
        let path = format!("{path}?fieldManager={field_manager}&force=true");
        self.request_as(
            http::Method::PATCH,
            &path,
            Some(object),
            "application/apply-patch+yaml",
        )
        .await
    }

    /// DELETE, with DeleteOptions (preconditions, propagation) as the body.
    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value, ClientError> {
        self.request(http::Method::DELETE, path, Some(options))
            .await
    }

    /// Starts a watch; `path` carries `watch=1` and its other parameters.
    pub async fn watch(&self, path: &str) -> Result<Lines, ClientError> {
        let what = format!("watch {}", strip_query(path));
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send(http::Method::GET, path, None))
            .await
            .map_err(|_| ClientError::Timeout {
                what: what.clone(),
                secs: REQUEST_TIMEOUT.as_secs(),
            })??;
        Ok(Lines {
            body: resp.into_body(),
            buf: BytesMut::new(),
            what,
        })
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// The `message` of a Kubernetes Status body, else the body itself.
fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

async fn read_body(mut body: Incoming, what: &str) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(ClientError::Decode {
                    what: what.to_string(),
                    message: format!("the body is larger than {MAX_BODY} bytes"),
                });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A watch's body, one JSON event per line.
pub struct Lines {
    body: Incoming,
    buf: BytesMut,
    what: String,
}

impl Lines {
    /// The next non-empty line; `None` when the server ended the watch.
    /// Waits at most `idle` for data: a silent connection is a dead one
    /// (the server sends bookmarks, and ends a watch at its timeout).
    pub async fn next_line(&mut self, idle: Duration) -> Result<Option<Bytes>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1).freeze();
                let line = line.slice(..i);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_BODY {
                return Err(ClientError::Decode {
                    what: self.what.clone(),
                    message: format!("a watch event is larger than {MAX_BODY} bytes"),
                });
            }
            let frame = tokio::time::timeout(idle, self.body.frame())
                .await
                .map_err(|_| ClientError::Timeout {
                    what: self.what.clone(),
                    secs: idle.as_secs(),
                })?;
            match frame {
                None => {
                    // A last event without a newline still counts.
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    let rest = std::mem::take(&mut self.buf).freeze();
                    return Ok(Some(rest));
                }
                Some(Err(e)) => {
                    return Err(ClientError::Http {
                        what: self.what.clone(),
                        message: e.to_string(),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            self.buf.extend_from_slice(chunk);
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}
