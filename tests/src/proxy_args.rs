//! The `trellis-node-proxy` command lines the harness starts, built apart
//! from the process so tests can check them: a proxy fed by the controller
//! has no `--config` and no `--ca-dir`, only the controller's address, the
//! root that verifies it and a token.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags that hand a proxy local state: its config from a file, or a CA
/// key to sign its own certificates with.
pub const LOCAL_STATE_FLAGS: [&str; 2] = ["--config", "--ca-dir"];

/// Where a proxy's config and certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// A config file and a dev CA directory (the file-mode tests).
    Files { config: PathBuf, ca_dir: PathBuf },
    /// The controller: xDS and the CA on one address.
    Controller {
        address: SocketAddr,
        /// The mesh root the controller's serving certificate chains to.
        root: PathBuf,
        token_file: PathBuf,
    },
}

/// What a node proxy serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Every pod of its node, each in the pod's netns (`--mode shared`).
    Shared,
    /// A VM or bare host: the one workload `workload_uid` (its
    /// WorkloadEntry's), captured in the proxy's own netns (`--mode
    /// dedicated --capture`).
    Host { workload_uid: String },
}

/// One node proxy's command line.
#[derive(Clone, Debug)]
pub struct ProxyArgs {
    pub node: String,
    pub mode: ProxyMode,
    pub feed: Feed,
    /// (workload uid, netns path) of the pods enrolled at start.
    pub pods: Vec<(String, PathBuf)>,
    pub bound_addrs_file: PathBuf,
    /// Appended as given.
    pub extra: Vec<String>,
}

impl ProxyArgs {
    /// The proxy's runtime dir (node lock, hand-over socket): each harness
    /// node is a node of its own, so each gets its own, next to its
    /// bound-addresses file, named after the node.
    pub fn runtime_dir(&self) -> Option<PathBuf> {
        let parent = self.bound_addrs_file.parent()?;
        (!parent.as_os_str().is_empty()).then(|| parent.join(format!("{}-run", self.node)))
    }

    /// The arguments after the binary's name.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = match &self.mode {
            ProxyMode::Shared => vec!["--mode", "shared", "--node", &self.node],
            ProxyMode::Host { workload_uid } => vec![
                "--mode",
                "dedicated",
                "--node",
                &self.node,
                "--workload-uid",
                workload_uid,
                "--capture",
            ],
        }
        .into_iter()
        .map(Into::into)
        .collect();
        a.extend(feed_args(&self.feed));
        for flag in ["--admin-addr", "--metrics-addr", "--readiness-addr"] {
            a.extend([flag.into(), "127.0.0.1:0".into()]);
        }
        a.extend([
            "--workers".into(),
            "1".into(),
            "--log".into(),
            "info".into(),
        ]);
        a.extend([
            "--bound-addrs-file".into(),
            self.bound_addrs_file.clone().into(),
        ]);
        if let Some(dir) = self.runtime_dir() {
            a.extend(["--runtime-dir".into(), dir.into()]);
        }
        for (uid, netns) in &self.pods {
            let mut pod = OsString::from(uid);
            pod.push("=");
            pod.push(netns);
            a.extend(["--pod".into(), pod]);
        }
        a.extend(self.extra.iter().map(Into::into));
        a
    }
}

/// One waypoint's command line (it runs inside its pod's namespace).
#[derive(Clone, Debug)]
pub struct WaypointArgs {
    /// `<namespace>/<name>`.
    pub name: String,
    pub service_account: String,
    pub feed: Feed,
    pub bound_addrs_file: PathBuf,
    /// `--log`: the log filter.
    pub log: String,
    /// `--access-log`: one line per request (the tests read it; a
    /// benchmark leaves it off, as a busy deployment might).
    pub access_log: bool,
    /// Appended as given.
    pub extra: Vec<String>,
}

impl WaypointArgs {
    /// The arguments after the binary's name.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--name".into(),
            (&self.name).into(),
            "--service-account".into(),
            (&self.service_account).into(),
        ];
        a.extend(feed_args(&self.feed));
        a.extend(["--listen".into(), "0.0.0.0:15008".into()]);
        for flag in ["--admin-addr", "--metrics-addr", "--readiness-addr"] {
            a.extend([flag.into(), "127.0.0.1:0".into()]);
        }
        a.extend([
            "--bound-addrs-file".into(),
            self.bound_addrs_file.clone().into(),
        ]);
        a.extend([
            "--workers".into(),
            "1".into(),
            "--log".into(),
            (&self.log).into(),
        ]);
        if self.access_log {
            a.push("--access-log".into());
        }
        a.extend(self.extra.iter().map(Into::into));
        a
    }
}

/// The flags that say where config and certificates come from.
fn feed_args(feed: &Feed) -> Vec<OsString> {
    match feed {
        Feed::Files { config, ca_dir } => vec![
            "--config".into(),
            config.into(),
            "--ca-dir".into(),
            ca_dir.into(),
            // Only the file is polled; 100 ms keeps reload tests quick.
            "--config-poll".into(),
            "100ms".into(),
        ],
        Feed::Controller {
            address,
            root,
            token_file,
        } => vec![
            "--xds-address".into(),
            address.to_string().into(),
            "--control-plane-root".into(),
            root.into(),
            "--token-file".into(),
            token_file.into(),
        ],
    }
}

/// The [`LOCAL_STATE_FLAGS`] a command line holds, as `--flag` or `--flag=value`.
pub fn local_state_flags(argv: &[String]) -> Vec<String> {
    argv.iter()
        .filter(|a| {
            LOCAL_STATE_FLAGS
                .iter()
                .any(|f| *a == f || a.starts_with(&format!("{f}=")))
        })
        .cloned()
        .collect()
}

/// The value of `--flag value` or `--flag=value` in a command line.
pub fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// A running process's command line, from /proc (NUL-separated).
pub fn proc_cmdline(pid: u32) -> std::io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(feed: Feed) -> Vec<String> {
        ProxyArgs {
            node: "node1".into(),
            mode: ProxyMode::Shared,
            feed,
            pods: vec![(
                "Kubernetes//Pod/demo/client".into(),
                "/var/run/netns/p".into(),
            )],
            bound_addrs_file: "/t/addrs.json".into(),
            extra: vec!["--drain-deadline".into(), "3s".into()],
        }
        .argv()
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
    }

    fn controller() -> Feed {
        Feed::Controller {
            address: "198.19.255.3:15012".parse().unwrap(),
            root: "/t/ca/root-cert.pem".into(),
            token_file: "/t/node1.token".into(),
        }
    }

    fn files() -> Feed {
        Feed::Files {
            config: "/t/mesh.yaml".into(),
            ca_dir: "/t/ca".into(),
        }
    }

    #[test]
    fn a_proxy_fed_by_the_controller_has_no_local_state_flags() {
        // (feed, flag, its value; None: the flag must be absent)
        let cases: Vec<(Feed, &str, Option<&str>)> = vec![
            (controller(), "--xds-address", Some("198.19.255.3:15012")),
            (
                controller(),
                "--control-plane-root",
                Some("/t/ca/root-cert.pem"),
            ),
            (controller(), "--token-file", Some("/t/node1.token")),
            (controller(), "--config", None),
            (controller(), "--ca-dir", None),
            (files(), "--config", Some("/t/mesh.yaml")),
            (files(), "--ca-dir", Some("/t/ca")),
            (files(), "--xds-address", None),
            (
                controller(),
                "--pod",
                Some("Kubernetes//Pod/demo/client=/var/run/netns/p"),
            ),
            (controller(), "--node", Some("node1")),
            (controller(), "--drain-deadline", Some("3s")),
        ];
        for (feed, flag, want) in cases {
            let argv = args(feed.clone());
            assert_eq!(flag_value(&argv, flag), want, "{feed:?} {flag}: {argv:?}");
        }
        assert!(local_state_flags(&args(controller())).is_empty());
        assert_eq!(local_state_flags(&args(files())), ["--config", "--ca-dir"]);
    }

    #[test]
    fn a_host_proxy_is_dedicated_to_its_entry_and_captures_its_netns() {
        let argv: Vec<String> = ProxyArgs {
            node: "vm".into(),
            mode: ProxyMode::Host {
                workload_uid: "Kubernetes//WorkloadEntry/demo/vm".into(),
            },
            feed: controller(),
            pods: vec![],
            bound_addrs_file: "/t/vm.json".into(),
            extra: vec![],
        }
        .argv()
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
        assert_eq!(flag_value(&argv, "--mode"), Some("dedicated"), "{argv:?}");
        assert_eq!(
            flag_value(&argv, "--workload-uid"),
            Some("Kubernetes//WorkloadEntry/demo/vm")
        );
        assert!(argv.iter().any(|a| a == "--capture"), "{argv:?}");
        assert_eq!(flag_value(&argv, "--pod"), None);
        assert!(local_state_flags(&argv).is_empty(), "{argv:?}");
        let shared = args(controller());
        assert_eq!(flag_value(&shared, "--mode"), Some("shared"));
        assert!(!shared.iter().any(|a| a == "--capture"), "{shared:?}");
    }

    #[test]
    fn a_waypoint_gets_the_same_feed_flags() {
        let argv = |feed| -> Vec<String> {
            WaypointArgs {
                name: "demo/waypoint".into(),
                service_account: "waypoint".into(),
                feed,
                bound_addrs_file: "/t/wp.json".into(),
                log: "info".into(),
                access_log: true,
                extra: vec![],
            }
            .argv()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
        };
        let fed = argv(controller());
        assert!(local_state_flags(&fed).is_empty(), "{fed:?}");
        assert_eq!(
            flag_value(&fed, "--xds-address"),
            Some("198.19.255.3:15012")
        );
        assert_eq!(flag_value(&fed, "--name"), Some("demo/waypoint"));
        assert_eq!(flag_value(&fed, "--listen"), Some("0.0.0.0:15008"));
        let local = argv(files());
        assert_eq!(local_state_flags(&local), ["--config", "--ca-dir"]);
        assert_eq!(flag_value(&local, "--xds-address"), None);
    }

    #[test]
    fn local_state_flags_are_found_in_either_spelling() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["p", "--config=/x"], &["--config=/x"]),
            (&["p", "--ca-dir", "/x"], &["--ca-dir"]),
            (&["p", "--config-poll", "1s"], &[]),
            (&["p", "--ca-address", "a:1"], &[]),
            (&["p", "--xds-address", "a:1"], &[]),
        ];
        for (argv, want) in cases {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            assert_eq!(local_state_flags(&argv), *want, "{argv:?}");
        }
    }

    #[test]
    fn this_process_command_line_is_read_from_proc() {
        let me = proc_cmdline(std::process::id()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy();
        assert!(me[0].ends_with(name.as_ref()), "{me:?}");
    }
}
