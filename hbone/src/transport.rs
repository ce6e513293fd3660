//! The socket under TLS, with a read buffer.
//!
//! rustls reads TLS records from the socket at most 4 KiB at a time (its
//! deframer asks for `used + 4096` bytes), so a raw socket would cost one
//! `read` syscall per 4 KiB of tunnel data. A 64 KiB buffer underneath turns
//! that into one syscall per 64 KiB, at the price of one memcpy of the
//! ciphertext, which is far cheaper than the syscalls it saves. Writes pass
//! straight through (rustls already writes whole records, vectored).

use tokio::io::BufReader;
use tokio::net::TcpStream;

/// Read buffer under TLS. Pages are touched only as data arrives, so an idle
/// pooled connection costs little more than the allocation.
pub const READ_BUFFER: usize = 64 * 1024;

/// A TCP socket with a read buffer, as HBONE's TLS runs over it.
pub type Transport = BufReader<TcpStream>;

/// A client-side HBONE TLS stream.
pub type ClientTls = tokio_rustls::client::TlsStream<Transport>;

/// A server-side HBONE TLS stream.
pub type ServerTls = tokio_rustls::server::TlsStream<Transport>;

/// Wraps an accepted or connected socket for TLS.
pub fn transport(tcp: TcpStream) -> Transport {
    BufReader::with_capacity(READ_BUFFER, tcp)
}
