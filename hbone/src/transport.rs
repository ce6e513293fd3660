//! The socket under TLS, with a read buffer, and how much TLS may buffer to
//! write.
//!
//! rustls reads TLS records from the socket at most 4 KiB at a time (its
//! deframer asks for `used + 4096` bytes), so a raw socket would cost one
//! `read` syscall per 4 KiB of tunnel data. A buffer underneath turns that
//! into one syscall per [`READ_BUFFER`], at the price of one memcpy of the
//! ciphertext, which is far cheaper than the syscalls it saves. Writes pass
//! straight through: rustls writes whole records, vectored, as many as it
//! holds, and [`SEND_BUFFER`] lets it hold a whole relay chunk.

use tokio::io::BufReader;
use tokio::net::TcpStream;

/// Read buffer under TLS. Pages are touched only as data arrives, so an idle
/// pooled connection costs little more than the allocation. As large as
/// the copy loop's chunk and more: a bulk tunnel's reads then take what the
/// socket holds at once.
pub const READ_BUFFER: usize = 256 * 1024;

/// Encrypted bytes rustls may hold before a write must wait for the socket
/// (its default is 64 KiB). It must exceed a whole relay chunk plus its
/// DATA frame's header: rustls compares the plaintext offered with the room
/// left, so at exactly the chunk size every chunk took a second `writev`
/// for its last 9 bytes (with the default, a 128 KiB chunk took two).
/// rustls allocates this only while it holds unwritten records, so an idle
/// connection pays nothing for it.
pub const SEND_BUFFER: usize = 2 * crate::copy::CHUNK;

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
