//! e2e-keep (on the server): read-only copies of a client's containers, kept where its account
//! cannot reach them, with retention on the server's clock and an eye on suspicious changes.
//!
//! Order for each container, so that a cut at any instant leaves every earlier copy as it was:
//! 1. compare it with its newest copy (size, LUKS header, allocation): a suspicious change marks
//!    that copy `.keep` (never pruned) before anything else happens;
//! 2. `cp --reflink=always` (or `--full-copy`) to `<STAMP>.luks.tmp`, `chmod 0444`;
//! 3. rename to `<STAMP>.luks`, flush the directory;
//! 4. only then prune copies no rule keeps (never one marked `.keep`, never the newest).

mod seen;

use crate::cli::KeepCli;
use crate::config::Retention;
use crate::error::{fail, Code, Fail};
use crate::exec::{Cmd, Runner};
use crate::filesystem as fsys;
use crate::progress::{print_stdout, stderr_line, Level};
use crate::{retention, timefmt};
use anyhow::{Context, Result};
use seen::{suspicions, Seen};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The copies of one container, oldest first: (stamp, time).
fn copies(dir: &Path) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let stamp = n.strip_suffix(".luks")?.to_string();
                    let t = timefmt::parse_stamp(&stamp)?;
                    Some((stamp, t))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|c| c.1);
    v
}

fn copy_path(dir: &Path, stamp: &str) -> PathBuf {
    dir.join(format!("{stamp}.luks"))
}

fn keep_mark(dir: &Path, stamp: &str) -> PathBuf {
    dir.join(format!("{stamp}.keep"))
}

pub fn keep(cli: KeepCli) -> Result<Option<PathBuf>> {
    crate::progress::set_quiet(cli.quiet);
    let run = Runner::new(cli.dry_run, cli.verbose);
    let store = std::fs::canonicalize(&cli.store)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            fail(
                Code::Config,
                format!(
                    "{}: not a directory (the client's store)",
                    cli.store.display()
                ),
            )
        })?;
    let alert_after = match cli.alert_after.as_str() {
        "0" => 0,
        s => timefmt::parse_within(s)
            .map_err(|e| fail(Code::Config, format!("--alert-after: {e}")))?,
    };
    let into = resolved(&cli.into);
    if into.starts_with(&store) {
        return Err(fail(
            Code::Config,
            format!(
                "--into {} lies inside {}: the client could reach its copies there; put them outside its tree (and show them to it read-only, see e2e-keep(1))",
                into.display(),
                store.display()
            ),
        ));
    }
    if !run.is_dry() {
        std::fs::create_dir_all(&into)
            .with_context(|| format!("cannot make {}", into.display()))?;
    }
    if let Some(user) = &cli.user {
        let listed = run.query(&Cmd::new("pgrep").arg("-l").arg("-u").arg(user).ok_code(1))?;
        let n = session_processes(&listed.unwrap_or_default());
        if n > 0 {
            crate::notice!("{user} has a session open ({n} process(es)): no copy now");
            return alerts(&into, alert_after, Vec::new());
        }
    }
    let policy = Retention {
        keep_last: cli.keep_last,
        keep_hourly: cli.keep_hourly,
        keep_daily: cli.keep_daily,
        keep_weekly: cli.keep_weekly,
        keep_monthly: cli.keep_monthly,
        keep_yearly: cli.keep_yearly,
        keep_within: 0,
    };
    let mut found = Vec::new();
    for f in containers(&store)? {
        found.extend(keep_one(&run, &cli, &f, &into, &policy)?);
    }
    alerts(&into, alert_after, found)
}

/// `path` with symlinks resolved as far as it exists (the rest appended), so that a directory not
/// made yet is compared with the store as it will be.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut p = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(p) {
            return rest.iter().rev().fold(c, |acc, n| acc.join(n));
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                p = parent;
            }
            _ => return abs,
        }
    }
}

/// How many of the account's processes (`pgrep -l` lines: PID NAME) make a session. The qemu-nbd
/// that serves e2e-trim runs as the account for good and is not one: a client that uses it has
/// its ssh session open, which counts.
fn session_processes(pgrep_l: &str) -> usize {
    pgrep_l
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|n| n != "qemu-nbd"))
        .count()
}

/// The `*.luks` names in `store`; whether each is a regular file is [`keep_one`]'s question, asked
/// where it is copied.
fn containers(store: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(store).with_context(|| format!("cannot read {}", store.display()))? {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) == Some("luks") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Copy one container if it is quiescent and changed; prune its copies. Returns its suspicious
/// changes, each as a line.
fn keep_one(
    run: &Runner,
    cli: &KeepCli,
    file: &Path,
    into: &Path,
    policy: &Retention,
) -> Result<Vec<String>> {
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let dir = into.join(&name);
    let meta = std::fs::symlink_metadata(file)?;
    if !meta.file_type().is_file() {
        // A symlink (or anything else) is not followed: it could point anywhere on the server.
        crate::warning!("{}: not a regular file; not copied", file.display());
        return Ok(Vec::new());
    }
    let now = timefmt::now();
    if now - meta.mtime() < cli.settle {
        crate::notice!(
            "{}: changed {} s ago (less than --settle {} s): no copy now",
            file.display(),
            now - meta.mtime(),
            cli.settle
        );
        return Ok(Vec::new());
    }
    // A copy cut off before its rename (a crash, a stop) is never one: it goes first.
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".luks.tmp") {
            run.run(&Cmd::rm_f(e.path()))?;
        }
    }
    let existing = copies(&dir);
    let mut found = Vec::new();
    if let Some((last, _)) = existing.last() {
        let prev = copy_path(&dir, last);
        let pm = std::fs::metadata(&prev)?;
        if pm.len() == meta.len()
            && pm.mtime() == meta.mtime()
            && pm.mtime_nsec() == meta.mtime_nsec()
        {
            crate::notice!("{}: unchanged since copy {last}", file.display());
            return Ok(Vec::new());
        }
        let why = suspicions(&Seen::of(&prev)?, &Seen::of(file)?);
        if !why.is_empty() {
            let line = format!(
                "{}: {} since copy {last}; that copy is kept whatever the retention ({})",
                file.display(),
                why.join(", "),
                keep_mark(&dir, last).display()
            );
            stderr_line(Level::Err, &format!("e2e-keep: {line}"));
            if !run.is_dry() {
                std::fs::write(keep_mark(&dir, last), format!("{}\n", why.join("\n")))?;
            }
            found.push(line);
        }
    }
    let mut t = now;
    while existing.iter().any(|c| c.1 == t) {
        t += 1;
    }
    let stamp = timefmt::format_stamp(t);
    if !run.is_dry() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
    }
    let dest = copy_path(&dir, &stamp);
    let tmp = dest.with_extension("luks.tmp");
    let copied = run.run(&copy_cmd(
        file,
        &tmp,
        cli.full_copy,
        meta.blocks() * 512,
        into,
    ));
    if let Err(e) = copied {
        let _ = run.run(&Cmd::rm_f(&tmp));
        return Err(e);
    }
    // chmod follows a symlink: the copy must be the file itself (see --no-dereference above).
    if !run.is_dry() && !std::fs::symlink_metadata(&tmp)?.file_type().is_file() {
        run.run(&Cmd::rm_f(&tmp))?;
        crate::warning!(
            "{}: replaced while it was copied; not copied",
            file.display()
        );
        return Ok(found);
    }
    run.run(&Cmd::new("chmod").arg("0444").arg(&tmp))?;
    run.run(&Cmd::new("mv").arg("-T").arg(&tmp).arg(&dest))?;
    run.run(&fsys::sync_fs(&dir))?;
    print_stdout(&format!("{}\n", dest.display()));
    prune(run, &dir, policy, &stamp)?;
    Ok(found)
}

/// The copy: a reflink, or (asked for) a whole copy; a filesystem that cannot reflink is refused.
fn copy_cmd(file: &Path, tmp: &Path, full: bool, allocated: u64, into: &Path) -> Cmd {
    // --no-dereference: should the client swap the file for a symlink after the check above,
    // cp copies the link, never what it points to.
    let c = Cmd::new("cp")
        .arg("--no-dereference")
        .arg("--preserve=timestamps");
    if full {
        return c.arg("--sparse=always").arg("--").arg(file).arg(tmp);
    }
    let (into, shown) = (into.display().to_string(), file.display().to_string());
    c.arg("--reflink=always")
        .arg("--")
        .arg(file)
        .arg(tmp)
        .on_fail(move |_, out| {
            out.contains("failed to clone").then(|| {
                let why = out
                    .lines()
                    .find(|l| l.contains("failed to clone"))
                    .and_then(|l| l.rsplit(": ").next())
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Fail::new(
                    Code::Config,
                    format!(
                        "{into} cannot hold a reflink copy of {shown} ({why}): put the copies on the same XFS or btrfs filesystem as the store, or pass --full-copy (it writes {} now, and again for every copy)",
                        crate::size::human(allocated)
                    ),
                )
            })
        })
}

/// Retention by the server's clock; never the copy just made, never one marked `.keep`.
fn prune(run: &Runner, dir: &Path, policy: &Retention, newest: &str) -> Result<()> {
    if *policy == Retention::default() {
        return Ok(());
    }
    for v in retention::decide(&copies(dir), policy) {
        if v.rules.is_empty() && v.stamp != newest && !keep_mark(dir, &v.stamp).exists() {
            run.run(&Cmd::rm_f(copy_path(dir, &v.stamp)))?;
        }
    }
    Ok(())
}

/// The end of a run: a container whose newest copy is older than `alert_after` (its client has
/// not completed a session), and the suspicious changes found, fail it (exit 4).
fn alerts(into: &Path, alert_after: i64, mut found: Vec<String>) -> Result<Option<PathBuf>> {
    if alert_after > 0 {
        let now = timefmt::now();
        let dirs =
            std::fs::read_dir(into).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>());
        for d in dirs.unwrap_or_default() {
            if let Some((last, t)) = copies(&d).last() {
                if now - t > alert_after {
                    let line = format!(
                        "{}: newest copy {last} is older than --alert-after {} (its client has not completed a session since)",
                        d.display(),
                        timefmt::format_within(alert_after)
                    );
                    stderr_line(Level::Err, &format!("e2e-keep: {line}"));
                    found.push(line);
                }
            }
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    Err(fail(Code::Refused, found.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_inside_the_store_are_seen_before_they_exist() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::os::unix::fs::symlink(&store, d.path().join("link")).unwrap();
        let store = std::fs::canonicalize(&store).unwrap();
        for inside in ["store/new/x", "link/new", "store/../store/y"] {
            assert!(
                resolved(&d.path().join(inside)).starts_with(&store),
                "{inside}"
            );
        }
        assert!(!resolved(&d.path().join("copies/x")).starts_with(&store));
        assert!(
            !d.path().join("store/new").exists(),
            "resolving made nothing"
        );
    }

    #[test]
    fn a_client_without_a_recent_copy_fails_the_run() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("home.luks");
        std::fs::create_dir(&dir).unwrap();
        let old = timefmt::format_stamp(timefmt::now() - 4 * 86400);
        std::fs::write(copy_path(&dir, &old), "").unwrap();
        assert!(
            alerts(d.path(), 0, Vec::new()).unwrap().is_none(),
            "0: never"
        );
        assert!(alerts(d.path(), 5 * 86400, Vec::new()).unwrap().is_none());
        let e = alerts(d.path(), 3 * 86400, Vec::new()).unwrap_err();
        assert_eq!(crate::error::code_of(&e), Code::Refused);
        assert!(
            e.to_string()
                .contains(&format!("newest copy {old} is older than --alert-after 3d")),
            "{e}"
        );
        let fresh = timefmt::format_stamp(timefmt::now());
        std::fs::write(copy_path(&dir, &fresh), "").unwrap();
        assert!(alerts(d.path(), 3 * 86400, Vec::new()).unwrap().is_none());
    }

    #[test]
    fn the_nbd_export_is_no_session() {
        assert_eq!(session_processes(""), 0);
        assert_eq!(session_processes("812 qemu-nbd\n"), 0);
        assert_eq!(session_processes("812 qemu-nbd\n901 sshd\n"), 1);
        assert_eq!(session_processes("901 sshd-session\n902 sftp-server\n"), 2);
    }

    #[test]
    fn copies_are_listed_by_stamp() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "2026-12-02T03:00:00Z.luks",
            "2026-12-01T03:00:00Z.luks",
            "2026-12-01T03:00:00Z.keep",
            "2026-12-03T03:00:00Z.luks.tmp",
            "junk",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let c: Vec<String> = copies(d.path()).into_iter().map(|c| c.0).collect();
        assert_eq!(c, ["2026-12-01T03:00:00Z", "2026-12-02T03:00:00Z"]);
    }
}
