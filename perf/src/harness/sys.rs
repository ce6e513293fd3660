//! Pinning, limits, and running work on a pinned thread inside a netns.

use std::io;

use anyhow::{anyhow, Context, Result};
use trellis_netns::NetNs;

/// Pinning is the node proxy's own: the benchmark pins the same way its workers do.
pub use trellis_netns::cpu::{allowed_cpus, pin_current_thread};

/// Raises the soft open-files limit to the hard one (children inherit it):
/// the idle-connection phase holds a few thousand sockets.
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r.rlim_cur)
    }
}

/// Runs `f` on a new thread pinned to `cpu`, inside `ns` for the whole call
/// (so every socket `f` creates belongs to that namespace), and waits for it.
/// `f` must not spawn threads (a new thread would start outside `ns`); a
/// current-thread tokio runtime is fine.
pub fn on_pinned_thread<T: Send + 'static>(
    name: &str,
    cpu: usize,
    ns: &NetNs,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.try_clone().context("cloning a netns handle")?;
    let h = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || -> Result<T> {
            pin_current_thread(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
            ns.run_in(f)
                .with_context(|| format!("entering {}", ns.path().display()))?
        })
        .context("spawning a load thread")?;
    h.join().map_err(|_| anyhow!("thread {name} panicked"))?
}

/// The harness's server thread (stopped and joined on drop).
pub use trellis_e2e::servers::ServerThread;

/// Accepts on `l` for ever, handing each connection (with TCP_NODELAY) to
/// `serve`. An accept error (e.g. EMFILE) backs off briefly rather than spin.
pub async fn accept_each(
    l: &tokio::net::TcpListener,
    mut serve: impl FnMut(tokio::net::TcpStream),
) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                serve(s);
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Timer slack of the calling thread in ns: the default 50 µs would show up
/// as send-time jitter in an open-loop schedule.
pub fn set_timer_slack(ns: u64) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// A current-thread tokio runtime with IO and timers.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Moves every thread of process `pid` onto `cpu` (its workers included,
/// whatever they pinned themselves to). Threads started later inherit the
/// affinity of the thread that starts them.
pub fn repin_process(pid: u32, cpu: usize) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of process {pid}"))?;
    for task in tasks {
        let tid: libc::pid_t = match task?.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(t) => t,
            None => continue,
        };
        if let Err(e) = trellis_netns::cpu::pin_thread(tid, cpu) {
            // A thread that exited meanwhile is not an error.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e)
                    .with_context(|| format!("pinning thread {tid} of {pid} to CPU {cpu}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs `pid` may run on, from /proc (the kernel's own view).
    fn cpus_of(pid: u32) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn repin_process_moves_a_running_process() {
        let cpus = allowed_cpus();
        let cpu = *cpus.last().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let result = repin_process(child.id(), cpu);
        let seen = cpus_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        result.unwrap();
        assert_eq!(seen, cpu.to_string());
    }

    #[test]
    fn repin_process_names_a_missing_process() {
        // PIDs above pid_max (at most 2^22) never exist.
        let e = repin_process(u32::MAX, 0).unwrap_err();
        assert!(format!("{e:#}").contains("threads of process"), "{e:#}");
    }
}
