//! Is a TCP address already listened on in a network namespace, and by
//! which process?
//!
//! The node proxy binds its listeners with SO_REUSEPORT (one per worker), so
//! a second proxy started on the same ports binds them too without an error,
//! and the kernel then splits new connections between the two. A probe
//! binds the address first *without* SO_REUSEPORT (with SO_REUSEADDR, so
//! TIME_WAIT leftovers do not count): EADDRINUSE then means a live socket
//! holds it. [`listeners_of`] names the processes holding it, for the
//! error message.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::NetNs;

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), or `?` if it is gone.
    pub name: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.name)
    }
}

/// Whether `addr` is already bound by another socket in `ns` (None: the
/// caller's netns).
pub fn probe(ns: Option<&NetNs>, addr: SocketAddr) -> io::Result<bool> {
    let attempt = || -> io::Result<bool> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        match s.bind(&addr.into()) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
            Err(e) => Err(e),
        }
    };
    match ns {
        Some(ns) => ns.run_in(attempt)?,
        None => attempt(),
    }
}

/// The processes holding a listening TCP socket on `port` in `ns` (None:
/// the caller's netns). Empty when none is found (or /proc cannot tell).
pub fn listeners_of(ns: Option<&NetNs>, port: u16) -> io::Result<Vec<Holder>> {
    let inodes = listening_inodes(&tcp_table(ns)?, port);
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit, or hide its fds from us: skip it.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| socket_inode(l.to_str()?))
                .is_some_and(|ino| inodes.contains(&ino))
        });
        if holds {
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            found.insert(Holder { pid, name });
        }
    }
    Ok(found.into_iter().collect())
}

/// Inodes of the sockets in LISTEN state on `port` in `/proc/net/tcp{,6}` text.
pub fn listening_inodes(text: &str, port: u16) -> BTreeSet<u64> {
    const LISTEN: &str = "0A";
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (local, st, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let p = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (p == port && *st == LISTEN)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// The TCP sockets of `ns` (None: the caller's netns) as /proc/net/tcp
/// and tcp6 list them.
fn tcp_table(ns: Option<&NetNs>) -> io::Result<String> {
    // /proc/thread-self/net shows the reading thread's namespace.
    let read = || -> io::Result<String> {
        let mut text = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        if let Ok(v6) = std::fs::read_to_string("/proc/thread-self/net/tcp6") {
            text.push_str(&v6);
        }
        Ok(text)
    };
    match ns {
        Some(ns) => ns.run_in(read)?,
        None => read(),
    }
}

/// How many sockets on local `port` in `ns` (None: the caller's netns)
/// are closed or closing connections (TIME_WAIT, FIN_WAIT, LAST_ACK...).
/// Such a socket outlives the process that had it, and when that process
/// bound the port without SO_REUSEADDR (Istio's ztunnel does), it keeps a
/// new listener off the port until it expires: [`probe`] then says the
/// port is taken while [`listeners_of`] finds no one.
pub fn closing_on(ns: Option<&NetNs>, port: u16) -> io::Result<usize> {
    Ok(closing_sockets(&tcp_table(ns)?, port))
}

/// The count [`closing_on`] gives, from a /proc/net/tcp{,6} table.
pub fn closing_sockets(text: &str, port: u16) -> usize {
    // FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING.
    const CLOSING: [&str; 7] = ["04", "05", "06", "07", "08", "09", "0B"];
    text.lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st)) = (f.get(1), f.get(3)) else {
                return false;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            p == Some(port) && CLOSING.contains(st)
        })
        .count()
}

/// The inode of a `socket:[N]` fd link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Test support: leaves a TIME_WAIT socket on a loopback port of the
/// caller's netns, with no process holding the port, as a ztunnel that
/// has exited does, and returns the address. Its listener binds without
/// SO_REUSEADDR, as ztunnel binds its capture ports, and closes first, so
/// the accepted side goes through FIN_WAIT2 into TIME_WAIT.
pub fn leave_time_wait() -> io::Result<SocketAddr> {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let l = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    l.set_reuse_address(false)?;
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    l.listen(8)?;
    let addr = l
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the listener has no IP address"))?;
    let mut client = std::net::TcpStream::connect(addr)?;
    let (accepted, _) = l.accept()?;
    drop(accepted);
    // The client reads the FIN, then closes.
    let mut buf = [0u8; 1];
    if client.read(&mut buf)? != 0 {
        return Err(io::Error::other("the client read data, not the FIN"));
    }
    drop(client);
    drop(l);
    let deadline = Instant::now() + Duration::from_secs(5);
    while closing_on(None, addr.port())? == 0 {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "no TIME_WAIT socket appeared on {addr}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:3A99 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   3: 00000000:3AA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
   4: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1
   5: garbage
";

    #[test]
    fn listening_inodes_by_port() {
        // (port, inodes): 15001 = 0x3A99 (two IPv4 listeners, one IPv6, one
        // established that does not count), 15008 = 0x3AA0.
        let cases: [(u16, &[u64]); 3] =
            [(15001, &[1111, 2222, 5555]), (15008, &[4444]), (15006, &[])];
        for (port, want) in cases {
            let got: Vec<u64> = listening_inodes(TCP, port).into_iter().collect();
            assert_eq!(got, want, "port {port}");
        }
    }

    #[test]
    fn closing_sockets_by_port() {
        let table = format!(
            "{TCP}   6: 0100007F:3A99 0100007F:9C41 06 00000000:00000000 03:00000000 00000000     0        0 0 1\n\
   7: 0100007F:3A99 0100007F:9C42 06 00000000:00000000 03:00000000 00000000     0        0 0 1\n\
   8: 0100007F:3A99 0100007F:9C43 09 00000000:00000000 00:00000000 00000000     0        0 6666 1\n\
   9: 0100007F:3AA0 0100007F:9C44 05 00000000:00000000 00:00000000 00000000     0        0 0 1\n"
        );
        // (port, closing): 15001 has three listeners and an established
        // connection, which do not count, and two TIME_WAIT and a LAST_ACK;
        // 15008 a FIN_WAIT2; 15006 nothing.
        let cases = [(15001, 3), (15008, 1), (15006, 0)];
        for (port, want) in cases {
            assert_eq!(closing_sockets(&table, port), want, "port {port}");
        }
    }

    #[test]
    fn a_port_held_only_by_time_wait_is_taken_with_no_listener() {
        let addr = leave_time_wait().unwrap();
        assert!(
            probe(None, addr).unwrap(),
            "the TIME_WAIT socket should keep {addr} taken"
        );
        assert!(listeners_of(None, addr.port()).unwrap().is_empty());
    }

    #[test]
    fn socket_links() {
        let cases = [
            ("socket:[1234]", Some(1234)),
            ("pipe:[1234]", None),
            ("socket:[x]", None),
            ("/dev/null", None),
        ];
        for (link, want) in cases {
            assert_eq!(socket_inode(link), want, "{link}");
        }
    }

    #[test]
    fn a_reuseport_listener_is_found_by_the_probe_and_named() {
        let l = crate::tcp_listener(
            None,
            "127.0.0.1:0".parse().unwrap(),
            crate::ListenOpts {
                reuse_port: true,
                ..Default::default()
            },
        )
        .unwrap();
        let addr = l.local_addr().unwrap();
        assert!(probe(None, addr).unwrap(), "a live listener holds {addr}");
        let holders = listeners_of(None, addr.port()).unwrap();
        assert!(
            holders.iter().any(|h| h.pid == std::process::id()),
            "{holders:?}"
        );
        drop(l);
        assert!(!probe(None, addr).unwrap(), "free once closed");
    }
}
