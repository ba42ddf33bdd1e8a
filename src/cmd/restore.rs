//! e2e-sync --restore: copy out of a snapshot, then check the copy against its manifest.

use crate::config::Job;
use crate::error::{fail, Code};
use crate::manifest::{self, hash_listed, holds_regular_file};
use crate::progress::{finish_progress, print_json, progress_reporter};
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub(crate) fn restore(
    ctx: &Ctx,
    job: &Job,
    spec: &str,
    target: &str,
    unchecked: bool,
    json: bool,
) -> Result<Option<PathBuf>> {
    with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        // Parsed once: the source path and the manifest that checks it name the same snapshot.
        let parsed = if ctx.run.is_dry() && !ctx.fs_mounted() {
            None
        } else {
            Some(snapshots::parse_spec(fs, spec)?)
        };
        let src = if let Some(sp) = &parsed {
            sp.source(fs)
        } else {
            // Not open in a dry-run: let the script follow the `latest` symlink itself.
            let (snap, rest) = spec.split_once('/').unwrap_or((spec, ""));
            if !spec.contains('/') {
                ctx.run
                    .note("restoring the contents of the snapshot (as SNAPSHOT/ would)");
            }
            PathBuf::from(format!("{}/{snap}/{rest}", fs.display()))
        };
        if !ctx.run.is_dry() && std::fs::symlink_metadata(&src).is_err() {
            return Err(fail(
                Code::Config,
                format!("{spec}: no such path in the snapshot"),
            ));
        }
        // The check's reference is found before anything is copied: a restore that could not be
        // checked is refused up front (exit 7) unless --unchecked.
        let want = if let (false, Some(snapshots::Spec { stamp, rest })) =
            (ctx.run.is_dry(), parsed)
        {
            let m = manifest::of(fs, &stamp).and_then(|m| {
                let want = manifest::restore_subset(&m, rest);
                if want.is_empty() && holds_regular_file(&src) {
                    return Err(fail(
                        Code::Unchecked,
                        format!(
                            "snapshot {stamp}'s manifest lists no file of {spec}, which holds files: it cannot be checked"
                        ),
                    ));
                }
                Ok((stamp, want))
            });
            match m {
                Ok(m) => Some(m),
                Err(e) if unchecked => {
                    crate::warning!("{e:#}; restoring without a check (--unchecked)");
                    None
                }
                Err(e) => {
                    return Err(fail(
                        Code::Unchecked,
                        format!(
                        "{e:#}; nothing restored (pass --unchecked to restore it without a check)"
                    ),
                    ))
                }
            }
        } else {
            None
        };
        ctx.run
            .run_streaming(&snapshots::rsync_restore(&src, target), progress_reporter())?;
        finish_progress();
        if ctx.run.is_dry() {
            ctx.run.note("a real run then hashes the restored files and compares them with the snapshot's manifest");
        }
        let checked = match want {
            Some((stamp, want)) => Some(check_restored(ctx, stamp, want, target)?),
            None => None,
        };
        if json && !ctx.run.is_dry() {
            print_json(&Restored::of(target, checked.as_ref()))?;
        }
        if let Some(c) = checked.filter(|c| !c.differ.is_empty()) {
            return Err(fail(
                Code::Runtime,
                format!(
                    "{} of {} restored files differ from snapshot {}'s manifest: the server's copy is damaged; they are left in {target} for inspection, restore them from an older snapshot",
                    c.differ.len(),
                    c.files,
                    c.stamp
                ),
            ));
        }
        if json && !ctx.run.is_dry() {
            return Ok(None);
        }
        Ok(Some(PathBuf::from(target)))
    })
}

/// What [`check_restored`] found: the snapshot whose manifest it read, the files it checked, and
/// the restored paths among them whose contents differ from the manifest (or that could not be read).
pub(crate) struct Checked {
    stamp: String,
    files: usize,
    differ: Vec<String>,
}

/// After a restore, hash the restored files (on the client, where they now are) and compare them
/// with the snapshot's manifest (`want`: the restored part). dm-crypt has no integrity: a block the
/// server garbled decrypts to garbage that rsync would copy without complaint; this is where it is
/// caught.
pub(crate) fn check_restored(
    ctx: &Ctx,
    stamp: String,
    mut want: manifest::Manifest,
    target: &str,
) -> Result<Checked> {
    let run = &ctx.run;
    let mut dir = PathBuf::from(target);
    // One file restored to a name that is not a directory: rsync wrote it as TARGET itself.
    if want.len() == 1 && !dir.is_dir() {
        use std::os::unix::ffi::OsStrExt;
        let sum = want.into_values().next().unwrap_or_default();
        let name = dir
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        want = manifest::Manifest::from([([b"./".as_slice(), &name].concat(), sum)]);
    }
    if want.is_empty() {
        crate::progress::info(&format!(
            "snapshot {stamp}: the restored part holds no regular file; nothing to check"
        ));
        return Ok(Checked {
            stamp,
            files: 0,
            differ: Vec::new(),
        });
    }
    let (list, out) = (
        ctx.paths.dir.join("restore.todo"),
        ctx.paths.dir.join("restore.sha256"),
    );
    // A restored file that cannot be read is counted below as a mismatch.
    let names: Vec<Vec<u8>> = want.keys().cloned().collect();
    let have = hash_listed(run, &dir, &names, &list, &out, true)?;
    let d = manifest::compare(&want, &have);
    let differ: Vec<String> = d
        .changed
        .iter()
        .chain(&d.missing)
        .map(|n| {
            let n = manifest::show_name(n);
            format!("{}/{}", dir.display(), n.trim_start_matches("./"))
        })
        .collect();
    for f in &differ {
        crate::progress::stderr_line(
            crate::progress::Level::Warning,
            &format!("does not match the manifest: {f}"),
        );
    }
    if differ.is_empty() {
        crate::progress::info(&format!(
            "checked {} restored files against the manifest of {stamp}",
            want.len()
        ));
    }
    Ok(Checked {
        stamp,
        files: want.len(),
        differ,
    })
}

/// `--restore --json` (docs/contract.md), also when files differ (then exit 1).
#[derive(Debug, serde::Serialize)]
struct Restored<'a> {
    target: &'a str,
    /// The snapshot the check read (null: restored --unchecked, or a dry run).
    stamp: Option<&'a str>,
    checked: bool,
    /// Every checked file matched (null: nothing was checked).
    ok: Option<bool>,
    /// Regular files checked against the manifest.
    files: Option<usize>,
    /// The restored paths whose contents differ from the manifest or could not be read.
    differ: &'a [String],
}

impl<'a> Restored<'a> {
    fn of(target: &'a str, c: Option<&'a Checked>) -> Self {
        Restored {
            target,
            stamp: c.map(|c| c.stamp.as_str()),
            checked: c.is_some(),
            ok: c.map(|c| c.differ.is_empty()),
            files: c.map(|c| c.files),
            differ: c.map_or(&[], |c| &c.differ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Checked, Restored};

    /// `--restore --json`'s schema, pinned: a checked restore, one with a damaged file, an --unchecked one.
    #[test]
    fn json_result() {
        let check = |differ: &[&str]| Checked {
            stamp: "2026-12-02T03:00:00Z".into(),
            files: 41,
            differ: differ.iter().map(|d| d.to_string()).collect(),
        };
        let (good, damaged) = (check(&[]), check(&["/srv/restore/notes.txt"]));
        crate::cmd::check_json(
            "restore",
            &[
                Restored::of("/srv/restore", Some(&good)),
                Restored::of("/srv/restore", Some(&damaged)),
                Restored::of("/srv/restore", None),
            ],
        );
    }
}
