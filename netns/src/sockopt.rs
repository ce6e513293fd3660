//! Socket options the capture path needs and that std/tokio do not expose:
//! the original destination of a redirected connection, SO_MARK and
//! IP_TRANSPARENT.
//!
//! Every function returns `io::Result` so callers can use them next to
//! std/tokio socket calls; the error inside is a [`SockoptError`] saying what
//! was attempted and what to check, and keeps the OS error's kind.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum SockoptError {
    #[error(
        "no original destination for this connection: it was not redirected by nftables/iptables \
         in this network namespace (no conntrack NAT entry); check the capture rules \
         (`nft list table inet trellis`) in the pod's netns"
    )]
    NotRedirected,
    #[error("reading the original destination (SO_ORIGINAL_DST) failed: {0}")]
    OriginalDst(#[source] io::Error),
    #[error("the kernel returned an original destination of family {family}, expected {expected}")]
    UnexpectedFamily { family: i32, expected: i32 },
    #[error("setting {option} failed: {source}; this needs CAP_NET_ADMIN (run the proxy as root or grant the capability)")]
    NeedsNetAdmin {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{option} failed: {source}")]
    Other {
        option: &'static str,
        #[source]
        source: io::Error,
    },
}

impl SockoptError {
    /// Wraps into an io::Error, keeping the OS error's kind so callers can
    /// still tell e.g. NotFound from PermissionDenied.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            SockoptError::NotRedirected => io::ErrorKind::NotFound,
            SockoptError::OriginalDst(e)
            | SockoptError::NeedsNetAdmin { source: e, .. }
            | SockoptError::Other { source: e, .. } => e.kind(),
            SockoptError::UnexpectedFamily { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

fn set_opt_error(option: &'static str, source: io::Error) -> io::Error {
    let needs_admin = matches!(
        source.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EACCES)
    );
    if needs_admin {
        SockoptError::NeedsNetAdmin { option, source }.into_io()
    } else {
        SockoptError::Other { option, source }.into_io()
    }
}

/// Reads a fixed-size option; `Ok(len)` is how many bytes the kernel wrote.
fn getsockopt_raw<T>(
    fd: RawFd,
    level: i32,
    name: i32,
    out: &mut MaybeUninit<T>,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is valid for writes of `len` bytes and `len` is passed by pointer as the API requires.
    let rc = unsafe { libc::getsockopt(fd, level, name, out.as_mut_ptr().cast(), &mut len) };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the pointer and length describe one live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<libc::c_int> {
    let mut v = MaybeUninit::<libc::c_int>::zeroed();
    getsockopt_raw(fd, level, name, &mut v)?;
    // SAFETY: zero-initialised, and the kernel writes at most size_of::<c_int>() bytes.
    Ok(unsafe { v.assume_init() })
}

/// Whether `addr` is carried as IPv4 on the wire (plain or v4-mapped on a dual-stack socket).
fn is_v4(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    }
}

/// The destination a redirected connection was originally sent to.
///
/// nftables `redirect` (and iptables REDIRECT) rewrite the destination
/// through conntrack NAT; the original tuple stays in the conntrack entry
/// and SO_ORIGINAL_DST reads it back. `local` is the accepted socket's local
/// address and selects the family: IPv4 (also v4-mapped on a dual-stack
/// listener) uses SOL_IP/SO_ORIGINAL_DST, IPv6 uses SOL_IPV6/IP6T_SO_ORIGINAL_DST.
/// A connection that was not NATed fails with `NotFound` ([`SockoptError::NotRedirected`]),
/// unless conntrack tracked it without NAT, in which case the result equals `local`.
pub fn original_dst(stream: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let map_err = |e: io::Error| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            SockoptError::NotRedirected.into_io()
        } else {
            SockoptError::OriginalDst(e).into_io()
        }
    };
    if is_v4(local) {
        let mut sa = MaybeUninit::<libc::sockaddr_in>::zeroed();
        getsockopt_raw(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST, &mut sa).map_err(map_err)?;
        // SAFETY: zero-initialised, and the kernel wrote at most size_of::<sockaddr_in>() bytes.
        let sa = unsafe { sa.assume_init() };
        if i32::from(sa.sin_family) != libc::AF_INET {
            return Err(SockoptError::UnexpectedFamily {
                family: i32::from(sa.sin_family),
                expected: libc::AF_INET,
            }
            .into_io());
        }
        Ok(SocketAddr::V4(sockaddr_in_to_std(&sa)))
    } else {
        let mut sa = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        getsockopt_raw(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST, &mut sa).map_err(map_err)?;
        // SAFETY: as above, for sockaddr_in6.
        let sa = unsafe { sa.assume_init() };
        if i32::from(sa.sin6_family) != libc::AF_INET6 {
            return Err(SockoptError::UnexpectedFamily {
                family: i32::from(sa.sin6_family),
                expected: libc::AF_INET6,
            }
            .into_io());
        }
        Ok(SocketAddr::V6(sockaddr_in6_to_std(&sa)))
    }
}

/// Port and address in a sockaddr are in network byte order.
fn sockaddr_in_to_std(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

fn sockaddr_in6_to_std(sa: &libc::sockaddr_in6) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::from(sa.sin6_addr.s6_addr),
        u16::from_be(sa.sin6_port),
        u32::from_be(sa.sin6_flowinfo),
        sa.sin6_scope_id,
    )
}

/// Sets SO_MARK: the capture rules let packets with the proxy's mark pass.
pub fn set_mark(sock: &impl AsRawFd, mark: u32) -> io::Result<()> {
    setsockopt_int(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        mark as libc::c_int,
    )
    .map_err(|e| set_opt_error("SO_MARK", e))
}

/// Reads SO_MARK back.
pub fn mark(sock: &impl AsRawFd) -> io::Result<u32> {
    getsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK)
        .map(|v| v as u32)
        .map_err(|e| {
            SockoptError::Other {
                option: "reading SO_MARK",
                source: e,
            }
            .into_io()
        })
}

/// Sets IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6) so the socket may
/// bind to, and accept traffic for, an address that is not local.
pub fn set_transparent(sock: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, name, option) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT")
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT")
    };
    setsockopt_int(sock.as_raw_fd(), level, name, 1).map_err(|e| set_opt_error(option, e))
}

/// Reads IP_TRANSPARENT / IPV6_TRANSPARENT back.
pub fn is_transparent(sock: &impl AsRawFd, ipv6: bool) -> io::Result<bool> {
    let (level, name) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    getsockopt_int(sock.as_raw_fd(), level, name)
        .map(|v| v != 0)
        .map_err(|e| {
            SockoptError::Other {
                option: "reading IP_TRANSPARENT",
                source: e,
            }
            .into_io()
        })
}

/// IP_BIND_ADDRESS_NO_PORT: when a socket is bound to an address with port 0
/// before connect (as transparent upstream sockets are), defer choosing the
/// port to connect so it is unique per 4-tuple instead of per address;
/// without it, many connections from one client IP exhaust ephemeral ports.
pub fn set_bind_address_no_port(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(
        sock.as_raw_fd(),
        libc::SOL_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    )
    .map_err(|e| set_opt_error("IP_BIND_ADDRESS_NO_PORT", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn sockaddr_parsing_uses_network_byte_order() {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 8080u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::new(198, 18, 2, 3)).to_be(),
            },
            sin_zero: [0; 8],
        };
        assert_eq!(sockaddr_in_to_std(&sa), "198.18.2.3:8080".parse().unwrap());

        // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
        let mut sa6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa6.sin6_port = 443u16.to_be();
        sa6.sin6_addr.s6_addr = "fd00::1:2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            SocketAddr::V6(sockaddr_in6_to_std(&sa6)),
            "[fd00::1:2]:443".parse().unwrap()
        );
    }

    #[test]
    fn v4_mapped_local_address_counts_as_v4() {
        assert!(is_v4("127.0.0.1:1".parse().unwrap()));
        assert!(is_v4("[::ffff:198.18.1.2]:1".parse().unwrap()));
        assert!(!is_v4("[fd00::1]:1".parse().unwrap()));
    }

    #[test]
    fn not_redirected_connection_has_no_original_dst() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        // Without a conntrack entry (the usual case on an unfiltered host)
        // the kernel says ENOENT; with conntrack but no NAT it reports `local`.
        match original_dst(&s, local) {
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
                assert!(e.to_string().contains("not redirected"), "{e}");
            }
            Ok(dst) => assert_eq!(dst, local),
        }
        drop(c);
    }

    #[test]
    fn mark_round_trips_or_needs_net_admin() {
        let s = TcpListener::bind("127.0.0.1:0").unwrap();
        match set_mark(&s, 0x539) {
            Ok(()) => assert_eq!(mark(&s).unwrap(), 0x539),
            Err(e) => assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}"),
        }
    }
}
