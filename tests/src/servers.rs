//! Small real TCP servers and clients for tests, usable inside a pod's netns
//! without any subprocess: the listener is created in the namespace and
//! served by a tokio runtime on a background thread.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use trellis_netns::{self as netns, ListenOpts, NetNs, SocketOpts};

/// A server's own thread: told to stop, and joined, on drop. Whatever
/// runtime the thread runs is dropped with its closure, which cancels the
/// connection tasks and closes their sockets.
pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Spawns thread `name` running `f`, which is to return once the
    /// receiver it is given fires (or its sender is gone).
    pub fn spawn(
        name: String,
        f: impl FnOnce(oneshot::Receiver<()>) + Send + 'static,
    ) -> io::Result<ServerThread> {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || f(stopped))?;
        Ok(ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`TestServer`] does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Sends back everything it reads, until the client closes.
    Echo,
    /// Writes one line `"<peer> <local>\n"` (the addresses it saw) and closes.
    Identity,
}

/// A running test server; stops (and closes its sockets) on drop.
pub struct TestServer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    _thread: ServerThread,
}

impl TestServer {
    /// Echo server on `addr` inside `ns` (None: the current netns).
    pub fn echo(ns: Option<&NetNs>, addr: SocketAddr) -> io::Result<TestServer> {
        TestServer::start(ServerKind::Echo, ns, addr, ListenOpts::default())
    }

    /// Identity server on `addr` inside `ns`.
    pub fn identity(ns: Option<&NetNs>, addr: SocketAddr) -> io::Result<TestServer> {
        TestServer::start(ServerKind::Identity, ns, addr, ListenOpts::default())
    }

    /// Any kind with explicit listener options. Bind errors are returned here,
    /// not later on the server thread.
    pub fn start(
        kind: ServerKind,
        ns: Option<&NetNs>,
        addr: SocketAddr,
        opts: ListenOpts,
    ) -> io::Result<TestServer> {
        let std_listener = netns::tcp_listener(ns, addr, opts)?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let thread = ServerThread::spawn(format!("test-server-{}", addr.port()), move |stopped| {
            rt.block_on(serve(kind, std_listener, seen, stopped))
        })?;
        Ok(TestServer {
            addr,
            peers,
            _thread: thread,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Peer addresses of the connections accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn accepted(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

async fn serve(
    kind: ServerKind,
    std_listener: std::net::TcpListener,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "test server cannot register its listener");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    peers.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                    tokio::spawn(handle(kind, stream, peer));
                }
                // E.g. EMFILE: keep serving, the next accept may succeed.
                Err(e) => tracing::warn!(error = %e, "test server accept failed"),
            },
        }
    }
}

async fn handle(kind: ServerKind, mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    let result = match kind {
        ServerKind::Echo => echo(&mut stream).await,
        ServerKind::Identity => match stream.local_addr() {
            Ok(local) => {
                stream
                    .write_all(format!("{peer} {local}\n").as_bytes())
                    .await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "test server connection ended with an error");
    }
    let _ = stream.shutdown().await;
}

async fn echo(stream: &mut tokio::net::TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Connects to `dst` from inside `ns` (blocking, with a timeout), and sets
/// read/write timeouts so a test never hangs on the stream.
pub fn connect(ns: Option<&NetNs>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let connect = || TcpStream::connect_timeout(&dst, timeout);
    let stream = match ns {
        // The socket is created (and connected) in the namespace and stays there.
        Some(ns) => ns.run_in(connect)??,
        None => connect()?,
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Tokio connect from inside `ns` with the node proxy's socket options.
pub async fn connect_async(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    opts: SocketOpts,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let socket = netns::tcp_socket(ns, dst, opts)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} did not complete within {timeout:?}"),
        )),
    }
}

/// Sends `payload` to an echo server and returns what came back.
pub fn echo_roundtrip(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let mut stream = connect(ns, dst, timeout)?;
    stream.write_all(payload)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::with_capacity(payload.len());
    stream.read_to_end(&mut back)?;
    Ok(back)
}

/// What an identity server saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// The address the server was reached at.
    pub local: SocketAddr,
}

impl Identity {
    /// Parses the identity server's line `"<peer> <local>"`.
    pub fn parse(line: &str) -> io::Result<Identity> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("identity server sent {line:?}, expected \"<peer> <local>\""),
            )
        };
        let (peer, local) = line.trim().split_once(' ').ok_or_else(bad)?;
        Ok(Identity {
            peer: peer.parse().map_err(|_| bad())?,
            local: local.parse().map_err(|_| bad())?,
        })
    }

    /// Reads the line from a connected stream.
    pub fn read_from(stream: &TcpStream) -> io::Result<Identity> {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Identity::parse(&line)
    }

    /// Reads the line from a connected tokio stream.
    pub async fn read_from_async(stream: &mut tokio::net::TcpStream) -> io::Result<Identity> {
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Identity::parse(&String::from_utf8_lossy(&buf))
    }
}

/// Connects to an identity server from inside `ns` and returns what it saw.
pub fn ask_identity(
    ns: Option<&NetNs>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<Identity> {
    let stream = connect(ns, dst, timeout)?;
    Identity::read_from(&stream)
}
