//! HTTP/2 attacks on the HBONE ports of the node proxy and the waypoint
//! (`trellis-attack-bench`, issue 16 section 3): an authenticated but
//! hostile mesh peer against the proxy, while another tenant's traffic
//! goes through the same proxy.
//!
//! * [`frames`]: HTTP/2 frames and HPACK literals written by hand (shared
//!   with the e2e tests, in `trellis_e2e::h2frames`).
//! * [`attacker`]: the attacks, over mTLS with a valid mesh identity.
//! * [`victim`]: the other tenant's steady traffic.
//! * [`bench`](mod@bench): one attack against one proxy, measured.
//! * [`report`]: the table.

pub mod attacker;
pub mod bench;
pub use trellis_e2e::h2frames as frames;
pub mod program;
pub mod report;
pub mod victim;
