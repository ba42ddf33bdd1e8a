//! Snapshots inside the container, by the engine its filesystem gives: ext4, rsync with
//! `--link-dest` into `STAMP.inflight`, then a rename; btrfs, rsync in place into the working tree
//! `current`, then a read-only subvolume snapshot of it. Then `latest`; restore; progress parsing.

use crate::config::Sync;
use crate::error::{Code, Fail};
use crate::exec::Cmd;
use crate::filesystem::{btrfs, Kind};
use crate::timefmt::parse_stamp;
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

/// The tree a run's rsync writes: ext4, a new `snapshots/STAMP.inflight` (the files that did not
/// change hard-linked from the previous snapshot); btrfs, the working tree `current`, updated in
/// place and then snapshotted.
pub fn work_dir(kind: Kind, fs: &Path, stamp: &str) -> PathBuf {
    match kind {
        Kind::Ext4 => fs.join("snapshots").join(format!("{stamp}{INFLIGHT}")),
        Kind::Btrfs => fs.join(btrfs::CURRENT),
    }
}

/// Remove a snapshot, or what a cut left of one (`.inflight`, `.prune`).
pub fn discard(kind: Kind, dir: &Path) -> Cmd {
    match kind {
        Kind::Ext4 => Cmd::new("rm").arg("-rf").arg(dir),
        Kind::Btrfs => btrfs::delete(dir),
    }
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

/// The backup rsync into [`work_dir`]. Sources are transferred with `--relative` so `/home` and
/// `/var/lib/x` keep their full paths inside the snapshot and cannot collide.
///
/// - ext4: `--link-dest` to the previous snapshot `link` (relative to the destination, hence
///   `../STAMP`): an unchanged file becomes a hard link, a changed one a new file.
/// - btrfs: `--inplace`: a changed file keeps its inode and the blocks rsync writes become new
///   extents, while the snapshots keep the old ones; an unchanged file is not touched at all.
///   `--ignore-errors`: deletions go ahead after a read error (by default rsync then skips them
///   all, and a snapshot would keep files deleted at the source); the unread paths themselves are
///   put back from the previous snapshot afterwards (`partial::stand_in`).
pub fn rsync_backup(sync: &Sync, fs: &Path, stamp: &str, link: Option<&str>, kind: Kind) -> Cmd {
    let mut c = rsync_common(sync)
        .args(["--info=progress2", "--stats"])
        // No data between rsync's processes for 10 min (a source or destination that hangs):
        // rsync gives up instead of holding the job's lock forever.
        .arg("--timeout=600")
        .arg(format!("--log-file={}", log_path(fs, stamp).display()));
    match (kind, link) {
        (Kind::Ext4, Some(l)) => c = c.arg(format!("--link-dest=../{l}")),
        (Kind::Ext4, None) => {}
        (Kind::Btrfs, _) => c = c.args(["--inplace", "--ignore-errors"]),
    }
    let dest = format!("{}/", work_dir(kind, fs, stamp).display());
    let c = with_sources(c.args(&sync.rsync_args), &sync.paths, paths_budget())
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
    let c = rsync_common(sync)
        .args(["--dry-run", "--itemize-changes", "--timeout=600"])
        .args(&sync.rsync_args);
    with_sources(c, &sync.paths, paths_budget())
        .arg(format!("{}/", fs.join("snapshots").join(latest).display()))
}

/// The sources as rsync's arguments while they fit one command line (`budget` bytes); more than
/// that (a long `sync.files_from` list), exec would fail with E2BIG, so they go as a list on
/// rsync's stdin instead: `--files-from=-` with the root `/` as the one source, `-r` because a
/// list turns off the recursion `-a` implies. The snapshot is the same: `--relative` keeps the
/// full paths either way, and a listed path that cannot be read is told with its full path.
fn with_sources(c: Cmd, paths: &[String], budget: u64) -> Cmd {
    let bytes: u64 = paths.iter().map(|p| p.len() as u64 + 1).sum();
    if bytes <= budget {
        return c.args(paths);
    }
    c.args(["-r", "--files-from=-", "/"])
        .input(paths.join("\n"))
}

/// The bytes of source paths one rsync command line may carry: half the kernel's limit on a
/// command's arguments and environment (ARG_MAX, a quarter of the stack limit: 2 MiB by default);
/// the other half is left to rsync's other arguments and the environment.
fn paths_budget() -> u64 {
    let arg_max = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .map_or(128 << 10, |v| v as u64);
    arg_max / 2
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Runner;

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
        let c = rsync_backup(
            &s,
            fs,
            "2024-01-02T03:04:05Z",
            Some("2024-01-01T03:04:05Z"),
            Kind::Ext4,
        );
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
        let c = rsync_backup(&s, fs, "2024-01-02T03:04:05Z", None, Kind::Ext4);
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

    /// Sources that fit the budget are arguments; more go as a list on stdin, with `/` as the one
    /// source (the same snapshot: `--relative` either way).
    #[test]
    fn sources_over_the_budget_go_as_a_list() {
        let paths = vec!["/home".to_string(), "/srv/db dump".to_string()];
        let fit = with_sources(Cmd::new("rsync"), &paths, 19).argv();
        assert_eq!(fit, ["rsync", "/home", "/srv/db dump"]);
        let c = with_sources(Cmd::new("rsync"), &paths, 18);
        assert_eq!(c.argv(), ["rsync", "-r", "--files-from=-", "/"]);
        assert_eq!(
            c.script_line(),
            "rsync -r --files-from=- / <<'E2E_INPUT'\n/home\n/srv/db dump\nE2E_INPUT"
        );
    }

    /// The real rsync makes the same tree from a list as from arguments, deletions in a
    /// destination it updates in place (btrfs) included, and names an unread listed path alike.
    #[test]
    fn a_list_makes_the_same_tree_as_arguments() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        for f in ["a/b/f", "a/old", "c/g", "c/h"] {
            let f = src.join(f);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, f.to_string_lossy().as_bytes()).unwrap();
        }
        let at = |p: &str| format!("{}/{p}", src.display());
        let paths = vec![at("a"), at("c/g"), at("gone")];
        let run = Runner::new(false, false);
        let rsync = |budget: u64, dest: &Path| {
            let c = rsync_common(&Sync {
                paths: vec![],
                exclude: vec![],
                exclude_from: vec![],
                files_from: vec![],
                rsync_args: vec![],
                allow_partial: true,
                skip_unchanged: false,
            })
            .args(["--inplace", "--ignore-errors"]);
            let c = with_sources(c, &paths, budget).arg(format!("{}/", dest.display()));
            let out = run.run(&c.handled_code(23)).unwrap();
            crate::partial::parse(&out.stderr).unwrap()
        };
        let tree = |dest: &Path| {
            let out = run
                .run(&Cmd::new("find").arg(dest).arg("-printf").arg("%P %s\\n"))
                .unwrap()
                .stdout;
            let mut l: Vec<String> = out.lines().map(String::from).collect();
            l.sort();
            l
        };
        let (args, list) = (d.path().join("args"), d.path().join("list"));
        let unread = [rsync(u64::MAX, &args), rsync(0, &list)];
        assert_eq!(unread[0], unread[1]);
        assert_eq!(unread[0][0].path, at("gone"));
        std::fs::remove_file(src.join("a/old")).unwrap();
        rsync(u64::MAX, &args);
        rsync(0, &list);
        let (a, l) = (tree(&args), tree(&list));
        assert_eq!(a, l);
        let has = |p: &str| a.iter().any(|e| e.contains(&format!("/src/{p} ")));
        assert!(has("a/b/f") && has("c/g"), "{a:?}");
        assert!(!has("a/old") && !has("c/h"), "{a:?}");
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
