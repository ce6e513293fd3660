//! One service of a call chain: an HTTP/1.1 server in its pod's netns that,
//! per request, calls the next service over a keep-alive connection and
//! answers when the next one has answered; the last one answers at once.
//!
//! Each service runs on its own thread, switched into its pod's network
//! namespace for its whole life, so the sockets it makes towards the next
//! service are the pod's (the mesh captures them as it would an app's). One
//! current-thread tokio runtime per service, pinned to the given CPU.
//!
//! The body says which services answered: the last one's name and a
//! newline, then [`BODY_BYTES`] of filler, each service before it putting
//! its own name and `>` in front (`chain0>chain1>chain2\nxxx...`). So a
//! checked answer proves the request went down the whole chain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use trellis_netns::{self as netns, ListenOpts, NetNs};

use crate::harness::sys;

/// Filler after the path line in the last service's answer.
pub const BODY_BYTES: usize = 1024;
/// The header a hop's error answer carries, naming the hop that failed.
pub const FAILED_HOP_HEADER: &str = "x-chain-failed-hop";

/// What one service is.
#[derive(Debug, Clone)]
pub struct HopSpec {
    pub name: String,
    /// Where it listens (its pod's address).
    pub listen: SocketAddr,
    /// The next service (pod address or service VIP); None: the last one.
    pub next: Option<SocketAddr>,
}

/// The path line a chain of `names` answers with (without the filler).
pub fn path_line(names: &[&str]) -> String {
    names.join(">")
}

/// The whole body a chain of `names` answers with.
pub fn expected_body(names: &[&str]) -> String {
    format!("{}\n{}", path_line(names), "x".repeat(BODY_BYTES))
}

/// A running service; stopped (its connections closed) on drop.
pub struct Hop {
    pub name: String,
    served: Arc<AtomicU64>,
    _thread: sys::ServerThread,
}

impl Hop {
    /// Binds in `ns` (errors come back here), then serves from a thread
    /// inside `ns` pinned to `cpu`.
    pub fn start(ns: &NetNs, spec: HopSpec, cpu: usize) -> Result<Hop> {
        let listener = netns::tcp_listener(
            Some(ns),
            spec.listen,
            ListenOpts {
                backlog: 1024,
                ..Default::default()
            },
        )
        .with_context(|| format!("{}: listening on {}", spec.name, spec.listen))?;
        let rt = sys::runtime()?;
        let ns = ns.try_clone().context("cloning a netns handle")?;
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let name = spec.name.clone();
        let thread = sys::ServerThread::spawn(format!("chain-{name}"), move |stopped| {
            if let Err(e) = sys::pin_current_thread(cpu) {
                eprintln!("{}: cannot pin to CPU {cpu}: {e}", spec.name);
            }
            let who = spec.name.clone();
            // In the pod's netns for the whole run: connect() to the next
            // service makes its socket there.
            let r = ns.run_in(|| {
                rt.block_on(async move {
                    let l = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("{}: {e}", spec.name);
                            return;
                        }
                    };
                    let hop = Arc::new(Shared {
                        spec,
                        pool: Mutex::new(Vec::new()),
                        served: count,
                    });
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(l, hop) => {}
                    }
                });
                // Dropping the runtime cancels every task and closes the sockets.
                drop(rt);
            });
            if let Err(e) = r {
                eprintln!("{who}: entering its netns: {e}");
            }
        })
        .context("spawning a chain service thread")?;
        Ok(Hop {
            name,
            served,
            _thread: thread,
        })
    }

    /// Requests this service has answered with 200.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// What the connections of one service share.
struct Shared {
    spec: HopSpec,
    /// Idle keep-alive connections to the next service.
    pool: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    served: Arc<AtomicU64>,
}

async fn accept_loop(l: tokio::net::TcpListener, hop: Arc<Shared>) {
    sys::accept_each(&l, |stream| {
        let hop = hop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let hop = hop.clone();
                async move { Ok::<_, std::convert::Infallible>(hop.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    })
    .await
}

impl Shared {
    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let name = &self.spec.name;
        let body = match self.spec.next {
            None => Ok(Bytes::from(format!("{name}\n{}", "x".repeat(BODY_BYTES)))),
            Some(next) => self.call_next(next, req.uri().path()).await.map(|b| {
                let mut out = BytesMut::with_capacity(name.len() + 1 + b.len());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b">");
                out.extend_from_slice(&b);
                out.freeze()
            }),
        };
        match body {
            Ok(b) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Response::new(Full::new(b))
            }
            Err(e) => {
                let mut r = Response::new(Full::new(Bytes::from(format!("{name}: {e:#}\n"))));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                if let Ok(v) = http::HeaderValue::from_str(name) {
                    r.headers_mut().insert(FAILED_HOP_HEADER, v);
                }
                r
            }
        }
    }

    /// GET `path` on the next service over a pooled connection (a new one
    /// if none is idle); its body if it answered 200.
    async fn call_next(&self, next: SocketAddr, path: &str) -> Result<Bytes> {
        let mut sender = self.idle_sender().await;
        if sender.is_none() {
            sender = Some(connect(next).await?);
        }
        let mut sender = sender.expect("just set");
        let req = Request::get(path)
            .header(http::header::HOST, next.to_string())
            .body(Empty::new())
            .context("building the request")?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("calling {next}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {next}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(anyhow!(
                "{next} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        // The answer is read whole: the connection can take the next request.
        self.pool.lock().expect("pool lock").push(sender);
        Ok(body)
    }

    /// An idle pooled connection that is still open, if any.
    async fn idle_sender(&self) -> Option<SendRequest<Empty<Bytes>>> {
        loop {
            let mut s = self.pool.lock().expect("pool lock").pop()?;
            if s.ready().await.is_ok() {
                return Some(s);
            }
        }
    }
}

async fn connect(next: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(next)
        .await
        .with_context(|| format!("connecting to {next}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {next}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Starts the services of a chain, last first (so each one's next is up
/// before it is), each in its pod's netns, all pinned to `cpu`.
pub fn start_chain(hops: &[(NetNs, HopSpec)], cpu: usize) -> Result<Vec<Hop>> {
    let mut out = Vec::with_capacity(hops.len());
    for (ns, spec) in hops.iter().rev() {
        out.push(Hop::start(ns, spec.clone(), cpu)?);
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_hops_in_order() {
        let cases: [(&[&str], &str); 3] = [
            (&["chain0"], "chain0"),
            (&["chain0", "chain1", "chain2"], "chain0>chain1>chain2"),
            (&["a", "b"], "a>b"),
        ];
        for (names, line) in cases {
            assert_eq!(path_line(names), line);
            let body = expected_body(names);
            assert_eq!(body.len(), line.len() + 1 + BODY_BYTES, "{names:?}");
            assert!(body.starts_with(&format!("{line}\nxxx")), "{names:?}");
        }
    }

    /// Three services on loopback in this process's netns: the answer
    /// crosses all three, and a dead next hop gives a 502 naming the hop.
    #[test]
    fn a_chain_on_loopback_answers_through_every_hop() {
        let ns = NetNs::current().expect("this thread's netns");
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let addrs = [free(), free(), free()];
        let specs: Vec<(NetNs, HopSpec)> = (0..3)
            .map(|i| {
                (
                    ns.try_clone().unwrap(),
                    HopSpec {
                        name: format!("s{i}"),
                        listen: addrs[i],
                        next: addrs.get(i + 1).copied(),
                    },
                )
            })
            .collect();
        let hops = start_chain(&specs, 0).unwrap();
        for _ in 0..3 {
            let (status, body) = trellis_e2e::cluster::http(addrs[0], "GET", "/x", "").unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body, expected_body(&["s0", "s1", "s2"]));
        }
        assert!(hops.iter().all(|h| h.served() == 3));
        drop(hops);

        // Only the head: its next is gone.
        let head = Hop::start(&ns, specs[0].1.clone(), 0).unwrap();
        let (status, body) = trellis_e2e::cluster::http(addrs[0], "GET", "/", "").unwrap();
        assert_eq!(status, 502, "{body}");
        assert!(body.starts_with("s0: connecting to"), "{body}");
        assert_eq!(head.served(), 0);
    }
}
