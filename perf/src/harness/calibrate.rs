//! What this machine charges for the things every proxy hop does, measured
//! at the start of a run so the report can be read against it.
//!
//! On a VM the dominant cost of a round trip can be the hypervisor, not the
//! code under test: with guest halt polling off, waking a task on an idle
//! CPU waits for that vCPU to come out of `hlt` (about 35 µs per wake-up on
//! the machine these results come from, against about 1 µs for a switch
//! between two processes on one CPU). A direct 64 B round trip is two such
//! wake-ups, which is most of its ~80 µs. The report states the idle policy
//! and these two round trips so that numbers from different machines, or
//! from one machine with a different idle setting, are not compared blind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::harness::run::read_trim;
use crate::harness::sys::pin_current_thread;

/// Round trips per measurement: ~0.2 s at the slowest (cross-CPU) rate seen.
const ROUND_TRIPS: usize = 3000;
/// Not measured: the first round trips fault in pages and warm the path.
const WARMUP: usize = 200;

/// Median round-trip times of a 1-byte ping-pong between two threads.
#[derive(Clone, Debug, PartialEq)]
pub struct WakeCost {
    /// Both threads on CPU `a`: a wake-up is a context switch.
    pub same_cpu_us: f64,
    /// One thread on CPU `a`, the other on CPU `b`: each wake-up must bring
    /// an idle CPU back.
    pub cross_cpu_us: f64,
}

impl WakeCost {
    /// The line the reports print.
    pub fn describe(&self, a: usize, b: usize) -> String {
        format!(
            "wake-up cost (1-byte ping-pong between two threads, median round trip): same CPU {:.1} µs, CPU {a} <-> CPU {b} {:.1} µs; {}",
            self.same_cpu_us,
            self.cross_cpu_us,
            idle_policy()
        )
    }
}

/// The report's note: [`wake_cost`] between `a` and `b`, described, or why
/// it could not be measured (the run goes on either way).
pub fn note(a: usize, b: usize) -> String {
    wake_cost(a, b)
        .map(|w| w.describe(a, b))
        .unwrap_or_else(|e| format!("wake-up cost: not measured ({e:#})"))
}

/// Measures [`WakeCost`] between CPUs `a` and `b` (which must differ).
pub fn wake_cost(a: usize, b: usize) -> Result<WakeCost> {
    if a == b {
        return Err(anyhow!("wake_cost needs two different CPUs, got {a} twice"));
    }
    Ok(WakeCost {
        same_cpu_us: ping_pong(a, a)?,
        cross_cpu_us: ping_pong(a, b)?,
    })
}

/// Median round trip in µs between a thread on `cpu_a` and one on `cpu_b`.
fn ping_pong(cpu_a: usize, cpu_b: usize) -> Result<f64> {
    let (mut here, mut there) = UnixStream::pair().context("socketpair for the wake-up probe")?;
    let echo = std::thread::Builder::new()
        .name("wake-probe".into())
        .spawn(move || -> Result<()> {
            pin_current_thread(cpu_b).with_context(|| format!("pinning to CPU {cpu_b}"))?;
            let mut b = [0u8; 1];
            for _ in 0..WARMUP + ROUND_TRIPS {
                there.read_exact(&mut b)?;
                there.write_all(&b)?;
            }
            Ok(())
        })
        .context("spawning the wake-up echo thread")?;
    // The measuring side runs on its own thread too, so the caller's
    // pinning is left alone. It owns its end of the pair: if it fails
    // early, dropping that end gives the echo thread EOF, so joining the
    // echo thread cannot hang.
    let measured = std::thread::Builder::new()
        .name("wake-probe-measure".into())
        .spawn(move || -> Result<Vec<f64>> {
            pin_current_thread(cpu_a).with_context(|| format!("pinning to CPU {cpu_a}"))?;
            let mut b = [0u8; 1];
            let mut rtts = Vec::with_capacity(ROUND_TRIPS);
            for i in 0..WARMUP + ROUND_TRIPS {
                let t = Instant::now();
                here.write_all(&b)?;
                here.read_exact(&mut b)?;
                if i >= WARMUP {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(rtts)
        })
        .context("spawning the wake-up probe thread")?
        .join()
        .map_err(|_| anyhow!("the wake-up probe panicked"))?;
    let echoed = echo
        .join()
        .map_err(|_| anyhow!("the wake-up echo thread panicked"))?;
    // The measuring side's error says more than the echo's EOF it caused.
    let rtts = measured?;
    echoed?;
    Ok(median(rtts))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The kernel's CPU idle driver and, when it is the guest `haltpoll`
/// driver, how long an idle vCPU polls before it halts.
pub fn idle_policy() -> String {
    describe_idle_policy(
        &read_trim("/sys/devices/system/cpu/cpuidle/current_driver"),
        &read_trim("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    )
}

fn describe_idle_policy(driver: &str, halt_poll_ns: &str) -> String {
    match (driver, halt_poll_ns) {
        ("", _) => "cpuidle driver: none reported".into(),
        ("haltpoll", "") => "cpuidle driver: haltpoll".into(),
        ("haltpoll", "0") => {
            "cpuidle driver: haltpoll, guest_halt_poll_ns=0 (an idle vCPU halts at once)".into()
        }
        ("haltpoll", ns) => format!("cpuidle driver: haltpoll, guest_halt_poll_ns={ns}"),
        (d, _) => format!("cpuidle driver: {d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_policy_lines() {
        let cases = [
            ("", "", "cpuidle driver: none reported"),
            ("", "0", "cpuidle driver: none reported"),
            ("haltpoll", "", "cpuidle driver: haltpoll"),
            (
                "haltpoll",
                "0",
                "cpuidle driver: haltpoll, guest_halt_poll_ns=0 (an idle vCPU halts at once)",
            ),
            (
                "haltpoll",
                "200000",
                "cpuidle driver: haltpoll, guest_halt_poll_ns=200000",
            ),
            ("intel_idle", "", "cpuidle driver: intel_idle"),
        ];
        for (driver, ns, want) in cases {
            assert_eq!(describe_idle_policy(driver, ns), want, "{driver:?} {ns:?}");
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn wake_cost_measures_both_round_trips_and_refuses_one_cpu() {
        let cpus = crate::harness::sys::allowed_cpus();
        assert!(wake_cost(cpus[0], cpus[0]).is_err());
        let refused = note(cpus[0], cpus[0]);
        assert!(
            refused.starts_with("wake-up cost: not measured")
                && refused.contains("two different CPUs"),
            "{refused}"
        );
        if cpus.len() < 2 {
            // A one-CPU sandbox has no cross-CPU case; the same-CPU probe still runs.
            let same = ping_pong(cpus[0], cpus[0]).expect("same-CPU ping-pong");
            assert!(same > 0.0);
            return;
        }
        let w = wake_cost(cpus[0], cpus[1]).expect("probe runs");
        assert!(w.same_cpu_us > 0.0 && w.cross_cpu_us > 0.0, "{w:?}");
        let line = w.describe(cpus[0], cpus[1]);
        assert!(
            line.contains("same CPU") && line.contains("cpuidle"),
            "{line}"
        );
    }
}
