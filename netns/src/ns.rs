//! Sockets inside another network namespace.
//!
//! A socket belongs to the network namespace it was created in, for its whole
//! life, whatever thread later uses it. So the node proxy serves a pod by
//! creating its listeners (15001, 15006, 15008) and its upstream sockets while
//! the creating thread is temporarily switched into the pod's netns with
//! setns(2), and then uses them from its ordinary tokio workers.
//!
//! [`NetNs::run_in`] does the switch for the current thread only (setns with
//! CLONE_NEWNET is per thread). It is called synchronously from tokio worker
//! threads: it costs two setns syscalls, and nothing awaits inside, so no other
//! task can run on the thread while it is in the pod's namespace.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sockopt;

/// The calling thread's own network namespace, as procfs shows it.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}; check that the pod (or named netns) still exists")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace file (expected /var/run/netns/<name> or /proc/<pid>/ns/net)")]
    NotNetns { path: PathBuf },
    #[error(
        "cannot enter network namespace {path} (setns): {source}; the proxy needs CAP_SYS_ADMIN"
    )]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a TCP socket in network namespace {netns}: {source}")]
    Socket {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} on a socket for {addr} in network namespace {netns} failed: {source}")]
    Option {
        what: &'static str,
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {addr} in network namespace {netns}: {source}; is something else bound there, or is the address not assigned in that netns?")]
    Bind {
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr} in network namespace {netns}: {source}")]
    Listen {
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("transparent source {src} and destination {dst} are of different address families")]
    FamilyMismatch { src: SocketAddr, dst: SocketAddr },
}

impl From<NetnsError> for io::Error {
    /// Keeps the underlying OS error's kind so callers can still match on it.
    fn from(e: NetnsError) -> io::Error {
        let kind = match &e {
            NetnsError::Open { source, .. }
            | NetnsError::Enter { source, .. }
            | NetnsError::Socket { source, .. }
            | NetnsError::Option { source, .. }
            | NetnsError::Bind { source, .. }
            | NetnsError::Listen { source, .. } => source.kind(),
            NetnsError::NotNetns { .. } | NetnsError::FamilyMismatch { .. } => {
                io::ErrorKind::InvalidInput
            }
        };
        io::Error::new(kind, e)
    }
}

/// An open handle on a network namespace. Holding the fd keeps the namespace
/// alive, and keeps referring to the same namespace even if the path is
/// later reused.
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetNs")
            .field("path", &self.path)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl NetNs {
    /// Opens a netns file: `/var/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        // Refuse anything else early: setns on a wrong file would only fail
        // later, on the data path, with a bare EINVAL.
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if nstype != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns { path }.into());
        }
        Ok(NetNs { file, path })
    }

    /// The calling thread's current network namespace.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open(THREAD_NETNS)
    }

    /// The path this handle was opened from (for messages; the fd is what counts).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> io::Result<NetNs> {
        Ok(NetNs {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Runs `f` on the current thread while it is switched into this network
    /// namespace, then switches back, also when `f` panics. Sockets created
    /// inside `f` stay in this namespace for good. Spawn no threads in `f`:
    /// a new thread starts in its creator's namespace and would stay there.
    /// `f` is synchronous on purpose, so no other task can run on this thread
    /// while it is switched. Fails only if the switch in is refused, in which
    /// case `f` is not run.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let restore = Restore::prepare()?;
        setns(self.file.as_raw_fd()).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let _guard = RestoreGuard::enter(restore);
        Ok(f())
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

thread_local! {
    /// The thread's own namespace, opened once per thread: run_in is on the
    /// connection path and this saves an open/close of procfs per call.
    /// Assumes threads do not change namespace other than through run_in.
    static HOME: RefCell<Option<File>> = const { RefCell::new(None) };
    /// How many run_in calls are active on this thread; nested calls must
    /// return to the enclosing namespace, not HOME.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Where to go back to after run_in.
enum Restore {
    Home,
    Outer(File),
}

impl Restore {
    fn prepare() -> io::Result<Restore> {
        let open = || {
            File::open(THREAD_NETNS).map_err(|source| NetnsError::Open {
                path: THREAD_NETNS.into(),
                source,
            })
        };
        if DEPTH.get() > 0 {
            return Ok(Restore::Outer(open()?));
        }
        HOME.with(|h| -> io::Result<()> {
            let mut h = h.borrow_mut();
            if h.is_none() {
                *h = Some(open()?);
            }
            Ok(())
        })?;
        Ok(Restore::Home)
    }
}

/// Switches the thread back on drop; while it exists, DEPTH counts it.
struct RestoreGuard(Restore);

impl RestoreGuard {
    /// Called only after the switch in succeeded, so a refused setns leaves
    /// DEPTH untouched.
    fn enter(restore: Restore) -> RestoreGuard {
        DEPTH.set(DEPTH.get() + 1);
        RestoreGuard(restore)
    }
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        let result = match &self.0 {
            Restore::Outer(f) => setns(f.as_raw_fd()),
            Restore::Home => HOME.with(|h| match h.borrow().as_ref() {
                Some(f) => setns(f.as_raw_fd()),
                None => Err(io::Error::other("home namespace handle missing")),
            }),
        };
        DEPTH.set(DEPTH.get().saturating_sub(1));
        if let Err(e) = result {
            // A thread left in a pod's namespace would silently create every
            // later socket there (other pods' traffic in the wrong place).
            // That is worse than stopping, so stop loudly.
            tracing::error!(error = %e, "cannot switch the thread back to its network namespace; aborting");
            std::process::abort();
        }
    }
}

/// Options for [`tcp_listener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOpts {
    /// SO_REUSEPORT, so each worker thread has its own listener on the same port.
    pub reuse_port: bool,
    /// IP_TRANSPARENT, to accept connections for non-local addresses.
    pub transparent: bool,
    pub backlog: i32,
    /// TCP_NODELAY on the listener. Linux copies it to every accepted
    /// socket, so a proxy's accepted connections never wait on Nagle (a
    /// 40 ms stall when an app writes headers and body separately and the
    /// peer delays its ACK), at no syscall per accept.
    pub nodelay: bool,
}

impl Default for ListenOpts {
    fn default() -> Self {
        ListenOpts {
            reuse_port: false,
            transparent: false,
            backlog: 1024,
            nodelay: false,
        }
    }
}

/// Options for [`tcp_socket`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketOpts {
    /// SO_MARK; the capture rules let the proxy's own marked sockets pass.
    pub mark: Option<u32>,
    /// Connect from this (foreign) address: IP_TRANSPARENT and bind before connect.
    pub transparent_src: Option<SocketAddr>,
    /// TCP_NODELAY.
    pub nodelay: bool,
}

fn ns_label(ns: Option<&NetNs>) -> String {
    ns.map(NetNs::label).unwrap_or_else(|| "(current)".into())
}

/// A nonblocking, close-on-exec TCP socket created inside `ns` (or the current netns).
fn new_socket(ns: Option<&NetNs>, family_of: SocketAddr) -> io::Result<Socket> {
    let make = || {
        Socket::new(
            Domain::for_address(family_of),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )
    };
    let made = match ns {
        Some(ns) => ns.run_in(make)?,
        None => make(),
    };
    made.map_err(|source| {
        NetnsError::Socket {
            netns: ns_label(ns),
            source,
        }
        .into()
    })
}

/// A nonblocking listener on `addr` inside `ns` (None: the current netns),
/// with SO_REUSEADDR, and SO_REUSEPORT / IP_TRANSPARENT when asked.
pub fn tcp_listener(
    ns: Option<&NetNs>,
    addr: SocketAddr,
    opts: ListenOpts,
) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(ns, addr)?;
    let opt_err = |what: &'static str| {
        move |source: io::Error| -> io::Error {
            NetnsError::Option {
                what,
                addr,
                netns: ns_label(ns),
                source,
            }
            .into()
        }
    };
    // Restarted proxies must rebind while old connections sit in TIME_WAIT.
    socket
        .set_reuse_address(true)
        .map_err(opt_err("SO_REUSEADDR"))?;
    if opts.reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(opt_err("SO_REUSEPORT"))?;
    }
    if opts.transparent {
        sockopt::set_transparent(&socket, addr.is_ipv6()).map_err(opt_err("IP_TRANSPARENT"))?;
    }
    if opts.nodelay {
        socket
            .set_tcp_nodelay(true)
            .map_err(opt_err("TCP_NODELAY"))?;
    }
    socket
        .bind(&addr.into())
        .map_err(|source| NetnsError::Bind {
            addr,
            netns: ns_label(ns),
            source,
        })?;
    socket
        .listen(opts.backlog)
        .map_err(|source| NetnsError::Listen {
            addr,
            netns: ns_label(ns),
            source,
        })?;
    tracing::debug!(%addr, netns = %ns_label(ns), "listening");
    Ok(socket.into())
}

/// A nonblocking, not yet connected socket for `dst` created inside `ns`;
/// the caller then awaits `.connect(dst)` on tokio.
pub fn tcp_socket(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    opts: SocketOpts,
) -> io::Result<tokio::net::TcpSocket> {
    if let Some(src) = opts.transparent_src {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(NetnsError::FamilyMismatch { src, dst }.into());
        }
    }
    let socket = new_socket(ns, dst)?;
    let opt_err = |what: &'static str| {
        move |source: io::Error| -> io::Error {
            NetnsError::Option {
                what,
                addr: dst,
                netns: ns_label(ns),
                source,
            }
            .into()
        }
    };
    if let Some(mark) = opts.mark {
        sockopt::set_mark(&socket, mark).map_err(opt_err("SO_MARK"))?;
    }
    if opts.nodelay {
        socket
            .set_tcp_nodelay(true)
            .map_err(opt_err("TCP_NODELAY"))?;
    }
    if let Some(src) = opts.transparent_src {
        sockopt::set_transparent(&socket, src.is_ipv6()).map_err(opt_err("IP_TRANSPARENT"))?;
        if src.port() == 0 {
            // Only an optimisation (see the helper); connect works without it.
            if let Err(e) = sockopt::set_bind_address_no_port(&socket) {
                tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT not set");
            }
        }
        socket
            .bind(&src.into())
            .map_err(|source| NetnsError::Bind {
                addr: src,
                netns: ns_label(ns),
                source,
            })?;
    }
    let std: std::net::TcpStream = socket.into();
    Ok(tokio::net::TcpSocket::from_std_stream(std))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_netns_file_names_the_path() {
        let e = NetNs::open("/nonexistent/trellis-netns").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/trellis-netns") && msg.contains("still exists"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_netns_is_refused() {
        let f = std::env::temp_dir().join(format!("trellis-not-a-netns-{}", std::process::id()));
        std::fs::write(&f, "x").unwrap();
        let e = NetNs::open(&f).unwrap_err();
        std::fs::remove_file(&f).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("not a network namespace file"),
            "{e}"
        );
    }

    #[test]
    fn other_namespace_kinds_are_refused() {
        let e = NetNs::open("/proc/thread-self/ns/uts").unwrap_err();
        assert!(
            e.to_string().contains("not a network namespace file"),
            "{e}"
        );
    }

    #[test]
    fn current_namespace_opens() {
        let ns = NetNs::current().unwrap();
        assert_eq!(ns.path(), Path::new(THREAD_NETNS));
        assert!(format!("{ns:?}").contains("NetNs"));
    }

    #[test]
    fn transparent_source_must_match_the_destination_family() {
        let opts = SocketOpts {
            transparent_src: Some("[fd00::1]:0".parse().unwrap()),
            ..SocketOpts::default()
        };
        let e = tcp_socket(None, "127.0.0.1:80".parse().unwrap(), opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("different address families"), "{e}");
    }

    #[test]
    fn listener_in_the_current_namespace_is_nonblocking() {
        let l = tcp_listener(None, "127.0.0.1:0".parse().unwrap(), ListenOpts::default()).unwrap();
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
