//! What the short-lived plugin and the long-running agent say to each other:
//! one JSON request and one JSON reply, each on one line, over a Unix stream
//! socket (`--plugin-socket`, by default [`DEFAULT_PLUGIN_SOCKET`]).
//!
//! Why not ZDS here too: ZDS is the agent's contract with the node proxy
//! (Istio's, kept for interop). The plugin only needs "enroll this pod and
//! tell me when it is captured"; JSON keeps it readable in a socket trace.

use serde::{Deserialize, Serialize};

/// Where the agent listens for the plugin, unless configured otherwise.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/var/run/trellis/cni-plugin.sock";
/// Where the agent serves ZDS to the node proxy, unless configured otherwise.
pub const DEFAULT_ZDS_SOCKET: &str = "/var/run/trellis/zds.sock";
/// A request or reply longer than this is refused.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A Kubernetes pod, as the container runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// `K8S_POD_UID`, or the sandbox's container id when the runtime
    /// does not pass one: the key of the pod on the ZDS socket.
    pub uid: String,
    /// Not in `CNI_ARGS`: the agent reads it from the API server in
    /// Kubernetes mode (ZDS's `WorkloadInfo.service_account`); the plugin
    /// sends none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginCommand {
    Add,
    Del,
    Check,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRequest {
    pub command: PluginCommand,
    pub container_id: String,
    /// `CNI_NETNS`; DEL may come without it (the netns is already gone).
    pub netns: Option<String>,
    /// None when `CNI_ARGS` names no pod (not a Kubernetes sandbox).
    pub pod: Option<PodRef>,
    /// How long ADD waits for the node proxy's confirmation.
    pub timeout_ms: u64,
}

/// Why the agent could not confirm a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Failure {
    /// No node proxy is connected to the agent's ZDS socket.
    NoProxy,
    /// A node proxy is connected but did not acknowledge in time.
    Timeout,
    /// The node proxy answered with an error.
    Refused,
    /// The agent could not open the netns or install the capture rules.
    Agent,
    /// The agent could not read the pod or its namespace from the API
    /// server (Kubernetes mode), so it cannot tell whether it is enrolled.
    Api,
    /// The request itself is wrong.
    BadRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome", deny_unknown_fields)]
pub enum PluginReply {
    /// The pod is not in the mesh; the plugin passes the result through.
    NotEnrolled {
        reason: String,
    },
    /// The node proxy confirmed the pod is served and the rules are in place.
    Captured,
    /// The pod is released (or was never known).
    Released,
    Failed {
        failure: Failure,
        message: String,
    },
}
