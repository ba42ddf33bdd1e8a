//! The encrypted container: sparse file, loop device with direct I/O, LUKS2 format/open/close/resize.
//!
//! We make the loop device ourselves (`losetup --direct-io=on`) instead of letting `cryptsetup open
//! FILE` make a buffered one: on Debian 12's 6.1 kernel a buffered loop over sshfs made mkfs of
//! 2 GiB take 255 s against 7 s with direct I/O.

use crate::error::{fail, Code, Fail};
use crate::exec::{Arg, Cmd, Runner, Step, Undo};
use anyhow::Result;
use std::path::Path;

/// Test-only: `E2E_BACKUP_TEST_PBKDF=1` makes luksFormat use a cheap PBKDF so VM tests do not spend
/// minutes in Argon2 under emulation. It makes the key slot cheap to brute-force (harmless only
/// with a random key file, which is what we require anyway, but still), so an environment variable
/// alone (a stray `Environment=`, a shell profile) is not enough: the marker file
/// [`TEST_PBKDF_MARKER`] must exist too. It lives in /run, so no reboot keeps it.
pub const TEST_PBKDF_ENV: &str = "E2E_BACKUP_TEST_PBKDF";
pub const TEST_PBKDF_MARKER: &str = "/run/e2e-backup-test-only-weak-pbkdf";

pub fn test_pbkdf() -> bool {
    if !std::env::var(TEST_PBKDF_ENV).is_ok_and(|v| v == "1") {
        return false;
    }
    if Path::new(TEST_PBKDF_MARKER).exists() {
        crate::warning!("{TEST_PBKDF_ENV}=1 and {TEST_PBKDF_MARKER}: cheap test-only key derivation (PBKDF2, 1000 iterations)");
        true
    } else {
        crate::warning!("{TEST_PBKDF_ENV}=1 ignored without {TEST_PBKDF_MARKER}: the standard key derivation is used");
        false
    }
}

/// The name a new container is built under (`.NAME.creating` beside it) until it is formatted.
pub fn building_name(file: &Path) -> std::path::PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    file.with_file_name(format!(".{name}.creating"))
}

/// Create FILE empty, failing if anything (a symlink included) is at that name: the shell's
/// noclobber opens with O_CREAT|O_EXCL, which never follows a symlink.
pub fn create_exclusive(file: &Path) -> Cmd {
    Cmd::new("sh")
        .args(["-c", "set -C && : >\"$1\"", "e2e-create"])
        .arg(file)
}

/// `truncate -s SIZE FILE`: a sparse file, no data written.
pub fn truncate(file: &Path, size: u64) -> Cmd {
    Cmd::new("truncate")
        .arg("-s")
        .arg(size.to_string())
        .arg(file)
}

/// `losetup -f --show --direct-io=on [-r] FILE`, prints the loop device.
pub fn losetup_attach(file: &Path, read_only: bool) -> Cmd {
    let mut c = Cmd::new("losetup").args(["-f", "--show", "--direct-io=on"]);
    if read_only {
        c = c.arg("-r");
    }
    c.arg(file)
}

pub fn losetup_detach(dev: impl Into<Arg>) -> Cmd {
    Cmd::new("losetup").arg("-d").arg(dev)
}

/// `losetup -c LOOP`: re-read the backing file's size after growing it.
pub fn losetup_refresh(dev: impl Into<Arg>) -> Cmd {
    Cmd::new("losetup").arg("-c").arg(dev)
}

pub fn luks_format(dev: impl Into<Arg>, key: &Path, fast_pbkdf: bool) -> Cmd {
    let mut c = Cmd::new("cryptsetup")
        .args([
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--key-file",
        ])
        .arg(key)
        .args(["--sector-size", "4096"]);
    if fast_pbkdf {
        c = c.args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
    }
    c.arg(dev)
}

/// Whether the container file is there, judged without following a symlink: a symlink on the server
/// would resolve on the client (sshfs shows it as is), so truncate + luksFormat could hit a client
/// file. Any error but "not found" is an error, never "absent, so create".
pub fn present(file: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_file() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(fail(
            Code::Refused,
            format!(
                "container {} is a symbolic link on the server: refused (it would resolve on this client); on the server, put the container file itself there",
                file.display()
            ),
        )),
        Ok(_) => Err(fail(
            Code::Refused,
            format!(
                "container {} is not a regular file on the server: refused",
                file.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(fail(
            Code::Runtime,
            format!(
                "cannot tell whether container {} exists ({e}): nothing created",
                file.display()
            ),
        )),
    }
}

/// Refuse a container the server account cannot read or write (handed back owned by another user,
/// say) with a line that says so: otherwise isLuks reports "not a LUKS container", or losetup quietly
/// attaches it read-only and fsck fails later with "Operation not permitted". Opening the file through
/// sshfs asks the server and changes nothing.
pub fn check_access(file: &Path, user: &str, write: bool) -> Result<()> {
    let how = if write { "writable" } else { "readable" };
    match std::fs::OpenOptions::new().read(!write).write(write).open(file) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(fail(
            Code::Refused,
            format!(
                "container {} is not {how} by the server account {user} ({e}): on the server, give it back to that account (chown and chmod 600)",
                file.display()
            ),
        )),
        // Anything else (a lost link, say) is for the steps that follow to report.
        _ => Ok(()),
    }
}

/// `cryptsetup isLuks FILE`: refuse to touch anything that is not ours.
/// `cryptsetup luksUUID FILE`: the header's UUID (no key needed).
pub fn luks_uuid(file: &Path) -> Cmd {
    Cmd::new("cryptsetup").arg("luksUUID").arg(file)
}

pub fn is_luks(file: &Path) -> Cmd {
    let f = file.display().to_string();
    Cmd::new("cryptsetup")
        .arg("isLuks")
        .arg(file)
        .on_fail(move |_, _| {
            Some(Fail::new(
                Code::Refused,
                format!("{f} is not a LUKS container: refusing to touch it (check container.file)"),
            ))
        })
}

/// The refusal for a key that opens no keyslot (cryptsetup exits 2).
pub fn wrong_key(file: &str) -> Fail {
    Fail::new(
        Code::Refused,
        format!("wrong key for container {file}: check container.key_file"),
    )
}

pub struct OpenOpts {
    pub read_only: bool,
    pub allow_discards: bool,
}

pub fn luks_open(dev: impl Into<Arg>, key: &Path, dm_name: &str, o: &OpenOpts) -> Cmd {
    let dev = dev.into();
    let shown = dev.value();
    let mut c = Cmd::new("cryptsetup")
        .arg("open")
        .arg("--key-file")
        .arg(key);
    if o.read_only {
        c = c.arg("--readonly");
    }
    if o.allow_discards {
        c = c.arg("--allow-discards");
    }
    c.arg(dev)
        .arg(dm_name)
        .on_fail(move |rc, _| (rc == 2).then(|| wrong_key(&shown)))
}

/// A non-persistent device-mapper snapshot NAME of ORIGIN (SECTORS long) whose writes go to COW:
/// ext4 can replay its journal into it while ORIGIN (and the server's file under it) stays as is.
pub fn overlay_create(name: &str, origin: &Path, sectors: u64, cow: &Arg) -> Cmd {
    let table = format!(
        "0 {sectors} snapshot {} {} N 8",
        origin.display(),
        cow.value()
    );
    Cmd::new("dmsetup")
        .arg("create")
        .arg(name)
        .arg("--table")
        .arg(table)
}

pub fn overlay_remove(name: &str) -> Cmd {
    Cmd::new("dmsetup").arg("remove").arg(name)
}

/// `losetup -f --show FILE` for a local file (the overlay's copy-on-write file).
pub fn losetup_local(file: &Path) -> Cmd {
    Cmd::new("losetup").args(["-f", "--show"]).arg(file)
}

pub fn luks_close(dm_name: &str) -> Cmd {
    Cmd::new("cryptsetup").arg("close").arg(dm_name)
}

pub fn luks_resize(dm_name: &str, key: &Path) -> Cmd {
    Cmd::new("cryptsetup")
        .arg("resize")
        .arg("--key-file")
        .arg(key)
        .arg(dm_name)
}

// The lifecycle steps: each hands its commands to the one Runner as one list, with what undoes
// each, so a bring-up that fails half-way unwinds in reverse.

/// Format a new container under its building name: an empty file made exclusively, sized sparse,
/// attached to a loop device, luksFormat'ed, opened as `dm_name`. Returns the loop device.
pub fn format(
    run: &Runner,
    undo: &mut Undo,
    building: &Path,
    size: u64,
    key: &Path,
    dm_name: &str,
) -> Result<Arg> {
    let lp = Arg::Var("loop");
    let rw = OpenOpts {
        read_only: false,
        allow_discards: false,
    };
    let v = run.steps(
        undo,
        vec![
            Step::run(create_exclusive(building)).undo(Cmd::rm_f(building)),
            Step::run(truncate(building, size)),
            Step::capture("loop", losetup_attach(building, false)).undo(losetup_detach(&lp)),
            Step::run(luks_format(&lp, key, test_pbkdf())),
            open_step(&lp, key, dm_name, &rw, &building.display().to_string()),
        ],
    )?;
    Ok(v.get("loop"))
}

/// Attach `file` to a loop device unless `existing` already backs it (undo: detach), and open the
/// LUKS mapping `dm_name` on it (undo: close). Returns the loop device.
pub fn attach_open(
    run: &Runner,
    undo: &mut Undo,
    file: &Path,
    existing: Option<Arg>,
    key: &Path,
    dm_name: &str,
    o: &OpenOpts,
) -> Result<Arg> {
    let lp = existing.clone().unwrap_or(Arg::Var("loop"));
    let mut steps = Vec::new();
    if existing.is_none() {
        steps.push(
            Step::capture("loop", losetup_attach(file, o.read_only)).undo(losetup_detach(&lp)),
        );
    }
    steps.push(open_step(&lp, key, dm_name, o, &file.display().to_string()));
    let v = run.steps(undo, steps)?;
    Ok(existing.unwrap_or_else(|| v.get("loop")))
}

/// Open the LUKS mapping `dm_name` on the block device `dev` (e2e-trim's NBD device), refused
/// unless it holds a LUKS header (undo: close).
pub fn open_device(
    run: &Runner,
    undo: &mut Undo,
    dev: &Path,
    key: &Path,
    dm_name: &str,
    o: &OpenOpts,
) -> Result<()> {
    let shown = dev.display().to_string();
    run.steps(
        undo,
        vec![
            Step::run(is_luks(dev)),
            open_step(&Arg::from(dev), key, dm_name, o, &shown),
        ],
    )
    .map(drop)
}

/// Open the LUKS mapping `dm_name` on `dev` (undo: close). No separate key test first: a wrong key
/// fails here (exit 2), named for the container `shown`.
fn open_step(dev: &Arg, key: &Path, dm_name: &str, o: &OpenOpts, shown: &str) -> Step {
    let shown = shown.to_string();
    Step::run(
        luks_open(dev, key, dm_name, o).on_fail(move |rc, _| (rc == 2).then(|| wrong_key(&shown))),
    )
    .undo(luks_close(dm_name))
}

/// Grow the container to `new` bytes online: file → loop capacity → LUKS (systemd-homed's order;
/// the filesystem follows, by its own layer). Nothing to undo: each step only grows.
pub fn grow(
    run: &Runner,
    file: &Path,
    loop_dev: &Arg,
    dm_name: &str,
    key: &Path,
    new: u64,
) -> Result<()> {
    run.all(vec![
        Step::run(truncate(file, new)),
        Step::run(losetup_refresh(loop_dev)),
        Step::run(luks_resize(dm_name, key)),
    ])
}

/// A read-only overlay NAME over ORIGIN, as long as it: a sparse copy-on-write file `cow_file` on
/// the client, its loop device, the snapshot mapping (undo: remove all three). Returns the loop device.
pub fn overlay(
    run: &Runner,
    undo: &mut Undo,
    name: &str,
    origin: &Path,
    cow_file: &Path,
) -> Result<Arg> {
    let sectors: u64 = run
        .query(&Cmd::new("blockdev").arg("--getsz").arg(origin))?
        .and_then(|o| o.trim().parse().ok())
        .ok_or_else(|| {
            fail(
                Code::Runtime,
                format!("blockdev --getsz {}: no size", origin.display()),
            )
        })?;
    // Sparse, as large as the container: dm-snapshot drops a snapshot whose store fills up, and
    // tmpfs only holds what is written (the journal's replay: at most the journal's size).
    let v = run.steps(
        undo,
        vec![
            Step::run(truncate(cow_file, sectors * 512)).undo(Cmd::rm_f(cow_file)),
            Step::capture("cow", losetup_local(cow_file)).undo(losetup_detach(Arg::Var("cow"))),
        ],
    )?;
    // The table names the device inside one argument, so it is built once the device is known.
    let cow = v.get("cow");
    run.steps(
        undo,
        vec![Step::run(overlay_create(name, origin, sectors, &cow)).undo(overlay_remove(name))],
    )?;
    Ok(cow)
}

/// Remove a read-only overlay: the snapshot mapping, then its copy-on-write loop device(s) and file.
pub fn remove_overlay(name: &str, cow_loops: &[Arg], cow_file: &Path) -> Vec<Step> {
    let mut steps = vec![Step::run(overlay_remove(name))];
    steps.extend(cow_loops.iter().map(|l| Step::run(losetup_detach(l))));
    steps.push(Step::run(Cmd::rm_f(cow_file)));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let key = Path::new("/etc/e2e-backup/home.key");
        let f = Path::new("/run/e2e-backup/home/remote/home.luks");
        assert_eq!(
            losetup_attach(f, false).render(),
            "losetup -f --show --direct-io=on /run/e2e-backup/home/remote/home.luks"
        );
        assert_eq!(
            luks_format(Arg::Var("loop"), key, false).render(),
            "cryptsetup luksFormat --type luks2 --batch-mode --key-file /etc/e2e-backup/home.key --sector-size 4096 \"$loop\""
        );
        assert!(luks_format("/dev/loop0", key, true)
            .render()
            .contains("--pbkdf pbkdf2 --pbkdf-force-iterations 1000 /dev/loop0"));
        let o = OpenOpts {
            read_only: true,
            allow_discards: false,
        };
        assert_eq!(
            luks_open("/dev/loop3", key, "e2e-home", &o).argv(),
            [
                "cryptsetup",
                "open",
                "--key-file",
                "/etc/e2e-backup/home.key",
                "--readonly",
                "/dev/loop3",
                "e2e-home"
            ]
        );
        assert_eq!(
            luks_resize("e2e-home", key).render(),
            "cryptsetup resize --key-file /etc/e2e-backup/home.key e2e-home"
        );
        assert_eq!(truncate(f, 1 << 30).argv()[1..3], ["-s", "1073741824"]);
    }
}
