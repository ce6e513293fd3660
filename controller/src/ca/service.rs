//! Istio's `IstioCertificateService/CreateCertificate`: authenticate the
//! bearer token, authorize the identity against the current mesh, sign.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use trellis_api::config::LocalConfig;
use trellis_api::pb::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use trellis_api::pb::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

use super::authorize::{authorize, requested_identity, Denied, MeshIndex, IMPERSONATED_IDENTITY};
use super::keys::Ca;
use super::sign::{sign, Csr, SignError};
use crate::auth::{bearer, AuthError, Authenticator};

/// The longest certificate life given when the caller does not ask for less (Istio's default).
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// What the CA has done since start, for /metrics.
#[derive(Debug, Default)]
pub struct CaMetrics {
    issued: AtomicU64,
    refused: AtomicU64,
}

/// A copy of [`CaMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaMetricsSnapshot {
    /// Certificates signed.
    pub issued: u64,
    /// Requests refused: bad token, identity not allowed, or bad CSR.
    pub refused: u64,
}

impl CaMetrics {
    pub fn read(&self) -> CaMetricsSnapshot {
        CaMetricsSnapshot {
            issued: self.issued.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// The CA's gRPC service.
pub struct CaService {
    metrics: Arc<CaMetrics>,
    ca: Arc<Ca>,
    auth: Arc<dyn Authenticator>,
    mesh: watch::Receiver<Arc<LocalConfig>>,
    max_validity: Duration,
    // The index of the last mesh seen: rebuilt only when the mesh changes.
    index: Mutex<Option<(Arc<LocalConfig>, Arc<MeshIndex>)>>,
}

impl CaService {
    /// A service signing with `ca`, for callers `auth` knows, for identities
    /// scheduled in the current `mesh`, for at most `max_validity`.
    pub fn new(
        ca: Arc<Ca>,
        auth: Arc<dyn Authenticator>,
        mesh: watch::Receiver<Arc<LocalConfig>>,
        max_validity: Duration,
    ) -> CaService {
        CaService {
            metrics: Arc::default(),
            ca,
            auth,
            mesh,
            max_validity,
            index: Mutex::new(None),
        }
    }

    /// Its counters; read them while it serves.
    pub fn metrics(&self) -> Arc<CaMetrics> {
        self.metrics.clone()
    }

    /// The tonic service to add to the controller's gRPC server.
    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    fn mesh_index(&self) -> Arc<MeshIndex> {
        let mesh = self.mesh.borrow().clone();
        let mut cached = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, index)) = cached.as_ref() {
            if Arc::ptr_eq(seen, &mesh) {
                return index.clone();
            }
        }
        let index = Arc::new(MeshIndex::new(&mesh));
        *cached = Some((mesh, index.clone()));
        index
    }
}

fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
        AuthError::Missing | AuthError::Invalid(_) => Status::unauthenticated(e.to_string()),
    }
}

fn sign_status(e: SignError) -> Status {
    match e {
        SignError::Sign(_) => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn denied_status(e: Denied) -> Status {
    if e.is_invalid_request() {
        Status::invalid_argument(e.to_string())
    } else {
        Status::permission_denied(e.to_string())
    }
}

/// The `ImpersonatedIdentity` string in the request's metadata, if any.
fn impersonated(req: &IstioCertificateRequest) -> Result<Option<&str>, Status> {
    use prost_types::value::Kind;
    let Some(value) = req
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
        _ => Err(Status::invalid_argument(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string spiffe id"
        ))),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let answer = self.create(request).await;
        let counter = match &answer {
            Ok(_) => &self.metrics.issued,
            Err(_) => &self.metrics.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }
}

impl CaService {
    async fn create(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let token = bearer(header).map_err(auth_status)?;
        let caller = self.auth.authenticate(token).await.map_err(|e| {
            tracing::warn!(error = %e, "certificate request refused: unauthenticated");
            auth_status(e)
        })?;
        let req = request.get_ref();
        let csr = Csr::parse(&req.csr).map_err(sign_status)?;
        let identity = requested_identity(&csr.identity().to_string(), impersonated(req)?)
            .map_err(denied_status)?;
        if let Err(denied) = authorize(&caller, &identity, &self.mesh_index()) {
            tracing::warn!(caller = ?caller, identity = %identity, reason = %denied, "certificate request refused");
            return Err(denied_status(denied));
        }
        let requested = u64::try_from(req.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let cert_chain = sign(&self.ca, &csr, requested, self.max_validity).map_err(sign_status)?;
        tracing::info!(caller = ?caller, identity = %identity, "issued workload certificate");
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
