//! Tests only: an h2 client and server with HBONE's settings over an
//! in-memory pipe, for tests of what those settings and the copy loop do
//! to the frames on the wire.

use bytes::Bytes;
use tokio::io::DuplexStream;

use crate::settings::H2Settings;

/// The client's request handle and the server's connection, handshaken.
/// The caller drives the server (its `accept`) and spawns nothing else: the
/// client's connection task is already spawned.
pub(crate) async fn pair() -> (
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

/// A request on `client` with no body yet.
pub(crate) fn request() -> http::Request<()> {
    http::Request::builder()
        .uri("http://tunnel.test/")
        .body(())
        .expect("request")
}
