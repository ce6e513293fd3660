//! The benchmark's gRPC service, `trellis.bench.Echo/Say`, written by hand
//! (prost messages, the service on tonic's server codec): no protoc, no
//! build script. Its proto would be:
//!
//! ```proto
//! package trellis.bench;
//! message Payload { bytes data = 1; }
//! service Echo { rpc Say(Payload) returns (Payload); }
//! ```

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;
use tonic_prost::ProstCodec;

pub const SERVICE: &str = "trellis.bench.Echo";
pub const SAY_PATH: &str = "/trellis.bench.Echo/Say";

/// Request and reply of `Say`: the reply carries the request's bytes back.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// `Say` answers with the request's payload; any other method is
/// UNIMPLEMENTED. Counts the calls that carry the route's header.
#[derive(Clone, Debug, Default)]
pub struct EchoService {
    pub counts: Arc<super::servers::Counts>,
}

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.counts.grpc.fetch_add(1, Ordering::Relaxed);
        if req
            .headers()
            .get(super::ROUTE_HEADER.0)
            .map(|v| v.as_bytes())
            == Some(super::ROUTE_HEADER.1.as_bytes())
        {
            self.counts.grpc_routed.fetch_add(1, Ordering::Relaxed);
        }
        if req.uri().path() == SAY_PATH {
            Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<Payload, Payload>::default());
                Ok(grpc.unary(Say, req).await)
            })
        } else {
            let status =
                Status::unimplemented(format!("{SERVICE} has no method {}", req.uri().path()));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

struct Say;

impl UnaryService<Payload> for Say {
    type Response = Payload;
    type Future = BoxFuture<tonic::Response<Payload>, Status>;

    fn call(&mut self, req: tonic::Request<Payload>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(req.into_inner())) })
    }
}
