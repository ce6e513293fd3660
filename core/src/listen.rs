//! Data-path listeners for thread-per-core workers: one SO_REUSEPORT socket
//! per worker on the same address, so the kernel spreads connections across
//! workers and no accept queue or epoll instance is shared between threads.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::BindError;

/// Accept backlog of each worker's socket; HBONE connections are few and
/// long-lived, but a node proxy restart reconnects a node's workers at once.
const BACKLOG: i32 = 1024;

/// Binds `count` (at least one) non-blocking listeners on `addr` with
/// SO_REUSEPORT. With port 0 the first socket picks the port and the others
/// join it.
///
/// SO_REUSEPORT would also let a second process of the same user join the
/// group silently and take half the connections. A probe bind without it
/// first makes an address already in use (by anyone) a clear error instead.
pub fn bind_reuseport(
    what: &'static str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let probe = |addr| -> std::io::Result<SocketAddr> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("bound address is not an IP socket address"))
    };
    let mut addr = probe(addr).map_err(|source| BindError { what, addr, source })?;
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let l = bind_one(addr).map_err(|source| BindError { what, addr, source })?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(|source| BindError { what, addr, source })?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Inherited by every accepted socket (Linux), so no data-path
    // connection waits on Nagle and no accept pays a setsockopt.
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let ls = bind_reuseport("test", "127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
        // Each connection lands on exactly one of the sockets.
        let addr = ls[0].local_addr().unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut accepted = None;
        while accepted.is_none() && std::time::Instant::now() < deadline {
            accepted = ls.iter().find_map(|l| l.accept().ok());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (mut s, _) = accepted.expect("no listener accepted the connection");
        s.set_nonblocking(false).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn a_port_held_by_another_reuseport_group_is_refused_not_shared() {
        // Another process of the same user listening with SO_REUSEPORT.
        let other = bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = other.local_addr().unwrap();
        let e = bind_reuseport("hbone", addr, 2).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        // Once it is gone the address is free again.
        drop(other);
        assert_eq!(bind_reuseport("hbone", addr, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_port_held_without_reuseport_is_a_clear_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = bind_reuseport("hbone", addr, 2).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot bind hbone on"), "{msg}");
        assert!(msg.contains("another process"), "{msg}");
    }
}
