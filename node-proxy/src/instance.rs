//! One shared-mode node proxy per node: an exclusive `flock` on
//! `<runtime dir>/node-proxy.lock`, holding the owner's pid for messages.
//!
//! A second proxy finds the lock taken and refuses to start, naming the
//! first, unless it takes over from it (`--takeover`): then the old process
//! passes its lock fd over the hand-over socket. A flock belongs to the open
//! file, not the process, so the new process holds the very same lock and
//! keeps it when the old one exits; no moment passes with the node unlocked.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the runtime dir.
pub const LOCK_FILE: &str = "node-proxy.lock";
/// The hand-over socket's name in the runtime dir.
pub const HANDOVER_SOCKET: &str = "node-proxy-handover.sock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "cannot create the runtime dir {path}: {source}; set --runtime-dir to a writable directory"
    )]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the node proxy lock {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another node proxy serves this node: {holder} holds {path}; stop it first, or start this one with --takeover to take over its listeners and pods without dropping connections")]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The held lock; released when the last fd on it closes (this process's
/// and any process it was handed to).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock in `dir` (created if missing), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<InstanceLock, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(LockError::Lock { path, source: e });
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                holder: describe_holder(&text),
                path,
            });
        }
        let mut lock = InstanceLock { file, path };
        lock.write_pid();
        Ok(lock)
    }

    /// The lock handed over by the process we take over from: the same open
    /// file, so the same lock. Writes our pid in it.
    pub fn adopt(fd: OwnedFd, dir: &Path) -> InstanceLock {
        let mut lock = InstanceLock {
            file: File::from(fd),
            path: dir.join(LOCK_FILE),
        };
        lock.write_pid();
        lock
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Best effort: the pid is only for messages; the flock is what counts.
    fn write_pid(&mut self) {
        let pid = std::process::id();
        let _ = self
            .file
            .set_len(0)
            .and_then(|_| self.file.rewind())
            .and_then(|_| writeln!(self.file, "{pid}"));
    }
}

impl AsFd for InstanceLock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// "pid N (name)" from the lock file's text.
fn describe_holder(text: &str) -> String {
    match text.trim().parse::<u32>() {
        Ok(pid) => match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(name) => format!("pid {pid} ({})", name.trim()),
            Err(_) => format!("pid {pid} (not visible from here)"),
        },
        Err(_) => "a process that has not written its pid yet".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_first_and_a_handed_fd_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path()).unwrap();
        let err = InstanceLock::acquire(dir.path()).unwrap_err().to_string();
        let me = format!("pid {} (", std::process::id());
        assert!(err.contains(&me), "{err}");
        assert!(err.contains("--takeover"), "{err}");
        // A dup of the fd (what SCM_RIGHTS passes) holds the same lock after
        // the first handle is gone.
        let handed: OwnedFd = first.file.try_clone().unwrap().into();
        drop(first);
        let adopted = InstanceLock::adopt(handed, dir.path());
        assert!(InstanceLock::acquire(dir.path()).is_err(), "still held");
        drop(adopted);
        InstanceLock::acquire(dir.path()).expect("free once every fd is closed");
    }

    #[test]
    fn holder_descriptions() {
        let me = std::process::id();
        let cases = [
            (format!("{me}\n"), format!("pid {me} (")),
            ("".to_string(), "has not written its pid".to_string()),
            ("junk".to_string(), "has not written its pid".to_string()),
            (
                format!("{}", u32::MAX),
                "(not visible from here)".to_string(),
            ),
        ];
        for (text, want) in cases {
            let got = describe_holder(&text);
            assert!(got.contains(&want), "{text:?}: {got}");
        }
    }

    #[test]
    fn an_unwritable_runtime_dir_is_a_clear_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = InstanceLock::acquire(&file.path().join("sub")).unwrap_err();
        assert!(err.to_string().contains("--runtime-dir"), "{err}");
    }
}
