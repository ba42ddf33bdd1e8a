//! e2e-sync --list: the snapshots in the container, oldest first; an incomplete one (see
//! [`crate::partial`]) has a second, tab-separated field saying so. `--json`: one array of
//! objects, the schema in docs/contract.md.

use crate::config::Job;
use crate::partial;
use crate::progress::print_report;
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use crate::summary::{self, RunStats};
use crate::unchanged;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// One snapshot as `--list --json` shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Listed {
    pub stamp: String,
    /// Seconds since the epoch (UTC), from the stamp.
    pub time: i64,
    pub latest: bool,
    /// False: some source paths could not be read (see `unread` and the snapshot's record).
    pub complete: bool,
    pub unread: usize,
    /// The last run that found the source unchanged since this snapshot and so made none
    /// (`sync.skip_unchanged`), and how many runs did.
    pub unchanged_through: Option<String>,
    pub unchanged_runs: usize,
    #[serde(flatten)]
    pub run: RunStats,
}

/// The snapshots under the container's filesystem `fs`, oldest first.
pub(crate) fn listing(fs: &Path) -> Vec<Listed> {
    let (stamps, _) = snapshots::scan(fs);
    let latest = snapshots::latest(fs);
    stamps
        .into_iter()
        .map(|(stamp, time)| {
            let unread = partial::unread_count(fs, &stamp);
            let checks = unchanged::runs(fs, &stamp);
            Listed {
                unchanged_through: checks.last().cloned(),
                unchanged_runs: checks.len(),
                latest: latest.as_deref() == Some(stamp.as_str()),
                complete: unread.is_none(),
                unread: unread.unwrap_or(0),
                run: summary::of_log(&snapshots::log_path(fs, &stamp)),
                time,
                stamp,
            }
        })
        .collect()
}

/// The text form: a stamp per line, a tab and a note for an incomplete snapshot or one later runs
/// found unchanged.
pub(crate) fn text(list: &[Listed]) -> String {
    list.iter()
        .map(|l| match (l.complete, &l.unchanged_through) {
            (false, _) => format!(
                "{}\tincomplete: {} source path(s) not read\n",
                l.stamp, l.unread
            ),
            (true, Some(last)) => format!(
                "{}\tunchanged through {last} ({} later run(s) made no new snapshot)\n",
                l.stamp, l.unchanged_runs
            ),
            (true, None) => format!("{}\n", l.stamp),
        })
        .collect()
}

pub(crate) fn list(ctx: &Ctx, job: &Job, json: bool) -> Result<Option<PathBuf>> {
    // Printed after the stack is closed: nothing the reader does can leave it open.
    let list = with_stack(ctx, job, true, |_| Ok(listing(&ctx.paths.fs)))?;
    print_report(json, list.as_slice(), text)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON schema, pinned: tests/golden/list.json (E2E_UPDATE_GOLDEN=1 rewrites it).
    #[test]
    fn json_listing_of_a_container_tree() {
        let d = tempfile::tempdir().unwrap();
        let fs = d.path();
        let (a, b) = ("2026-12-01T03:00:00Z", "2026-12-02T03:00:00Z");
        for dir in ["snapshots", "manifests", "logs"] {
            std::fs::create_dir(fs.join(dir)).unwrap();
        }
        std::fs::create_dir(fs.join("snapshots").join(a)).unwrap();
        std::fs::create_dir(fs.join("snapshots").join(b)).unwrap();
        std::fs::create_dir(fs.join("snapshots").join(format!("{b}.inflight"))).unwrap();
        std::os::unix::fs::symlink(format!("snapshots/{b}"), fs.join("latest")).unwrap();
        std::fs::write(
            snapshots::log_path(fs, a),
            "2026/12/01 03:00:00 [7] building file list\n\
             2026/12/01 03:01:40 [7] Number of files: 1,203 (reg: 1,190, dir: 13)\n\
             2026/12/01 03:01:40 [7] Total file size: 1,100,003 bytes\n\
             2026/12/01 03:01:40 [7] Total transferred file size: 100,003 bytes\n",
        )
        .unwrap();
        std::fs::write(
            partial::record_path(fs, b),
            "# comment\nstale\t/data/x\tInput/output error (5)\nmissing\t/data/y\tPermission denied (13)\n",
        )
        .unwrap();
        std::fs::write(
            unchanged::record_path(fs, a),
            unchanged::render(&["2026-12-01T09:00:00Z".into()], "2026-12-01T15:00:00Z"),
        )
        .unwrap();
        let list = listing(fs);
        assert_eq!(
            text(&list),
            format!("{a}\tunchanged through 2026-12-01T15:00:00Z (2 later run(s) made no new snapshot)\n{b}\tincomplete: 2 source path(s) not read\n")
        );
        crate::cmd::check_json("list", &list);
    }
}
