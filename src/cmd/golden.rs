//! Golden dry-run scripts: for each state a run can start from (today: nothing of the job up on this
//! host), the whole `--dry-run` script of a command compared byte for byte with
//! tests/golden/dry-run/NAME.sh. `E2E_UPDATE_GOLDEN=1 cargo test` rewrites them; review the diff.
//! What varies between machines and runs is replaced first: the key file's directory (`$KEYDIR`),
//! the snapshot stamp (`STAMP`) and the fusermount flavour (`fusermount3`).

use crate::cli::Common;
use crate::config::{Job, Overrides};
use crate::exec::Runner;
use crate::stack::{with_stack, Ctx};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Fixture {
    dir: PathBuf,
    ctx: Ctx,
    job: Job,
}

impl Fixture {
    fn new(name: &str, create: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-golden-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, [1u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let common = Common {
            job: "golden".into(),
            config: None,
            config_dir: Some(dir.clone()),
            dry_run: true,
            verbose: false,
            overrides: Overrides {
                host: Some("backup.example.org".into()),
                user: Some("alice".into()),
                remote_path: Some("/srv/backup/alice".into()),
                identity_file: Some("/etc/e2e-backup/id_ed25519".into()),
                known_hosts: Some("/etc/e2e-backup/known_hosts".into()),
                size: Some("1G".into()),
                key_file: Some(key),
                sources: vec!["/home".into()],
                ..Overrides::default()
            },
        };
        let ctx = Ctx::with_runner(&common, Runner::buffered()).unwrap();
        let mut job = ctx.job().unwrap();
        job.container.create = create;
        Fixture { dir, ctx, job }
    }

    /// The script so far, with what varies replaced; `sh -n` must accept it.
    fn script(&self) -> String {
        let text = self.ctx.run.script().join("\n") + "\n";
        let sh = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&text)
            .status()
            .unwrap();
        assert!(sh.success(), "sh -n rejects:\n{text}");
        let text = text.replace(&self.dir.display().to_string(), "$KEYDIR");
        let text = text.replace("fusermount ", "fusermount3 ");
        let stamp = regex_lite_stamp(&text);
        match stamp {
            Some(s) => text.replace(&s, "STAMP"),
            None => text,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first `YYYY-MM-DDTHH:MM:SSZ` in `text`.
fn regex_lite_stamp(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(19)).find_map(|i| {
        let w = &text[i..i + 20];
        let shape = w.bytes().enumerate().all(|(k, c)| match k {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
        shape.then(|| w.to_string())
    })
}

fn check(name: &str, got: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/dry-run")
        .join(format!("{name}.sh"));
    if std::env::var_os("E2E_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (E2E_UPDATE_GOLDEN=1 writes it)", file.display()));
    assert!(
        got == want,
        "{} differs (E2E_UPDATE_GOLDEN=1 rewrites it); got:\n{got}",
        file.display()
    );
}

#[test]
fn create_and_sync_from_nothing() {
    let f = Fixture::new("create", true);
    with_stack(&f.ctx, &f.job, false, |_| {
        super::sync::backup(&f.ctx, &f.job)
    })
    .unwrap();
    check("create-and-sync", &f.script());
}

#[test]
fn sync_from_nothing() {
    let f = Fixture::new("sync", false);
    with_stack(&f.ctx, &f.job, false, |_| {
        super::sync::backup(&f.ctx, &f.job)
    })
    .unwrap();
    check("sync", &f.script());
}

#[test]
fn restore_from_nothing() {
    let f = Fixture::new("restore", false);
    super::restore::restore(&f.ctx, &f.job, "latest/home/", "/srv/restore", false).unwrap();
    check("restore", &f.script());
}

#[test]
fn verify_from_nothing() {
    let f = Fixture::new("verify", false);
    super::verify::verify(&f.ctx, &f.job, "latest").unwrap();
    check("verify", &f.script());
}

/// The same create + sync, checked in the terms of the publish order rather than byte for byte:
/// the steps that matter are there, in order, whatever else the golden file shows.
#[test]
fn create_and_sync_keeps_the_publish_order() {
    let f = Fixture::new("order", true);
    with_stack(&f.ctx, &f.job, false, |_| {
        super::sync::backup(&f.ctx, &f.job)
    })
    .unwrap();
    let script = f.ctx.run.script();
    let text = script.join("\n");
    let run = "/run/e2e-backup/golden";
    let file = format!("{run}/remote/golden.luks");
    let building = format!("{run}/remote/.golden.luks.creating");
    let key = f.dir.join("k");
    let k = key.display();
    let expect_in_order = [
        "set -e".to_string(),
        format!("install -d -m 0700 {run} {run}/remote {run}/fs"),
        format!("sshfs alice@backup.example.org:/srv/backup/alice {run}/remote -F /dev/null -o allow_other"),
        format!("test '!' -e {file}"),
        format!("test '!' -L {file}"),
        format!("sh -c 'set -C && : >\"$1\"' e2e-create {building}"),
        format!("truncate -s 1073741824 {building}"),
        format!("loop=$(losetup -f --show --direct-io=on {building})"),
        format!("cryptsetup luksFormat --type luks2 --batch-mode --key-file {k} --sector-size 4096 \"$loop\""),
        format!("cryptsetup open --key-file {k} \"$loop\" e2e-golden"),
        "mkfs.ext4 -q -m0".to_string(),
        format!("mv -T {building} {file}"),
        format!("mount -t ext4 -o rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort /dev/mapper/e2e-golden {run}/fs"),
        "rsync -aHAX --numeric-ids --delete --delete-excluded".to_string(),
        // The publish order: flush, rename, latest, flush.
        format!("sync -f {run}/fs"),
        format!("mv -T {run}/fs/snapshots/"),
        format!("mv -T {run}/fs/latest.tmp {run}/fs/latest"),
        format!("sync -f {run}/fs"),
        format!("umount {run}/fs"),
        "cryptsetup close e2e-golden".to_string(),
        "losetup -d \"$loop\"".to_string(),
        format!("-u {run}/remote"),
    ];
    assert!(text.contains("--exclude=/run/e2e-backup/ "), "{text}");
    let mut at = 0;
    for e in &expect_in_order {
        let i = script[at..]
            .iter()
            .position(|l| l.contains(e.as_str()))
            .unwrap_or_else(|| panic!("{e:?} not found after line {at} in:\n{text}"));
        at += i + 1;
    }
    let sh = std::process::Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(&text)
        .status()
        .unwrap();
    assert!(sh.success(), "sh -n rejects:\n{text}");
}
