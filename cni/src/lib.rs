//! Trellis CNI: how pods join the mesh on a Kubernetes node.
//!
//! - [`plugin`]: `trellis-cni`, the chained CNI plugin a container runtime
//!   runs for every sandbox (ADD, DEL, CHECK, VERSION).
//! - [`agent`]: `trellis-cni-agent`, the long-running node agent: it decides
//!   enrollment, hands each pod's netns to the node proxy over Istio's ZDS,
//!   installs the capture rules, and answers the plugin once the node proxy
//!   has confirmed.
//! - [`install`]: chaining the plugin into a node's CNI config.
//! - [`wire`]: what plugin and agent say to each other.

pub mod agent;
pub mod install;
pub mod plugin;
pub mod wire;
