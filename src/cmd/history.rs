//! e2e-sync --history PATH: the versions of one file across the snapshots, from their checksum
//! manifests (which version) and the snapshot's inode (size, modification time); no file data read.

use crate::config::Job;
use crate::error::{fail, Code};
use crate::manifest;
use crate::partial;
use crate::progress::print_report;
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use crate::timefmt;
use anyhow::Result;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One snapshot's version of the file, as `--history --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Version {
    pub stamp: String,
    /// added (first seen, or back after a removal), changed, same, removed, stale (the snapshot could
    /// not read it and kept the previous version: see `e2e-sync --list`), unknown (no readable
    /// manifest).
    pub state: &'static str,
    pub size: Option<u64>,
    /// Modification time, seconds since the epoch.
    pub modified: Option<i64>,
    pub sha256: Option<String>,
}

/// What each snapshot holds of `name` (`./`-relative manifest name): `None` = no readable
/// manifest, `Some(None)` = not in it, `Some(Some(hash))`. `stale`: the snapshot's record lists it.
pub(crate) struct Seen {
    pub stamp: String,
    pub hash: Option<Option<String>>,
    pub stale: bool,
    pub size: Option<u64>,
    pub modified: Option<i64>,
}

/// The states, oldest first; snapshots without the file before it first appeared are left out.
pub(crate) fn versions(seen: Vec<Seen>) -> Vec<Version> {
    let mut out = Vec::new();
    let mut prev: Option<String> = None;
    for s in seen {
        let state = match (&s.hash, &prev) {
            (None, _) => "unknown",
            (Some(Some(_)), _) if s.stale => "stale",
            (Some(Some(h)), Some(p)) if h == p => "same",
            (Some(Some(_)), Some(_)) => "changed",
            (Some(Some(_)), None) => "added",
            (Some(None), Some(_)) => "removed",
            (Some(None), None) => "absent",
        };
        // (unknown: the next one is compared with the last version known)
        if let Some(h) = &s.hash {
            prev = h.clone();
        }
        if state == "absent" {
            continue;
        }
        let present = matches!(s.hash, Some(Some(_)));
        out.push(Version {
            stamp: s.stamp,
            state,
            size: s.size.filter(|_| present),
            modified: s.modified.filter(|_| present),
            sha256: s.hash.flatten(),
        });
    }
    out
}

/// `STAMP<TAB>STATE<TAB>SIZE<TAB>MODIFIED<TAB>SHA256 (first 16 hex)`, `-` where there is none.
pub(crate) fn text(v: &[Version]) -> String {
    let dash = || "-".to_string();
    v.iter()
        .map(|v| {
            format!(
                "{}\t{}\t{}\t{}\t{}\n",
                v.stamp,
                v.state,
                v.size.map(|s| s.to_string()).unwrap_or_else(dash),
                v.modified.map(timefmt::format_stamp).unwrap_or_else(dash),
                v.sha256
                    .as_ref()
                    .map(|h| h.chars().take(16).collect())
                    .unwrap_or_else(dash)
            )
        })
        .collect()
}

/// Whether the snapshot's record of unread paths lists `path` (or a directory above it) as stale.
fn listed_stale(fs: &Path, stamp: &str, path: &str) -> bool {
    let Ok(r) = std::fs::read_to_string(partial::record_path(fs, stamp)) else {
        return false;
    };
    r.lines()
        .filter_map(|l| l.strip_prefix("stale\t"))
        .any(|l| {
            let p = l.split('\t').next().unwrap_or("").trim_end_matches('/');
            path == p || path.starts_with(&format!("{p}/"))
        })
}

pub(crate) fn history(ctx: &Ctx, job: &Job, path: &str, json: bool) -> Result<Option<PathBuf>> {
    let path = format!("/{}", path.trim_matches('/'));
    if path == "/" || path.split('/').any(|c| c == "..") {
        return Err(fail(
            Code::Config,
            format!(
                "--history {path:?}: give one file by its source path, e.g. /home/alice/notes.txt"
            ),
        ));
    }
    let name = format!(".{path}").into_bytes();
    let v = with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        if ctx.run.is_dry() && !ctx.fs_mounted() {
            ctx.run
                .note("the container is not open yet: the manifests are not read");
            return Ok(None);
        }
        let (stamps, _) = snapshots::scan(fs);
        let seen = stamps
            .into_iter()
            .map(|(stamp, _)| {
                let hash = manifest::of_snapshot(fs, &stamp).ok().map(|m| {
                    m.get(&name)
                        .map(|h| String::from_utf8_lossy(h).into_owned())
                });
                let meta =
                    std::fs::symlink_metadata(fs.join("snapshots").join(&stamp).join(&path[1..]))
                        .ok();
                Seen {
                    stale: listed_stale(fs, &stamp, &path),
                    size: meta.as_ref().map(|m| m.len()),
                    modified: meta.as_ref().map(|m| m.mtime()),
                    hash,
                    stamp,
                }
            })
            .collect();
        Ok(Some(versions(seen)))
    })?;
    let Some(v) = v else { return Ok(None) };
    if v.is_empty() {
        return Err(fail(
            Code::Config,
            format!("{path} is not a regular file in any snapshot (--history follows one file by its source path; see e2e-sync --diff for what changed)"),
        ));
    }
    print_report(json, v.as_slice(), text)?;
    let unknown = v.iter().filter(|v| v.state == "unknown").count();
    if unknown > 0 {
        return Err(fail(
            Code::Unchecked,
            format!("{unknown} snapshot(s) have no readable manifest: which version of {path} they hold is unknown (e2e-sync --verify=STAMP says more)"),
        ));
    }
    crate::progress::info(&format!(
        "restore a version with: e2e-sync --restore STAMP{path} TARGET ({})",
        job.name
    ));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(stamp: &str, hash: Option<Option<&str>>, stale: bool) -> Seen {
        Seen {
            stamp: stamp.into(),
            hash: hash.map(|h| h.map(str::to_string)),
            stale,
            size: Some(3),
            modified: Some(0),
        }
    }

    #[test]
    fn states_across_snapshots() {
        let v = versions(vec![
            seen("s1", Some(None), false),
            seen("s2", Some(Some("aa")), false),
            seen("s3", Some(Some("aa")), false),
            seen("s4", Some(Some("bb")), false),
            seen("s5", Some(Some("bb")), true),
            seen("s6", None, false),
            seen("s7", Some(None), false),
            seen("s8", Some(Some("cc")), false),
        ]);
        let got: Vec<(&str, &str)> = v.iter().map(|v| (v.stamp.as_str(), v.state)).collect();
        assert_eq!(
            got,
            [
                ("s2", "added"),
                ("s3", "same"),
                ("s4", "changed"),
                ("s5", "stale"),
                ("s6", "unknown"),
                ("s7", "removed"),
                ("s8", "added"),
            ]
        );
        assert_eq!(text(&v[..1]), "s2\tadded\t3\t1970-01-01T00:00:00Z\taa\n");
        assert_eq!(text(&v[5..6]), "s7\tremoved\t-\t-\t-\n");
        assert_eq!(
            serde_json::to_string(&v[..1]).unwrap(),
            r#"[{"stamp":"s2","state":"added","size":3,"modified":0,"sha256":"aa"}]"#
        );
    }
}
