//! e2e-sync --verify: re-read a snapshot and compare it with its manifest.

use crate::config::Job;
use crate::error::{fail, Code};
use crate::manifest;
use crate::progress::print_json;
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// `e2e-sync --verify SNAPSHOT`: read-only open, re-checksum the snapshot into the client's run
/// directory (never the server), compare with the manifest written when it was made.
pub(crate) fn verify(ctx: &Ctx, job: &Job, spec: &str, json: bool) -> Result<Option<PathBuf>> {
    with_stack(ctx, job, true, |_| {
        let fs = ctx.paths.fs.as_path();
        if ctx.run.is_dry() && !ctx.fs_mounted() {
            ctx.run
                .note("the container is not open yet: the snapshot and its manifest are not shown");
            return Ok(None);
        }
        let stamp = snapshots::whole(fs, spec, "--verify")?;
        let dir = fs.join("snapshots").join(&stamp);
        let want = if ctx.run.is_dry() {
            None
        } else {
            Some(manifest::of_snapshot(fs, &stamp)?)
        };
        let now = ctx.paths.dir.join("verify.sha256");
        // 123: sha256sum could not read some file: reported below, not a crash of the check.
        let out = ctx
            .run
            .run(&manifest::checksum_cmd(&dir, &now).ok_code(123).ok_code(1))?;
        let Some(want) = want else {
            return Ok(None);
        };
        let have = std::fs::read(&now);
        let _ = std::fs::remove_file(&now);
        let have = manifest::parse(&have?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("re-reading {stamp}"))?;
        let unreadable: Vec<&str> = out
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let d = manifest::compare(&want, &have);
        if json {
            let paths = |v: &[Vec<u8>]| -> Vec<String> {
                v.iter().map(|n| manifest::source_path(n)).collect()
            };
            let report = Verified {
                snapshot: dir.clone(),
                stamp: stamp.clone(),
                ok: d.is_empty() && unreadable.is_empty(),
                files: want.len(),
                changed: paths(&d.changed),
                missing: paths(&d.missing),
                extra: paths(&d.extra),
                read_errors: unreadable.iter().map(|l| l.to_string()).collect(),
            };
            print_json(&report)?;
        }
        for (what, names) in [
            ("changed", &d.changed),
            ("missing", &d.missing),
            ("extra", &d.extra),
        ] {
            for n in names {
                crate::progress::stderr_line(
                    crate::progress::Level::Warning,
                    &format!("{what}: {}", manifest::show_name(n)),
                );
            }
        }
        for l in &unreadable {
            crate::progress::stderr_line(
                crate::progress::Level::Warning,
                &format!("read error: {l}"),
            );
        }
        if d.is_empty() && unreadable.is_empty() {
            crate::progress::info(&format!(
                "verified {stamp}: {} files match its manifest",
                want.len()
            ));
            return Ok((!json).then_some(dir));
        }
        Err(fail(
            Code::Runtime,
            format!(
                "snapshot {stamp} does not match its manifest: {} changed, {} missing, {} extra, {} read errors (of {} files)",
                d.changed.len(),
                d.missing.len(),
                d.extra.len(),
                unreadable.len(),
                want.len()
            ),
        ))
    })
}

/// `--verify --json` (docs/contract.md): what was found, also when it does not match (exit 1).
#[derive(Debug, serde::Serialize)]
struct Verified {
    snapshot: PathBuf,
    stamp: String,
    ok: bool,
    /// Files its manifest lists.
    files: usize,
    changed: Vec<String>,
    missing: Vec<String>,
    extra: Vec<String>,
    read_errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    /// `--verify --json`'s schema, pinned (a mismatch: the object is printed before exit 1).
    #[test]
    fn json_report() {
        let r = super::Verified {
            snapshot: "/run/e2e-backup/home/fs/snapshots/2026-12-02T03:00:00Z".into(),
            stamp: "2026-12-02T03:00:00Z".into(),
            ok: false,
            files: 1190,
            changed: vec!["/home/a/report.pdf".into()],
            missing: vec!["/home/a/gone".into()],
            extra: vec![],
            read_errors: vec!["sha256sum: ./home/a/bad: Input/output error".into()],
        };
        crate::cmd::check_json("verify", &r);
    }
}
