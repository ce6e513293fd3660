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
    // /proc/thread-self/net shows the reading thread's namespace.
    let read = || -> io::Result<String> {
        let mut text = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        if let Ok(v6) = std::fs::read_to_string("/proc/thread-self/net/tcp6") {
            text.push_str(&v6);
        }
        Ok(text)
    };
    let text = match ns {
        Some(ns) => ns.run_in(read)??,
        None => read()?,
    };
    let inodes = listening_inodes(&text, port);
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

/// The inode of a `socket:[N]` fd link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
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
