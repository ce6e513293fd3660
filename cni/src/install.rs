//! The CNI installer, run by the agent on its node: copies the plugin
//! binary into the runtime's CNI bin dir and chains a `trellis-cni` entry
//! at the end of the node's primary network config (the first file of the
//! conf dir, as container runtimes pick it). Every write is a temporary
//! file renamed over the target, so a runtime reading at the same moment
//! sees the old or the new file, never half of one.
//!
//! The pure part ([`chain`], [`unchain`]) is tested as a table; the I/O is
//! [`install`] and [`uninstall`].

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The plugin's `type`, and its file name in the bin dir.
pub const PLUGIN_TYPE: &str = "trellis-cni";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSettings {
    /// The runtime's CNI bin dir (`/opt/cni/bin` on the host).
    pub bin_dir: PathBuf,
    /// The runtime's CNI conf dir (`/etc/cni/net.d` on the host).
    pub conf_dir: PathBuf,
    /// The plugin binary to copy.
    pub plugin: PathBuf,
    /// The entry's `agentSocket`: the plugin runs on the host, so this is
    /// the host path of the agent's plugin socket.
    pub agent_socket: PathBuf,
    pub fail_open: bool,
    pub capture_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI network config in {0} yet (no *.conflist or *.conf): the node's primary CNI has not written one; will look again")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; is the host directory mounted read-write?")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a CNI network config: {message}; fix or remove it, the runtime cannot use it either")]
    Malformed { path: PathBuf, message: String },
}

/// What [`install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The entry was added (or updated) in this file.
    Chained(PathBuf),
    /// The file already had the same entry.
    Unchanged(PathBuf),
}

/// The chained entry.
pub fn entry(s: &InstallSettings) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "agentSocket": s.agent_socket,
        "captureTimeoutMs": s.capture_timeout_ms,
        "failOpen": s.fail_open,
    })
}

/// A network config with `entry` last in its plugin list, replacing any
/// earlier `trellis-cni` entry. A single-plugin `.conf` becomes a list.
pub fn chain(config: &Value, entry: &Value) -> Result<Value, String> {
    let Some(obj) = config.as_object() else {
        return Err("not a JSON object".into());
    };
    let mut out = obj.clone();
    let plugins = match obj.get("plugins") {
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None => {
            // A .conf: the whole object is the one plugin.
            if !obj.contains_key("type") {
                return Err("neither \"plugins\" nor \"type\"".into());
            }
            let mut single: Map<String, Value> = obj.clone();
            single.remove("cniVersion");
            single.remove("name");
            out = Map::new();
            for k in ["cniVersion", "name"] {
                if let Some(v) = obj.get(k) {
                    out.insert(k.into(), v.clone());
                }
            }
            vec![Value::Object(single)]
        }
    };
    let mut plugins: Vec<Value> = plugins.into_iter().filter(|p| !is_ours(p)).collect();
    if plugins.is_empty() {
        return Err("no plugin before trellis-cni: it is a chained plugin and needs the interface plugin first".into());
    }
    plugins.push(entry.clone());
    out.insert("plugins".into(), Value::Array(plugins));
    Ok(Value::Object(out))
}

/// The config without `trellis-cni` entries, or None if it had none.
pub fn unchain(config: &Value) -> Option<Value> {
    let list = config.get("plugins")?.as_array()?;
    if !list.iter().any(is_ours) {
        return None;
    }
    let mut out = config.clone();
    out["plugins"] = Value::Array(list.iter().filter(|p| !is_ours(p)).cloned().collect());
    Some(out)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The file a runtime uses: the first `*.conflist`/`*.conf`/`*.json` in
/// lexical order.
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let rd = std::fs::read_dir(conf_dir).map_err(|source| InstallError::Read {
        path: conf_dir.into(),
        source,
    })?;
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.into()))
}

/// Copies the plugin, then chains the entry into the primary config.
/// Idempotent: run again, it changes nothing (or repairs what a primary
/// CNI rewrote).
pub fn install(s: &InstallSettings) -> Result<Installed, InstallError> {
    copy_plugin(&s.plugin, &s.bin_dir.join(PLUGIN_TYPE))?;
    let path = primary_config(&s.conf_dir)?;
    let config = read_json(&path)?;
    let chained = chain(&config, &entry(s)).map_err(|message| InstallError::Malformed {
        path: path.clone(),
        message,
    })?;
    if chained == config {
        return Ok(Installed::Unchanged(path));
    }
    // A single-plugin .conf cannot hold a list: the list goes to a
    // .conflist of the same name, which then sorts first.
    let target = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        path.clone()
    } else {
        path.with_extension("conflist")
    };
    write_atomic(&target, &pretty(&chained))?;
    if target != path {
        std::fs::remove_file(&path).map_err(|source| InstallError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(Installed::Chained(target))
}

/// Removes the entry from every config in the conf dir (the binary stays:
/// a sandbox being torn down may still run it for DEL). Returns the files
/// changed.
pub fn uninstall(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let rd = std::fs::read_dir(conf_dir).map_err(|source| InstallError::Read {
        path: conf_dir.into(),
        source,
    })?;
    let mut changed = Vec::new();
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let Ok(config) = read_json(&path) else {
            continue;
        };
        if let Some(out) = unchain(&config) {
            write_atomic(&path, &pretty(&out))?;
            changed.push(path);
        }
    }
    Ok(changed)
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read(path).map_err(|source| InstallError::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| InstallError::Malformed {
        path: path.into(),
        message: e.to_string(),
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes a temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    use std::io::Write;
    let werr = |source| InstallError::Write {
        path: path.into(),
        source,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A dot-name without a config extension: runtimes skip it.
    let tmp = path.with_file_name(format!(".{name}.trellis-tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(data).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Copies the binary unless the same bytes are there already; executable.
fn copy_plugin(from: &Path, to: &Path) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::read(from).map_err(|source| InstallError::Read {
        path: from.into(),
        source,
    })?;
    if std::fs::read(to).is_ok_and(|old| old == data) {
        return Ok(());
    }
    write_atomic(to, &data)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        InstallError::Write {
            path: to.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests;
