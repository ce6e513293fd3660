//! A loopback server on `hbone::lite`, as `start_server` is on h2.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::{lite, server_config, tls_accept, H2Settings, HboneError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::Pki;

/// A lite server: each request goes to `handle`, spawned.
pub struct LiteServer {
    pub addr: SocketAddr,
    pub served: mpsc::UnboundedReceiver<Result<(), HboneError>>,
    pub shutdown: watch::Sender<bool>,
}

impl LiteServer {
    pub async fn start<F, Fut>(pki: &Pki, settings: H2Settings, handle: F) -> LiteServer
    where
        F: Fn(lite::Request<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let cfg = server_config(&pki.cert("server"), &pki.bundle).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, served) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let handle = Arc::new(handle);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (cfg, tx, handle) = (cfg.clone(), tx.clone(), handle.clone());
                let settings = settings.clone();
                let mut shutdown_rx = shutdown_rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = tls_accept(tcp, cfg).await else {
                        return;
                    };
                    let shutdown = async move {
                        let _ = shutdown_rx.wait_for(|s| *s).await;
                    };
                    let on_request = move |req| {
                        tokio::spawn(handle(req));
                    };
                    let _ = tx.send(lite::serve(tls, &settings, on_request, shutdown).await);
                });
            }
        });
        LiteServer {
            addr,
            served,
            shutdown,
        }
    }
}
