//! Reading an invocation as the CNI spec defines it: the `CNI_*`
//! environment variables and the network config on stdin. Pure: the
//! environment comes in as a lookup function, stdin as bytes.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, Code};
use crate::wire::{PodRef, DEFAULT_PLUGIN_SOCKET};

/// The versions whose config and result formats this plugin speaks. A
/// chained plugin passes the result through, so every format it can read
/// it can also write.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// How long ADD waits for the node proxy, unless the config says.
pub const DEFAULT_CAPTURE_TIMEOUT_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// What the runtime asked, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub pod: Option<PodRef>,
}

/// The network config: the spec's fields we use and Trellis's own.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The previous plugin's result; a chained plugin passes it on.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The agent's plugin socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// How long ADD waits for the node proxy to confirm capture.
    #[serde(default = "default_timeout")]
    pub capture_timeout_ms: u64,
    /// When true, an enrolled pod whose capture is not confirmed starts
    /// anyway (uncaptured, until the node proxy comes); when false (the
    /// default), ADD fails and the runtime retries the sandbox.
    #[serde(default)]
    pub fail_open: bool,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_PLUGIN_SOCKET)
}

fn default_timeout() -> u64 {
    DEFAULT_CAPTURE_TIMEOUT_MS
}

/// Reads the `CNI_*` variables, reporting every missing one at once.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
    let command = match non_empty("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some(other) => {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_COMMAND={other} is not supported; expected ADD, DEL, CHECK or VERSION"),
            ))
        }
        None => {
            return Err(CniError::new(
                Code::InvalidEnv,
                "CNI_COMMAND is not set; trellis-cni is run by a container runtime, with CNI_COMMAND=ADD|DEL|CHECK|VERSION",
            ))
        }
    };
    if command == Command::Version {
        return Ok(Invocation {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            pod: None,
        });
    }
    // DEL must work after the netns is gone, so CNI_NETNS is optional there.
    let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"];
    if command != Command::Del {
        required.push("CNI_NETNS");
    }
    let missing: Vec<&str> = required
        .into_iter()
        .filter(|k| non_empty(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("missing CNI environment variables: {}", missing.join(", ")),
        ));
    }
    let container_id = non_empty("CNI_CONTAINERID").unwrap_or_default();
    let pod = parse_args(&get("CNI_ARGS").unwrap_or_default(), &container_id)?;
    Ok(Invocation {
        command,
        netns: non_empty("CNI_NETNS"),
        ifname: non_empty("CNI_IFNAME").unwrap_or_default(),
        container_id,
        pod,
    })
}

/// Finds the pod in `CNI_ARGS` (`K=V;K=V`). No `K8S_POD_NAME` and
/// `K8S_POD_NAMESPACE` means not a Kubernetes pod; one without the other is
/// an error. Keys we do not know are ignored: runtimes add their own.
pub fn parse_args(args: &str, container_id: &str) -> Result<Option<PodRef>, CniError> {
    let (mut ns, mut name, mut uid) = (None, None, None);
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            ));
        };
        match k {
            "K8S_POD_NAMESPACE" => ns = Some(v),
            "K8S_POD_NAME" => name = Some(v),
            "K8S_POD_UID" => uid = Some(v),
            _ => {}
        }
    }
    let nonempty = |o: Option<&str>| o.filter(|v| !v.is_empty()).map(str::to_string);
    match (nonempty(ns), nonempty(name)) {
        (None, None) => Ok(None),
        (Some(namespace), Some(name)) => Ok(Some(PodRef {
            uid: nonempty(uid).unwrap_or_else(|| container_id.to_string()),
            service_account: String::new(),
            namespace,
            name,
        })),
        (Some(_), None) => Err(CniError::new(
            Code::InvalidEnv,
            "CNI_ARGS has K8S_POD_NAMESPACE but no K8S_POD_NAME",
        )),
        (None, Some(_)) => Err(CniError::new(
            Code::InvalidEnv,
            "CNI_ARGS has K8S_POD_NAME but no K8S_POD_NAMESPACE",
        )),
    }
}

/// Parses and checks the network config on stdin.
pub fn parse_conf(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let mut de = serde_json::Deserializer::from_slice(stdin);
    let conf: NetConf = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let at = if field == "." {
            String::new()
        } else {
            format!(" field {field}")
        };
        CniError::new(
            Code::Decode,
            format!("cannot parse the network config on stdin{at}: {}", e.inner()),
        )
        .with_details("expected a JSON object with cniVersion, name, type and (for a chained plugin) prevResult")
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "network config {:?}: cniVersion {:?} is not supported; use one of {}",
                conf.name,
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if command == Command::Check && matches!(conf.cni_version.as_str(), "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "network config {:?}: CHECK needs cniVersion 0.4.0 or later, got {}",
                conf.name, conf.cni_version
            ),
        ));
    }
    if command == Command::Add {
        match &conf.prev_result {
            Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("network config {:?}: prevResult must be an object", conf.name),
                ))
            }
            None => {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!(
                        "network config {:?}: no prevResult; trellis-cni is a chained plugin: list it after the plugin that creates the interface (bridge, ptp, ...) in a .conflist",
                        conf.name
                    ),
                ))
            }
        }
    }
    if conf.capture_timeout_ms == 0 || conf.capture_timeout_ms > 300_000 {
        return Err(CniError::new(
            Code::UnsupportedField,
            format!(
                "network config {:?}: captureTimeoutMs {} must be between 1 and 300000",
                conf.name, conf.capture_timeout_ms
            ),
        ));
    }
    Ok(conf)
}

#[cfg(test)]
mod tests;
