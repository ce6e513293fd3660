//! The hand-over messages: one JSON object per SEQPACKET packet, with at
//! most one fd attached (SCM_RIGHTS), through `trellis_netns::fdmsg`.
//!
//! The conversation (new = the process taking over, old = the running one):
//!
//! ```text
//! new -> old  hello {version, pid}
//! old -> new  offer {version, pid, pods, listeners}     or refuse {reason}
//! old -> new  lock                         + the instance lock fd
//! old -> new  admin {server}               + admin, metrics, readiness listener fds
//! old -> new  pod {uid, workload, ...}     + the pod's netns fd
//! old -> new  listener {pod, kind, addr}   + one listener fd (of that pod)
//! old -> new  done
//! new -> old  ready                        (new accepts on every listener now)
//!             or abort {reason}            (new gives up; old keeps serving)
//! old -> new  released                     (old stops accepting now, and drains)
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
pub use trellis_netns::fdmsg::{FdMessage, FdMsgError as ProtoError};

use crate::context::ListenerKind;
use crate::pods::Origin;

/// The protocol version both sides must speak.
pub const VERSION: u32 = 1;

/// One of the admin thread's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminServer {
    Admin,
    Metrics,
    Readiness,
}

/// A pod listener's kind, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WireKind {
    Outbound,
    InboundPlain,
    Hbone,
    OutboundForward { target: SocketAddr },
}

impl From<ListenerKind> for WireKind {
    fn from(k: ListenerKind) -> Self {
        match k {
            ListenerKind::Outbound => WireKind::Outbound,
            ListenerKind::InboundPlain => WireKind::InboundPlain,
            ListenerKind::Hbone => WireKind::Hbone,
            ListenerKind::OutboundForward(target) => WireKind::OutboundForward { target },
        }
    }
}

impl From<WireKind> for ListenerKind {
    fn from(k: WireKind) -> Self {
        match k {
            WireKind::Outbound => ListenerKind::Outbound,
            WireKind::InboundPlain => ListenerKind::InboundPlain,
            WireKind::Hbone => ListenerKind::Hbone,
            WireKind::OutboundForward { target } => ListenerKind::OutboundForward(target),
        }
    }
}

trellis_netns::conversation! {
    /// One message.
    pub enum Msg, version VERSION;
    offer { pods: u32, listeners: u32 }
    with_fd {
        Lock => "lock",
        Admin { server: AdminServer } => "admin",
        Pod {
            uid: String,
            workload: String,
            origin: Origin,
            /// Where the old process opened the netns (for /pods; the fd counts).
            netns: String,
            /// The old process installed the capture rules (the new one owns them now).
            capture_rules: bool,
        } => "pod",
        Listener {
            pod: String,
            kind: WireKind,
            addr: SocketAddr,
        } => "listener",
    }
}
