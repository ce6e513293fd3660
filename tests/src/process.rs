//! Running commands for the harness: `ip` to build the topology, and
//! processes started inside namespaces, always with a deadline and never
//! outliving the topology.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::topology::{Result, TopologyError};
use crate::wait::wait_for;

/// Upper bound for one short command (`ip ...`, `ip netns exec ...`).
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// PIDs of spawned children not yet reaped. An unreaped child's PID cannot be
/// reused, so killing a PID from this set never hits an unrelated process.
#[derive(Default, Clone)]
pub(crate) struct Pids(Arc<Mutex<HashSet<u32>>>);

impl Pids {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SIGKILLs every tracked child; their guards reap them later.
pub(crate) fn kill_all(pids: &Pids) {
    for pid in pids.lock().iter() {
        // SAFETY: plain syscall; the PID is an unreaped child of ours (see Pids).
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` to completion within `timeout`; its stdout on success.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let command = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TopologyError::Command {
            command: command.clone(),
            detail: format!("cannot start it: {e}"),
        })?;
    // Read the pipes on helper threads so a chatty command cannot block on a full pipe.
    let out = read_on_thread(child.stdout.take());
    let err = read_on_thread(child.stderr.take());
    let status = wait_for(timeout, &command, || child.try_wait().ok().flatten());
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TopologyError::Command {
                command,
                detail: format!("{e}; killed"),
            });
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(TopologyError::Command {
            command,
            detail: format!("{status}: {}", stderr.trim()),
        })
    }
}

fn read_on_thread(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// A process started in a namespace; killed and reaped on drop.
pub struct ChildGuard {
    child: Child,
    pids: Pids,
    log: PathBuf,
    command: String,
}

pub(crate) fn spawn(netns: &str, argv: &[&str], log_dir: &Path, pids: &Pids) -> Result<ChildGuard> {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(argv);
    let command = command_line("ip", &args);
    crate::cleanup::refuse_if_dying(&command)?;
    let log = log_dir.join(format!("{netns}-{}.log", N.fetch_add(1, Ordering::Relaxed)));
    let io_err = |what: &str, e: std::io::Error| TopologyError::Command {
        command: command.clone(),
        detail: format!("{what}: {e}"),
    };
    let out = File::create(&log).map_err(|e| io_err("creating its log file", e))?;
    let err = out
        .try_clone()
        .map_err(|e| io_err("creating its log file", e))?;
    // Hold the lock across spawn so kill_all cannot run between spawn and insert.
    let mut set = pids.lock();
    // `ip netns exec` execs the command itself, so the PID is the command's.
    let child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| io_err("cannot start it", e))?;
    set.insert(child.id());
    drop(set);
    tracing::debug!(%command, pid = child.id(), "spawned");
    Ok(ChildGuard {
        child,
        pids: pids.clone(),
        log,
        command,
    })
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        // Reap under the lock, so kill_all never sees a PID that is free for reuse.
        let mut set = self.pids.lock();
        let s = self.child.try_wait().ok().flatten();
        if s.is_some() {
            set.remove(&self.child.id());
        }
        s
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("`{}` to exit", self.command);
        wait_for(timeout, &what, || self.try_status()).map_err(|e| TopologyError::Command {
            command: self.command.clone(),
            detail: e.to_string(),
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut set = self.pids.lock();
        let _ = self.child.kill();
        let _ = self.child.wait();
        set.remove(&self.child.id());
    }
}

/// A proxy process the tests started directly (not through a topology):
/// SIGTERM, a bounded wait for its exit, and kill plus reap on drop.
pub struct OwnedChild(Child);

impl OwnedChild {
    pub fn new(child: Child) -> OwnedChild {
        OwnedChild(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.0.try_wait()
    }

    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid; it is not reaped
        // before drop, so the pid cannot belong to another process.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// SIGKILL: no drain, no cleanup, as an OOM kill or a node crash.
    pub fn sigkill(&self) {
        // SAFETY: as in `sigterm`.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
    }

    /// Waits for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, "process exit", || self.0.try_wait().ok().flatten()).ok()
    }

    /// SIGKILL (as a crash) and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
