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

/// What the client remembers of the newest snapshot it wrote: its stamp, the sha256 of its manifest
/// and the container's LUKS UUID. Older state files hold only the stamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub stamp: String,
    pub manifest_sha256: Option<String>,
    pub luks_uuid: Option<String>,
}

impl State {
    fn render(&self) -> String {
        let mut s = format!("{}\n", self.stamp);
        if let Some(m) = &self.manifest_sha256 {
            s += &format!("manifest-sha256 {m}\n");
        }
        if let Some(u) = &self.luks_uuid {
            s += &format!("luks-uuid {u}\n");
        }
        s
    }

    fn parse(text: &str) -> Option<State> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut st = State {
            stamp: lines.next()?.to_string(),
            ..State::default()
        };
        for l in lines {
            match l.split_once(' ') {
                Some(("manifest-sha256", v)) => st.manifest_sha256 = Some(v.to_string()),
                Some(("luks-uuid", v)) => st.luks_uuid = Some(v.to_string()),
                _ => {}
            }
        }
        Some(st)
    }
}

/// The state remembered in `file`, if any.
pub fn remembered(file: &Path) -> Option<State> {
    State::parse(&std::fs::read_to_string(file).ok()?)
}

/// Remember `state` as the newest snapshot written (write beside, fsync, rename over, fsync the
/// directory: the record is durable when this returns).
pub fn remember(file: &Path, state: &State) -> Result<()> {
    use std::io::Write;
    let dir = file.parent().expect("state file has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(state.render().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// What the open container shows of the remembered snapshot.
pub struct Seen<'a> {
    /// The container's snapshot stamps (any order).
    pub stamps: &'a [&'a str],
    /// The container's LUKS UUID.
    pub luks_uuid: Option<&'a str>,
    /// sha256 of the remembered snapshot's manifest as it is now (`None`: no such file).
    pub manifest_sha256: Option<&'a str>,
}

/// The pure decision: `None` when the container is consistent with what this host last wrote,
/// else the one-line reason.
pub fn mismatch(remembered: Option<&State>, seen: &Seen) -> Option<String> {
    let r = remembered?;
    if let (Some(want), Some(have)) = (&r.luks_uuid, seen.luks_uuid) {
        if want != have {
            return Some(format!(
                "container has LUKS UUID {have}, but this host wrote into {want}: the server handed back a different container"
            ));
        }
    }
    let rs = r.stamp.as_str();
    if seen.stamps.contains(&rs) {
        return match (&r.manifest_sha256, seen.manifest_sha256) {
            (Some(want), Some(have)) if want != have => Some(format!(
                "the manifest of snapshot {rs} changed since this host wrote it (sha256 {have}, remembered {want}): the server altered the container"
            )),
            (Some(_), None) => Some(format!(
                "snapshot {rs} has lost its manifest since this host wrote it: the server altered the container"
            )),
            _ => None,
        };
    }
    let newest = seen.stamps.iter().max().copied();
    Some(match newest {
        Some(n) if n > rs => format!(
            "container lacks snapshot {rs}, the newest this host wrote, though it holds a newer one ({n}): the server handed back a different history"
        ),
        Some(n) => format!(
            "container's newest snapshot is {n}, older than {rs}, the newest this host wrote: the server handed back an older copy of the container (rollback or replay)"
        ),
        None => format!(
            "container holds no snapshot, but this host wrote {rs} into it: the server handed back an older copy of the container (rollback or replay)"
        ),
    })
}

/// Refuse (exit 4) on a rollback unless accepted; `Ok(false)` = rolled back but accepted (the caller
/// must not prune), `Ok(true)` = consistent.
pub fn gate(file: &Path, seen: &Seen, accept: bool) -> Result<bool> {
    let Some(why) = mismatch(remembered(file).as_ref(), seen) else {
        return Ok(true);
    };
    if accept {
        crate::warning!("{why}; continuing because of --accept-rollback (not pruning this run)");
        return Ok(false);
    }
    Err(fail(
        Code::Refused,
        format!(
            "{why}; nothing read, synced or pruned (remembered in {}): check the server, then rerun with --accept-rollback to use this container anyway",
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

    fn st(stamp: &str) -> State {
        State {
            stamp: stamp.into(),
            ..State::default()
        }
    }
    fn seen<'a>(stamps: &'a [&'a str]) -> Seen<'a> {
        Seen {
            stamps,
            luks_uuid: Some("u1"),
            manifest_sha256: Some("m1"),
        }
    }

    #[test]
    fn decision() {
        // Nothing remembered (first run on this host): anything goes.
        assert_eq!(mismatch(None, &seen(&[])), None);
        assert_eq!(mismatch(None, &seen(&[A])), None);
        // The remembered snapshot is there (newer ones too, or pruned older ones gone): fine.
        assert_eq!(mismatch(Some(&st(B)), &seen(&[A, B])), None);
        assert_eq!(mismatch(Some(&st(B)), &seen(&[B, C])), None);
        // An older copy: the newest is before the remembered one.
        let m = mismatch(Some(&st(C)), &seen(&[A, B])).unwrap();
        assert!(
            m.contains("older copy") && m.contains(B) && m.contains(C),
            "{m}"
        );
        // Emptied container.
        assert!(mismatch(Some(&st(A)), &seen(&[]))
            .unwrap()
            .contains("no snapshot"));
        // Remembered one missing but something newer present: another history.
        assert!(mismatch(Some(&st(B)), &seen(&[A, C]))
            .unwrap()
            .contains("different history"));
    }

    #[test]
    fn uuid_and_manifest() {
        let full = State {
            stamp: B.into(),
            manifest_sha256: Some("m1".into()),
            luks_uuid: Some("u1".into()),
        };
        assert_eq!(mismatch(Some(&full), &seen(&[A, B])), None);
        let other = Seen {
            luks_uuid: Some("u2"),
            ..seen(&[A, B])
        };
        assert!(mismatch(Some(&full), &other)
            .unwrap()
            .contains("different container"));
        let changed = Seen {
            manifest_sha256: Some("m2"),
            ..seen(&[A, B])
        };
        assert!(mismatch(Some(&full), &changed)
            .unwrap()
            .contains("manifest of snapshot"));
        let lost = Seen {
            manifest_sha256: None,
            ..seen(&[A, B])
        };
        assert!(mismatch(Some(&full), &lost)
            .unwrap()
            .contains("lost its manifest"));
        // A state file of the old format (stamp only) checks the stamp alone.
        assert_eq!(State::parse(&format!("{B}\n")), Some(st(B)));
        assert_eq!(State::parse(&full.render()), Some(full));
    }

    #[test]
    fn gate_and_state_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let f = dir.join("job").join("last-snapshot");
        assert!(gate(&f, &seen(&[A]), false).unwrap(), "no state yet");
        remember(&f, &st(C)).unwrap();
        assert_eq!(remembered(&f), Some(st(C)));
        let e = gate(&f, &seen(&[A, B]), false).unwrap_err();
        assert_eq!(crate::error::code_of(&e), Code::Refused);
        assert!(format!("{e}").contains("--accept-rollback"));
        assert!(
            !gate(&f, &seen(&[A, B]), true).unwrap(),
            "accepted, but no pruning"
        );
        assert!(gate(&f, &seen(&[A, B, C]), false).unwrap());
    }
}
