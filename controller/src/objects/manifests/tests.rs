use super::*;
use crate::objects::kinds::{Kind, ObjectKey};

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
const SA: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: demo}\n";

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn loads_recursively_skipping_hidden_and_other_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir_all(root.join(".git")).expect("mkdir");
    std::fs::write(root.join("ns.yaml"), NS).expect("write");
    std::fs::write(root.join("sub/deeper/sa.yml"), SA).expect("write");
    std::fs::write(
        root.join("sub/node.json"),
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"}}"#,
    )
    .expect("write");
    std::fs::write(root.join(".hidden.yaml"), "garbage: [").expect("write");
    std::fs::write(root.join(".git/x.yaml"), "garbage: [").expect("write");
    std::fs::write(root.join("README.md"), "garbage: [").expect("write");

    let mut store = ObjectStore::new();
    let mut dir_src = ManifestsDir::new(root);
    let r = dir_src.scan(&mut store).expect("scan");
    assert!(r.changed);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(store.len(), 3);
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sa"))
        .is_some());
    assert_eq!(store.source_keys("sub/deeper/sa.yml").len(), 1);

    // Nothing changed: no change reported.
    let r = dir_src.scan(&mut store).expect("scan");
    assert!(!r.changed);
    assert!(r.errors.is_empty());
}

#[test]
fn changes_deletions_and_broken_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("a.yaml"), format!("{NS}---\n{SA}")).expect("write");
    let mut store = ObjectStore::new();
    let mut src = ManifestsDir::new(root);
    assert!(src.scan(&mut store).expect("scan").changed);

    // Same length, different content: still seen (no mtime reliance).
    let renamed = SA.replace("name: sa,", "name: sb,");
    assert_eq!(renamed.len(), SA.len());
    std::fs::write(root.join("a.yaml"), format!("{NS}---\n{renamed}")).expect("write");
    assert!(src.scan(&mut store).expect("scan").changed);
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sb"))
        .is_some());
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sa"))
        .is_none());

    // A broken edit: the error names the file and document; the last good
    // version stays, and another file still applies.
    std::fs::write(
        root.join("a.yaml"),
        format!("{NS}---\n{}", renamed.replace("metadata", "metdata")),
    )
    .expect("write");
    std::fs::write(root.join("b.yaml"), SA).expect("write");
    let r = src.scan(&mut store).expect("scan");
    assert!(r.changed);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    let msg = r.errors[0].to_string();
    assert!(msg.contains("file a.yaml, document 2"), "{msg}");
    assert!(
        msg.contains("metadata.name is missing") || msg.contains("metdata"),
        "{msg}"
    );
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sb"))
        .is_some());
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sa"))
        .is_some());

    // A file deleted: its objects go.
    std::fs::remove_file(root.join("b.yaml")).expect("rm");
    assert!(src.scan(&mut store).expect("scan").changed);
    assert!(store
        .get(&key(Kind::ServiceAccount, "demo", "sa"))
        .is_none());
}

#[test]
fn duplicates_are_reported_once_per_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["a.yaml", "b.yaml", "c.yaml"] {
        std::fs::write(dir.path().join(f), SA).expect("write");
    }
    let mut store = ObjectStore::new();
    let r = ManifestsDir::new(dir.path())
        .scan(&mut store)
        .expect("scan");
    let msgs: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].contains("in file a.yaml, document 1 and in file b.yaml"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("in file a.yaml, document 1 and in file c.yaml"),
        "{msgs:?}"
    );
}

#[test]
fn a_missing_folder_is_an_error_naming_it() {
    let mut store = ObjectStore::new();
    let mut src = ManifestsDir::new("/nonexistent/trellis-manifests");
    let err = src.scan(&mut store).expect_err("must fail").to_string();
    assert!(err.contains("/nonexistent/trellis-manifests"), "{err}");
}

#[tokio::test]
async fn poll_reports_the_first_scan_and_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ns.yaml"), NS).expect("write");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(poll(
        ManifestsDir::new(dir.path()),
        ObjectStore::new(),
        Duration::from_millis(20),
        move |store, _r| {
            let _ = tx.send(store.len());
        },
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("first scan");
    assert_eq!(first, Some(1));
    std::fs::write(dir.path().join("sa.yaml"), SA).expect("write");
    let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("change seen");
    assert_eq!(second, Some(2));
    task.abort();
}
