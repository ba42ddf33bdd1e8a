//! Snapshots inside the container: rsync with `--link-dest`, inflight → rename → `latest`, retention,
//! restore, progress parsing.

use crate::config::{Retention, Sync};
use crate::error::{Code, Fail};
use crate::exec::Cmd;
use crate::timefmt::{civil, iso_week, parse_stamp};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

pub const INFLIGHT: &str = ".inflight";
/// A snapshot being pruned: renamed first so a crash mid-delete never leaves a half snapshot listed.
pub const PRUNING: &str = ".prune";

/// Snapshot stamps in `fs/snapshots`, oldest first, and leftovers (`*.inflight`, `*.prune`) to remove.
pub fn scan(fs: &Path) -> (Vec<(String, i64)>, Vec<String>) {
    let mut stamps = Vec::new();
    let mut leftovers = Vec::new();
    if let Ok(rd) = std::fs::read_dir(fs.join("snapshots")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = parse_stamp(&name) {
                stamps.push((name, t));
            } else if name.ends_with(INFLIGHT) || name.ends_with(PRUNING) {
                leftovers.push(name);
            }
        }
    }
    stamps.sort_by_key(|s| s.1);
    leftovers.sort();
    (stamps, leftovers)
}

/// The stamp `latest` points to, if that snapshot exists.
pub fn latest(fs: &Path) -> Option<String> {
    let target = std::fs::read_link(fs.join("latest")).ok()?;
    let name = target.strip_prefix("snapshots").ok()?.to_str()?.to_string();
    (parse_stamp(&name).is_some() && fs.join("snapshots").join(&name).is_dir()).then_some(name)
}

/// The rsync log of snapshot `stamp`, inside the container (its stats feed `--list --json`).
pub fn log_path(fs: &Path, stamp: &str) -> PathBuf {
    fs.join("logs").join(format!("{stamp}.log"))
}

/// The options every backup rsync and its probe share: what is compared and how.
fn rsync_common(sync: &Sync) -> Cmd {
    let mut c = Cmd::new("rsync").args([
        "-aHAX",
        "--numeric-ids",
        "--delete",
        "--delete-excluded",
        "--relative",
        // Runs of zeros become holes: a sparse source (a VM image, a 5 GiB file that is
        // mostly holes) stays sparse in the container, which is sparse on the server too.
        "--sparse",
        // The quick check compares mtimes to the nanosecond: by default rsync compares whole
        // seconds, so a file rewritten at the same size within the second the previous run
        // saw it was taken as unchanged and hard-linked, old contents and all.
        "--modify-window=-1",
    ]);
    // The run's own mounts (the container inside itself, the sshfs view of the server) are
    // never part of a backup, whatever sync.paths says (paths = ["/"]).
    c = c.arg(format!("--exclude={}/", crate::paths::RUN_BASE));
    for e in &sync.exclude {
        c = c.arg(format!("--exclude={e}"));
    }
    for e in &sync.exclude_from {
        c = c.arg(format!("--exclude-from={}", e.display()));
    }
    c
}

/// The backup rsync. Sources are transferred with `--relative` so `/home` and `/var/lib/x` keep
/// their full paths inside the snapshot and cannot collide. `--link-dest` is relative to the
/// destination, hence `../STAMP`.
pub fn rsync_backup(sync: &Sync, fs: &Path, stamp: &str, link_dest: Option<&str>) -> Cmd {
    let mut c = rsync_common(sync)
        .args(["--info=progress2", "--stats"])
        // No data between rsync's processes for 10 min (a source or destination that hangs):
        // rsync gives up instead of holding the job's lock forever.
        .arg("--timeout=600")
        .arg(format!("--log-file={}", log_path(fs, stamp).display()));
    if let Some(l) = link_dest {
        c = c.arg(format!("--link-dest=../{l}"));
    }
    let dest = format!(
        "{}/",
        fs.join("snapshots")
            .join(format!("{stamp}{INFLIGHT}"))
            .display()
    );
    let c = c
        .args(&sync.rsync_args)
        .args(&sync.paths)
        .arg(dest)
        .ok_code(24);
    // 23: some files were not transferred; the run sorts out whether they were unread sources.
    let c = if sync.allow_partial {
        c.handled_code(23)
    } else {
        c
    };
    c.on_fail(|_, out| rsync_failure(out))
}

/// The probe of `sync.skip_unchanged`: the same comparison as [`rsync_backup`] against snapshot
/// `latest` itself, as a dry run (`-n`) that itemizes each difference (`-i`) and writes nothing.
/// See [`crate::unchanged`].
pub fn rsync_probe(sync: &Sync, fs: &Path, latest: &str) -> Cmd {
    rsync_common(sync)
        .args(["--dry-run", "--itemize-changes", "--timeout=600"])
        .args(&sync.rsync_args)
        .args(&sync.paths)
        .arg(format!("{}/", fs.join("snapshots").join(latest).display()))
}

/// rsync's own "rsync: …" line names what failed; its closing "rsync error: … (code N)" does not.
pub(crate) fn rsync_failure(out: &str) -> Option<Fail> {
    if out.contains("No space left on device") {
        return Some(Fail::new(
            Code::NoSpace,
            "container is full: grow it (e2e-grow JOB --by SIZE) or raise container.auto_grow_free/max_size",
        ));
    }
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("rsync: ") || l.starts_with("rsync: ["))
        .map(|l| {
            Fail::new(
                Code::Runtime,
                format!("rsync failed: {}", l.trim_start_matches("rsync: ")),
            )
        })
}

/// The restore rsync: same attribute fidelity, nothing deleted at the target.
pub fn rsync_restore(src: &Path, target: &str) -> Cmd {
    Cmd::new("rsync")
        // --mkpath (rsync >= 3.2.3): create TARGET's missing parents, as a restore target often has.
        .args([
            "-aHAX",
            "--numeric-ids",
            "--mkpath",
            "--sparse",
            "--modify-window=-1",
            "--info=progress2",
        ])
        .arg(src)
        .arg(target)
        .ok_code(24)
        .on_fail(|_, out| rsync_failure(out))
}

/// `SNAPSHOT[/PATH]` with SNAPSHOT resolved: `latest` read from its symlink, a stamp checked.
pub struct Spec<'a> {
    pub stamp: String,
    /// PATH inside the snapshot ("" for the whole snapshot), `..` refused.
    pub rest: &'a str,
}

/// Parse `SNAPSHOT[/PATH]` (SNAPSHOT a stamp or `latest`) against the ext4 root `fs`.
pub fn parse_spec<'a>(fs: &Path, spec: &'a str) -> Result<Spec<'a>, Fail> {
    let (snap, rest) = spec.split_once('/').unwrap_or((spec, ""));
    let stamp = if snap == "latest" {
        latest(fs)
            .ok_or_else(|| Fail::new(Code::Config, "no snapshot yet: `latest` does not exist"))?
    } else if parse_stamp(snap).is_some() {
        snap.to_string()
    } else {
        return Err(Fail::new(
            Code::Config,
            format!("{snap:?} is not a snapshot: use `latest` or a stamp like 2024-01-31T02:00:00Z (see e2e-sync --list)"),
        ));
    };
    if rest.split('/').any(|c| c == "..") {
        return Err(Fail::new(
            Code::Config,
            format!("{spec:?}: \"..\" is not allowed"),
        ));
    }
    Ok(Spec { stamp, rest })
}

/// A whole snapshot (`latest` or a stamp, no PATH) that exists, for `--verify`, `--diff`: its stamp.
/// `flag` names the option in the error.
pub fn whole(fs: &Path, spec: &str, flag: &str) -> Result<String, Fail> {
    let stamp = match parse_spec(fs, spec.trim_end_matches('/'))? {
        Spec { stamp, rest: "" } => stamp,
        _ => {
            return Err(Fail::new(
                Code::Config,
                format!("{spec:?} is not a snapshot: {flag} takes `latest` or a stamp, no path (see e2e-sync --list)"),
            ))
        }
    };
    if !fs.join("snapshots").join(&stamp).is_dir() {
        return Err(Fail::new(
            Code::Config,
            format!("{stamp}: no such snapshot (see e2e-sync --list)"),
        ));
    }
    Ok(stamp)
}

/// Resolve `SNAPSHOT[/PATH]` to a path under `fs/snapshots`. A bare SNAPSHOT restores its contents
/// (`SNAPSHOT/`); in `SNAPSHOT/PATH` a trailing slash on PATH means "contents of PATH" as in rsync.
pub fn resolve_restore_source(fs: &Path, spec: &str) -> Result<PathBuf, Fail> {
    Ok(parse_spec(fs, spec)?.source(fs))
}

impl Spec<'_> {
    /// The path under `fs/snapshots` (see [`resolve_restore_source`]).
    pub fn source(&self, fs: &Path) -> PathBuf {
        let mut p = fs.join("snapshots").join(&self.stamp).into_os_string();
        p.push("/");
        p.push(self.rest);
        PathBuf::from(p)
    }
}

/// Which snapshots to keep (restic/borg semantics, UTC buckets). `stamps` as (name, time).
///
/// keep_last N keeps the N newest. keep_hourly/daily/weekly/monthly/yearly N keep, for each of the
/// N most recent hours/days/ISO weeks/months/years that have snapshots, the newest snapshot in it.
/// keep_within D keeps every snapshot made within D before the newest one. A snapshot is kept if
/// any rule keeps it. A policy of all zeros keeps everything.
pub fn select_keep(stamps: &[(String, i64)], p: &Retention) -> BTreeSet<String> {
    decide(stamps, p)
        .into_iter()
        .filter(|d| !d.rules.is_empty())
        .map(|d| d.stamp)
        .collect()
}

/// One snapshot's retention verdict: the rules that keep it (empty: it goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub stamp: String,
    /// e.g. "last 1", "daily 3" (the newest of the 3rd most recent day), "within 7d";
    /// "no retention set" when the policy keeps everything.
    pub rules: Vec<String>,
}

/// [`select_keep`] with its reasons, newest first: what `e2e-sync --prune` shows.
pub fn decide(stamps: &[(String, i64)], p: &Retention) -> Vec<Verdict> {
    let mut newest_first: Vec<&(String, i64)> = stamps.iter().collect();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut out: Vec<Verdict> = newest_first
        .iter()
        .map(|s| Verdict {
            stamp: s.0.clone(),
            rules: Vec::new(),
        })
        .collect();
    if *p == Retention::default() {
        for v in &mut out {
            v.rules.push("no retention set".into());
        }
        return out;
    }
    for (i, v) in out.iter_mut().enumerate().take(p.keep_last as usize) {
        v.rules.push(format!("last {}", i + 1));
    }
    // keep_within counts back from the newest snapshot, not from the clock (as restic does): a
    // host that has not backed up for a month still keeps that month's last week.
    if let (true, Some(newest)) = (p.keep_within > 0, newest_first.first().map(|s| s.1)) {
        let d = crate::timefmt::format_within(p.keep_within);
        for (v, s) in out.iter_mut().zip(&newest_first) {
            if s.1 >= newest - p.keep_within {
                v.rules.push(format!("within {d}"));
            }
        }
    }
    type Bucket = fn(i64) -> (i64, u32, u32, u32);
    let rules: [(&str, u32, Bucket); 5] = [
        ("hourly", p.keep_hourly, |t| {
            let (y, m, d, h) = civil(t);
            (y, m, d, h)
        }),
        ("daily", p.keep_daily, |t| {
            let (y, m, d, ..) = civil(t);
            (y, m, d, 0)
        }),
        ("weekly", p.keep_weekly, |t| {
            let (y, w) = iso_week(t);
            (y, w, 0, 0)
        }),
        ("monthly", p.keep_monthly, |t| {
            let (y, m, ..) = civil(t);
            (y, m, 0, 0)
        }),
        ("yearly", p.keep_yearly, |t| (civil(t).0, 0, 0, 0)),
    ];
    for (name, n, bucket) in rules {
        let mut seen = HashSet::new();
        for (v, s) in out.iter_mut().zip(&newest_first) {
            if seen.len() >= n as usize {
                break;
            }
            // The first (newest) snapshot met in a new bucket is that bucket's keeper.
            if seen.insert(bucket(s.1)) {
                v.rules.push(format!("{name} {}", seen.len()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{at_ymdh, format_stamp};

    fn at(y: i32, m: u8, d: u8, h: u8) -> (String, i64) {
        let t = at_ymdh(y, m, d, h);
        (format_stamp(t), t)
    }

    #[test]
    fn rsync_argv() {
        let s = Sync {
            paths: vec!["/home".into(), "/etc".into()],
            exclude: vec!["*.cache".into()],
            exclude_from: vec!["/etc/e2e-backup/x.exclude".into()],
            files_from: vec![],
            rsync_args: vec!["--one-file-system".into()],
            allow_partial: true,
            skip_unchanged: false,
        };
        let fs = Path::new("/run/e2e-backup/home/fs");
        let c = rsync_backup(&s, fs, "2024-01-02T03:04:05Z", Some("2024-01-01T03:04:05Z"));
        assert_eq!(
            c.argv(),
            [
                "rsync",
                "-aHAX",
                "--numeric-ids",
                "--delete",
                "--delete-excluded",
                "--relative",
                "--sparse",
                "--modify-window=-1",
                "--exclude=/run/e2e-backup/",
                "--exclude=*.cache",
                "--exclude-from=/etc/e2e-backup/x.exclude",
                "--info=progress2",
                "--stats",
                "--timeout=600",
                "--log-file=/run/e2e-backup/home/fs/logs/2024-01-02T03:04:05Z.log",
                "--link-dest=../2024-01-01T03:04:05Z",
                "--one-file-system",
                "/home",
                "/etc",
                "/run/e2e-backup/home/fs/snapshots/2024-01-02T03:04:05Z.inflight/",
            ]
        );
        assert!(c
            .script_line()
            .ends_with("|| case $? in 24) ;; *) false ;; esac"));
        let c = rsync_backup(&s, fs, "2024-01-02T03:04:05Z", None);
        assert!(!c.argv().iter().any(|a| a.starts_with("--link-dest")));
        // The probe compares exactly what the backup would, against the snapshot itself.
        let p = rsync_probe(&s, fs, "2024-01-01T03:04:05Z").argv();
        assert_eq!(p[..11], c.argv()[..11]);
        assert_eq!(
            p[11..],
            [
                "--dry-run",
                "--itemize-changes",
                "--timeout=600",
                "--one-file-system",
                "/home",
                "/etc",
                "/run/e2e-backup/home/fs/snapshots/2024-01-01T03:04:05Z/",
            ]
        );
        assert_eq!(
            rsync_restore(Path::new("/f/snapshots/S/home"), "/tmp/r").argv(),
            [
                "rsync",
                "-aHAX",
                "--numeric-ids",
                "--mkpath",
                "--sparse",
                "--modify-window=-1",
                "--info=progress2",
                "/f/snapshots/S/home",
                "/tmp/r"
            ]
        );
    }

    #[test]
    fn rsync_errors() {
        let f = rsync_failure("rsync: [Receiver] mkdir \"/r/h\" failed: No such file or directory (2)\nrsync error: error in file IO (code 11) at main.c(808) [Receiver=3.2.7]\n").unwrap();
        assert_eq!(
            f.msg,
            "rsync failed: [Receiver] mkdir \"/r/h\" failed: No such file or directory (2)"
        );
        assert_eq!(
            rsync_failure("write failed: No space left on device")
                .unwrap()
                .code,
            Code::NoSpace
        );
        assert!(rsync_failure("something else").is_none());
    }

    #[test]
    fn restore_source() {
        let fs = Path::new("/fs");
        assert_eq!(
            resolve_restore_source(fs, "2024-01-02T03:04:05Z/home/a/").unwrap(),
            Path::new("/fs/snapshots/2024-01-02T03:04:05Z/home/a/")
        );
        assert_eq!(
            resolve_restore_source(fs, "2024-01-02T03:04:05Z/").unwrap(),
            Path::new("/fs/snapshots/2024-01-02T03:04:05Z/")
        );
        assert_eq!(
            resolve_restore_source(fs, "2024-01-02T03:04:05Z").unwrap(),
            Path::new("/fs/snapshots/2024-01-02T03:04:05Z/")
        );
        assert!(resolve_restore_source(fs, "2024-01-02T03:04:05Z/../x").is_err());
        assert!(resolve_restore_source(fs, "yesterday").is_err());
        assert!(resolve_restore_source(fs, "latest").is_err()); // no `latest` under /fs
    }

    #[test]
    fn spec_resolves_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("snapshots/2024-01-02T00:00:00Z")).unwrap();
        let _ = std::fs::remove_file(dir.join("latest"));
        std::os::unix::fs::symlink("snapshots/2024-01-02T00:00:00Z", dir.join("latest")).unwrap();
        let s = parse_spec(&dir, "latest/home/a").unwrap();
        assert_eq!(
            (s.stamp.as_str(), s.rest),
            ("2024-01-02T00:00:00Z", "home/a")
        );
        let s = parse_spec(&dir, "2023-05-06T07:08:09Z").unwrap();
        assert_eq!((s.stamp.as_str(), s.rest), ("2023-05-06T07:08:09Z", ""));
        assert!(parse_spec(&dir, "latest/a/../../b").is_err());
        assert!(parse_spec(&dir, "2023-05-06/x").is_err());
    }

    #[test]
    fn retention_none_keeps_all() {
        let s = vec![at(2024, 1, 1, 0), at(2024, 1, 2, 0)];
        assert_eq!(select_keep(&s, &Retention::default()).len(), 2);
    }

    #[test]
    fn retention_verdicts_name_their_rules() {
        // Two a day on March 1-3 (06:00 and 18:00), newest first in the verdicts.
        let mut s = Vec::new();
        for d in 1..=3 {
            s.push(at(2024, 3, d, 6));
            s.push(at(2024, 3, d, 18));
        }
        let p = Retention {
            keep_last: 1,
            keep_daily: 2,
            keep_within: 12 * 3600,
            ..Retention::default()
        };
        let got: Vec<(String, String)> = decide(&s, &p)
            .into_iter()
            .map(|v| (v.stamp, v.rules.join(", ")))
            .collect();
        let want = [
            (at(2024, 3, 3, 18).0, "last 1, within 12h, daily 1"),
            (at(2024, 3, 3, 6).0, "within 12h"),
            (at(2024, 3, 2, 18).0, "daily 2"),
            (at(2024, 3, 2, 6).0, ""),
            (at(2024, 3, 1, 18).0, ""),
            (at(2024, 3, 1, 6).0, ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.clone(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let all = decide(&s, &Retention::default());
        assert!(all.iter().all(|v| v.rules == ["no retention set"]));
    }

    #[test]
    fn retention_within_counts_from_the_newest() {
        // A snapshot a day in March, then none for a month: "7d" keeps March 25-31, not nothing.
        let s: Vec<_> = (1..=31).map(|d| at(2024, 3, d, 12)).collect();
        let p = Retention {
            keep_within: 7 * 86400,
            ..Retention::default()
        };
        let k = select_keep(&s, &p);
        let want: BTreeSet<String> = (24..=31).map(|d| at(2024, 3, d, 12).0).collect();
        assert_eq!(
            k, want,
            "within 7 days of March 31 12:00, both ends included"
        );
        // Combined with another rule: the union.
        let p = Retention {
            keep_within: 86400,
            keep_last: 3,
            ..Retention::default()
        };
        assert_eq!(select_keep(&s, &p).len(), 3);
    }

    #[test]
    fn retention_last_and_daily() {
        // Two snapshots a day for 10 days.
        let mut s = Vec::new();
        for d in 1..=10 {
            s.push(at(2024, 3, d, 1));
            s.push(at(2024, 3, d, 13));
        }
        let p = Retention {
            keep_last: 3,
            keep_daily: 4,
            ..Retention::default()
        };
        let k = select_keep(&s, &p);
        let want: BTreeSet<String> = [
            at(2024, 3, 10, 13),
            at(2024, 3, 10, 1),
            at(2024, 3, 9, 13),
            at(2024, 3, 8, 13),
            at(2024, 3, 7, 13),
        ]
        .into_iter()
        .map(|x| x.0)
        .collect();
        assert_eq!(k, want);
    }

    #[test]
    fn retention_weekly_monthly_yearly_hourly() {
        let s = vec![
            at(2022, 12, 31, 0),
            at(2023, 6, 1, 0),
            at(2023, 6, 20, 0),
            at(2024, 1, 1, 0), // Monday, ISO week 2024-01
            at(2024, 1, 7, 0), // Sunday, same ISO week
            at(2024, 1, 8, 0), // next week
            at(2024, 1, 8, 1),
        ];
        let newest_of_each_year = vec![
            at(2022, 12, 31, 0).0,
            at(2023, 6, 20, 0).0,
            at(2024, 1, 8, 1).0,
        ];
        let cases = [
            (
                Retention {
                    keep_weekly: 2,
                    ..Default::default()
                },
                vec![at(2024, 1, 7, 0).0, at(2024, 1, 8, 1).0],
            ),
            (
                Retention {
                    keep_monthly: 3,
                    ..Default::default()
                },
                newest_of_each_year.clone(),
            ),
            (
                Retention {
                    keep_yearly: 10,
                    ..Default::default()
                },
                newest_of_each_year,
            ),
            (
                Retention {
                    keep_hourly: 2,
                    ..Default::default()
                },
                vec![at(2024, 1, 8, 0).0, at(2024, 1, 8, 1).0],
            ),
        ];
        for (policy, want) in cases {
            let got: Vec<String> = select_keep(&s, &policy).into_iter().collect();
            assert_eq!(got, want, "{policy:?}");
        }
    }

    #[test]
    fn scan_and_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let snaps = dir.join("snapshots");
        for n in [
            "2024-01-02T00:00:00Z",
            "2024-01-01T00:00:00Z",
            "2024-01-03T00:00:00Z.inflight",
            "junk",
        ] {
            std::fs::create_dir_all(snaps.join(n)).unwrap();
        }
        std::os::unix::fs::symlink("snapshots/2024-01-02T00:00:00Z", dir.join("latest")).unwrap();
        let (s, left) = scan(&dir);
        assert_eq!(
            s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]
        );
        assert_eq!(left, ["2024-01-03T00:00:00Z.inflight"]);
        assert_eq!(latest(&dir).as_deref(), Some("2024-01-02T00:00:00Z"));
    }
}
