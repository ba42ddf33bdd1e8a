//! e2e-sync: one snapshot under the publish order (its other modes: list, diff, history, prune, restore, verify).

use crate::cli::{SyncCli, SyncMode};
use crate::config::Job;
use crate::error::{fail, Code};
use crate::exec::{Cmd, Step};
use crate::filesystem::{self as fsys, btrfs, Kind};
use crate::manifest;
use crate::partial;
use crate::progress::{
    finish_progress, notify_status, print_json, print_result, progress_reporter,
};
use crate::snapshots::{self, INFLIGHT, PRUNING};
use crate::stack::grow::auto_grow;
use crate::stack::{lock, with_stack, Ctx};
use crate::timefmt;
use crate::unchanged;
use anyhow::Result;
use std::path::PathBuf;

pub fn sync(cli: SyncCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let mut job = ctx.job()?;
    let mode = cli.mode();
    if let Some(stamp) = &cli.from_copy {
        job.container.file = from_copy(&ctx, mode, &job, stamp)?;
    }
    let _lock = lock(&ctx)?;
    ctx.accept_rollback.set(cli.accept_rollback);
    let json = cli.json;
    match mode {
        SyncMode::Restore { from, target } => {
            super::restore::restore(&ctx, &job, from, target, cli.unchecked, json)
        }
        SyncMode::Verify(snap) => super::verify::verify(&ctx, &job, snap, json),
        SyncMode::List => super::list::list(&ctx, &job, json),
        SyncMode::Diff { old, new } => super::diff::diff(&ctx, &job, old, new, json),
        SyncMode::History(path) => super::history::history(&ctx, &job, path, json),
        SyncMode::Prune => super::prune::prune(&ctx, &job, cli.preview),
        SyncMode::Snapshot => snapshot(&ctx, job, &cli),
    }
}

/// One snapshot under the publish order, then its record and the prune.
fn snapshot(ctx: &Ctx, mut job: Job, cli: &SyncCli) -> Result<Option<PathBuf>> {
    // The lists are read once, before anything opens: a bad one changes nothing.
    job.sync.paths = job.sync.all_paths()?;
    if job.sync.paths.is_empty() {
        return Err(fail(
            Code::Config,
            format!(
                "{}: sync.paths: required but not set (or give --source PATH, or lists in sync.files_from)",
                job.origin
            ),
        ));
    }
    job.container.create |= cli.create;
    job.sync.skip_unchanged |= cli.skip_unchanged;
    let (dest, unread, summary) = with_stack(ctx, &job, false, |stack| {
        if !cli.no_grow {
            auto_grow(ctx, &job, stack)?;
        }
        let published = backup(ctx, &job, stack.fs)?;
        let dest = published.dest.clone();
        if let Some(since) = &published.unchanged_since {
            // Nothing new: the latest snapshot is the result; nothing to record or prune.
            crate::notice!(
                "nothing changed since snapshot {since}: no new snapshot (sync.skip_unchanged); this run is recorded beside it"
            );
            let summary =
                (cli.json && !ctx.run.is_dry()).then(|| Summary::of(&ctx.paths.fs, &published));
            return Ok((dest, 0, summary));
        }
        ctx.record_history(&job, &published.stamp, &dest)?;
        if !cli.no_prune && ctx.consistent.get() {
            let new = (published.stamp.as_str(), published.now);
            super::prune::after_sync(ctx, &job, stack.fs, &published.before, new)?;
        }
        notify_status(&format!("snapshot {} done", dest.display()));
        // (read while the container is open: the figures come from the run's log inside it)
        let summary =
            (cli.json && !ctx.run.is_dry()).then(|| Summary::of(&ctx.paths.fs, &published));
        Ok((dest, published.unread.len(), summary))
    })?;
    if let Some(s) = &summary {
        print_json(s)?;
    }
    if unread > 0 {
        // Published, recorded and pruned like any other: the path is the result all the same.
        if summary.is_none() {
            print_result(&dest);
        }
        return Err(fail(
            Code::Incomplete,
            format!(
                "snapshot {} is incomplete: {unread} source path(s) could not be read (see the warnings; e2e-sync --list marks it, and its record is manifests/{}.incomplete in the container)",
                dest.display(),
                dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ),
        ));
    }
    Ok(summary.is_none().then_some(dest))
}

/// `--from-copy STAMP`: the copy's path in the job's remote directory, after the checks that it
/// can be read in place of the live container (a read-only mode; the job not open: the open stack
/// would be the live container's).
fn from_copy(ctx: &Ctx, mode: SyncMode, job: &Job, stamp: &str) -> Result<String> {
    if timefmt::parse_stamp(stamp).is_none() {
        return Err(fail(
            Code::Config,
            format!("--from-copy {stamp:?}: not a copy's stamp (YYYY-MM-DDTHH:MM:SSZ, as the server's history/ lists them)"),
        ));
    }
    if !mode.reads_only() {
        return Err(fail(
            Code::Config,
            "--from-copy reads a copy: give it with --list, --restore, --verify, --diff or --history (a backup goes to the live container only)",
        ));
    }
    let p = &ctx.paths;
    if ctx.fs_mounted() || p.kernel.dm_slaves(&p.dm_name).is_some() {
        return Err(fail(
            Code::Locked,
            format!(
                "job {} is open: close it first (e2e-close {}); --from-copy opens the copy in its place",
                job.name, job.name
            ),
        ));
    }
    Ok(format!(
        "{}{}/{stamp}.luks",
        crate::stack::COPIES,
        job.container.file
    ))
}

/// A sync's result as `e2e-sync --json` prints it (docs/contract.md).
#[derive(Debug, serde::Serialize)]
struct Summary {
    snapshot: PathBuf,
    stamp: String,
    complete: bool,
    /// True: the run found nothing changed and made no snapshot; `snapshot` and `stamp` name the
    /// latest one, which the source still matches (`sync.skip_unchanged`).
    unchanged: bool,
    /// The source paths not read, why, and what stands in (stale or missing).
    unread: Vec<UnreadJson>,
    /// Source files deleted while the run read the source (rsync: "file has vanished").
    vanished: usize,
    #[serde(flatten)]
    run: crate::summary::RunStats,
}

#[derive(Debug, serde::Serialize)]
struct UnreadJson {
    path: String,
    why: String,
    stand: &'static str,
}

impl Summary {
    fn of(fs: &std::path::Path, p: &Published) -> Self {
        Summary {
            snapshot: p.dest.clone(),
            stamp: p.stamp.clone(),
            complete: p.unread.is_empty(),
            unchanged: p.unchanged_since.is_some(),
            unread: p
                .unread
                .iter()
                .map(|(u, s)| UnreadJson {
                    path: u.path.clone(),
                    why: u.why.clone(),
                    stand: s.word(),
                })
                .collect(),
            vanished: p.vanished,
            // An unchanged run ran no rsync of its own: no figures.
            run: match p.unchanged_since {
                Some(_) => Default::default(),
                None => crate::summary::of_log(&snapshots::log_path(fs, &p.stamp)),
            },
        }
    }
}

/// What [`backup`] published: the new snapshot and the snapshots that were there before it.
pub(super) struct Published {
    dest: PathBuf,
    stamp: String,
    now: i64,
    before: Vec<(String, i64)>,
    /// The source paths rsync could not read, and what stands in for each (empty: complete).
    unread: partial::StandIns,
    /// Source files that vanished between rsync's listing and its reading them.
    vanished: usize,
    /// Set when nothing changed (`sync.skip_unchanged`): nothing was published, `dest` and `stamp`
    /// are this snapshot's, and the run was recorded beside it.
    unchanged_since: Option<String>,
}

/// The publish order. Nothing that points at a snapshot may become durable before the snapshot's
/// data and manifest (rsync does not fsync; ext4 commits metadata every 5 s, data later), so:
///
/// 1. rsync into the work tree (ext4: `<stamp>.inflight`; btrfs: `current`), write
///    `manifests/<stamp>.sha256`;
/// 2. flush (syncfs): the data and the manifest are on the server;
/// 3. publish `<stamp>` (ext4: rename `<stamp>.inflight` → `<stamp>`; btrfs: a read-only snapshot
///    of `current`, made in one transaction), then `latest.tmp` → `latest`;
/// 4. flush: the snapshot and `latest` are durable;
/// 5. (caller) record {stamp, manifest hash, LUKS UUID} on the client;
/// 6. (caller, `prune::after_sync`) only then delete old snapshots, and flush again.
///
/// A cut before 4 leaves the previous `latest` and every older snapshot as they were; a cut after it
/// leaves a complete new snapshot. Before rsync and before each rename the run checks that `fs/` is
/// still the container's filesystem (an `e2e-close --force` or a lost mount must not turn the rest of
/// the run into plaintext writes to the client's /run).
pub(super) fn backup(ctx: &Ctx, job: &Job, kind: Kind) -> Result<Published> {
    let run = &ctx.run;
    let fs = ctx.paths.fs.as_path();
    let snaps = fs.join("snapshots");
    let (stamps, leftovers) = snapshots::scan(fs);
    // A crashed run's .inflight is incomplete: never a link-dest, always removed; a crashed prune's
    // .prune was already on its way out.
    let mut steps = Vec::new();
    for l in &leftovers {
        steps.push(Step::run(snapshots::discard(kind, &snaps.join(l))));
        if let Some(s) = l.strip_suffix(INFLIGHT) {
            let m = manifest::path(fs, s);
            for ext in [
                "sha256.tmp",
                "todo.tmp",
                "part.tmp",
                "incomplete.tmp",
                "incomplete",
            ] {
                steps.push(Step::run(Cmd::rm_f(m.with_extension(ext))));
            }
        } else if let Some(s) = l.strip_suffix(PRUNING) {
            steps.push(Step::run(Cmd::rm_f(manifest::path(fs, s))));
            steps.push(Step::run(Cmd::rm_f(partial::record_path(fs, s))));
        }
    }
    steps.push(Step::run(
        Cmd::new("install")
            .args(["-d", "-m", "0700"])
            .arg(&snaps)
            .arg(fs.join("logs"))
            .arg(fs.join(manifest::MANIFESTS)),
    ));
    ctx.in_container(steps)?;
    let mut now = timefmt::now();
    while stamps.iter().any(|s| s.1 == now) {
        now += 1; // two runs within one second
    }
    let stamp = timefmt::format_stamp(now);
    let link = snapshots::latest(fs).or_else(|| stamps.last().map(|s| s.0.clone()));
    if run.is_dry() && !ctx.fs_mounted() {
        run.note("the container is not open yet, so no --link-dest and no pruning are shown");
    }
    if job.sync.skip_unchanged {
        if let Some(base) = unchanged_base(ctx, job)? {
            record_unchanged(ctx, &base, &stamp)?;
            return Ok(Published {
                dest: snaps.join(&base),
                stamp: base.clone(),
                now,
                before: stamps,
                unread: Vec::new(),
                vanished: 0,
                unchanged_since: Some(base),
            });
        }
    }
    if kind == Kind::Btrfs {
        // The working tree, made by a container's first run (and again should it be gone).
        let work = snapshots::work_dir(kind, fs, &stamp);
        if run.is_dry() && !ctx.fs_mounted() {
            run.note("a real run first creates the working tree current/ if it is missing:");
        }
        if std::fs::symlink_metadata(&work).is_err() {
            ctx.in_container(vec![Step::run(btrfs::create(&work))])?;
        }
    }
    let cmd = snapshots::rsync_backup(&job.sync, fs, &stamp, link.as_deref(), kind);
    let out = run.run_streaming(&cmd, progress_reporter())?;
    finish_progress();
    let vanished = partial::vanished(&out.stderr);
    if vanished > 0 {
        crate::notice!(
            "{vanished} source file(s) vanished during the transfer (deleted after rsync listed them; rsync exit {}); snapshot kept",
            out.code
        );
    }
    // Exit 23: what stands in for each unread source path, and the snapshot's record of them, go
    // in before the manifest is made and the snapshot published.
    let unread = if out.code == 23 {
        let (mut steps, entries) =
            partial::stand_in(&out.stderr, fs, &stamp, link.as_deref(), kind)?;
        let record = partial::record_path(fs, &stamp);
        steps.push(ctx.write_record(&record, &partial::render(&entries))?);
        ctx.in_container(steps)?;
        entries
    } else {
        Vec::new()
    };
    // 1. The checksum manifest (inside the container) is complete before the snapshot is: a snapshot
    // never exists without one. A read error here fails the run; the .inflight goes next run.
    manifest::build(run, fs, &stamp, link.as_deref(), kind)?;
    // 2. - 4.
    let dest = snaps.join(&stamp);
    let latest_tmp = fs.join("latest.tmp");
    ctx.in_container(vec![
        Step::note("publish order: flush data and manifest before anything points at them"),
        Step::run(fsys::sync_fs(fs)),
        Step::run(match kind {
            Kind::Ext4 => Cmd::new("mv")
                .arg("-T")
                .arg(snaps.join(format!("{stamp}{INFLIGHT}")))
                .arg(&dest),
            Kind::Btrfs => btrfs::snapshot(&snapshots::work_dir(kind, fs, &stamp), &dest),
        }),
        // `latest` moves atomically: a symlink beside it, then renamed over.
        Step::run(
            Cmd::new("ln")
                .arg("-sfn")
                .arg(format!("snapshots/{stamp}"))
                .arg(&latest_tmp),
        ),
        Step::run(
            Cmd::new("mv")
                .arg("-T")
                .arg(&latest_tmp)
                .arg(fs.join("latest")),
        ),
        Step::run(fsys::sync_fs(fs)),
    ])?;
    Ok(Published {
        dest,
        stamp,
        now,
        before: stamps,
        unread,
        vanished,
        unchanged_since: None,
    })
}

/// `sync.skip_unchanged`: the latest snapshot when the source has not changed since it (see
/// [`crate::unchanged`]). None when there is no complete latest snapshot, when the probe finds a
/// difference, or when it cannot tell (a dry run; any error: the backup then runs as usual).
fn unchanged_base(ctx: &Ctx, job: &Job) -> Result<Option<String>> {
    let fs = ctx.paths.fs.as_path();
    let Some(latest) = snapshots::latest(fs) else {
        return Ok(None);
    };
    if partial::unread_count(fs, &latest).is_some() {
        ctx.run
            .note("skip_unchanged: the latest snapshot is incomplete, so this run makes a new one");
        return Ok(None);
    }
    let probe = snapshots::rsync_probe(&job.sync, fs, &latest);
    match ctx.run.first_line(&probe, unchanged::is_change)? {
        Some(None) => Ok(Some(latest)),
        Some(Some(line)) => {
            crate::progress::info(&format!("changed since {latest}: {line}"));
            Ok(None)
        }
        None => {
            ctx.run.note("skip_unchanged: a run that finds no difference above stops here, recording itself beside the latest snapshot");
            Ok(None)
        }
    }
}

/// Add run `stamp` to the record beside snapshot `base`: the whole record rewritten beside it,
/// renamed over, flushed.
fn record_unchanged(ctx: &Ctx, base: &str, stamp: &str) -> Result<()> {
    let fs = ctx.paths.fs.as_path();
    let text = unchanged::render(&unchanged::runs(fs, base), stamp);
    let rename = ctx.write_record(&unchanged::record_path(fs, base), &text)?;
    ctx.in_container(vec![rename, Step::run(fsys::sync_fs(fs))])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `e2e-sync --json`'s schema, pinned: a run with an unread and a vanished file, its figures
    /// from the run's log; and a run that found nothing changed.
    #[test]
    fn json_summary_of_a_run() {
        let d = tempfile::tempdir().unwrap();
        let fs = d.path();
        std::fs::create_dir(fs.join("logs")).unwrap();
        let stamp = "2026-12-02T03:00:00Z";
        std::fs::write(
            snapshots::log_path(fs, stamp),
            "2026/12/02 03:00:00 [7] building file list\n\
             2026/12/02 03:00:41 [7] Number of files: 1,203 (reg: 1,190, dir: 13)\n\
             2026/12/02 03:00:41 [7] Total file size: 1,100,003 bytes\n\
             2026/12/02 03:00:41 [7] Total transferred file size: 100,003 bytes\n",
        )
        .unwrap();
        let unread = partial::parse(
            "rsync: [sender] read errors mapping \"/data/bad\": Input/output error (5)\n",
        )
        .unwrap();
        let run = Published {
            dest: fs.join("snapshots").join(stamp),
            stamp: stamp.into(),
            now: 0,
            before: Vec::new(),
            unread: vec![(unread[0].clone(), partial::Stand::Stale)],
            vanished: 2,
            unchanged_since: None,
        };
        let mut s = serde_json::to_value(Summary::of(fs, &run)).unwrap();
        s["snapshot"] = "/run/e2e-backup/home/fs/snapshots/2026-12-02T03:00:00Z".into();
        let base = "2026-12-01T03:00:00Z";
        let skipped = Published {
            dest: PathBuf::from("/run/e2e-backup/home/fs/snapshots").join(base),
            stamp: base.into(),
            now: 0,
            before: Vec::new(),
            unread: Vec::new(),
            vanished: 0,
            unchanged_since: Some(base.into()),
        };
        let u = serde_json::to_value(Summary::of(fs, &skipped)).unwrap();
        crate::cmd::check_json("sync", &[s, u]);
    }
}
