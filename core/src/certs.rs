//! Workload certificates and the TLS configs built from them.
//!
//! Certificates come from an [`Issuer`]. Either [`DevIssuer`]: the proxy holds
//! a dev CA and signs each local workload's SVID itself (tests, and the demo
//! without a controller); or [`ca_client::CaIssuer`], which speaks Istio's
//! CreateCertificate to the controller; once a controller is given, no proxy
//! holds a CA key.
//!
//! `Issuer::issue` is synchronous because the data path calls it on a cache
//! miss. An issuer that talks to a remote CA must therefore fetch and renew
//! ahead of time on its own thread and answer here from what it holds,
//! never block a worker on the network.
//!
//! TLS configs are cached because building one parses keys and roots, and a
//! new HBONE connection should not pay that.

pub mod ca_client;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use hbone::{DevCa, Identity, TrustBundle, WorkloadCert};
use rustls::{ClientConfig, ServerConfig};

/// How long issued workload certificates live; renewed at half-life.
const CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a new connection waits for a certificate a remote CA has not
/// delivered yet (a pod that just started), before it fails.
pub const CERT_WAIT: Duration = Duration::from_secs(5);

/// Where workload certificates come from.
pub trait Issuer: Send + Sync {
    /// A certificate for `id`, valid for about `validity` from now.
    fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, IssueError>;
    /// The roots a peer's certificate must chain to.
    fn trust_bundle(&self) -> TrustBundle;
    /// Starts getting certificates for `ids` before a connection needs
    /// them. An issuer that signs on the spot has nothing to do.
    fn prefetch(&self, _ids: &[Identity]) {}
    /// Changes each time a certificate arrives, for an issuer that can
    /// answer [`IssueError::NotYetIssued`]; None for one that never does.
    fn arrivals(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Why an issuer gave no certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the dev CA could not sign it: {0}")]
    DevCa(#[source] Box<hbone::CaError>),
    /// A remote CA has not answered for this identity yet (a connection
    /// waits [`CERT_WAIT`] for it first); the request is not repeated here.
    #[error("no certificate from the CA yet; it was requested and is awaited (is the controller reachable, and does it accept this proxy's token?)")]
    NotYetIssued,
}

/// Signs certificates with a CA key held in this process.
pub struct DevIssuer {
    ca: DevCa,
}

impl DevIssuer {
    pub fn new(ca: DevCa) -> DevIssuer {
        DevIssuer { ca }
    }
}

impl Issuer for DevIssuer {
    fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, IssueError> {
        self.ca
            .issue(id, validity)
            .map_err(|e| IssueError::DevCa(Box::new(e)))
    }

    fn trust_bundle(&self) -> TrustBundle {
        self.ca.trust_bundle()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot get a certificate for {identity}: {source}")]
    Issue {
        identity: Identity,
        #[source]
        source: IssueError,
    },
    #[error("cannot build a tls config for {identity}: {source}")]
    Tls {
        identity: Identity,
        #[source]
        source: Box<hbone::TlsError>,
    },
}

struct Issued {
    cert: WorkloadCert,
    server: Option<Arc<ServerConfig>>,
    clients: AHashMap<Identity, Arc<ClientConfig>>,
}

/// Issues and caches workload certificates and TLS configs.
pub struct CertManager {
    issuer: Box<dyn Issuer>,
    bundle: TrustBundle,
    issued: Mutex<AHashMap<Identity, Issued>>,
}

impl CertManager {
    /// A manager with a dev CA held in process: for tests and the demo.
    pub fn dev(ca: DevCa, extra_roots: Option<TrustBundle>) -> Self {
        Self::new(Box::new(DevIssuer::new(ca)), extra_roots)
    }

    /// Certificates from `issuer`; peers may chain to its roots or to
    /// `extra_roots` (a second mesh during migration, or a new root being
    /// rolled out).
    pub fn new(issuer: Box<dyn Issuer>, extra_roots: Option<TrustBundle>) -> Self {
        let mut bundle = issuer.trust_bundle();
        if let Some(extra) = extra_roots {
            bundle.merge(extra);
        }
        CertManager {
            issuer,
            bundle,
            issued: Mutex::new(AHashMap::new()),
        }
    }

    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Asks the issuer for `ids` ahead of need (a node's local workloads).
    pub fn prefetch(&self, ids: &[Identity]) {
        self.issuer.prefetch(ids);
    }

    fn with_issued<T>(
        &self,
        id: &Identity,
        f: impl FnOnce(&mut Issued, &TrustBundle) -> Result<T, CertError>,
    ) -> Result<T, CertError> {
        let mut map = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |i: &Issued| {
            i.cert
                .not_after()
                .duration_since(SystemTime::now())
                .map(|left| left > CERT_LIFETIME / 2)
                .unwrap_or(false)
        };
        if !map.get(id).is_some_and(fresh) {
            let cert = self
                .issuer
                .issue(id, CERT_LIFETIME)
                .map_err(|source| CertError::Issue {
                    identity: id.clone(),
                    source,
                })?;
            // A remote issuer answers with the certificate it holds until its
            // own renewal lands; keep the TLS configs built for that one.
            let same = map
                .get(id)
                .is_some_and(|held| held.cert.chain().first() == cert.chain().first());
            if same {
                let issued = map.get_mut(id).expect("checked above");
                return f(issued, &self.bundle);
            }
            tracing::info!(identity = %id, "issued workload certificate");
            map.insert(
                id.clone(),
                Issued {
                    cert,
                    server: None,
                    clients: AHashMap::new(),
                },
            );
        }
        let issued = map.get_mut(id).expect("inserted above");
        f(issued, &self.bundle)
    }

    /// The certificate for `id`, issuing or renewing it when needed.
    pub fn cert(&self, id: &Identity) -> Result<WorkloadCert, CertError> {
        self.with_issued(id, |i, _| Ok(i.cert.clone()))
    }

    /// Server config presenting `id`'s certificate and requiring a client certificate.
    pub fn server_config(&self, id: &Identity) -> Result<Arc<ServerConfig>, CertError> {
        self.with_issued(id, |i, bundle| {
            if let Some(c) = &i.server {
                return Ok(c.clone());
            }
            let c = hbone::server_config(&i.cert, bundle).map_err(|source| CertError::Tls {
                identity: id.clone(),
                source: Box::new(source),
            })?;
            i.server = Some(c.clone());
            Ok(c)
        })
    }

    /// Client config presenting `src`'s certificate and accepting only `expected` as the server.
    pub fn client_config(
        &self,
        src: &Identity,
        expected: &Identity,
    ) -> Result<Arc<ClientConfig>, CertError> {
        self.with_issued(src, |i, bundle| {
            if let Some(c) = i.clients.get(expected) {
                return Ok(c.clone());
            }
            let c = hbone::client_config(&i.cert, bundle, std::slice::from_ref(expected)).map_err(
                |source| CertError::Tls {
                    identity: src.clone(),
                    source: Box::new(source),
                },
            )?;
            i.clients.insert(expected.clone(), c.clone());
            Ok(c)
        })
    }

    /// [`server_config`](Self::server_config), waiting up to [`CERT_WAIT`]
    /// for a certificate the CA has not delivered yet.
    pub async fn server_config_ready(&self, id: &Identity) -> Result<Arc<ServerConfig>, CertError> {
        let first = self.server_config(id);
        if !not_yet_issued(&first) {
            return first;
        }
        // The cold path, boxed so the connection futures that await this
        // stay small.
        Box::pin(self.wait_for(|| self.server_config(id))).await
    }

    /// [`client_config`](Self::client_config), waiting up to [`CERT_WAIT`]
    /// for a certificate the CA has not delivered yet.
    pub async fn client_config_ready(
        &self,
        src: &Identity,
        expected: &Identity,
    ) -> Result<Arc<ClientConfig>, CertError> {
        let first = self.client_config(src, expected);
        if !not_yet_issued(&first) {
            return first;
        }
        Box::pin(self.wait_for(|| self.client_config(src, expected))).await
    }

    /// Retries `get` each time the issuer receives a certificate, until it
    /// gives something other than "not yet issued" or [`CERT_WAIT`] passes.
    async fn wait_for<T>(&self, get: impl Fn() -> Result<T, CertError>) -> Result<T, CertError> {
        let Some(mut arrivals) = self.issuer.arrivals() else {
            return get();
        };
        let deadline = tokio::time::Instant::now() + CERT_WAIT;
        loop {
            // Marked seen before the check: an arrival after it wakes us.
            arrivals.borrow_and_update();
            let got = get();
            if !not_yet_issued(&got) {
                return got;
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => continue,
                // Deadline passed, or the issuer is gone: the last answer stands.
                Ok(Err(_)) | Err(_) => return got,
            }
        }
    }

    /// Identities and expiry of the certificates held, for /config_dump.
    pub fn dump(&self) -> Vec<(String, SystemTime)> {
        let map = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(id, i)| (id.to_string(), i.cert.not_after()))
            .collect();
        v.sort();
        v
    }
}

fn not_yet_issued<T>(r: &Result<T, CertError>) -> bool {
    matches!(
        r,
        Err(CertError::Issue {
            source: IssueError::NotYetIssued,
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The dev issuer, counting the certificates it signs.
    struct Counting {
        dev: DevIssuer,
        issued: Arc<AtomicUsize>,
    }

    impl Issuer for Counting {
        fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, IssueError> {
            self.issued.fetch_add(1, Ordering::Relaxed);
            self.dev.issue(id, validity)
        }
        fn trust_bundle(&self) -> TrustBundle {
            self.dev.trust_bundle()
        }
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "demo", sa)
    }

    #[test]
    fn certificates_come_from_the_issuer_once_per_identity() {
        let issued = Arc::new(AtomicUsize::new(0));
        let ca = DevCa::generate("cluster.local").expect("dev ca");
        let other = DevCa::generate("cluster.local").expect("second ca");
        let m = CertManager::new(
            Box::new(Counting {
                dev: DevIssuer::new(ca),
                issued: issued.clone(),
            }),
            Some(other.trust_bundle()),
        );
        let a = m.cert(&id("a")).expect("issued");
        assert_eq!(a.identity(), &id("a"));
        m.server_config(&id("a")).expect("server config");
        m.client_config(&id("a"), &id("b")).expect("client config");
        assert_eq!(issued.load(Ordering::Relaxed), 1, "cached after the first");
        m.cert(&id("b")).expect("issued");
        assert_eq!(issued.load(Ordering::Relaxed), 2);
        assert_eq!(
            m.trust_bundle().roots().len(),
            2,
            "issuer's root and the extra one"
        );
        let left = a
            .not_after()
            .duration_since(SystemTime::now())
            .expect("valid");
        assert!(left > CERT_LIFETIME / 2 && left <= CERT_LIFETIME + Duration::from_secs(60));
    }

    /// An issuer handing out one held certificate, as a CA client does until
    /// its renewal lands; its life is short enough to look stale to the manager.
    struct Held(WorkloadCert, TrustBundle);

    impl Issuer for Held {
        fn issue(&self, _: &Identity, _: Duration) -> Result<WorkloadCert, IssueError> {
            Ok(self.0.clone())
        }
        fn trust_bundle(&self) -> TrustBundle {
            self.1.clone()
        }
    }

    #[test]
    fn the_same_certificate_again_keeps_its_tls_configs() {
        let ca = DevCa::generate("cluster.local").expect("dev ca");
        let cert = ca.issue(&id("a"), Duration::from_secs(600)).expect("issue");
        let m = CertManager::new(Box::new(Held(cert, ca.trust_bundle())), None);
        let first = m.server_config(&id("a")).expect("server config");
        let second = m.server_config(&id("a")).expect("server config");
        assert!(
            Arc::ptr_eq(&first, &second),
            "config rebuilt for the same cert"
        );
    }

    /// An issuer with nothing to give, as a CA client is before its first answer.
    struct Empty(TrustBundle);

    impl Issuer for Empty {
        fn issue(&self, _: &Identity, _: Duration) -> Result<WorkloadCert, IssueError> {
            Err(IssueError::NotYetIssued)
        }
        fn trust_bundle(&self) -> TrustBundle {
            self.0.clone()
        }
    }

    #[test]
    fn an_issuer_error_names_the_identity_and_is_not_cached() {
        let ca = DevCa::generate("cluster.local").expect("dev ca");
        let m = CertManager::new(Box::new(Empty(ca.trust_bundle())), None);
        for _ in 0..2 {
            let Err(e) = m.server_config(&id("a")) else {
                panic!("no certificate expected")
            };
            let text = e.to_string();
            assert!(
                text.contains("spiffe://cluster.local/ns/demo/sa/a"),
                "{text}"
            );
            assert!(text.contains("no certificate from the CA yet"), "{text}");
        }
        assert!(m.dump().is_empty());
    }

    /// A remote issuer in miniature: "not yet issued" until the test
    /// delivers, then the dev CA's certificate; arrivals signalled as the
    /// CA client signals them.
    struct Later {
        dev: DevIssuer,
        delivered: Arc<std::sync::atomic::AtomicBool>,
        arrivals: tokio::sync::watch::Receiver<u64>,
    }

    impl Issuer for Later {
        fn issue(&self, id: &Identity, validity: Duration) -> Result<WorkloadCert, IssueError> {
            if self.delivered.load(Ordering::SeqCst) {
                self.dev.issue(id, validity)
            } else {
                Err(IssueError::NotYetIssued)
            }
        }
        fn trust_bundle(&self) -> TrustBundle {
            self.dev.trust_bundle()
        }
        fn arrivals(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            Some(self.arrivals.clone())
        }
    }

    fn later() -> (
        CertManager,
        Arc<std::sync::atomic::AtomicBool>,
        tokio::sync::watch::Sender<u64>,
    ) {
        let delivered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = tokio::sync::watch::channel(0);
        let issuer = Later {
            dev: DevIssuer::new(DevCa::generate("cluster.local").expect("dev ca")),
            delivered: delivered.clone(),
            arrivals: rx,
        };
        (CertManager::new(Box::new(issuer), None), delivered, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_a_certificate_still_on_its_way() {
        let (m, delivered, tx) = later();
        let m = Arc::new(m);
        assert!(
            not_yet_issued(&m.server_config(&id("a"))),
            "nothing held yet"
        );
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.client_config_ready(&id("a"), &id("b")).await.map(|_| ()) })
        };
        // Let the waiter register, then deliver after a while (paused clock).
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "must wait, not fail at once");
        delivered.store(true, Ordering::SeqCst);
        tx.send_modify(|n| *n += 1);
        waiting
            .await
            .expect("task")
            .expect("the config once the cert arrived");
        m.server_config_ready(&id("a")).await.expect("held now");
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_that_never_comes_fails_after_the_wait() {
        let (m, _delivered, tx) = later();
        let start = tokio::time::Instant::now();
        // Arrivals for other identities wake the waiter without ending it.
        let other = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send_modify(|n| *n += 1);
            }
            tx
        });
        let got = m.server_config_ready(&id("a")).await;
        assert!(not_yet_issued(&got), "still not issued: {:?}", got.err());
        assert_eq!(start.elapsed(), CERT_WAIT, "waited exactly the bound");
        drop(other.await);
    }

    #[tokio::test]
    async fn an_issuer_that_signs_on_the_spot_never_waits() {
        let m = CertManager::dev(DevCa::generate("cluster.local").expect("dev ca"), None);
        m.server_config_ready(&id("a"))
            .await
            .expect("signed at once");
    }
}
