//! The agent's pods on disk, so a restarted agent still knows them.
//!
//! Why: on every new ZDS connection the node proxy drops each pod the
//! snapshot does not name. An agent that forgot its pods on restart would
//! make the node proxy let go of every pod on the node while their capture
//! rules stay: their traffic would stop. So each change is written here
//! (whole file, written then renamed: never half a file), and read at start;
//! a pod whose netns path no longer opens is gone and left out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::PodRef;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPod {
    pub pod: PodRef,
    /// `CNI_NETNS` as ADD gave it: the runtime keeps it while the sandbox lives.
    pub netns: PathBuf,
    /// The sandbox it was enrolled with (`CNI_CONTAINERID`).
    #[serde(default)]
    pub container_id: String,
    /// The node proxy confirmed it and the rules were installed.
    pub captured: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    pods: Vec<SavedPod>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the agent state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent state {path} is not valid: {source}; move it away to start with no pods (running pods then need a restart to be enrolled again)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the agent state {path}: {source}; check the directory is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the saved pods; none when there is no file yet.
pub fn load(path: &Path) -> Result<Vec<SavedPod>, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: File = serde_json::from_slice(&text).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.pods)
}

/// Replaces the saved pods.
pub fn save(path: &Path, pods: Vec<SavedPod>) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec_pretty(&File { pods }).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).unwrap(), vec![], "no file: no pods");
        let pods = vec![SavedPod {
            pod: PodRef {
                namespace: "demo".into(),
                name: "web-0".into(),
                uid: "u1".into(),
                service_account: String::new(),
            },
            netns: "/var/run/netns/cni-1".into(),
            container_id: "c1".into(),
            captured: true,
        }];
        save(&path, pods.clone()).unwrap();
        assert_eq!(load(&path).unwrap(), pods);
        std::fs::write(&path, "{\"pods\": [{\"pod\": 1}]}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("not valid"), "{e}");
    }
}
