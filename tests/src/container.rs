//! A container's view of the filesystem, as a runtime gives it: the
//! process runs in a mount namespace of its own (the one `ip netns exec`
//! makes, with `/` a recursive slave, so nothing mounted there reaches the
//! host and the host's later mounts, such as new pod netns files, still
//! reach it), with a tmpfs or a test directory mounted at each of its
//! manifest's mount paths. The args stay exactly as rendered.
//!
//! A mount point must exist: one on a tmpfs made here is created inside
//! it; one elsewhere (`/var/run/trellis`, `/host/...`) is created as an
//! empty directory on the host, the only trace this leaves.
//!
//! [`script`] is the pure part (a table test below); [`command`] wraps a
//! program in it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One mount, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountOp {
    /// An empty tmpfs at `dst`, private to the container.
    Tmpfs { dst: PathBuf },
    /// The directory or file `src` at `dst`.
    Bind {
        src: PathBuf,
        dst: PathBuf,
        read_only: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("mount path {0:?} is not absolute: a container's mount paths are")]
    Relative(PathBuf),
    #[error("path {0:?} is not UTF-8; the harness passes paths through sh")]
    NotUtf8(PathBuf),
}

/// `s` single-quoted for sh.
fn quote(p: &Path) -> Result<String, ContainerError> {
    let s = p
        .to_str()
        .ok_or_else(|| ContainerError::NotUtf8(p.into()))?;
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

/// The sh script that makes the mounts, then execs its arguments.
pub fn script(ops: &[MountOp]) -> Result<String, ContainerError> {
    let mut s = String::from("set -e\n");
    for op in ops {
        let dst = match op {
            MountOp::Tmpfs { dst } | MountOp::Bind { dst, .. } => dst,
        };
        if !dst.is_absolute() {
            return Err(ContainerError::Relative(dst.clone()));
        }
        let q = quote(dst)?;
        match op {
            MountOp::Tmpfs { .. } => {
                s += &format!("mkdir -p {q}\nmount -t tmpfs -o mode=0755 tmpfs {q}\n");
            }
            MountOp::Bind { src, read_only, .. } => {
                // A file is bound onto a file (/etc/hosts), a dir onto a dir.
                let src_q = quote(src)?;
                s += &format!(
                    "if [ -d {src_q} ]; then mkdir -p {q}; else [ -e {q} ] || : > {q}; fi\nmount --bind {src_q} {q}\n"
                );
                if *read_only {
                    s += &format!("mount -o remount,bind,ro {q}\n");
                }
            }
        }
    }
    s += "exec \"$@\"\n";
    Ok(s)
}

/// `program` run in `netns` (an `ip netns` name) behind `ops`; the caller
/// adds its args.
pub fn command(netns: &str, ops: &[MountOp], program: &Path) -> Result<Command, ContainerError> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "sh", "-c"])
        .arg(script(ops)?)
        .arg("sh")
        .arg(program);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(src: &str, dst: &str, read_only: bool) -> MountOp {
        MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            read_only,
        }
    }

    #[test]
    fn mounts_become_a_script_that_ends_in_exec() {
        let cases: [(&str, Vec<MountOp>, &str); 3] = [
            ("nothing", vec![], "set -e\nexec \"$@\"\n"),
            (
                "tmpfs then a read-only bind under it",
                vec![
                    MountOp::Tmpfs {
                        dst: "/var/run/secrets".into(),
                    },
                    bind("/t/tok", "/var/run/secrets/tokens", true),
                ],
                "set -e\nmkdir -p '/var/run/secrets'\nmount -t tmpfs -o mode=0755 tmpfs '/var/run/secrets'\n\
                 if [ -d '/t/tok' ]; then mkdir -p '/var/run/secrets/tokens'; else [ -e '/var/run/secrets/tokens' ] || : > '/var/run/secrets/tokens'; fi\n\
                 mount --bind '/t/tok' '/var/run/secrets/tokens'\nmount -o remount,bind,ro '/var/run/secrets/tokens'\nexec \"$@\"\n",
            ),
            (
                "a quote in a path",
                vec![bind("/t/it's", "/x", false)],
                "set -e\nif [ -d '/t/it'\\''s' ]; then mkdir -p '/x'; else [ -e '/x' ] || : > '/x'; fi\n\
                 mount --bind '/t/it'\\''s' '/x'\nexec \"$@\"\n",
            ),
        ];
        for (name, ops, want) in cases {
            assert_eq!(script(&ops).expect(name), want, "{name}");
        }
    }

    #[test]
    fn a_relative_mount_path_is_refused() {
        let err = script(&[bind("/a", "b", false)]).unwrap_err();
        assert!(err.to_string().contains("\"b\" is not absolute"), "{err}");
    }
}
