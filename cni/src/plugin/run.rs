//! One plugin invocation: parse, ask the agent, print the result.
//!
//! The agent call is the only I/O; what to print for each agent reply is
//! [`add_outcome`], a pure function tested as a table.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::error::{CniError, Code};
use super::spec::{self, Command, Invocation, NetConf, SUPPORTED_VERSIONS};
use crate::wire::{Failure, PluginCommand, PluginReply, PluginRequest, MAX_MESSAGE};

/// Extra time the plugin gives the agent beyond the capture timeout, so the
/// agent's own "timed out" answer (which says why) arrives first.
const AGENT_GRACE: Duration = Duration::from_secs(2);

/// What the process prints and exits with.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one invocation from its environment and stdin.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Output {
    let inv = match spec::parse_env(get_env) {
        Ok(inv) => inv,
        // No config read yet: answer in the newest version we speak.
        Err(e) => return failure(&e, "1.0.0"),
    };
    if inv.command == Command::Version {
        return Output {
            stdout: version_json(),
            exit_code: 0,
        };
    }
    let conf = match spec::parse_conf(stdin, inv.command) {
        Ok(c) => c,
        Err(e) => return failure(&e, &version_hint(stdin)),
    };
    match execute(&inv, &conf) {
        Ok(Some(result)) => Output {
            stdout: result.to_string(),
            exit_code: 0,
        },
        Ok(None) => Output {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => failure(&e, &conf.cni_version),
    }
}

fn failure(e: &CniError, version: &str) -> Output {
    Output {
        stdout: e.to_json(version),
        exit_code: 1,
    }
}

/// The cniVersion of a config we could not fully parse, so even the error
/// comes back in the version the runtime speaks.
fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_string())
}

fn version_json() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn execute(inv: &Invocation, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let command = match inv.command {
        Command::Add => PluginCommand::Add,
        Command::Del => PluginCommand::Del,
        Command::Check => PluginCommand::Check,
        Command::Version => {
            return Ok(Some(
                serde_json::from_str(&version_json()).unwrap_or_default(),
            ))
        }
    };
    // A sandbox that is not a Kubernetes pod is never ours: no agent needed.
    if inv.pod.is_none() {
        return Ok(passthrough(inv.command, conf));
    }
    let req = PluginRequest {
        command,
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone(),
        pod: inv.pod.clone(),
        timeout_ms: conf.capture_timeout_ms,
    };
    let timeout = Duration::from_millis(conf.capture_timeout_ms) + AGENT_GRACE;
    let reply = call_agent(&conf.agent_socket, &req, timeout);
    match inv.command {
        Command::Add => add_outcome(reply, conf.fail_open, conf).map(Some),
        Command::Check => check_outcome(reply).map(|()| None),
        // DEL must succeed when the agent is gone or the pod unknown, or a
        // runtime could never tear the sandbox down; the agent reconciles.
        Command::Del => del_outcome(reply).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// ADD and CHECK with nothing to do print the previous result (ADD) or
/// nothing (CHECK, DEL).
fn passthrough(command: Command, conf: &NetConf) -> Option<Value> {
    (command == Command::Add).then(|| result_of(conf))
}

/// The previous plugin's result, unchanged, stamped with the config's
/// version only if it lacks one.
fn result_of(conf: &NetConf) -> Value {
    let mut v = conf.prev_result.clone().unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.entry("cniVersion")
            .or_insert_with(|| Value::String(conf.cni_version.clone()));
    }
    v
}

/// What ADD prints for the agent's reply (or the failure to reach it).
pub fn add_outcome(
    reply: Result<PluginReply, CniError>,
    fail_open: bool,
    conf: &NetConf,
) -> Result<Value, CniError> {
    let err = match reply {
        Ok(PluginReply::Captured) | Ok(PluginReply::NotEnrolled { .. }) => {
            return Ok(result_of(conf))
        }
        Ok(PluginReply::Released) => CniError::new(
            Code::AgentFailed,
            "the Trellis CNI agent answered ADD with 'released'; agent and plugin versions may differ",
        ),
        Ok(PluginReply::Failed { failure, message }) => failure_error(failure, message),
        Err(e) => e,
    };
    // failOpen covers only an absent or silent agent or node proxy: a pod
    // the node proxy refused, or rules that could not be installed, would
    // fail the same way on every retry and must be seen.
    let absent = matches!(err.code, Code::AgentUnreachable | Code::CaptureTimeout);
    if fail_open && absent {
        tracing::warn!(error = %err, "capture not confirmed; the pod starts uncaptured (failOpen)");
        return Ok(result_of(conf));
    }
    Err(err)
}

fn failure_error(failure: Failure, message: String) -> CniError {
    let (code, hint) = match failure {
        Failure::NoProxy => (
            Code::CaptureTimeout,
            "no node proxy is connected to the Trellis CNI agent: check that the trellis-node-proxy pod on this node is running with --zds-socket pointing at the agent's ZDS socket",
        ),
        Failure::Timeout => (
            Code::CaptureTimeout,
            "the node proxy did not confirm in time: check its logs for this pod, or raise captureTimeoutMs",
        ),
        Failure::Refused => (
            Code::CaptureRefused,
            "the node proxy refused the pod: its logs say why",
        ),
        Failure::Api => (
            Code::ApiUnavailable,
            "the Trellis CNI agent cannot read the pod or its namespace from the API server: check its logs, its connection to the API server and its RBAC (get on pods and namespaces); the runtime retries the sandbox",
        ),
        Failure::Agent | Failure::BadRequest => (
            Code::AgentFailed,
            "see the trellis-cni-agent logs on this node",
        ),
    };
    CniError::new(code, message).with_details(hint)
}

fn check_outcome(reply: Result<PluginReply, CniError>) -> Result<(), CniError> {
    match reply? {
        PluginReply::Captured | PluginReply::NotEnrolled { .. } => Ok(()),
        PluginReply::Failed { failure, message } => Err(failure_error(failure, message)),
        PluginReply::Released => Err(CniError::new(
            Code::AgentFailed,
            "the pod is enrolled but the agent does not serve it; delete the pod to re-enroll it",
        )),
    }
}

fn del_outcome(reply: Result<PluginReply, CniError>) -> Result<(), CniError> {
    match reply {
        Ok(PluginReply::Failed {
            failure: Failure::BadRequest,
            message,
        }) => Err(CniError::new(Code::AgentFailed, message)),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "DEL could not reach the agent; it drops the pod when it next reconciles");
            Ok(())
        }
    }
}

/// One request and one reply over the agent's Unix socket.
pub fn call_agent(
    socket: &Path,
    req: &PluginRequest,
    timeout: Duration,
) -> Result<PluginReply, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(
            Code::AgentUnreachable,
            format!("cannot reach the Trellis CNI agent at {}: {e}", socket.display()),
        )
        .with_details("check that the trellis-cni-agent on this node is running and that agentSocket in the CNI config matches its --plugin-socket")
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(req).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut reader = BufReader::new(stream.take(MAX_MESSAGE as u64));
    let mut buf = String::new();
    match reader.read_line(&mut buf) {
        Ok(0) => {
            return Err(CniError::new(
                Code::AgentFailed,
                format!(
                    "the Trellis CNI agent at {} closed the connection without an answer",
                    socket.display()
                ),
            ))
        }
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(CniError::new(
                Code::CaptureTimeout,
                format!(
                    "the Trellis CNI agent at {} did not answer within {timeout:?}",
                    socket.display()
                ),
            ))
        }
        Err(e) => return Err(unreachable(e)),
    }
    serde_json::from_str(&buf).map_err(|e| {
        CniError::new(
            Code::AgentFailed,
            format!("the Trellis CNI agent sent an answer that is not a reply: {e}"),
        )
    })
}

#[cfg(test)]
mod tests;
