//! What every benchmark run does around its measurements: one run at a time
//! (a lock), waiting for idle CPUs, describing the machine, writing results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::proc_stats::cpu_seconds_by_pid;

/// Where the exclusive run lock lives (`flock`); wrap manual sessions with
/// `flock /run/lock/trellis-bench.lock ...` too.
pub const LOCK_PATH: &str = "/run/lock/trellis-bench.lock";

/// A bench's command line after the program name: its flags, each with
/// its value where it takes one.
pub struct Args {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Args {
    /// This process's arguments; `usage` goes with every error.
    pub fn new(usage: &'static str) -> Args {
        Args {
            args: std::env::args().skip(1),
            usage,
        }
    }

    /// The next flag.
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value of flag `name`, which comes next.
    pub fn value(&mut self, name: &str) -> Result<String> {
        self.args
            .next()
            .with_context(|| format!("{name} needs a value\n{}", self.usage))
    }

    /// [`value`](Self::value) as a path.
    pub fn path(&mut self, name: &str) -> Result<PathBuf> {
        self.value(name).map(PathBuf::from)
    }
}

/// Progress line on stderr, tagged with the program's name.
pub fn say(msg: impl AsRef<str>) {
    let name = std::env::args()
        .next()
        .as_deref()
        .and_then(|a| {
            Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bench".into());
    eprintln!("[{name}] {}", msg.as_ref());
}

/// Two benchmarks at once on a 2-CPU machine measure each other: hold an
/// exclusive lock for the whole run (waits up to 10 minutes for another run).
pub fn lock() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("opening {LOCK_PATH}"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut said = false;
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        if !said {
            say(format!(
                "another benchmark holds {LOCK_PATH}; waiting for it"
            ));
            said = true;
        }
        if Instant::now() > deadline {
            bail!("another benchmark held {LOCK_PATH} for 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (at most 20 s) until the machine is nearly idle for half a second:
/// the kernel tears down a previous run's namespaces in the background
/// (kworkers), which otherwise lands in the first phase of a run started
/// right after another.
pub fn settle() {
    settle_within(Duration::from_secs(20));
}

/// [`settle`] with another bound, e.g. to wait out a build on a shared
/// machine. "Idle": every process but this one (kernel threads included)
/// used under 10% of one CPU over half a second. Process times, not
/// `/proc/stat`, whose per-CPU busy time is tick-sampled and misses the
/// short bursts of a mostly idle CPU.
pub fn settle_within(max: Duration) {
    let me = std::process::id();
    let others = || -> HashMap<u32, f64> {
        let mut m = cpu_seconds_by_pid();
        m.remove(&me);
        m
    };
    let deadline = Instant::now() + max;
    loop {
        let a = others();
        std::thread::sleep(Duration::from_millis(500));
        let b = others();
        let used: f64 = b
            .iter()
            .map(|(pid, t)| (t - a.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum();
        let busy = used / 0.5;
        if busy < 0.10 {
            return;
        }
        if Instant::now() > deadline {
            say(format!(
                "other processes still use {:.0}% of a CPU after {max:?}; measuring anyway (see the noise figures and loadavg)",
                busy * 100.0
            ));
            return;
        }
    }
}

/// A small file's content, trimmed ("" if unreadable).
pub fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// What a benchmark checks before it touches anything: root, the two CPUs
/// it pins to, and the tools (command, Debian package) it runs. Returns the
/// CPUs this process may use.
pub fn preflight(bench: &str, pinned: [usize; 2], tools: &[(&str, &str)]) -> Result<Vec<usize>> {
    if !trellis_e2e::require_root() {
        bail!("{bench} needs root (network namespaces, nftables)");
    }
    let cpus = crate::harness::sys::allowed_cpus();
    if !pinned.iter().all(|c| cpus.contains(c)) {
        bail!(
            "needs CPUs {} and {}; allowed: {cpus:?}",
            pinned[0],
            pinned[1]
        );
    }
    for (tool, pkg) in tools {
        crate::harness::topo::require_tool(tool, pkg)?;
    }
    // Ctrl-C or a timeout's SIGTERM must not leave proxies running in
    // namespaces nobody deletes.
    trellis_e2e::cleanup::cleanup_on_signal().context("installing the signal clean-up")?;
    Ok(cpus)
}

/// A run under way: the run lock held, the orchestrating thread pinned,
/// and what the report says about how the run started.
pub struct Begun {
    _lock: std::fs::File,
    cpus: usize,
    pub nofile: u64,
    /// The wake-up cost note ([`crate::harness::calibrate::note`]).
    pub wake: String,
    pub load_start: String,
    pub started: Instant,
}

/// Takes the run lock, pins this thread (and so everything it starts
/// without pinning) to `load_cpu`, raises the open-files limit, and measures
/// the wake-up cost between `load_cpu` and `other_cpu` before any load runs.
pub fn begin(cpus: &[usize], load_cpu: usize, other_cpu: usize) -> Result<Begun> {
    let lock = lock()?;
    crate::harness::sys::pin_current_thread(load_cpu)?;
    let nofile = crate::harness::sys::raise_nofile()?;
    let wake = crate::harness::calibrate::note(load_cpu, other_cpu);
    say(&wake);
    Ok(Begun {
        _lock: lock,
        cpus: cpus.len(),
        nofile,
        wake,
        load_start: read_trim("/proc/loadavg"),
        started: Instant::now(),
    })
}

impl Begun {
    /// The report's first notes: the run (mode, time, git, duration), the
    /// machine, the wake-up cost and the load average at start and `load_end`.
    pub fn notes(&self, mode: &str, load_end: &str) -> Vec<String> {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut notes = vec![
            format!(
                "run: {mode}, {epoch} UTC epoch, git {}, took {:.0} s",
                git_rev(),
                self.started.elapsed().as_secs_f64()
            ),
            machine_line(self.cpus),
            self.wake.clone(),
            format!("loadavg at start {}; at end {load_end}", self.load_start),
        ];
        // Flags added to every node proxy by hand change what "Trellis" is.
        if let Ok(args) = std::env::var("TRELLIS_PROXY_ARGS") {
            if !args.trim().is_empty() {
                notes.push(format!(
                    "every Trellis node proxy ran with TRELLIS_PROXY_ARGS: `{}`",
                    args.trim()
                ));
            }
        }
        notes
    }
}

/// Starts `perf record` on `pids` (comma-separated) into `data`: cpu-clock
/// at 999 Hz with DWARF call graphs, because this VM has no hardware
/// counters and Rust release builds keep no frame pointers.
pub fn perf_record(pids: &str, data: &Path) -> Result<std::process::Child> {
    Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "-g",
            "--call-graph",
            "dwarf,16384",
            "-p",
            pids,
            "-o",
        ])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf record (apt-get install linux-perf)")
}

/// SIGINT makes perf write its data and exit: sends it to each child, then
/// waits up to `limit` for each and kills what is still running. False if
/// any had to be killed (its output is then incomplete or missing).
pub fn stop_perf(children: &mut [std::process::Child], limit: Duration) -> bool {
    for c in children.iter() {
        // SAFETY: plain kill(2) on our own unreaped child.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
    }
    let mut all_exited = true;
    for c in children.iter_mut() {
        let deadline = Instant::now() + limit;
        while !matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                all_exited = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    all_exited
}

/// Counts in `perf stat -x,` output (`count,unit,event,...`), by event:
/// `syscalls:sys_enter_X` as `X`, `raw_syscalls:sys_enter` as "all
/// syscalls"; events perf did not count are left out.
pub fn perf_stat_counts(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = f.first()?.trim().parse::<u64>().ok()?;
            let ev = f.get(2)?.trim();
            let ev = ev.strip_prefix("syscalls:sys_enter_").unwrap_or(ev);
            let ev = if ev == "raw_syscalls:sys_enter" {
                "all syscalls"
            } else {
                ev
            };
            Some((ev.to_string(), n))
        })
        .collect()
}

/// The report's machine line: CPU model, CPUs this run may use, kernel.
pub fn machine_line(cpus_allowed: usize) -> String {
    format!(
        "machine: {} ({cpus_allowed} CPUs allowed), kernel {}",
        cpu_model(),
        read_trim("/proc/sys/kernel/osrelease")
    )
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default()
}

/// Short hash of HEAD, with "+dirty" when the work tree has changes.
pub fn git_rev() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    match out(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() && !rev.is_empty() => format!("{rev}+dirty"),
        _ => rev,
    }
}

/// Tracked files with uncommitted changes (`git status`), so a report says
/// what "+dirty" means.
pub fn git_dirty_files() -> Vec<String> {
    Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.get(3..).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `<stem>.json` and `<stem>.md` into `dir`.
pub fn write_results(dir: &Path, stem: &str, doc: &serde_json::Value, md: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let j = dir.join(format!("{stem}.json"));
    let m = dir.join(format!("{stem}.md"));
    std::fs::write(&j, serde_json::to_string_pretty(doc)? + "\n")?;
    std::fs::write(&m, md)?;
    say(format!("wrote {} and {}", j.display(), m.display()));
    Ok(())
}
