use super::*;
use crate::source::{self, ConfigMetrics, SourceSpec};
use crate::state::{ProxyState, StateStore};
use crate::test_support::capture_logs;
use prometheus::Registry;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

/// Long enough for a loaded 2-core CI box; the tests return as soon as the
/// condition holds.
const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn config(server_name: &str) -> String {
    format!(
        "workloads:\n  - {{uid: c, name: client, namespace: demo, addresses: [10.0.1.1]}}\n  - {{uid: s, name: {server_name}, namespace: demo, addresses: [10.0.2.1]}}\n"
    )
}

const BROKEN: &str = "workloads:\n  - {uid: c, name: client, namespace: demo, addresses: [10.0.1.1]}\n  - {uid: c, name: twin, namespace: demo, addresses: [10.0.1.1]}\n";

fn spec(path: &Path) -> SourceSpec {
    SourceSpec::File {
        path: path.to_path_buf(),
        poll: POLL,
    }
}

fn store_from(path: &Path) -> Arc<StateStore> {
    let cfg = load_file(path).expect("initial config loads");
    Arc::new(StateStore::new(
        ProxyState::new(cfg).expect("initial config valid"),
    ))
}

fn server_name(store: &StateStore) -> String {
    store
        .load()
        .workload_by_uid("s")
        .expect("server workload")
        .name
        .clone()
}

/// Polls `cond` until it holds or the deadline passes.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the store to reach `version`.
async fn wait_version(rx: &mut tokio::sync::watch::Receiver<u64>, version: u64) {
    tokio::time::timeout(DEADLINE, rx.wait_for(|v| *v >= version))
        .await
        .unwrap_or_else(|_| panic!("config version {version} not applied within {DEADLINE:?}"))
        .expect("store alive");
}

/// Replaces the file whole (write beside it, then rename), as an editor or
/// a ConfigMap update does: an in-place write can be polled half done (an
/// empty file, counted as a failed reload), which would make the failure
/// counts below depend on timing.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

#[test]
fn load_file_reports_missing_and_broken_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.yaml");
    match load_file(&missing) {
        Err(e @ ConfigError::Read { .. }) => assert!(e.to_string().contains("nope.yaml"), "{e}"),
        other => panic!("expected a read error, got {other:?}"),
    }
    let broken = dir.path().join("broken.yaml");
    fs::write(&broken, BROKEN).expect("write");
    assert!(matches!(load_file(&broken), Err(ConfigError::Invalid(p)) if p.len() == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_edit_applies_broken_edit_is_refused_and_fix_applies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mesh.yaml");
    fs::write(&path, config("server-v1")).expect("write");
    let store = store_from(&path);
    let metrics = Arc::new(ConfigMetrics::new(&Registry::new()));
    let mut rx = store.subscribe();
    let task = source::spawn(&spec(&path), store.clone(), Some(metrics.clone()), None);

    replace(&path, &config("server-v2"));
    wait_version(&mut rx, 2).await;
    assert_eq!(server_name(&store), "server-v2");
    // The counter moves just after the version is published.
    wait_until("the reload to be counted", || metrics.successes() == 1).await;

    replace(&path, BROKEN);
    wait_until("the broken file to be counted", || metrics.failures() == 1).await;
    assert_eq!(store.version(), 2);
    assert_eq!(server_name(&store), "server-v2", "last good config kept");

    replace(&path, &config("server-v3"));
    wait_version(&mut rx, 3).await;
    assert_eq!(server_name(&store), "server-v3");
    wait_until("the fix to be counted", || metrics.successes() == 2).await;
    assert_eq!(metrics.failures(), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_length_edit_with_the_same_mtime_is_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mesh.yaml");
    fs::write(&path, config("server-aa")).expect("write");
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let store = store_from(&path);
    let mut rx = store.subscribe();
    let task = source::spawn(&spec(&path), store.clone(), None, None);

    let f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open");
    {
        use std::io::Write;
        (&f).write_all(config("server-bb").as_bytes())
            .expect("write");
    }
    f.set_modified(mtime).expect("reset mtime");
    drop(f);
    wait_version(&mut rx, 2).await;
    assert_eq!(server_name(&store), "server-bb");
    task.abort();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // kubelet's layout: mesh.yaml -> ..data/mesh.yaml, ..data -> ..<timestamp>
    fs::create_dir(d.join("..v1")).expect("mkdir");
    fs::write(d.join("..v1/mesh.yaml"), config("server-v1")).expect("write");
    symlink("..v1", d.join("..data")).expect("symlink");
    symlink("..data/mesh.yaml", d.join("mesh.yaml")).expect("symlink");
    let path = d.join("mesh.yaml");
    let store = store_from(&path);
    let mut rx = store.subscribe();
    let task = source::spawn(&spec(&path), store.clone(), None, None);

    fs::create_dir(d.join("..v2")).expect("mkdir");
    fs::write(d.join("..v2/mesh.yaml"), config("server-v2")).expect("write");
    symlink("..v2", d.join("..data_tmp")).expect("symlink");
    fs::rename(d.join("..data_tmp"), d.join("..data")).expect("atomic swap");
    fs::remove_dir_all(d.join("..v1")).expect("old version removed");
    wait_version(&mut rx, 2).await;
    assert_eq!(server_name(&store), "server-v2");
    task.abort();
}

#[tokio::test]
async fn missing_file_is_logged_and_counted_once_per_change_of_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mesh.yaml");
    fs::write(&path, config("server-v1")).expect("write");
    let store = store_from(&path);
    let metrics = Arc::new(ConfigMetrics::new(&Registry::new()));
    let sink = UpdateSink::new(store.clone(), Some(metrics.clone()));
    let mut seen = Seen::Nothing;
    let (_log, logs) = capture_logs();

    poll_once(&path, &sink, &mut seen).await;
    fs::remove_file(&path).expect("remove");
    for _ in 0..5 {
        poll_once(&path, &sink, &mut seen).await;
    }
    assert_eq!(metrics.failures(), 1);
    let warns: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:#?}");
    assert!(
        warns[0].contains("mesh.yaml") && warns[0].contains("cannot read config file"),
        "{}",
        warns[0]
    );

    fs::write(&path, config("server-v1")).expect("write");
    poll_once(&path, &sink, &mut seen).await;
    assert!(logs
        .lines()
        .iter()
        .any(|l| l.contains("config file is readable again")));
    assert_eq!(
        store.version(),
        1,
        "same content as before: nothing to apply"
    );
    assert_eq!((metrics.successes(), metrics.failures()), (0, 1));
}

#[tokio::test]
async fn broken_file_warns_once_naming_the_file_and_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mesh.yaml");
    fs::write(&path, config("server-v1")).expect("write");
    let store = store_from(&path);
    let metrics = Arc::new(ConfigMetrics::new(&Registry::new()));
    let sink = UpdateSink::new(store.clone(), Some(metrics.clone()));
    let mut seen = Seen::Nothing;
    let (_log, logs) = capture_logs();

    fs::write(&path, BROKEN).expect("write");
    for _ in 0..3 {
        poll_once(&path, &sink, &mut seen).await;
    }
    let warns: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:#?}");
    let w = &warns[0];
    assert!(w.contains(&path.display().to_string()), "{w}");
    assert!(w.contains("workloads[1].uid"), "{w}");
    assert!(w.contains("workloads[1].addresses[0]"), "{w}");
    assert!(w.contains("keeping the last good config"), "{w}");
    assert_eq!(metrics.failures(), 1);
    assert_eq!(store.version(), 1);
}
