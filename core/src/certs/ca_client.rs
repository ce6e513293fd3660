//! An [`Issuer`] that gets workload certificates from the controller's CA
//! (Istio's `CreateCertificate`), on a thread of its own.
//!
//! The data path calls [`Issuer::issue`] on a cache miss and must never wait
//! on the network, so `issue` only answers from what this issuer holds: a
//! still-valid certificate, or [`IssueError::NotYetIssued`] after queueing a
//! fetch. The thread runs a current-thread runtime that fetches, renews each
//! certificate at half its life, and retries failures with jittered
//! exponential backoff. Every request uses a new key pair.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hbone::{Identity, TrustBundle, WorkloadCert};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use trellis_api::pb::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_api::pb::istio::v1::auth::IstioCertificateRequest;

use super::{IssueError, Issuer};

/// The lifetime asked for when prefetching; the CA may cap it.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two attempts for one identity.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The metadata key naming the identity a node proxy asks for on a pod's behalf.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// What the CA client reports on `/metrics`: a proxy that cannot renew
/// keeps serving with the certificates it holds, so this is where an
/// operator sees the CA is unreachable before anything expires.
#[derive(Debug)]
pub struct CaMetrics {
    success: IntCounter,
    failure: IntCounter,
    /// Identities whose last request failed.
    failing: IntGauge,
    failing_count: AtomicI64,
}

impl CaMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Arc<CaMetrics> {
        let vec = IntCounterVec::new(
            Opts::new(
                "trellis_ca_requests_total",
                "Certificate requests to the controller's CA, by result; a failure keeps the certificate held until it expires and retries with backoff",
            ),
            &["result"],
        )
        .expect("static metric definition is valid");
        crate::metrics::register(registry, &vec);
        let failing = IntGauge::new(
            "trellis_ca_identities_failing",
            "Identities whose last certificate request failed (their held certificate, if any, is still served until it expires)",
        )
        .expect("static metric definition is valid");
        crate::metrics::register(registry, &failing);
        Arc::new(CaMetrics {
            success: vec.with_label_values(&["success"]),
            failure: vec.with_label_values(&["failure"]),
            failing,
            failing_count: AtomicI64::new(0),
        })
    }

    /// Records one request's outcome; `was_failing` is the identity's state before.
    fn record(&self, ok: bool, was_failing: bool) {
        let delta = match (ok, was_failing) {
            (true, true) => -1,
            (false, false) => 1,
            _ => 0,
        };
        if ok {
            self.success.inc();
        } else {
            self.failure.inc();
        }
        let n = self.failing_count.fetch_add(delta, Ordering::Relaxed) + delta;
        self.failing.set(n);
    }

    pub fn successes(&self) -> u64 {
        self.success.get()
    }

    pub fn failures(&self) -> u64 {
        self.failure.get()
    }

    pub fn identities_failing(&self) -> i64 {
        self.failing.get()
    }
}

/// Where the CA is and how to talk to it.
#[derive(Clone)]
pub struct CaClientConfig {
    /// `host:port` of the controller's TLS gRPC port (15012).
    pub address: String,
    /// The DNS name in the controller's serving certificate, e.g. `istiod.istio-system.svc`.
    pub server_name: String,
    /// The mesh root(s), PEM: trusted for the controller and returned as the trust bundle.
    pub root_pem: String,
    /// Sent as `authorization: Bearer <token>` (a file is read per request).
    pub token: crate::control::Token,
    /// Node proxies set this: each request names its pod's identity in the
    /// `ImpersonatedIdentity` metadata too.
    pub impersonate: bool,
    /// SO_MARK of the connections to the CA (see [`crate::control::channel`]).
    pub socket_mark: Option<u32>,
}

impl std::fmt::Debug for CaClientConfig {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClientConfig")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

/// Why the CA client could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("ca root pem: {0}; pass the mesh's root-cert.pem")]
    Roots(#[source] hbone::TlsError),
    #[error("ca client: {0}")]
    Channel(#[from] crate::control::ChannelError),
    #[error("cannot start the ca client thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why one fetch failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot make a key or csr: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the ca refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("the ca's certificate chain is unusable: {0}")]
    Chain(#[from] hbone::TlsError),
    #[error("the ca issued {got} but {want} was asked for")]
    WrongIdentity { want: Identity, got: Identity },
}

#[derive(Default)]
struct Slot {
    cert: Option<WorkloadCert>,
    /// A fetch loop owns this identity: it fetches, renews and retries.
    owned: bool,
}

type Slots = Arc<Mutex<HashMap<Identity, Slot>>>;

/// Certificates from the controller's CA.
pub struct CaIssuer {
    slots: Slots,
    requests: mpsc::UnboundedSender<(Identity, Duration)>,
    bundle: TrustBundle,
    /// Bumped by the client thread each time a certificate lands.
    arrivals: watch::Receiver<u64>,
}

impl CaIssuer {
    /// Checks the config and starts the client thread. Nothing is fetched
    /// until [`issue`](Issuer::issue) or [`prefetch`](CaIssuer::prefetch).
    pub fn start(config: CaClientConfig) -> Result<CaIssuer, CaClientError> {
        Self::start_with_metrics(config, CaMetrics::new(&Registry::new()))
    }

    /// [`CaIssuer::start`], reporting on `metrics` (the proxy's registry).
    pub fn start_with_metrics(
        config: CaClientConfig,
        metrics: Arc<CaMetrics>,
    ) -> Result<CaIssuer, CaClientError> {
        let bundle = TrustBundle::from_pem(&config.root_pem).map_err(CaClientError::Roots)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CaClientError::Thread)?;
        // The channel spawns its connection task onto the runtime it is made in.
        let channel = {
            let _in_runtime = runtime.enter();
            crate::control::channel(
                &config.address,
                &config.server_name,
                &bundle,
                config.socket_mark,
            )?
        };
        let slots: Slots = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let (arrived, arrivals) = watch::channel(0u64);
        let client = Client {
            channel,
            token: config.token,
            impersonate: config.impersonate,
            slots: slots.clone(),
            arrived,
            metrics,
        };
        std::thread::Builder::new()
            .name("trellis-ca-client".into())
            // Ends when the issuer is dropped: the request channel closes,
            // and dropping the runtime cancels every fetch loop.
            .spawn(move || runtime.block_on(client.run(rx)))
            .map_err(CaClientError::Thread)?;
        Ok(CaIssuer {
            slots,
            requests: tx,
            bundle,
            arrivals,
        })
    }

    /// Queues a fetch loop for `id` unless one runs already.
    fn request(&self, id: &Identity, validity: Duration) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(id.clone()).or_default();
        if !slot.owned {
            slot.owned = true;
            if self.requests.send((id.clone(), validity)).is_err() {
                tracing::error!(identity = %id, "ca client thread is gone; no certificate will come");
            }
        }
    }
}

impl Issuer for CaIssuer {
    fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, IssueError> {
        {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cert) = slots.get(id).and_then(|s| s.cert.as_ref()) {
                // Held and still valid, even if its renewal is due or failing.
                if cert.not_after() > SystemTime::now() {
                    return Ok(cert.clone());
                }
            }
        }
        self.request(id, validity);
        Err(IssueError::NotYetIssued)
    }

    fn trust_bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    /// Requests certificates for `ids` ahead of need (the proxy's local
    /// workloads); identities already held or awaited are left alone.
    fn prefetch(&self, ids: &[Identity]) {
        for id in ids {
            self.request(id, DEFAULT_VALIDITY);
        }
    }

    fn arrivals(&self) -> Option<watch::Receiver<u64>> {
        Some(self.arrivals.clone())
    }
}

/// The wait before attempt `failures + 1`: doubling from 200 ms, capped at
/// [`MAX_BACKOFF`], then scaled by `jitter` in [0.5, 1) so a fleet of proxies
/// that lost the CA together does not come back together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.min(16));
    exp.min(MAX_BACKOFF).mul_f64(jitter.clamp(0.5, 1.0))
}

/// When to renew a certificate received at `now` that expires at `not_after`: half its life.
pub fn renew_in(now: SystemTime, not_after: SystemTime) -> Duration {
    not_after.duration_since(now).unwrap_or_default() / 2
}

struct Client {
    channel: Channel,
    token: crate::control::Token,
    impersonate: bool,
    slots: Slots,
    arrived: watch::Sender<u64>,
    metrics: Arc<CaMetrics>,
}

impl Client {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<(Identity, Duration)>) {
        let this = Arc::new(self);
        while let Some((id, validity)) = rx.recv().await {
            tokio::spawn(this.clone().keep(id, validity));
        }
    }

    /// Fetches `id`, then renews it at half-life, forever; retries with backoff.
    async fn keep(self: Arc<Self>, id: Identity, validity: Duration) {
        let mut failures = 0u32;
        loop {
            let result = self.fetch(&id, validity).await;
            self.metrics.record(result.is_ok(), failures > 0);
            match result {
                Ok(cert) => {
                    failures = 0;
                    let wait = renew_in(SystemTime::now(), cert.not_after());
                    tracing::info!(identity = %id, renew_in = ?wait, "workload certificate from the ca");
                    self.slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(id.clone())
                        .or_default()
                        .cert = Some(cert);
                    // Wakes connections waiting for a first certificate.
                    self.arrived.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let wait = backoff(failures, 0.5 + fastrand::f64() / 2.0);
                    failures = failures.saturating_add(1);
                    let held = self
                        .slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .and_then(|s| s.cert.as_ref().map(|c| c.not_after()));
                    match held {
                        Some(not_after) => {
                            tracing::warn!(identity = %id, error = %e, retry_in = ?wait, expires_in = ?not_after.duration_since(SystemTime::now()).unwrap_or_default(), "cannot renew a workload certificate; the held one is served until it expires")
                        }
                        None => {
                            tracing::warn!(identity = %id, error = %e, retry_in = ?wait, "cannot get a workload certificate from the ca")
                        }
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn fetch(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, FetchError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let uri = rcgen::string::Ia5String::try_from(id.to_string())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key)?.pem()?;
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        request
            .metadata_mut()
            .insert("authorization", self.token.bearer()?);
        let response = IstioCertificateServiceClient::new(self.channel.clone())
            .create_certificate(request)
            .await?
            .into_inner();
        let cert = WorkloadCert::from_pem(&response.cert_chain.concat(), &key.serialize_pem())?;
        if cert.identity() != id {
            return Err(FetchError::WrongIdentity {
                want: id.clone(),
                got: cert.identity().clone(),
            });
        }
        Ok(cert)
    }
}

#[cfg(test)]
mod tests;
