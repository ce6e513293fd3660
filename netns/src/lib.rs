//! Host plumbing shared by the node proxy, the CNI plugin, the tests and the
//! benchmarks, so none of them reaches into another's crate for it.
//!
//! - The crate root ([`NetNs`], [`tcp_listener`], [`tcp_socket`]): sockets
//!   created inside another network namespace.
//! - [`redirect`]: the nftables and policy-routing rules that send a pod's
//!   traffic to the node proxy's capture ports.
//! - [`sockopt`]: the socket options capture needs (original destination,
//!   transparent binds).
//! - [`inuse`]: whether a listener's address is already taken, and by whom
//!   (SO_REUSEPORT would hide it).
//! - [`cpu`]: CPU affinity for thread-per-core workers.
//! - [`seqpacket`]: a Unix SEQPACKET socket that passes fds (the ZDS
//!   hand-over of pods' netns between the CNI agent and the node proxy).
//! - [`fdmsg`]: JSON messages with an fd each over it, and [`handover`]: the
//!   framing of the proxies' hand-over of their listeners to a new process.
//!
//! Nothing here knows about config, certificates or HBONE.

pub mod cpu;
pub mod fdmsg;
pub mod handover;
pub mod inuse;
mod ns;
pub mod redirect;
pub mod seqpacket;
pub mod sockopt;

pub use ns::*;
