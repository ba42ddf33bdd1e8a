//! Retention: step 6 of a sync's publish order, and `e2e-sync --prune` on its own, which shows
//! every snapshot with the rules that keep it (or "remove") before it deletes anything; with
//! `--preview` it opens read-only and deletes nothing.

use crate::config::{Job, Retention};
use crate::error::{fail, Code};
use crate::exec::{Cmd, Step};
use crate::filesystem::{self as fsys, Kind};
use crate::manifest;
use crate::partial;
use crate::progress::print_stdout;
use crate::retention::{self, Verdict};
use crate::snapshots::{self, PRUNING};
use crate::stack::{with_stack, Ctx};
use crate::timefmt;
use crate::unchanged;
use anyhow::Result;
use std::path::PathBuf;

/// The verdicts on `stamps` (as (name, time)), oldest first; `protect` (the snapshot `latest` names,
/// or the one a sync just made) is kept whatever the rules say.
pub(crate) fn verdicts(
    stamps: &[(String, i64)],
    policy: &Retention,
    protect: Option<&str>,
) -> Vec<Verdict> {
    let mut v = retention::decide(stamps, policy);
    v.reverse();
    for d in &mut v {
        if Some(d.stamp.as_str()) == protect && d.rules.is_empty() {
            d.rules.push("latest".into());
        }
    }
    v
}

/// One line per snapshot: `keep<TAB>STAMP<TAB>rules` or `remove<TAB>STAMP<TAB>no rule keeps it`.
pub(crate) fn table(v: &[Verdict]) -> String {
    v.iter()
        .map(|d| match d.rules.is_empty() {
            true => format!("remove\t{}\tno rule keeps it\n", d.stamp),
            false => format!("keep\t{}\t{}\n", d.stamp, d.rules.join(", ")),
        })
        .collect()
}

/// A clock behind the newest snapshot makes "days ago" meaningless: refuse to decide (`Err`: why).
fn clock_behind(stamps: &[(String, i64)]) -> Option<String> {
    let newest = stamps.iter().map(|s| s.1).max()?;
    let now = timefmt::now();
    (now < newest).then(|| {
        format!(
            "this host's clock ({}) is earlier than the newest snapshot ({}): not pruning until it is right",
            timefmt::format_stamp(now),
            timefmt::format_stamp(newest)
        )
    })
}

/// Delete the snapshots no rule keeps. Each goes by rename to `.prune` first (a cut mid-`rm` leaves
/// a name the next run recognises and finishes), then one flush for all.
fn remove(ctx: &Ctx, kind: Kind, v: &[Verdict]) -> Result<usize> {
    let fs = ctx.paths.fs.as_path();
    let snaps = fs.join("snapshots");
    let mut steps = Vec::new();
    let doomed: Vec<&Verdict> = v.iter().filter(|d| d.rules.is_empty()).collect();
    for d in &doomed {
        let s = &d.stamp;
        let gone = snaps.join(format!("{s}{PRUNING}"));
        steps.push(Step::run(
            Cmd::new("mv").arg("-T").arg(snaps.join(s)).arg(&gone),
        ));
        steps.push(Step::run(snapshots::discard(kind, &gone)));
        steps.push(Step::run(Cmd::rm_f(manifest::path(fs, s))));
        steps.push(Step::run(Cmd::rm_f(partial::record_path(fs, s))));
        let checks = unchanged::record_path(fs, s);
        steps.push(Step::run(Cmd::rm_f(checks.with_extension("unchanged.tmp"))));
        steps.push(Step::run(Cmd::rm_f(checks)));
    }
    if !doomed.is_empty() {
        steps.push(Step::run(fsys::sync_fs(fs)));
    }
    ctx.in_container(steps)?;
    Ok(doomed.len())
}

/// Step 6 of a sync's publish order (see `cmd::sync::backup`): once the new snapshot `stamp` is
/// durable and recorded. `before`: the snapshots that were there before it.
pub(super) fn after_sync(
    ctx: &Ctx,
    job: &Job,
    kind: Kind,
    before: &[(String, i64)],
    (stamp, now): (&str, i64),
) -> Result<()> {
    if let Some(why) = clock_behind(before) {
        crate::warning!("{why}");
        return Ok(());
    }
    let mut all = before.to_vec();
    all.push((stamp.to_string(), now));
    remove(ctx, kind, &verdicts(&all, &job.retention, Some(stamp)))?;
    Ok(())
}

/// `e2e-sync --prune [--preview]`: print the verdict on every snapshot (stdout), then delete the
/// removed ones (not with `--preview`, which opens read-only).
pub(crate) fn prune(ctx: &Ctx, job: &Job, preview: bool) -> Result<Option<PathBuf>> {
    with_stack(ctx, job, preview, |stack| {
        let fs = ctx.paths.fs.as_path();
        if ctx.run.is_dry() && !ctx.fs_mounted() {
            ctx.run.note(
                "the container is not open yet: the snapshots and the verdicts are not shown",
            );
            return Ok(None);
        }
        if !ctx.consistent.get() {
            return Err(fail(
                Code::Refused,
                "this container failed the check against what this host last wrote and was accepted with --accept-rollback: nothing pruned (pruning could delete what is left of the history)",
            ));
        }
        let (stamps, _) = snapshots::scan(fs);
        if let Some(why) = clock_behind(&stamps) {
            return Err(fail(Code::Config, why));
        }
        let v = verdicts(&stamps, &job.retention, snapshots::latest(fs).as_deref());
        if ctx.run.is_dry() {
            for line in table(&v).lines() {
                ctx.run.note(&line.replace('\t', " "));
            }
        } else {
            print_stdout(&table(&v));
        }
        if preview {
            return Ok(None);
        }
        let n = remove(ctx, stack.fs, &v)?;
        crate::notice!(
            "pruned {n} of {} snapshot(s) per [retention] of {}",
            v.len(),
            job.origin
        );
        Ok(None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{at_ymdh, format_stamp};

    #[test]
    fn table_protects_latest_and_names_rules() {
        let at = |d| {
            let t = at_ymdh(2024, 3, d, 12);
            (format_stamp(t), t)
        };
        let s: Vec<_> = (1..=4).map(at).collect();
        let policy = Retention {
            keep_daily: 2,
            ..Retention::default()
        };
        // `latest` names the oldest (a restored-over container, say): kept by its own rule.
        let v = verdicts(&s, &policy, Some(&s[0].0));
        assert_eq!(
            table(&v),
            format!(
                "keep\t{}\tlatest\nremove\t{}\tno rule keeps it\nkeep\t{}\tdaily 2\nkeep\t{}\tdaily 1\n",
                s[0].0, s[1].0, s[2].0, s[3].0
            )
        );
    }
}
