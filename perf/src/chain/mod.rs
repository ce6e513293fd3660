//! Latency and mesh CPU along a call chain (issue 15 §2, items 3 and 4):
//! chains of services, each an HTTP/1.1 server that calls the next one over
//! keep-alive connections, spread over both nodes; an open-loop client at a
//! fixed rate into the head; one column per way of carrying the calls.
//!
//! * [`service`]: one service of the chain, in its pod's netns (in process).
//! * [`topo`]: the chain's pods, nodes, VIPs and mesh config.
//! * [`columns`]: direct, Trellis ambient (with and without a waypoint),
//!   Envoy sidecars L4 and L7, Trellis sidecar-shaped: starting each mesh,
//!   its processes, the check that the calls went through it.
//! * [`bench`](mod@bench): the run, column by column and depth by depth.
//! * [`report`]: per-hop figures, CPU per request, the targets.

pub mod bench;
pub mod columns;
pub mod report;
pub mod service;
pub mod topo;
