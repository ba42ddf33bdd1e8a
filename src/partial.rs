//! Partial runs: source files rsync could not read (exit 23) do not cost the whole snapshot.
//!
//! A file that returns EIO (a failing sector), a FUSE mount that errs, a path that vanished from
//! sync.paths: rsync copies everything else and exits 23. The run then completes the snapshot with,
//! in place of each unread path, the previous snapshot's version (a hard link, marked *stale*) or,
//! without one, nothing (marked *missing*), and records the list inside the container as
//! `manifests/<STAMP>.incomplete`, written before the snapshot is published (so a snapshot and its
//! record become durable together). The run exits 8. `sync.allow_partial = false` keeps the
//! all-or-nothing behaviour: such a run fails and publishes nothing.
//!
//! Only rsync's `[sender]` errors count as unread sources: an error of the receiving side (the
//! container) still fails the run, as does an exit 23 whose errors cannot be told apart.

use crate::error::{Code, Fail};
use crate::exec::{Cmd, Step};
use crate::filesystem::Kind;
use crate::snapshots;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A source path rsync could not read, and rsync's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub path: String,
    pub why: String,
}

/// What stands in a snapshot where an unread path would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stand {
    /// The previous snapshot's version, hard-linked in.
    Stale,
    /// Nothing: there was no earlier version.
    Missing,
}

impl Stand {
    pub fn word(self) -> &'static str {
        match self {
            Stand::Stale => "stale",
            Stand::Missing => "missing",
        }
    }
}

/// The unread source paths in the stderr of an rsync that exited 23, or the first error line that
/// is not about reading the source (then the run must fail on it).
pub fn parse(stderr: &str) -> Result<Vec<Unread>, String> {
    let mut out: Vec<Unread> = Vec::new();
    for l in stderr.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("rsync: [sender] ") {
            let (path, why) = quoted_path(rest).ok_or_else(|| l.to_string())?;
            if !out.iter().any(|u| u.path == path) {
                out.push(Unread { path, why });
            }
        } else if l.starts_with("rsync: ") {
            return Err(l.to_string());
        }
        // "rsync error: some files/attrs were not transferred … (code 23)" closes every such run;
        // "WARNING/ERROR: X failed verification -- update discarded" follow a read error.
    }
    if out.is_empty() {
        Err(stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("rsync error: "))
            .unwrap_or("rsync exited 23 without naming a file")
            .to_string())
    } else {
        Ok(out)
    }
}

/// Each unread source path with what stands in for it.
pub type StandIns = Vec<(Unread, Stand)>;

/// An rsync that exited 23 into snapshot `stamp` of the container mounted at `fs`: for each source
/// path it could not read, the previous version out of snapshot `link` in its place (the steps that
/// put it there), or nothing, and which. An error that was not about reading the source fails the
/// run.
///
/// ext4: the new snapshot lacks the unread paths; the old versions are hard-linked in. btrfs: the
/// working tree may hold a half-rewritten file (rsync in place) or a version older than `link`'s,
/// so the path is removed and `link`'s version reflinked in (a copy that shares its extents).
pub fn stand_in(
    stderr: &str,
    fs: &Path,
    stamp: &str,
    link: Option<&str>,
    kind: Kind,
) -> Result<(Vec<Step>, StandIns)> {
    let unread = parse(stderr).map_err(|line| {
        snapshots::rsync_failure(&line).unwrap_or_else(|| Fail::new(Code::Runtime, line))
    })?;
    let snaps = fs.join("snapshots");
    let work = snapshots::work_dir(kind, fs, stamp);
    let mut steps = Vec::new();
    let mut entries = Vec::new();
    for u in unread {
        let target = work.join(u.path.trim_start_matches('/'));
        let old = link.and_then(|l| previous(&snaps.join(l), &u.path));
        if kind == Kind::Btrfs {
            steps.push(Step::run(Cmd::new("rm").arg("-rf").arg(&target)));
        }
        let stand = match old {
            Some(old) if kind == Kind::Btrfs => {
                if let Some(parent) = target.parent() {
                    steps.push(Step::run(Cmd::new("mkdir").arg("-p").arg(parent)));
                }
                steps.push(Step::run(
                    Cmd::new("cp")
                        .args(["-a", "--reflink=always", "-T"])
                        .arg(&old)
                        .arg(&target),
                ));
                Stand::Stale
            }
            Some(old) if old.is_dir() => {
                steps.push(Step::run(
                    Cmd::new("cp").args(["-al", "-T"]).arg(&old).arg(&target),
                ));
                Stand::Stale
            }
            Some(old) if std::fs::symlink_metadata(&target).is_err() => {
                if let Some(parent) = target.parent() {
                    steps.push(Step::run(Cmd::new("mkdir").arg("-p").arg(parent)));
                }
                steps.push(Step::run(Cmd::new("ln").arg(&old).arg(&target)));
                Stand::Stale
            }
            _ => Stand::Missing,
        };
        crate::warning!("could not read {}: {} ({})", u.path, u.why, stand.word());
        entries.push((u, stand));
    }
    Ok((steps, entries))
}

/// The source files rsync saw in its file list and found gone when it came to read them (exit 24,
/// or among the errors of a 23): `file has vanished: "/data/x"` (rsync 3.2.7; older ones put
/// `rsync: [sender]`-less variants in the same words). Not unread: they no longer exist.
pub fn vanished(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("file has vanished: "))
        .count()
}

/// `read errors mapping "/data/x": Input/output error (5)` → ("/data/x", "Input/output error (5)").
fn quoted_path(rest: &str) -> Option<(String, String)> {
    let a = rest.find('"')?;
    let b = a + 1 + rest[a + 1..].find('"')?;
    let path = rest[a + 1..b].to_string();
    let why = rest[b + 1..]
        .trim_start_matches([':', ' '])
        .trim_start_matches("failed: ")
        .to_string();
    path.starts_with('/').then_some((path, why))
}

/// The record of an incomplete snapshot, beside its manifest.
pub fn record_path(fs: &Path, stamp: &str) -> PathBuf {
    crate::manifest::path(fs, stamp).with_extension("incomplete")
}

/// Whether snapshot `stamp` is incomplete, and how many paths its record lists.
pub fn unread_count(fs: &Path, stamp: &str) -> Option<usize> {
    let r = std::fs::read_to_string(record_path(fs, stamp)).ok()?;
    Some(r.lines().filter(|l| !l.starts_with('#')).count())
}

/// The record: one line per path, `stale|missing<TAB>PATH<TAB>WHY`.
pub fn render(entries: &[(Unread, Stand)]) -> String {
    let mut s = String::from(
        "# paths rsync could not read; stale = the previous snapshot's version stands in\n",
    );
    for (u, st) in entries {
        s.push_str(&format!(
            "{}\t{}\t{}\n",
            st.word(),
            u.path,
            u.why.replace(['\t', '\n'], " ")
        ));
    }
    s
}

/// The previous version of `path` in snapshot directory `prev`, if it is a file or directory that
/// can stand in (not a symlink: a link's target is outside the snapshot).
fn previous(prev: &Path, path: &str) -> Option<PathBuf> {
    let p = prev.join(path.trim_start_matches('/'));
    let m = std::fs::symlink_metadata(&p).ok()?;
    (m.is_file() || m.is_dir()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    // As rsync 3.2.7 prints them (Debian 12).
    const EIO: &str = "rsync: [sender] read errors mapping \"/data/rerr/bad\": Input/output error (5)\n\
WARNING: data/rerr/bad failed verification -- update discarded (will try again).\n\
rsync: [sender] read errors mapping \"/data/rerr/bad\": Input/output error (5)\n\
ERROR: data/rerr/bad failed verification -- update discarded.\n\
rsync: [sender] send_files failed to open \"/data/rerr/locked\": Permission denied (13)\n\
rsync: [sender] link_stat \"/data/gone\" failed: No such file or directory (2)\n\
rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1338) [sender=3.2.7]\n";

    #[test]
    fn sender_errors_are_unread_paths_once_each() {
        let u = parse(EIO).unwrap();
        let got: Vec<(&str, &str)> = u
            .iter()
            .map(|u| (u.path.as_str(), u.why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/data/rerr/bad", "Input/output error (5)"),
                ("/data/rerr/locked", "Permission denied (13)"),
                ("/data/gone", "No such file or directory (2)"),
            ]
        );
    }

    #[test]
    fn a_receiver_error_or_no_named_file_fails_the_run() {
        let e = format!("{EIO}rsync: [receiver] mkstemp \"/run/e2e-backup/h/fs/x\" failed: Read-only file system (30)\n");
        assert!(parse(&e).unwrap_err().contains("[receiver]"));
        let e =
            "rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n";
        assert!(parse(e).unwrap_err().starts_with("rsync error: "));
        assert_eq!(
            parse("").unwrap_err(),
            "rsync exited 23 without naming a file"
        );
    }

    #[test]
    fn vanished_files_are_counted_and_are_not_unread() {
        let v = "file has vanished: \"/data/home/tmp/a\"\n\
file has vanished: \"/data/home/tmp/b\"\n\
rsync warning: some files vanished before they could be transferred (code 24) at main.c(1338) [sender=3.2.7]\n";
        assert_eq!(vanished(v), 2);
        assert_eq!(vanished(EIO), 0);
        // Beside read errors (exit 23) they change nothing in what is unread.
        let both = format!("{v}{EIO}");
        assert_eq!(vanished(&both), 2);
        assert_eq!(parse(&both).unwrap().len(), 3);
    }

    #[test]
    fn the_previous_version_stands_in_where_there_is_one() {
        let d = tempfile::tempdir().unwrap();
        let fs = d.path();
        let snaps = &fs.join("snapshots");
        std::fs::create_dir_all(snaps.join("OLD/data/rerr/locked")).unwrap();
        std::fs::write(snaps.join("OLD/data/rerr/bad"), "v1").unwrap();
        let (steps, entries) = stand_in(EIO, fs, "NEW", Some("OLD"), Kind::Ext4).unwrap();
        let stands: Vec<(&str, Stand)> =
            entries.iter().map(|(u, s)| (u.path.as_str(), *s)).collect();
        assert_eq!(
            stands,
            [
                ("/data/rerr/bad", Stand::Stale),
                ("/data/rerr/locked", Stand::Stale),
                ("/data/gone", Stand::Missing),
            ]
        );
        let r = crate::exec::Runner::buffered();
        r.all(steps).unwrap();
        let (old, new) = (
            snaps.join("OLD/data/rerr"),
            snaps.join("NEW.inflight/data/rerr"),
        );
        assert_eq!(
            r.script()[1..],
            [
                format!("mkdir -p {}", new.display()),
                format!(
                    "ln {} {}",
                    old.join("bad").display(),
                    new.join("bad").display()
                ),
                format!(
                    "cp -al -T {} {}",
                    old.join("locked").display(),
                    new.join("locked").display()
                ),
            ]
        );
        let e =
            format!("{EIO}rsync: [receiver] mkstemp \"/x\" failed: Read-only file system (30)\n");
        assert!(stand_in(&e, fs, "NEW", Some("OLD"), Kind::Ext4).is_err());
    }

    #[test]
    fn on_btrfs_the_previous_version_replaces_what_the_working_tree_holds() {
        let d = tempfile::tempdir().unwrap();
        let fs = d.path();
        let old = fs.join("snapshots/OLD/data/rerr");
        std::fs::create_dir_all(old.join("locked")).unwrap();
        std::fs::write(old.join("bad"), "v1").unwrap();
        let (steps, entries) = stand_in(EIO, fs, "NEW", Some("OLD"), Kind::Btrfs).unwrap();
        let stands: Vec<Stand> = entries.iter().map(|e| e.1).collect();
        assert_eq!(stands, [Stand::Stale, Stand::Stale, Stand::Missing]);
        let r = crate::exec::Runner::buffered();
        r.all(steps).unwrap();
        let new = fs.join("current/data/rerr");
        let (o, n) = (old.display(), new.display());
        assert_eq!(
            r.script()[1..],
            [
                format!("rm -rf {n}/bad"),
                format!("mkdir -p {n}"),
                format!("cp -a --reflink=always -T {o}/bad {n}/bad"),
                format!("rm -rf {n}/locked"),
                format!("mkdir -p {n}"),
                format!("cp -a --reflink=always -T {o}/locked {n}/locked"),
                // No earlier version: whatever the working tree holds there goes.
                format!("rm -rf {}", fs.join("current/data/gone").display()),
            ]
        );
    }

    #[test]
    fn the_record_lists_each_path_with_what_stands_in() {
        let u = parse(EIO).unwrap();
        let r = render(&[(u[0].clone(), Stand::Stale), (u[2].clone(), Stand::Missing)]);
        let lines: Vec<&str> = r.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "stale\t/data/rerr/bad\tInput/output error (5)",
                "missing\t/data/gone\tNo such file or directory (2)"
            ]
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("manifests")).unwrap();
        std::fs::write(record_path(d.path(), "S"), r).unwrap();
        assert_eq!(unread_count(d.path(), "S"), Some(2));
        assert_eq!(unread_count(d.path(), "T"), None);
    }
}
