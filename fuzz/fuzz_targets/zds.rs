//! ZDS messages on both ends of the agent's socket: the node proxy's session
//! over a sequence of the agent's packets (with or without a netns fd), and
//! the agent's reading of the proxy's hello and acks.
//!
//! Input: packets, each `[flags][len][len bytes]`; flags bit 0 attaches an
//! fd, bit 1 marks the packet truncated, bit 2 feeds it to the agent side.
#![no_main]
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use trellis_cni::agent::protocol::{parse_answer, parse_hello, PacketMeta};
use trellis_node_proxy::zds::session::{parse, Action, Session};

fuzz_target!(|data: &[u8]| {
    let mut session = Session::default();
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (packet, next) = tail.split_at(n);
        rest = next;
        let truncated = flags & 2 != 0;
        if flags & 4 != 0 {
            let meta = PacketMeta {
                fds: usize::from(flags & 1),
                truncated,
            };
            let _ = parse_hello(packet, meta);
            let _ = parse_answer(packet, meta);
            continue;
        }
        let fds: Vec<OwnedFd> = if flags & 1 != 0 {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let parsed = parse(packet, fds, truncated);
        let action = session.on(parsed.as_ref(), "Kubernetes");
        if let Action::Add { uid, .. } | Action::Keep { uid } | Action::Del { uid } = &action {
            assert!(!uid.is_empty());
        }
    }
});
