//! CPU time and memory of a process, from /proc.

use std::io;

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of the whole process (all threads, living and exited), in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields restart after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': f[0] is field 3 (state); utime is field 14, stime field 15.
    let num = |i: usize| -> io::Result<f64> {
        f.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    Ok((num(11)? + num(12)?) / clock_ticks())
}

/// utime + stime of every process on the machine (kernel threads included),
/// by PID; processes that vanish while being read are left out.
pub fn cpu_seconds_by_pid() -> std::collections::HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, cpu_seconds(pid).ok()?)))
        .collect()
}

/// Summed CPU seconds of several processes.
pub fn cpu_seconds_sum(pids: &[u32]) -> io::Result<f64> {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// Resident set size in KiB (VmRSS from `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Number of threads (Threads: in `/proc/<pid>/status`).
pub fn threads(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Threads in /proc/{pid}/status")))
}

/// CPU time sampled around a phase.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
    start: f64,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> io::Result<CpuMeter> {
        Ok(CpuMeter {
            pids: pids.to_vec(),
            start: cpu_seconds_sum(pids)?,
        })
    }

    /// CPU seconds used since start.
    pub fn elapsed(&self) -> io::Result<f64> {
        Ok(cpu_seconds_sum(&self.pids)? - self.start)
    }
}

/// Busy time of one CPU in seconds (everything but idle and iowait, from
/// /proc/stat): the server, both proxies and the softirq work done there.
pub fn cpu_busy_seconds(cpu: usize) -> io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or_else(|| io::Error::other(format!("no {name} in /proc/stat")))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok(busy as f64 / clock_ticks())
}

/// Busy time of one CPU sampled around a phase.
#[derive(Debug, Clone)]
pub struct BusyMeter {
    cpu: usize,
    start: f64,
}

impl BusyMeter {
    pub fn start(cpu: usize) -> io::Result<BusyMeter> {
        Ok(BusyMeter {
            cpu,
            start: cpu_busy_seconds(cpu)?,
        })
    }

    pub fn elapsed(&self) -> io::Result<f64> {
        Ok(cpu_busy_seconds(self.cpu)? - self.start)
    }
}
