//! Namespace names and the removal of namespaces left behind by test
//! processes that died before their `Drop` ran (SIGKILL, abort, timeout);
//! and, for long-running harness binaries (the benchmarks), the same
//! clean-up on SIGINT, SIGTERM or SIGHUP ([`cleanup_on_signal`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

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

/// Namespaces this process has added and not yet deleted, for the signal
/// clean-up; kept under [`NETNS_ADMIN`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Set once a signal's clean-up has begun: nothing new is started inside a
/// namespace after that ([`refuse_if_dying`]).
static DYING: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `ip netns <op> <name>` (add or delete) under [`NETNS_ADMIN`].
pub(crate) fn netns_admin(op: &str, name: &str) -> Result<()> {
    let _serial = lock(&NETNS_ADMIN);
    if op == "add" {
        refuse_if_dying(name)?;
    }
    process::run("ip", &["netns", op, name], process::EXEC_TIMEOUT)?;
    let mut live = lock(&LIVE);
    match op {
        "add" => live.push(name.to_string()),
        _ => live.retain(|n| n != name),
    }
    Ok(())
}

/// Fails once a signal's clean-up has begun, so that the main thread,
/// still running meanwhile, cannot start something the clean-up misses.
pub(crate) fn refuse_if_dying(what: &str) -> Result<()> {
    if DYING.load(Ordering::SeqCst) {
        return Err(crate::topology::TopologyError::Command {
            command: what.to_string(),
            detail: "not started: the process is being stopped by a signal".into(),
        });
    }
    Ok(())
}

/// On the first SIGINT, SIGTERM or SIGHUP: SIGKILL every process inside
/// the namespaces this process created, delete those namespaces, and exit
/// with 128 + the signal's number.
///
/// Without it, Ctrl-C on a benchmark kills the benchmark only: the node
/// proxies, servers and Envoys it started keep running inside namespaces
/// nobody deletes until the next run. A second signal during the clean-up
/// exits at once. Installed once per process; later calls do nothing.
pub fn cleanup_on_signal() -> std::io::Result<()> {
    static INSTALLED: Once = Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        result = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).and_then(
            |mut signals| {
                std::thread::Builder::new()
                    .name("signal-cleanup".into())
                    .spawn(move || {
                        if let Some(sig) = signals.forever().next() {
                            // A second signal while cleaning up: stop now.
                            let _ = signal_hook::flag::register_conditional_shutdown(
                                sig, 128 + sig, std::sync::Arc::new(AtomicBool::new(true)),
                            );
                            let removed = remove_live();
                            eprintln!(
                                "trellis-e2e: stopped by signal {sig}; removed {} namespace(s) and what ran in them",
                                removed
                            );
                            std::process::exit(128 + sig);
                        }
                    })
                    .map(drop)
            },
        );
    });
    result
}

/// SIGKILLs the processes inside every live namespace, then deletes the
/// namespaces; returns how many were deleted.
fn remove_live() -> usize {
    DYING.store(true, Ordering::SeqCst);
    // Taken under the admin lock, so no add is half done.
    let names: Vec<String> = {
        let _serial = lock(&NETNS_ADMIN);
        lock(&LIVE).clone()
    };
    for name in &names {
        // `ip netns pids` lists the PIDs whose network namespace is this
        // one: only what this process started there.
        if let Ok(out) = process::run("ip", &["netns", "pids", name], process::EXEC_TIMEOUT) {
            for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain kill(2) on a PID just listed in our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let mut deleted = 0;
    for name in names.iter().rev() {
        match netns_admin("delete", name) {
            Ok(()) => deleted += 1,
            Err(e) => eprintln!("trellis-e2e: could not delete namespace {name}: {e}"),
        }
    }
    deleted
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
