//! Gate for tests that need network namespaces: they fail loudly when the
//! machine cannot run them, so CI never passes by silently skipping.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Set to `1` to skip netns tests on a machine without root (local runs only).
pub const SKIP_ENV: &str = "TRELLIS_SKIP_NETNS";
/// Set to `1` (CI does) to forbid skipping even when [`SKIP_ENV`] is set.
pub const REQUIRE_ENV: &str = "TRELLIS_REQUIRE_NETNS";

fn env_is_1(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1").unwrap_or(false)
}

fn tool_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why netns tests cannot run here, or None if they can. Checked once per process.
fn missing() -> Option<&'static str> {
    static CHECK: OnceLock<Option<&'static str>> = OnceLock::new();
    *CHECK.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("they must run as root (network namespaces, veth, nftables)");
        }
        if !tool_works("ip", &["netns", "list"]) {
            return Some("`ip netns list` failed: install iproute2 (apt-get install -y iproute2)");
        }
        if !tool_works("nft", &["--version"]) {
            return Some("`nft` is missing: install nftables (apt-get install -y nftables)");
        }
        None
    })
}

/// Why network namespaces cannot be built here (not root, no `ip`, no
/// `nft`), or None if they can: for programs that say so in one line.
pub fn netns_unavailable() -> Option<&'static str> {
    missing()
}

/// Call first in every test that builds namespaces:
/// `if !trellis_e2e::require_root() { return; }`.
///
/// Returns true when the test can run. When it cannot, panics with the
/// reason, unless `TRELLIS_SKIP_NETNS=1` is set (and `TRELLIS_REQUIRE_NETNS`
/// is not), in which case it prints a loud skip line and returns false.
pub fn require_root() -> bool {
    let skip = env_is_1(SKIP_ENV);
    if skip && env_is_1(REQUIRE_ENV) {
        panic!("{SKIP_ENV}=1 and {REQUIRE_ENV}=1 are both set; CI must not skip the netns tests: unset {SKIP_ENV}");
    }
    if skip {
        eprintln!("!!!!! SKIPPED: netns test not run because {SKIP_ENV}=1 !!!!!");
        return false;
    }
    if let Some(why) = missing() {
        panic!("netns tests cannot run: {why}. To skip them on a developer machine set {SKIP_ENV}=1 (never in CI).");
    }
    true
}
