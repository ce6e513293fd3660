//! Namespace names and the removal of namespaces left behind by test
//! processes that died before their `Drop` ran (SIGKILL, abort, timeout).

use std::path::Path;
use std::sync::Mutex;

use crate::process;
use crate::topology::Result;

/// Where `ip netns` keeps its namespace files.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Prefix of every namespace this harness creates: `trl<pid>-<n>-...`.
pub const PREFIX: &str = "trl";

/// `ip netns add` makes /var/run/netns a shared mount the first time; two
/// concurrent first calls can stack two mounts there and hide each other's
/// namespaces. Tests build topologies in parallel, so serialise these.
static NETNS_ADMIN: Mutex<()> = Mutex::new(());

/// Runs `ip netns <op> <name>` (add or delete) under [`NETNS_ADMIN`].
pub(crate) fn netns_admin(op: &str, name: &str) -> Result<()> {
    let _serial = NETNS_ADMIN.lock().unwrap_or_else(|e| e.into_inner());
    process::run("ip", &["netns", op, name], process::EXEC_TIMEOUT).map(drop)
}

/// Deletes namespaces named `trl<pid>-...` whose process is gone (a test run
/// that was killed before its `Drop` ran). Returns the names deleted.
pub fn cleanup_stale_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return vec![];
    };
    let mut deleted = vec![];
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match netns_admin("delete", &name) {
            Ok(_) => deleted.push(name),
            Err(e) => eprintln!("trellis-e2e: could not delete stale namespace {name}: {e}"),
        }
    }
    if !deleted.is_empty() {
        tracing::info!(?deleted, "removed namespaces left by dead test processes");
    }
    deleted
}

/// The pid in a `trl<pid>-<n>-...` name, if the name has exactly that shape.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, _) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}
