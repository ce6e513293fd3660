//! The fuzz crate (fuzz/, outside the workspace) keeps its own Cargo.lock,
//! and fuzz/ci.sh builds it `--locked`. A dependency added to a workspace
//! crate that the fuzz crate uses changes what that lock must hold, and
//! nothing in the workspace's own build notices: CI then fails at its last
//! step, after every test. This test fails first, with the fix in its
//! message.

use std::path::Path;
use std::process::Command;

#[test]
fn the_fuzz_crates_lock_file_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("fuzz/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // `cargo metadata --locked` resolves the whole graph and fails if the
    // lock file would change; it builds nothing.
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--locked",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "fuzz/Cargo.lock is out of date with the workspace crates it uses; \
         run `cd fuzz && cargo fetch` and commit fuzz/Cargo.lock:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
