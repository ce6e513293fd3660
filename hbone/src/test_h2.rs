//! Tests only: an h2 client and server with HBONE's settings over an
//! in-memory pipe, for tests of what those settings and the copy loop do
//! to the frames on the wire.

use std::future::Future;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::settings::H2Settings;

/// The client's request handle and the server's connection, handshaken.
/// The client's connection task is already spawned; the server's is the
/// caller's to drive (its `accept`).
async fn pair() -> (
    h2::client::SendRequest<Bytes>,
    h2::server::Connection<DuplexStream, Bytes>,
) {
    let s = H2Settings::default();
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = s.client_builder().expect("client builder");
    let server = s.server_builder().expect("server builder");
    let (client, server) = tokio::join!(
        client.handshake::<_, Bytes>(a),
        server.handshake::<_, Bytes>(b)
    );
    let (send_request, conn) = client.expect("client handshake");
    tokio::spawn(conn);
    (send_request, server.expect("server handshake"))
}

/// One stream on a fresh pair, answered 200 (the answer ends the server's
/// side when `end`). The server then hands the request body to `serve`,
/// whose output the returned handle yields; its connection is driven until
/// `serve` returns.
pub(crate) async fn stream<F, Fut, T>(
    end: bool,
    serve: F,
) -> (SendStream<Bytes>, RecvStream, JoinHandle<T>)
where
    F: FnOnce(RecvStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let (mut client, mut conn) = pair().await;
    let server = tokio::spawn(async move {
        let (req, mut respond) = conn.accept().await.expect("a stream").expect("ok");
        respond
            .send_response(http::Response::new(()), end)
            .expect("respond");
        let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let out = serve(req.into_body()).await;
        driver.abort();
        out
    });
    let req = http::Request::builder()
        .uri("http://tunnel.test/")
        .body(())
        .expect("request");
    let (response, send) = client.send_request(req, false).expect("send request");
    // The answer comes after the server's SETTINGS and window updates.
    let recv = response.await.expect("response").into_body();
    (send, recv, server)
}
