//! Rollback detection. The client remembers, outside the container and never on the server, the
//! newest snapshot it wrote for each job (`/var/lib/e2e-backup/<job>/last-snapshot`). A container
//! that no longer holds that snapshot is an older copy the server handed back (a restored or
//! replayed file): syncing into it and pruning it would silently throw away newer history.

use crate::error::{fail, Code};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub const STATE_BASE: &str = "/var/lib/e2e-backup";

/// The state file of a job (`E2E_BACKUP_STATE_DIR` replaces `/var/lib/e2e-backup`, for tests).
pub fn state_file(job: &str) -> PathBuf {
    let base = std::env::var_os("E2E_BACKUP_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_BASE));
    base.join(job).join("last-snapshot")
}

/// The stamp remembered in `file`, if any.
pub fn remembered(file: &Path) -> Option<String> {
    let s = std::fs::read_to_string(file).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Remember `stamp` as the newest snapshot written (write beside, fsync, rename over).
pub fn remember(file: &Path, stamp: &str) -> Result<()> {
    use std::io::Write;
    let dir = file.parent().expect("state file has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{stamp}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// The pure decision: `None` when the container is consistent with what this host last wrote,
/// else the one-line reason. `stamps` are the container's snapshot stamps (any order).
pub fn check(remembered: Option<&str>, stamps: &[&str]) -> Option<String> {
    let r = remembered?;
    if stamps.contains(&r) {
        return None;
    }
    let newest = stamps.iter().max().copied();
    Some(match newest {
        Some(n) if n > r => format!(
            "container lacks snapshot {r}, the newest this host wrote, though it holds a newer one ({n}): the server handed back a different history"
        ),
        Some(n) => format!(
            "container's newest snapshot is {n}, older than {r}, the newest this host wrote: the server handed back an older copy of the container (rollback or replay)"
        ),
        None => format!(
            "container holds no snapshot, but this host wrote {r} into it: the server handed back an older copy of the container (rollback or replay)"
        ),
    })
}

/// Refuse (exit 4) on a rollback unless accepted; `Ok(false)` = rolled back but accepted (the caller
/// must not prune), `Ok(true)` = consistent.
pub fn gate(file: &Path, stamps: &[&str], accept: bool) -> Result<bool> {
    let Some(why) = check(remembered(file).as_deref(), stamps) else {
        return Ok(true);
    };
    if accept {
        eprintln!("warning: {why}; continuing because of --accept-rollback (not pruning this run)");
        return Ok(false);
    }
    Err(fail(
        Code::Refused,
        format!(
            "{why}; not syncing and not pruning (remembered in {}): check the server, then rerun with --accept-rollback to continue from this container",
            file.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2026-01-01T00:00:00Z";
    const B: &str = "2026-01-02T00:00:00Z";
    const C: &str = "2026-01-03T00:00:00Z";

    #[test]
    fn decision() {
        // Nothing remembered (first run on this host): anything goes.
        assert_eq!(check(None, &[]), None);
        assert_eq!(check(None, &[A]), None);
        // The remembered snapshot is there (newer ones too, or pruned older ones gone): fine.
        assert_eq!(check(Some(B), &[A, B]), None);
        assert_eq!(check(Some(B), &[B, C]), None);
        // An older copy: the newest is before the remembered one.
        let m = check(Some(C), &[A, B]).unwrap();
        assert!(
            m.contains("older copy") && m.contains(B) && m.contains(C),
            "{m}"
        );
        // Emptied container.
        assert!(check(Some(A), &[]).unwrap().contains("no snapshot"));
        // Remembered one missing but something newer present: another history.
        assert!(check(Some(B), &[A, C])
            .unwrap()
            .contains("different history"));
    }

    #[test]
    fn gate_and_state_file() {
        let dir = std::env::temp_dir().join(format!("e2e-rollback-{}", std::process::id()));
        let f = dir.join("job").join("last-snapshot");
        assert!(gate(&f, &[A], false).unwrap(), "no state yet");
        remember(&f, C).unwrap();
        assert_eq!(remembered(&f).as_deref(), Some(C));
        let e = gate(&f, &[A, B], false).unwrap_err();
        assert_eq!(crate::error::code_of(&e), Code::Refused);
        assert!(format!("{e}").contains("--accept-rollback"));
        assert!(
            !gate(&f, &[A, B], true).unwrap(),
            "accepted, but no pruning"
        );
        assert!(gate(&f, &[A, B, C], false).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
