//! The outcome of a backup run through the systemd units, for the unit the timer starts.
//!
//! `systemctl start e2e-backup@JOB` pulls in e2e-sync@ (and below it the job's mount units and
//! e2e-open@) and runs after them. When one of those fails, systemd fails the start job of e2e-backup@ as a "dependency" and
//! leaves the unit inactive, so `OnFailure=` never fires and `is-failed` says no. Instead the
//! e2e-backup@ unit only `Wants=` the sync, and its `e2e-close --outcome` ends it with the outcome
//! the layers' binaries recorded here.
//!
//! The record is one line, `BINARY<TAB>CODE<TAB>TEXT`, in the file `$E2E_BACKUP_OUTCOME` names
//! (the units set it to /run/e2e-backup/JOB/outcome, on the client's tmpfs: the server never sees
//! it). Each of e2e-open and e2e-sync empties it when it starts and records its result
//! when it ends, so it holds the result of the last of them that ran; a run passes only if that was
//! e2e-sync and it succeeded. A layer killed before it could write (a start timeout, SIGKILL) leaves
//! it empty, which fails too, and so does a run whose remote never mounted (no layer ran; e2e-close
//! then asks the server why, see cmd/close.rs). `--outcome` moves the record aside once read, so a later run that
//! never reached a binary cannot pass on an old success.

use crate::error::{fail, Code, Fail};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The variable the units set to the record's path.
pub const ENV: &str = "E2E_BACKUP_OUTCOME";

/// The binaries whose runs are recorded, bottom up (e2e-close, their `ExecStop=`, never records).
const CHAIN: [&str; 2] = ["e2e-open", "e2e-sync"];

/// The record file, when this binary keeps one.
fn record_of(binary: &str) -> Option<PathBuf> {
    let p = std::env::var_os(ENV).filter(|v| !v.is_empty())?;
    CHAIN.contains(&binary).then(|| PathBuf::from(p))
}

/// At the start of a binary: an empty record (this run has no result yet).
pub fn begin(binary: &str) {
    if let Some(p) = record_of(binary) {
        if let Some(d) = p.parent() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d);
        }
        let _ = std::fs::write(&p, "");
    }
}

/// At the end of a binary: its exit code and its result (a path) or its one error line, unless
/// the record holds a result that this one must not replace (see [`replaces`]).
pub fn end(binary: &str, code: u8, text: &str) {
    if let Some(p) = record_of(binary) {
        let now = std::fs::read_to_string(&p).unwrap_or_default();
        if replaces(&now, code) {
            let _ = std::fs::write(&p, format_record(binary, code, text));
        }
    }
}

/// Whether a result with exit `code` replaces the record `now`: a result fills an empty record, and
/// a failure replaces a success; nothing else replaces anything. So a late clean exit never hides a
/// failure, and the first failure's line (the cause) is the one kept.
fn replaces(now: &str, code: u8) -> bool {
    match parse_record(now) {
        None => true,
        Some((_, c, _)) => code != 0 && c == 0,
    }
}

/// `BINARY<TAB>CODE<TAB>TEXT` (the first line), or `None` for an empty or damaged record.
fn parse_record(record: &str) -> Option<(&str, u8, &str)> {
    let mut f = record.lines().next()?.splitn(3, '\t');
    Some((f.next()?, f.next()?.parse().ok()?, f.next()?))
}

fn format_record(binary: &str, code: u8, text: &str) -> String {
    format!("{binary}\t{code}\t{}\n", text.replace(['\n', '\t'], " "))
}

/// What a record says about the run: `Ok(snapshot)` only for a sync that succeeded.
pub fn judge(record: &str) -> Result<PathBuf> {
    match parse_record(record) {
        Some(("e2e-sync", 0, path)) => Ok(PathBuf::from(path)),
        Some((b, 0, _)) => Err(fail(
            Code::Runtime,
            format!("the backup did not run: {b} succeeded, but no sync followed it (see systemctl status e2e-sync@JOB)"),
        )),
        Some((_, c, text)) => Err(Fail {
            repeated: true,
            ..Fail::new(code_for(c), text)
        }
        .into()),
        None => Err(fail(
            Code::Runtime,
            "no outcome recorded: the remote did not mount, or a layer of the backup was stopped before it could report (see systemctl status for run-e2e\\x2dbackup-JOB-remote.mount, e2e-open@JOB and e2e-sync@JOB)",
        )),
    }
}

/// The documented code a recorded exit code stands for (a failed run's own code when it is one).
fn code_for(c: u8) -> Code {
    Code::ALL
        .into_iter()
        .find(|k| *k as i32 == i32::from(c))
        .unwrap_or(Code::Runtime)
}

/// Whether a layer recorded anything at `path` this run.
pub fn recorded(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|r| parse_record(&r).is_some())
}

/// Read and judge the record at `path`, then move it aside (`<path>.seen`) so that it is judged once.
pub fn take(path: &Path) -> Result<PathBuf> {
    let record = match std::fs::read_to_string(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    let mut seen = path.as_os_str().to_owned();
    seen.push(".seen");
    let _ = std::fs::rename(path, seen);
    judge(&record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code_of;

    #[test]
    fn only_a_successful_sync_passes() {
        let ok = format_record("e2e-sync", 0, "/run/e2e-backup/home/fs/snapshots/x");
        assert_eq!(
            judge(&ok).unwrap(),
            PathBuf::from("/run/e2e-backup/home/fs/snapshots/x")
        );
        // The open succeeded and nothing ran after it (the sync's start job was cancelled).
        let e = judge(&format_record("e2e-open", 0, "/run/e2e-backup/home/fs")).unwrap_err();
        assert!(format!("{e}").contains("no sync followed"), "{e}");
        // Emptied at a layer's start and never written: it was killed.
        let e = judge("").unwrap_err();
        assert!(format!("{e}").starts_with("no outcome recorded"), "{e}");
        assert_eq!(code_of(&e), Code::Runtime);
    }

    #[test]
    fn a_failure_keeps_its_line_and_code() {
        let line = "e2e-open: error: cannot reach srv: ssh exited 255";
        let e = judge(&format_record("e2e-open", 3, line)).unwrap_err();
        assert_eq!(format!("{e}"), line);
        assert_eq!(code_of(&e), Code::Remote);
        assert!(crate::error::is_repeated(&e));
        let e = judge(&format_record("e2e-sync", 143, "stopped")).unwrap_err();
        assert_eq!(code_of(&e), Code::Terminated);
        // A tab or newline in the text cannot split the record.
        let r = format_record("e2e-sync", 1, "a\tb\nc");
        assert_eq!(r.lines().count(), 1);
        assert_eq!(format!("{}", judge(&r).unwrap_err()), "a b c");
    }

    #[test]
    fn the_first_failure_and_the_last_success_stay() {
        let sync_ok = format_record("e2e-sync", 0, "/snap");
        assert!(replaces("", 0));
        assert!(
            !replaces(&sync_ok, 0),
            "e2e-mount's clean exit after the sync"
        );
        assert!(replaces(&sync_ok, 1), "a failure after the sync's success");
        let sync_failed = format_record("e2e-sync", 3, "lost the connection");
        assert!(
            !replaces(&sync_failed, 1),
            "sshfs's exit after the sync's own line"
        );
    }

    #[test]
    fn a_record_is_judged_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("outcome");
        std::fs::write(&p, format_record("e2e-sync", 0, "/snap")).unwrap();
        assert!(take(&p).is_ok());
        assert!(take(&p).is_err(), "a second verdict on the same record");
        assert!(d.path().join("outcome.seen").exists());
    }
}
