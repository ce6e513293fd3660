//! `trellis-relay`: the floor relays of the bulk benchmark. One process per
//! pod, behind the same capture rules as the Envoy sidecars (outbound to
//! 15001, inbound to 15006, the proxy mark to bypass them): the outbound
//! relay connects to the original destination, which the server pod's
//! capture hands to the inbound relay, which connects to the app.
//!
//! Three modes, each a floor for a part of what a mesh proxy does:
//! * `tcp`: tokio, `copy_bidirectional` with large buffers: the cost of
//!   moving bytes through two user-space relays at all.
//! * `splice`: splice(2) through a pipe, one blocking thread per direction:
//!   the same with no copy into user space.
//! * `tls`: `tcp` plus mutual TLS 1.3 between the two relays (rustls with
//!   ring, HBONE's cipher suites and SPIFFE certificates), no HTTP/2.
//! * `uring`, `uring-fixed`, `uring-zc`: `tcp` on io_uring instead of epoll
//!   (one ring on one thread for every connection): recv/send, then
//!   registered buffers (READ_FIXED/WRITE_FIXED), then SEND_ZC from
//!   registered buffers (issue 12 §2: io_uring measured, not estimated);
//!   `uring-tls`: `tls` with its bytes moved on the ring.
//!
//! This module holds the flags and the decisions (pure, tested as tables);
//! [`serve`] does the I/O.

pub mod serve;
pub mod splice;
#[cfg(test)]
mod tests;
pub mod uring;
pub mod uring_flow;
pub mod uring_probe;
pub mod uring_tls;

use std::net::SocketAddr;
use std::path::PathBuf;

/// The capture rules' default proxy mark (`trellis_netns::redirect`).
pub const DEFAULT_MARK: u32 = 0x539;
/// Copy buffer per direction: large, so a relay moves a bulk flow in few
/// syscalls (tokio's default of 8 KiB would make the floor look worse than
/// it is).
pub const DEFAULT_BUFFER: usize = 256 * 1024;
/// ALPN the TLS relays agree on: not `h2`, since no HTTP/2 is spoken.
pub const RELAY_ALPN: &[u8] = b"trellis-relay";

/// How the bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcp,
    Splice,
    Tls,
    Uring,
    UringFixed,
    UringZc,
    UringTls,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Tcp,
        Mode::Splice,
        Mode::Tls,
        Mode::Uring,
        Mode::UringFixed,
        Mode::UringZc,
        Mode::UringTls,
    ];

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Splice => "splice",
            Mode::Tls => "tls",
            Mode::Uring => "uring",
            Mode::UringFixed => "uring-fixed",
            Mode::UringZc => "uring-zc",
            Mode::UringTls => "uring-tls",
        }
    }

    /// Whether the two relays speak TLS to each other.
    pub fn tls(self) -> bool {
        matches!(self, Mode::Tls | Mode::UringTls)
    }

    /// How an io_uring mode moves bytes (None: not an io_uring mode).
    pub fn uring_io(self) -> Option<uring_flow::UringIo> {
        use uring_flow::UringIo;
        match self {
            // TLS sends records from rustls's output, not registered buffers.
            Mode::Uring | Mode::UringTls => Some(UringIo::Plain),
            Mode::UringFixed => Some(UringIo::Fixed),
            Mode::UringZc => Some(UringIo::ZeroCopy),
            Mode::Tcp | Mode::Splice | Mode::Tls => None,
        }
    }
}

/// Which end of the pair: the client pod's (captured outbound traffic) or
/// the server pod's (captured inbound traffic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Outbound,
    Inbound,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "outbound" => Some(Role::Outbound),
            "inbound" => Some(Role::Inbound),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
        }
    }
}

/// The certificate files of a TLS relay (as `sidecars::mesh::write_identity` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
    /// The SPIFFE ID the outbound relay requires of the inbound one.
    pub peer_id: Option<String>,
}

/// A relay's whole configuration, from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub mode: Mode,
    pub role: Role,
    pub listen: SocketAddr,
    /// SO_MARK of upstream sockets (0: none), so the capture lets them pass.
    pub mark: u32,
    /// Copy buffer per direction, bytes.
    pub buffer: usize,
    /// Present in mode `tls` only.
    pub tls: Option<TlsFiles>,
}

pub const USAGE: &str = "usage: trellis-relay --mode tcp|splice|tls|uring|uring-fixed|uring-zc|uring-tls --role outbound|inbound --listen ADDR \
[--mark N] [--buffer BYTES] [--cert-chain PEM --key PEM --root PEM [--peer-id spiffe://...]]\n\
  --mark N       SO_MARK of upstream sockets, decimal or 0x hex (default 0x539, the capture's proxy mark; 0: none)\n\
  --buffer BYTES copy buffer per direction (default 262144)\n\
  tls and uring-tls need --cert-chain, --key and --root; the outbound relay also --peer-id\n\
       trellis-relay --probe   what io_uring this kernel has (opcodes; a zcrx queue on each interface of this netns)";

/// Why a relay refused to start or to relay a connection.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("bad flags: {}\n{USAGE}", .0.join("; "))]
    Flags(Vec<String>),
    #[error("cannot listen on {addr}: {source}; is another relay or proxy already bound there?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the io_uring relay: {0}")]
    Uring(String),
    #[error("cannot load the TLS identity: {0}; check the --cert-chain, --key and --root files")]
    Identity(String),
    #[error("connection from {peer} to {local} was not redirected by the capture rules (no SO_ORIGINAL_DST); connect to the app's address, not to the relay's port")]
    NotRedirected { peer: SocketAddr, local: SocketAddr },
    #[error("connection from {peer} has original destination {dst}, the relay's own port: refusing to loop")]
    Loop { peer: SocketAddr, dst: SocketAddr },
    #[error("the outbound relay was handed a connection to loopback {dst}; loopback traffic is not captured, check the capture rules")]
    Loopback { dst: SocketAddr },
    #[error("cannot read the original destination: {0}")]
    OriginalDst(std::io::Error),
    #[error(
        "cannot connect upstream to {dst}: {source}; is the peer relay or the app listening there?"
    )]
    Connect {
        dst: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {peer} failed ({side}): {source}; a peer that does not speak TLS, or a certificate from another CA, ends here")]
    Handshake {
        peer: SocketAddr,
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {peer} did not finish within 10 s; is the peer a TLS relay?")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("relaying {dst} failed after {up} bytes up and {down} bytes down: {source}")]
    Copy {
        dst: SocketAddr,
        up: u64,
        down: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Parses the flags (after the program name); every problem is reported at once.
pub fn parse_args(args: &[String]) -> Result<RelayConfig, RelayError> {
    let mut errors = Vec::new();
    let (mut mode, mut role, mut listen) = (None, None, None);
    let (mut mark, mut buffer) = (DEFAULT_MARK, DEFAULT_BUFFER);
    let (mut chain, mut key, mut root, mut peer_id) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            errors.push(format!("{flag} needs a value"));
            break;
        };
        match flag.as_str() {
            "--mode" => match Mode::parse(value) {
                Some(m) => mode = Some(m),
                None => errors.push(format!(
                    "--mode {value:?}: expected tcp, splice, tls, uring, uring-fixed, uring-zc or uring-tls"
                )),
            },
            "--role" => match Role::parse(value) {
                Some(r) => role = Some(r),
                None => errors.push(format!("--role {value:?}: expected outbound or inbound")),
            },
            "--listen" => match value.parse::<SocketAddr>() {
                Ok(a) => listen = Some(a),
                Err(e) => errors.push(format!("--listen {value:?}: {e}")),
            },
            "--mark" => match parse_u32(value) {
                Some(m) => mark = m,
                None => errors.push(format!(
                    "--mark {value:?}: expected a number (decimal or 0x hex)"
                )),
            },
            "--buffer" => match value.parse::<usize>() {
                Ok(b) if (1024..=64 << 20).contains(&b) => buffer = b,
                _ => errors.push(format!(
                    "--buffer {value:?}: expected bytes between 1024 and 64 MiB"
                )),
            },
            "--cert-chain" => chain = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            "--root" => root = Some(PathBuf::from(value)),
            "--peer-id" => peer_id = Some(value.clone()),
            other => errors.push(format!("unknown flag {other}")),
        }
    }
    if mode.is_none() {
        errors.push("--mode is required".into());
    }
    if role.is_none() {
        errors.push("--role is required".into());
    }
    if listen.is_none() {
        errors.push("--listen is required".into());
    }
    let any_tls = chain.is_some() || key.is_some() || root.is_some() || peer_id.is_some();
    let tls = match (mode, chain, key, root) {
        (Some(m), Some(chain), Some(key), Some(root)) if m.tls() => {
            if role == Some(Role::Outbound) && peer_id.is_none() {
                errors.push(
                    "the outbound tls relay needs --peer-id (the inbound relay's SPIFFE ID)".into(),
                );
            }
            Some(TlsFiles {
                chain,
                key,
                root,
                peer_id,
            })
        }
        (Some(m), ..) if m.tls() => {
            errors.push(format!(
                "--mode {} needs --cert-chain, --key and --root",
                m.name()
            ));
            None
        }
        (Some(_), ..) if any_tls => {
            errors.push("certificate flags are for --mode tls and uring-tls only".into());
            None
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(RelayError::Flags(errors));
    }
    Ok(RelayConfig {
        mode: mode.expect("checked above"),
        role: role.expect("checked above"),
        listen: listen.expect("checked above"),
        mark,
        buffer,
        tls,
    })
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Where a captured connection goes: its original destination, unless that
/// is the relay itself (a direct connection to the relay's port, which the
/// inbound capture redirects to itself) or, for the outbound relay,
/// loopback (which the capture never redirects, so it would mean the rules
/// are not what the relay expects). `original` is None when the connection
/// was not redirected at all.
pub fn upstream(
    role: Role,
    listen_port: u16,
    peer: SocketAddr,
    local: SocketAddr,
    original: Option<SocketAddr>,
) -> Result<SocketAddr, RelayError> {
    let dst = original.ok_or(RelayError::NotRedirected { peer, local })?;
    if dst.port() == listen_port && (dst.ip() == local.ip() || dst.ip().is_unspecified()) {
        return Err(RelayError::Loop { peer, dst });
    }
    if role == Role::Outbound && dst.ip().is_loopback() {
        return Err(RelayError::Loopback { dst });
    }
    Ok(dst)
}
