//! Exact syscall counts of a running process over a window: `strace -f -c`
//! attached by PID, stopped with SIGINT, its summary parsed.
//!
//! perf's syscall tracepoints (`trellis-bench --syscalls`) cost less and
//! suit a timed run; strace is used where the count must be exact per
//! syscall *and* per result, since a read that fails with EAGAIN is a
//! syscall the data path could have avoided, and only strace tells them
//! apart.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One syscall's count over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub calls: u64,
    /// Calls that returned an error (for reads on a non-blocking socket,
    /// almost always EAGAIN).
    pub errors: u64,
}

/// strace attached to one process and all its threads.
pub struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    /// Attaches to `pid`; returns once strace has attached to every thread.
    pub fn attach(pid: u32, out: &Path) -> Result<Strace> {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of {pid}"))?
            .count();
        let child = Command::new("strace")
            .args(["-f", "-q", "-c", "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running strace (apt-get install strace)")?;
        // strace says nothing on attaching with -c; its tracer shows in
        // each thread's TracerPid once the thread is stopped and traced.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = Strace {
            child,
            out: out.to_path_buf(),
        };
        loop {
            if traced_threads(pid, s.child.id())? >= threads {
                return Ok(s);
            }
            if let Some(status) = s.child.try_wait()? {
                bail!("strace -p {pid} exited at once ({status}); is ptrace allowed?");
            }
            if Instant::now() > deadline {
                let _ = s.child.kill();
                bail!("strace did not attach to every thread of {pid} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tracing and returns the counts by syscall name.
    pub fn finish(mut self) -> Result<BTreeMap<String, Calls>> {
        // SAFETY: a signal to our own child.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) } != 0 {
            bail!("signalling strace: {}", std::io::Error::last_os_error());
        }
        let status = self.child.wait().context("waiting for strace")?;
        // strace ends by re-raising the SIGINT it was stopped with.
        if !status.success() && status.signal() != Some(libc::SIGINT) {
            bail!("strace ended with {status}");
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        parse_summary(&text)
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Threads of `pid` whose tracer is `tracer`.
fn traced_threads(pid: u32, tracer: u32) -> Result<usize> {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status")).unwrap_or_default();
        let tp = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|v| v.trim().parse::<u32>().unwrap_or(0));
        if tp == Some(tracer) {
            n += 1;
        }
    }
    Ok(n)
}

/// Parses `strace -c`'s table: `% time seconds usecs/call calls [errors] syscall`.
pub fn parse_summary(text: &str) -> Result<BTreeMap<String, Calls>> {
    let mut out = BTreeMap::new();
    let mut seen_header = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"%") {
            seen_header = true;
            continue;
        }
        if !seen_header || f.is_empty() || f[0].starts_with('-') {
            continue;
        }
        let (calls, errors, name) = match f.len() {
            5 => (f[3], "0", f[4]),
            6 => (f[3], f[4], f[5]),
            _ => bail!("unexpected line in strace's summary: {line:?}"),
        };
        if name == "total" {
            continue;
        }
        let n = |s: &str| {
            s.parse::<u64>()
                .with_context(|| format!("a count in strace's summary: {line:?}"))
        };
        out.insert(
            name.to_string(),
            Calls {
                calls: n(calls)?,
                errors: n(errors)?,
            },
        );
    }
    if !seen_header {
        bail!("strace wrote no summary table");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_with_and_without_errors_parses() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 55.00    0.000550          27        20           epoll_wait
 30.00    0.000300          15        20        10 recvfrom
 15.00    0.000150           7        20           writev
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000          16        60        10 total
";
        let m = parse_summary(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m["recvfrom"],
            Calls {
                calls: 20,
                errors: 10
            }
        );
        assert_eq!(
            m["epoll_wait"],
            Calls {
                calls: 20,
                errors: 0
            }
        );
    }

    #[test]
    fn no_table_is_an_error() {
        assert!(parse_summary(
            "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n"
        )
        .is_err());
    }
}
