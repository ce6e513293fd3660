//! Traffic capture rules inside a pod's network namespace.
//!
//! What is installed, per pod netns (see [`rules_text`] for the nft text):
//!
//! * nftables table `inet trellis`:
//!   - `prerouting` (nat): TCP arriving from outside the pod (not `lo`) on any
//!     port but HBONE is redirected to the plaintext inbound port. `redirect`
//!     in prerouting rewrites the destination to the primary address of the
//!     incoming interface, so the proxy's listener on 0.0.0.0 gets it and
//!     SO_ORIGINAL_DST gives back pod-ip:port. Direct connections to the
//!     proxy's outbound port from outside land here too and are refused by
//!     the inbound code, so the outbound listener is never an open relay.
//!   - `output` (nat): TCP the app sends out of the pod (not via `lo`, not
//!     carrying the proxy's mark) is redirected to the outbound port.
//!     `redirect` in the output hook rewrites the destination to 127.0.0.1
//!     (::1 for IPv6) whatever the outgoing interface, and the packet is
//!     rerouted over `lo`; the proxy listens on 0.0.0.0 in the pod netns.
//!     Traffic via `lo` (to 127/8 or the pod's own IP) stays with the app.
//!   - `route_output` (route): source-IP preservation, see below.
//! * policy routing: `ip rule fwmark REPLY_MARK lookup ROUTE_TABLE` and, in
//!   that table, `local 0.0.0.0/0 dev lo` (and the IPv6 twins, best effort).
//!
//! Source-IP preservation: the proxy connects to the app in the same netns
//! from an IP_TRANSPARENT socket bound to the original client's IP, marked
//! with the proxy mark. The app's replies go to that foreign IP and would be
//! routed out of eth0. So the first packet of such a connection (proxy mark,
//! leaving via `lo`) stores REPLY_MARK in the conntrack entry; every reply
//! packet of that connection gets REPLY_MARK as its packet mark in a `route`
//! chain, which makes the kernel route it again; the fwmark rule then sends
//! it to a table where every address is local, so it is delivered over `lo`
//! to the proxy's socket. REPLY_MARK must differ from the proxy mark: the
//! proxy's own marked upstream traffic to other pods must keep using the main
//! table, and an ip rule only sees the packet mark.
//!
//! Why the `nft` tool rather than netlink from Rust: `nft -f -` applies the
//! whole table in one atomic transaction (no window with half the rules),
//! the text is the same one an operator sees in `nft list ruleset`, and it
//! runs once per pod add/remove, never on the data path. The tool runs with
//! its network namespace set to the pod's by setns(2) between fork and exec,
//! using the fd we hold, so no named netns or `ip netns exec` is needed. The
//! policy routing uses `ip` the same way.
//!
//! Kernel needs: nf_tables with nat (nft_chain_nat, nft_redirect), conntrack
//! (nft_ct) and policy routing (CONFIG_IP_MULTIPLE_TABLES).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::NetNs;

/// The nftables table (family inet) owned by the proxy in each pod netns.
pub const TABLE: &str = "trellis";
/// Packet mark given to the app's replies on proxy-originated connections inside the pod.
pub const REPLY_MARK: u32 = 0x53a;
/// Routing table holding `local 0.0.0.0/0 dev lo`; the same number as the default proxy mark, for recognisability.
pub const ROUTE_TABLE: u32 = 1337;
/// Priority of the fwmark rule: before `main` (32766), after anything a CNI puts early.
pub const RULE_PREF: u32 = 32000;
/// Upper bound for one nft/ip run; they normally take milliseconds.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectConfig {
    pub outbound_port: u16,
    pub inbound_plain_port: u16,
    pub hbone_port: u16,
    /// SO_MARK of the proxy's own sockets in the pod netns; never redirected.
    pub proxy_mark: u32,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            outbound_port: 15001,
            inbound_plain_port: 15006,
            hbone_port: 15008,
            proxy_mark: 0x539,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("invalid capture configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot find `{tool}` in PATH, /usr/sbin or /sbin; install the {package} package on the node")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot run `{tool}` in network namespace {netns}: {source}; check the netns still exists and the proxy has CAP_SYS_ADMIN")]
    Spawn {
        tool: &'static str,
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("`{tool}` did not finish within {TOOL_TIMEOUT:?} in network namespace {netns}; it was killed")]
    Timeout { tool: &'static str, netns: String },
    #[error("nft rejected the capture rules in network namespace {netns}: {stderr}; check the kernel has nf_tables with NAT and conntrack (nft_chain_nat, nft_redirect, nft_ct) and that nftables is installed")]
    Nft { netns: String, stderr: String },
    #[error("cannot set up reply routing for source-IP preservation in network namespace {netns}: `ip {command}` failed: {stderr}; check that lo is up in the pod and the kernel has policy routing (CONFIG_IP_MULTIPLE_TABLES)")]
    Routing {
        netns: String,
        command: String,
        stderr: String,
    },
}

impl RedirectConfig {
    /// Checks what [`install`] relies on; install calls it first.
    pub fn validate(&self) -> Result<(), RedirectError> {
        validate(self)
    }
}

fn validate(cfg: &RedirectConfig) -> Result<(), RedirectError> {
    let ports = [cfg.outbound_port, cfg.inbound_plain_port, cfg.hbone_port];
    if ports.contains(&0) {
        return Err(RedirectError::InvalidConfig(format!(
            "ports must be non-zero, got {ports:?}"
        )));
    }
    if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
        return Err(RedirectError::InvalidConfig(format!(
            "outbound, plaintext inbound and HBONE ports must differ, got {ports:?}"
        )));
    }
    if cfg.proxy_mark == 0 {
        return Err(RedirectError::InvalidConfig(
            "proxy mark must be non-zero: 0 is every unmarked packet".into(),
        ));
    }
    if cfg.proxy_mark == REPLY_MARK {
        return Err(RedirectError::InvalidConfig(format!(
            "proxy mark {:#x} collides with the reply-routing mark {REPLY_MARK:#x}; pick another mark",
            cfg.proxy_mark
        )));
    }
    Ok(())
}

/// The nftables table, as fed to `nft -f`.
pub fn rules_text(cfg: &RedirectConfig) -> String {
    let RedirectConfig {
        outbound_port,
        inbound_plain_port,
        hbone_port,
        proxy_mark,
    } = *cfg;
    // Numeric priorities: older nft (1.0.6) rejects `dstnat` in an inet output nat chain.
    format!(
        r#"table inet {TABLE} {{
	chain prerouting {{
		type nat hook prerouting priority -100; policy accept;
		iifname "lo" return comment "pod-local traffic, including the proxy's connections to the app"
		meta l4proto tcp tcp dport {hbone_port} return comment "HBONE: served by the proxy on this port"
		meta l4proto tcp redirect to :{inbound_plain_port} comment "plaintext inbound to the proxy"
	}}

	chain output {{
		type nat hook output priority -100; policy accept;
		oifname "lo" return comment "to 127/8 or the pod's own IP: stays with the app"
		meta mark {proxy_mark:#x} return comment "the proxy's own sockets"
		meta l4proto tcp redirect to :{outbound_port} comment "the app's outbound TCP to the proxy (127.0.0.1)"
	}}

	chain route_output {{
		type route hook output priority -150; policy accept;
		meta mark {proxy_mark:#x} oifname "lo" ct state new ct mark set {REPLY_MARK:#x} comment "proxy connects to the app in this pod"
		ct direction reply ct mark {REPLY_MARK:#x} meta mark set {REPLY_MARK:#x} comment "app replies: reroute to local delivery"
	}}
}}
"#
    )
}

/// Creating then deleting the table makes the replacement valid whether or
/// not it exists; nft applies the whole file as one transaction.
fn replace_script(cfg: &RedirectConfig) -> String {
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        rules_text(cfg)
    )
}

fn delete_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Installs (or replaces) the capture rules and reply routing in `ns`.
/// On failure nothing of ours is left in the netns.
pub fn install(ns: &NetNs, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    validate(cfg)?;
    let script = replace_script(cfg);
    tracing::debug!(netns = %ns.path().display(), rules = %script, "installing capture rules");
    let result = nft(ns, &script).and_then(|()| install_routing(ns));
    if let Err(e) = result {
        if let Err(cleanup) = remove(ns) {
            tracing::warn!(netns = %ns.path().display(), error = %cleanup, "cleanup after a failed install failed too");
        }
        return Err(e);
    }
    tracing::info!(netns = %ns.path().display(), "capture rules installed");
    Ok(())
}

/// Removes the table and the reply routing; succeeds if they were not there.
pub fn remove(ns: &NetNs) -> Result<(), RedirectError> {
    let table = nft(ns, &delete_script());
    let routing = remove_routing(ns);
    table?;
    routing?;
    tracing::info!(netns = %ns.path().display(), "capture rules removed");
    Ok(())
}

fn nft(ns: &NetNs, script: &str) -> Result<(), RedirectError> {
    let out = run_tool(ns, "nft", &["-f", "-"], Some(script))?;
    if out.success {
        Ok(())
    } else {
        Err(RedirectError::Nft {
            netns: ns.path().display().to_string(),
            stderr: out.stderr_line(),
        })
    }
}

/// Both families: (ip flag, all-addresses prefix).
const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

fn rule_cmd(family: &str, op: &str) -> String {
    format!("{family} rule {op} pref {RULE_PREF} fwmark {REPLY_MARK:#x} lookup {ROUTE_TABLE}")
}

fn route_cmd(family: &str, prefix: &str, op: &str) -> String {
    format!("{family} route {op} local {prefix} dev lo table {ROUTE_TABLE}")
}

fn install_routing(ns: &NetNs) -> Result<(), RedirectError> {
    for (family, prefix) in FAMILIES {
        // Drop ours first so reinstalling does not stack duplicate rules.
        delete_rules(ns, family)?;
        for cmd in [
            rule_cmd(family, "add"),
            route_cmd(family, prefix, "replace"),
        ] {
            match ip(ns, &cmd) {
                Ok(()) => {}
                // IPv4 is what pods use; a netns with IPv6 disabled only loses
                // source-IP preservation for IPv6, which it cannot carry anyway.
                Err(e) if family == "-6" => {
                    tracing::warn!(netns = %ns.path().display(), error = %e, "IPv6 reply routing not installed");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn remove_routing(ns: &NetNs) -> Result<(), RedirectError> {
    let mut first_err = None;
    for (family, prefix) in FAMILIES {
        if let Err(e) = delete_rules(ns, family) {
            first_err.get_or_insert(e);
        }
        match ip(ns, &route_cmd(family, prefix, "del")) {
            Err(RedirectError::Routing { stderr, .. }) if is_absent(&stderr) => {}
            Err(e) if family == "-4" => {
                first_err.get_or_insert(e);
            }
            Err(e) => tracing::debug!(error = %e, "no IPv6 reply route to remove"),
            Ok(()) => {}
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Deletes every copy of our fwmark rule (an interrupted install may have left more than one).
fn delete_rules(ns: &NetNs, family: &str) -> Result<(), RedirectError> {
    let cmd = rule_cmd(family, "del");
    for _ in 0..16 {
        match ip(ns, &cmd) {
            Ok(()) => continue,
            Err(RedirectError::Routing { stderr, .. }) if is_absent(&stderr) => return Ok(()),
            Err(e) if family == "-6" => {
                tracing::debug!(error = %e, "cannot list IPv6 rules; assuming none");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How `ip` says "nothing to delete".
fn is_absent(stderr: &str) -> bool {
    [
        "No such file or directory",
        "No such process",
        "does not exist",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Runs `ip <cmd>` in `ns`; `cmd` is split on whitespace.
fn ip(ns: &NetNs, cmd: &str) -> Result<(), RedirectError> {
    let argv: Vec<&str> = cmd.split_whitespace().collect();
    let out = run_tool(ns, "ip", &argv, None)?;
    if out.success {
        Ok(())
    } else {
        Err(RedirectError::Routing {
            netns: ns.path().display().to_string(),
            command: cmd.to_string(),
            stderr: out.stderr_line(),
        })
    }
}

struct ToolOutput {
    success: bool,
    stderr: String,
}

impl ToolOutput {
    /// nft and ip errors are short; fold them onto one line for logs.
    fn stderr_line(&self) -> String {
        let s = self.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        if s.is_empty() {
            "(no error output)".into()
        } else {
            s
        }
    }
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `tool` with its network namespace set to `ns`, feeding `stdin`.
fn run_tool(
    ns: &NetNs,
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<ToolOutput, RedirectError> {
    let package = if tool == "nft" {
        "nftables"
    } else {
        "iproute2"
    };
    let program = find_tool(tool).ok_or(RedirectError::ToolMissing { tool, package })?;
    let netns = || ns.path().display().to_string();
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec; setns is a plain syscall
    // (async-signal-safe) on an fd inherited from us (O_CLOEXEC only closes it at exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().map_err(|source| RedirectError::Spawn {
        tool,
        netns: netns(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status says why.
        if let Err(e) = pipe.write_all(text.as_bytes()) {
            tracing::debug!(tool, error = %e, "writing the tool's input failed");
        }
    }
    let success = wait_with_deadline(&mut child, tool, netns)?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    Ok(ToolOutput { success, stderr })
}

fn wait_with_deadline(
    child: &mut Child,
    tool: &'static str,
    netns: impl Fn() -> String,
) -> Result<bool, RedirectError> {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RedirectError::Timeout {
                    tool,
                    netns: netns(),
                });
            }
            Err(source) => {
                return Err(RedirectError::Spawn {
                    tool,
                    netns: netns(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_is_one_idempotent_script() {
        let s = replace_script(&RedirectConfig::default());
        assert!(
            s.starts_with("table inet trellis\ndelete table inet trellis\ntable inet trellis {")
        );
    }

    #[test]
    fn routing_commands_name_our_mark_table_and_pref() {
        let rule = rule_cmd("-4", "add");
        assert_eq!(rule, "-4 rule add pref 32000 fwmark 0x53a lookup 1337");
        let route = route_cmd("-4", "0.0.0.0/0", "replace");
        assert_eq!(route, "-4 route replace local 0.0.0.0/0 dev lo table 1337");
    }

    #[test]
    fn absent_messages_are_recognised() {
        assert!(is_absent("RTNETLINK answers: No such file or directory"));
        assert!(is_absent("Error: ipv4: FIB table does not exist."));
        assert!(!is_absent("RTNETLINK answers: Operation not permitted"));
    }
}
