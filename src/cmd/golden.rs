//! Golden dry-run scripts: for each state a run can start from (nothing of the job up, the remote
//! only, a half-open mapping, a killed run's stack, a read-only open), the whole `--dry-run` script
//! of a command compared byte for byte with tests/golden/dry-run/NAME.sh. The state is a fixture
//! tree (run directory, /proc, /sys) under a temporary root that the kernel views read.
//! `E2E_UPDATE_GOLDEN=1 cargo test` rewrites the files; review the diff. What varies between
//! machines and runs is replaced first: the temporary root (by `/`), the key file's directory
//! (`$KEYDIR`), the snapshot stamp (`STAMP`) and the fusermount flavour (`fusermount3`).

use crate::cli::Common;
use crate::config::{Job, Overrides};
use crate::exec::Runner;
use crate::paths::JobPaths;
use crate::stack::{with_stack, Ctx};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

struct Fixture {
    dir: tempfile::TempDir,
    /// The host's root as the run sees it: its run directory, /proc and /sys.
    root: PathBuf,
    ctx: Ctx,
    job: Job,
}

impl Fixture {
    fn new(create: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let key = dir.path().join("k");
        std::fs::write(&key, [1u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let common = Common {
            job: "golden".into(),
            config: None,
            config_dir: Some(dir.path().to_path_buf()),
            dry_run: true,
            verbose: false,
            quiet: false,
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
        let mut ctx = Ctx::with_runner(&common, Runner::buffered()).unwrap();
        ctx.paths = JobPaths::under(&root, "golden").unwrap();
        let mut job = ctx.job().unwrap();
        job.container.create = create;
        Fixture {
            dir,
            root,
            ctx,
            job,
        }
    }

    fn write(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut old = std::fs::read_to_string(path).unwrap_or_default();
        old.push_str(text);
        std::fs::write(path, old).unwrap();
    }

    fn mount(&self, mountpoint: &Path, fstype: &str, source: &str, options: &str) {
        std::fs::create_dir_all(mountpoint).unwrap();
        let line = format!(
            "40 30 0:50 / {} {options} shared:9 - {fstype} {source} rw\n",
            mountpoint.display()
        );
        self.write(&self.root.join("proc/self/mountinfo"), &line);
    }

    /// The job's sshfs is mounted and holds the container file.
    fn remote_mounted(self) -> Self {
        let p = &self.ctx.paths;
        let src = "alice@backup.example.org:/srv/backup/alice";
        self.mount(&p.remote, "fuse.sshfs", src, "rw,nosuid,nodev");
        self.write(&self.ctx.container_file(&self.job), "");
        self
    }

    /// The container is attached to loop0 and open as the job's LUKS mapping (dm-0).
    fn mapped(self) -> Self {
        let sys = self.root.join("sys/block");
        let file = self.ctx.container_file(&self.job);
        self.write(
            &sys.join("loop0/loop/backing_file"),
            &format!("{}\n", file.display()),
        );
        self.write(&sys.join("dm-0/dm/name"), "e2e-golden\n");
        std::fs::create_dir_all(sys.join("dm-0/slaves/loop0")).unwrap();
        self
    }

    /// The container's ext4 is mounted at fs/, read-write or read-only.
    fn fs_mounted(self, options: &str) -> Self {
        let p = &self.ctx.paths;
        self.mount(&p.fs, "ext4", "/dev/mapper/e2e-golden", options);
        self
    }

    /// fs/ holds one snapshot, `latest`.
    fn with_a_snapshot(self) -> Self {
        let fs = &self.ctx.paths.fs;
        std::fs::create_dir_all(fs.join("snapshots/2026-11-30T01:00:00Z/home")).unwrap();
        std::os::unix::fs::symlink("snapshots/2026-11-30T01:00:00Z", fs.join("latest")).unwrap();
        self
    }

    /// fs/ holds three snapshots a day apart; `latest` names the newest.
    fn with_three_snapshots(self) -> Self {
        let fs = &self.ctx.paths.fs;
        for d in 28..=30 {
            std::fs::create_dir_all(fs.join(format!("snapshots/2026-11-{d}T01:00:00Z/home")))
                .unwrap();
        }
        std::os::unix::fs::symlink("snapshots/2026-11-30T01:00:00Z", fs.join("latest")).unwrap();
        self
    }

    /// The run that opened the stack was killed (its pid is gone); it had mounted the remote.
    fn left_by_killed_run(self) -> Self {
        self.write(&self.ctx.paths.owner, "999999 1\n");
        self
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
        let text = text.replace(&format!("{}/", self.root.display()), "/");
        let text = text.replace(&self.dir.path().display().to_string(), "$KEYDIR");
        let text = text.replace("fusermount ", "fusermount3 ");
        let stamp = regex_lite_stamp(&text);
        match stamp {
            Some(s) => text.replace(&s, "STAMP"),
            None => text,
        }
    }

    fn sync(&self) -> anyhow::Result<()> {
        with_stack(&self.ctx, &self.job, false, |stack| {
            super::sync::backup(&self.ctx, &self.job, stack.fs)
        })
        .map(drop)
    }
}

/// The first `YYYY-MM-DDTHH:MM:SSZ` in `text` that is not a fixture's (those are all
/// `2026-11-DDT01:00:00Z`).
fn regex_lite_stamp(text: &str) -> Option<String> {
    let fixture = |w: &str| w.starts_with("2026-11-") && w.ends_with("T01:00:00Z");
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
        (shape && !fixture(w)).then(|| w.to_string())
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
    let f = Fixture::new(true);
    f.sync().unwrap();
    check("create-and-sync", &f.script());
}

#[test]
fn sync_from_nothing() {
    let f = Fixture::new(false);
    f.sync().unwrap();
    check("sync", &f.script());
}

/// e2e-open@.service's part (`e2e-open --no-mount`) on the remote its mount unit mounted: attach,
/// open, fsck, and no mount (the fs mount unit's). With no remote mounted it refuses, running nothing.
#[test]
fn open_between_the_mount_units() {
    let f = Fixture::new(false).remote_mounted();
    crate::stack::open::open_unmounted(&f.ctx, &f.job, false).unwrap();
    let script = f.script();
    assert!(!script.contains("mount -t ext4"), "{script}");
    check("open-no-mount", &script);
    let f = Fixture::new(false);
    let Err(e) = crate::stack::open::open_unmounted(&f.ctx, &f.job, false) else {
        panic!("e2e-open --no-mount with no remote mounted did not refuse");
    };
    assert!(format!("{e:#}").contains("is not mounted: e2e-open --no-mount opens between the job's mount units; run systemctl daemon-reload"), "{e:#}");
    assert_eq!(crate::error::code_of(&e), crate::error::Code::Config);
    assert!(
        f.ctx
            .run
            .script()
            .iter()
            .all(|l| l.starts_with('#') || l.starts_with("set ")),
        "{:?}",
        f.ctx.run.script()
    );
}

#[test]
fn sync_with_the_remote_mounted() {
    let f = Fixture::new(false).remote_mounted();
    f.sync().unwrap();
    check("sync-remote-only", &f.script());
}

#[test]
fn sync_with_the_mapping_open_and_no_mount() {
    let f = Fixture::new(false).remote_mounted().mapped();
    f.sync().unwrap();
    check("sync-half-open", &f.script());
}

#[test]
fn sync_over_the_stack_of_a_killed_run() {
    let f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("rw,relatime")
        .left_by_killed_run();
    f.sync().unwrap();
    check("sync-killed-run", &f.script());
}

/// sync.skip_unchanged over an open stack with a snapshot: the probe against `latest` first; a dry
/// run cannot know its answer, so the whole backup follows.
#[test]
fn sync_skip_unchanged_over_an_open_stack() {
    let mut f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("rw,relatime")
        .with_a_snapshot();
    f.job.sync.skip_unchanged = true;
    f.sync().unwrap();
    check("sync-skip-unchanged", &f.script());
}

#[test]
fn sync_refuses_a_read_only_mount() {
    let f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("ro,relatime");
    let e = f.sync().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}/run/e2e-backup/golden/fs is mounted read-only (a restore, or ext4 remounted it after an I/O error): run e2e-close golden and retry",
            f.root.display()
        )
    );
    let ran: Vec<String> = f
        .ctx
        .run
        .script()
        .into_iter()
        .skip(1)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(ran, Vec::<String>::new(), "nothing ran");
}

/// A forgotten read-only open (the mapping itself read-only): a sync closes it, then opens for
/// writing. (Mounted read-only over a writable mapping, ext4's reaction to an I/O error, it refuses:
/// `sync_refuses_a_read_only_mount`.)
#[test]
fn sync_over_a_forgotten_read_only_open() {
    let f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("ro,relatime");
    f.write(&f.root.join("sys/block/dm-0/ro"), "1\n");
    f.sync().unwrap();
    check("sync-over-read-only-open", &f.script());
}

#[test]
fn restore_from_nothing() {
    let f = Fixture::new(false);
    super::restore::restore(&f.ctx, &f.job, "latest/home/", "/srv/restore", false, false).unwrap();
    check("restore", &f.script());
}

#[test]
fn restore_from_a_read_only_open() {
    let f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("ro,relatime")
        .with_a_snapshot();
    super::restore::restore(&f.ctx, &f.job, "latest/home/", "/srv/restore", false, false).unwrap();
    check("restore-open-read-only", &f.script());
}

#[test]
fn verify_from_nothing() {
    let f = Fixture::new(false);
    super::verify::verify(&f.ctx, &f.job, "latest", false).unwrap();
    check("verify", &f.script());
}

#[test]
fn prune_over_an_open_stack() {
    let mut f = Fixture::new(false)
        .remote_mounted()
        .mapped()
        .fs_mounted("rw,relatime")
        .with_three_snapshots();
    f.job.retention.keep_last = 1;
    f.job.retention.keep_within = 86400;
    super::prune::prune(&f.ctx, &f.job, false).unwrap();
    check("prune", &f.script());
}

#[test]
fn prune_preview_from_nothing() {
    let f = Fixture::new(false);
    super::prune::prune(&f.ctx, &f.job, true).unwrap();
    check("prune-preview", &f.script());
}

/// e2e-trim from nothing up: the stack over NBD (module, tunnel, nbd-client, LUKS with discards,
/// check, mount), fstrim, the teardown in reverse; the server's allocation read before and after.
#[test]
fn trim_from_nothing() {
    let f = Fixture::new(false);
    super::trim::trim_job(&f.ctx, &f.job, None, 10809).unwrap();
    check("trim", &f.script());
}

/// e2e-setup's dry run: the host key is not fetched (it needs the network), so the script shows
/// the scan, then the files it would write, the job file's text whole, and the server's lines.
#[test]
fn setup_from_nothing() {
    let f = Fixture::new(false);
    let mut common = f.ctx.common.clone();
    common.config_dir = Some(f.dir.path().join("etc"));
    common.overrides.key_file = None;
    common.overrides.identity_file = None;
    common.overrides.known_hosts = None;
    let cli = crate::cli::SetupCli {
        common,
        fingerprint: None,
    };
    let p = super::setup::setup_with(&f.ctx.run, &cli).unwrap().unwrap();
    assert_eq!(p, f.dir.path().join("etc/golden.toml"));
    check("setup", &f.script());
}

/// The same create + sync, checked in the terms of the publish order rather than byte for byte:
/// the steps that matter are there, in order, whatever else the golden file shows.
#[test]
fn create_and_sync_keeps_the_publish_order() {
    let f = Fixture::new(true);
    f.sync().unwrap();
    let text = f.script();
    let script: Vec<&str> = text.lines().collect();
    let run = "/run/e2e-backup/golden";
    let file = format!("{run}/remote/golden.luks");
    let building = format!("{run}/remote/.golden.luks.creating");
    let k = "$KEYDIR/k";
    let expect_in_order = [
        "set -e".to_string(),
        format!("install -d -m 0700 {run} {run}/remote {run}/fs"),
        format!("sshfs alice@backup.example.org:/srv/backup/alice {run}/remote -o allow_other -o 'ssh_command=ssh -F /dev/null'"),
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
}
