use super::*;

fn settings(dir: &Path) -> InstallSettings {
    InstallSettings {
        bin_dir: dir.join("bin"),
        conf_dir: dir.join("net.d"),
        plugin: dir.join("plugin-src"),
        agent_socket: "/var/run/trellis/cni-plugin.sock".into(),
        fail_open: false,
        capture_timeout_ms: 10_000,
    }
}

/// (name, input, Ok(plugin types after chain) or Err(message part))
type Case<'a> = (&'a str, Value, Result<Vec<&'a str>, &'a str>);

#[test]
fn chaining_table() {
    let ours = json!({"type": "trellis-cni", "agentSocket": "/s"});
    let bridge = json!({"type": "bridge", "bridge": "cni0"});
    let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [bridge.clone()]});
    let conf = json!({"cniVersion": "0.4.0", "name": "k8s", "type": "bridge", "bridge": "cni0"});
    let cases: Vec<Case> = vec![
        (
            "a list gets the entry last",
            list.clone(),
            Ok(vec!["bridge", "trellis-cni"]),
        ),
        (
            "an old entry is replaced, not doubled",
            json!({"name": "k8s", "plugins": [bridge.clone(), {"type": "trellis-cni", "agentSocket": "/old"}, {"type": "portmap"}]}),
            Ok(vec!["bridge", "portmap", "trellis-cni"]),
        ),
        (
            "a .conf becomes a list",
            conf.clone(),
            Ok(vec!["bridge", "trellis-cni"]),
        ),
        ("not an object", json!([1]), Err("not a JSON object")),
        (
            "plugins not a list",
            json!({"plugins": {}}),
            Err("not a list"),
        ),
        ("neither", json!({"name": "x"}), Err("neither")),
        (
            "nothing to chain to",
            json!({"plugins": [ours.clone()]}),
            Err("no plugin before"),
        ),
    ];
    for (name, input, want) in cases {
        match (chain(&input, &ours), want) {
            (Ok(out), Ok(types)) => {
                let got: Vec<&str> = out["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["type"].as_str().unwrap())
                    .collect();
                assert_eq!(got, types, "{name}");
                assert_eq!(out["name"], "k8s", "{name}: the network keeps its name");
                assert_eq!(
                    out["plugins"].as_array().unwrap().last(),
                    Some(&ours),
                    "{name}"
                );
                assert!(
                    out.get("type").is_none(),
                    "{name}: no single-plugin keys left"
                );
                // Chaining again changes nothing; unchaining gives back the list.
                assert_eq!(chain(&out, &ours).unwrap(), out, "{name}: idempotent");
                let back = unchain(&out).unwrap();
                assert!(
                    !back["plugins"].as_array().unwrap().iter().any(is_ours),
                    "{name}"
                );
            }
            (Err(e), Err(part)) => assert!(e.contains(part), "{name}: {e}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(unchain(&list), None, "nothing to remove");
}

#[test]
fn install_and_uninstall_on_a_conf_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    std::fs::create_dir_all(&s.bin_dir).unwrap();
    std::fs::create_dir_all(&s.conf_dir).unwrap();
    std::fs::write(&s.plugin, b"#!/bin/sh\n").unwrap();
    // No config yet: a clear error, and the binary is already there.
    let err = install(&s).unwrap_err();
    assert!(matches!(err, InstallError::NoConfig(_)), "{err}");
    assert!(s.bin_dir.join(PLUGIN_TYPE).exists());

    let primary = s.conf_dir.join("10-bridge.conf");
    let other = s.conf_dir.join("99-other.conflist");
    let conf = json!({"cniVersion": "0.4.0", "name": "k8s", "type": "bridge"});
    std::fs::write(&primary, conf.to_string()).unwrap();
    std::fs::write(
        &other,
        json!({"name": "o", "plugins": [{"type": "x"}]}).to_string(),
    )
    .unwrap();

    let list = s.conf_dir.join("10-bridge.conflist");
    assert_eq!(install(&s).unwrap(), Installed::Chained(list.clone()));
    assert!(!primary.exists(), "the .conf is replaced by a .conflist");
    assert_eq!(install(&s).unwrap(), Installed::Unchanged(list.clone()));
    let v: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert_eq!(v["plugins"][1], entry(&s));
    let untouched = std::fs::read_to_string(&other).unwrap();
    assert!(
        !untouched.contains("trellis-cni"),
        "only the primary config is chained"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.bin_dir.join(PLUGIN_TYPE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);

    // The primary CNI rewrites its config: installing again repairs it.
    std::fs::write(
        &list,
        json!({"name": "k8s", "plugins": [{"type": "bridge"}]}).to_string(),
    )
    .unwrap();
    assert_eq!(install(&s).unwrap(), Installed::Chained(list.clone()));

    assert_eq!(uninstall(&s.conf_dir).unwrap(), vec![list.clone()]);
    let v: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    assert_eq!(uninstall(&s.conf_dir).unwrap(), Vec::<PathBuf>::new());
    let leftovers: Vec<_> = std::fs::read_dir(&s.conf_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("trellis-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");

    // A broken primary config: a clear error naming the file, nothing written.
    std::fs::write(&list, b"{not json").unwrap();
    let err = install(&s).unwrap_err().to_string();
    assert!(
        err.contains("10-bridge.conflist") && err.contains("not a CNI network config"),
        "{err}"
    );
    assert_eq!(std::fs::read(&list).unwrap(), b"{not json");
}
