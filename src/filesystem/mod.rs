//! The filesystem inside the container: ext4 (the default) or btrfs (`container.filesystem`), each
//! also the engine that makes snapshots (`snapshots`). mkfs, fsck, mount/umount, grow, fstrim, statvfs.

pub mod btrfs;

use crate::error::{Code, Fail};
use crate::exec::{Cmd, Runner};
use anyhow::{Context, Result};
use std::path::Path;

/// Which filesystem a container holds. The filesystem itself is the record of the choice: every open
/// reads its type from the opened mapping ([`detect`]) and refuses a job file that says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// ext4 with multi-mount protection; snapshots are hard-link farms (`rsync --link-dest`).
    #[default]
    Ext4,
    /// btrfs; snapshots are read-only subvolume snapshots of a working tree rsync updates in place.
    Btrfs,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Ext4, Kind::Btrfs];

    /// The name in job files, mount(8)'s `-t` and blkid's TYPE.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ext4 => "ext4",
            Kind::Btrfs => "btrfs",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The smallest container this filesystem fits in (mkfs.btrfs refuses below ~114 MiB).
    pub fn min_container(self) -> u64 {
        match self {
            Kind::Ext4 => crate::size::MIN_CONTAINER,
            Kind::Btrfs => 128 << 20,
        }
    }

    /// Make this filesystem on the opened mapping `dev`.
    pub fn make(self, run: &Runner, dev: &Path, label: &str) -> Result<()> {
        run.run(&self.mkfs(dev, label)).map(drop)
    }

    fn mkfs(self, dev: &Path, label: &str) -> Cmd {
        match self {
            Kind::Ext4 => mkfs_ext4(dev, label),
            Kind::Btrfs => btrfs::mkfs(dev, label),
        }
    }

    /// Mount `dev` on `mountpoint`; an ext4 MMP refusal names the host that holds it.
    pub fn mount_on(
        self,
        run: &Runner,
        dev: &Path,
        mountpoint: &Path,
        read_only: bool,
    ) -> Result<()> {
        run.run(&self.mount(dev, mountpoint, read_only))
            .map(drop)
            .map_err(|e| name_mmp_holder(run, dev, e))
    }

    /// `mount -t KIND -o OPTIONS DEV MOUNTPOINT` (see [`Kind::mount_options`]).
    fn mount(self, dev: &Path, mountpoint: &Path, read_only: bool) -> Cmd {
        let c = Cmd::new("mount")
            .args(["-t", self.name(), "-o", self.mount_options(read_only)])
            .arg(dev)
            .arg(mountpoint);
        match self {
            // The kernel's MMP refusal reaches mount(8) only as EBUSY.
            Kind::Ext4 => c.on_fail(|_, out| mmp_refusal(&out.replace("busy", "in use"))),
            Kind::Btrfs => c,
        }
    }

    /// The mount options, for e2e-open's mount and the generated mount unit's `Options=`.
    pub fn mount_options(self, read_only: bool) -> &'static str {
        match self {
            Kind::Ext4 => ext4_mount_options(read_only),
            Kind::Btrfs => btrfs::mount_options(read_only),
        }
    }

    /// Before a trim: wait until the space of deleted snapshots is free. btrfs frees a deleted
    /// subvolume's extents in the background, after `subvolume delete` returns (and again after
    /// the next mount when it was unmounted first), and they are free space once that is
    /// committed (`sync -f`); fstrim can only give back free space. ext4: nothing to wait for.
    pub fn settle_deletions(self, run: &Runner, mountpoint: &Path) -> Result<()> {
        match self {
            Kind::Ext4 => Ok(()),
            Kind::Btrfs => {
                run.run(&btrfs::wait_deleted(mountpoint))?;
                run.run(&sync_fs(mountpoint)).map(drop)
            }
        }
    }

    /// Grow the filesystem online to fill its (already grown) device.
    pub fn grow(self, dev: &Path, mountpoint: &Path) -> Cmd {
        match self {
            Kind::Ext4 => Cmd::new("resize2fs").arg(dev),
            Kind::Btrfs => btrfs::resize_max(mountpoint),
        }
    }
}

/// The filesystem the opened mapping `dev` holds, refused unless it is `want`, the job file's (a
/// dry-run, which cannot look, takes the job file's word).
pub fn detect(run: &Runner, dev: &Path, want: Kind, origin: &str) -> Result<Kind> {
    match run.query(&blkid(dev))? {
        Some(out) => Ok(detected(&out, want, origin)?),
        None => Ok(want),
    }
}

/// `blkid -p`: the filesystem type on the opened mapping, probed from the device itself (not from
/// blkid's cache). Its output is read by [`detected`].
fn blkid(dev: &Path) -> Cmd {
    Cmd::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(dev)
        // 2: nothing recognised on the device.
        .ok_code(2)
}

/// The filesystem a container holds, from [`blkid`]'s output, or the one line that says what is
/// wrong: a container of the other kind than the job file names, or none we know.
pub fn detected(out: &str, want: Kind, origin: &str) -> Result<Kind, Fail> {
    let found = out.trim();
    match Kind::parse(found) {
        Some(k) if k == want => Ok(k),
        Some(k) => Err(Fail::new(
            Code::Config,
            format!(
                "the container holds {} but {origin} says container.filesystem = \"{}\": set it to \"{}\" (the filesystem is chosen when the container is created)",
                k.name(),
                want.name(),
                k.name()
            ),
        )),
        None => Err(Fail::new(
            Code::Refused,
            format!(
                "the opened container holds {}, not ext4 or btrfs: not a container of e2e-backup's, or damaged; nothing was changed",
                if found.is_empty() { "no filesystem blkid knows" } else { found }
            ),
        )),
    }
}

/// mkfs.ext4 for a container on an untrusted, sparse, remote file.
///
/// - `-m0`: no root reserve; the container is backup data only.
/// - `lazy_itable_init=1,lazy_journal_init=1`: do not write every inode table and the journal now
///   (tens of GiB of ciphertext over the network on a large container, and no sparseness left);
///   combined with `noinit_itable` at mount (see [`ext4_mount_options`]) they are never written in the background.
/// - `-O mmp`: multi-mount protection. The MMP block lives inside the encrypted container (the
///   server learns nothing) and names the holder's host; a second host's fsck/mount then refuses.
///   It costs a delay at mount (2 × mmp_update_interval + 1 s) — measured in the VM suite.
fn mkfs_ext4(dev: &Path, label: &str) -> Cmd {
    Cmd::new("mkfs.ext4")
        .args([
            "-q",
            "-m0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-O",
            "mmp",
            "-L",
        ])
        .arg(label)
        .arg(dev)
}

/// The holder's node name in an MMP block dump: `debugfs -R dump_mmp` prints `node_name: X`,
/// e2fsck's MMP report `    mmp_node_name: X`.
pub fn mmp_holder(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let l = l.trim();
        let n = l
            .strip_prefix("mmp_node_name:")
            .or_else(|| l.strip_prefix("node_name:"))?
            .trim();
        (!n.is_empty()).then(|| n.to_string())
    })
}

fn refused(node: Option<&str>) -> Fail {
    let node = node
        .map(|n| format!(" (held by host {n})"))
        .unwrap_or_default();
    Fail::new(
        Code::Refused,
        format!("container is in use by another host{node}: close it there first (ext4 multi-mount protection)"),
    )
}

fn mmp_refusal(output: &str) -> Option<Fail> {
    let s = output.to_ascii_lowercase();
    if !(s.contains("mmp") || s.contains("in use") || s.contains("currently active")) {
        return None;
    }
    Some(refused(mmp_holder(output).as_deref()))
}

/// `debugfs -R dump_mmp`: reads the MMP block (read-only open; no MMP check of its own).
pub fn dump_mmp(dev: &Path) -> Cmd {
    Cmd::new("debugfs").args(["-R", "dump_mmp"]).arg(dev)
}

/// An MMP refusal from fsck or mount that does not name the holder (the kernel tells mount(8)
/// only EBUSY; e2fsck's report varies): read the holder's node name from the MMP block itself.
fn name_mmp_holder(run: &Runner, dev: &Path, e: anyhow::Error) -> anyhow::Error {
    if crate::error::code_of(&e) != Code::Refused || format!("{e:#}").contains("held by host") {
        return e;
    }
    match run.query(&dump_mmp(dev)) {
        Ok(Some(out)) => match mmp_holder(&out) {
            Some(n) => refused(Some(&n)).into(),
            None => e,
        },
        _ => e,
    }
}

/// How many more times [`check`] runs fsck when the MMP block names this very host.
const OWN_HOST_RECHECKS: usize = 3;

/// `fsck.ext4 -p` before a read-write mount, with MMP refusals named by their holder. A refusal whose
/// holder is this very host is most likely an earlier run of ours whose last writes are still landing
/// on the server: after a dropped link the kernel delivers a dead ssh connection's queued writes (MMP
/// updates among them) once the link is back, and e2fsck sees the block change. Such a stream ends; a
/// live holder updates the block every 5 s. So fsck runs again, up to [`OWN_HOST_RECHECKS`] times:
/// each run is e2fsck's own MMP wait, so a live holder is still refused.
pub fn check_and_repair(
    run: &crate::exec::Runner,
    k: &crate::kernel::Kernel,
    dev: &Path,
) -> anyhow::Result<()> {
    let me = k.hostname();
    let mut rechecks = 0;
    loop {
        let Err(e) = run.run(&fsck(dev)) else {
            return Ok(());
        };
        if crate::error::code_of(&e) != Code::Refused {
            return Err(e);
        }
        let holder = run
            .query(&dump_mmp(dev))
            .ok()
            .flatten()
            .and_then(|o| mmp_holder(&o));
        match holder {
            Some(h) if h == me.trim() && rechecks < OWN_HOST_RECHECKS => {
                rechecks += 1;
                crate::notice!("the MMP block names this host as the holder: an earlier run's writes may still be landing on the server (after a dropped link); checking again");
            }
            Some(h) if !format!("{e:#}").contains("held by host") => {
                return Err(refused(Some(&h)).into())
            }
            _ => return Err(e),
        }
    }
}

/// `fsck.ext4 -p`: repair what is safe. Exit 1 (errors fixed) is success; MMP activity means
/// another host has the filesystem mounted.
pub fn fsck(dev: &Path) -> Cmd {
    let d = dev.display().to_string();
    Cmd::new("fsck.ext4")
        .arg("-p")
        .arg(dev)
        .ok_code(1)
        .on_fail(move |rc, stderr| {
            mmp_refusal(stderr).or_else(|| {
                (rc & 4 != 0).then(|| {
                    Fail::new(
                        Code::Runtime,
                        format!("filesystem on {d} has errors fsck -p cannot fix: run fsck.ext4 {d} by hand"),
                    )
                })
            })
        })
}

/// The ext4 mount options:
/// `errors=remount-ro` so a lost link stops writes instead of spreading damage;
/// `data_err=abort` so a failed *data* write (the server's disk full under the sparse file, the
/// link gone) aborts the journal too — ext4's default only logs it, and the run would go on to
/// rename a snapshot whose blocks never reached the server;
/// `noinit_itable` so the kernel never zeroes inode tables in the background (that would allocate
/// them on the server and send them over the network — see [`mkfs_ext4`]).
fn ext4_mount_options(read_only: bool) -> &'static str {
    if read_only {
        "ro,nosuid,nodev,noinit_itable"
    } else {
        "rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort"
    }
}

/// Whether the ext4 journal on `dev` needs recovery, read from its superblock (`dumpe2fs -h`:
/// read only, MMP-safe); `None` in a dry-run, which cannot look.
pub fn journal_needs_recovery(run: &Runner, dev: &Path) -> Result<Option<bool>> {
    let sb = run.query(&Cmd::new("dumpe2fs").arg("-h").arg(dev))?;
    Ok(sb.map(|sb| needs_recovery(&sb)))
}

/// Whether `dumpe2fs -h` shows a journal that needs recovery (an unclean stop): then a read-only
/// mount on a read-only device fails ("write access unavailable, cannot proceed").
fn needs_recovery(superblock: &str) -> bool {
    superblock
        .lines()
        .filter(|l| l.starts_with("Filesystem features:"))
        .any(|l| l.split_whitespace().any(|w| w == "needs_recovery"))
}

pub fn umount(mountpoint: &Path) -> Cmd {
    Cmd::new("umount").arg(mountpoint)
}

/// `fstrim -v`: discard the free blocks of the filesystem at `mountpoint`. Returns the bytes fstrim
/// says it trimmed (what reaches the server is for the server's allocation to tell).
pub fn fstrim(run: &Runner, mountpoint: &Path) -> Result<Option<u64>> {
    let out = run.run(&Cmd::new("fstrim").arg("-v").arg(mountpoint))?;
    Ok(parse_fstrim(&out.stdout))
}

/// `sync -f`: flush the container's filesystem (and through the loop device the file on sshfs).
pub fn sync_fs(mountpoint: &Path) -> Cmd {
    Cmd::new("sync").arg("-f").arg(mountpoint)
}

/// Bytes `fstrim -v` says it trimmed (only reported, never trusted: see e2e-trim).
fn parse_fstrim(out: &str) -> Option<u64> {
    let inner = out.split('(').nth(1)?;
    inner.split_whitespace().next()?.parse().ok()
}

/// (free bytes for us, total bytes) of a mounted filesystem.
pub fn usage(mountpoint: &Path) -> Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(mountpoint)
        .with_context(|| format!("statvfs {}", mountpoint.display()))?;
    let f = s.fragment_size() as u64;
    Ok((s.blocks_available() as u64 * f, s.blocks() as u64 * f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let dev = Path::new("/dev/mapper/e2e-home");
        assert_eq!(
            Kind::Ext4.mkfs(dev, "e2e-home").render(),
            "mkfs.ext4 -q -m0 -E lazy_itable_init=1,lazy_journal_init=1 -O mmp -L e2e-home /dev/mapper/e2e-home"
        );
        assert_eq!(
            Kind::Ext4
                .mount(dev, Path::new("/run/e2e-backup/home/fs"), false)
                .render(),
            "mount -t ext4 -o rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort /dev/mapper/e2e-home /run/e2e-backup/home/fs"
        );
        assert!(Kind::Ext4
            .mount(dev, Path::new("/x"), true)
            .render()
            .contains("-o ro,nosuid,nodev,noinit_itable "));
        assert_eq!(
            fsck(dev).script_line(),
            "fsck.ext4 -p /dev/mapper/e2e-home || case $? in 1) ;; *) false ;; esac"
        );
    }

    #[test]
    fn mmp_message() {
        let f = mmp_refusal("e2fsck: MMP: device currently active while trying to open /dev/mapper/e2e-home\n    mmp_node_name: clientb\n").unwrap();
        assert_eq!(f.code, Code::Refused);
        assert!(f.msg.contains("(held by host clientb)"), "{}", f.msg);
        assert!(mmp_refusal("bad superblock").is_none());
        // debugfs -R dump_mmp (e2fsprogs 1.47), as read from a real image.
        let dump = "block_number: 4385\nupdate_interval: 5\ncheck_interval: 5\nsequence: ff4d4d50\ntime: 1795765184 -- Fri Nov 27 07:39:44 2026\nnode_name: client-a\ndevice_name: dm-0\nmagic: 0x4d4d50\n";
        assert_eq!(mmp_holder(dump).as_deref(), Some("client-a"));
        assert_eq!(mmp_holder("node_name: \n"), None);
    }

    #[test]
    fn journal_recovery() {
        let dirty = "Filesystem volume name:   <none>\nFilesystem features:      has_journal ext_attr needs_recovery extent mmp\n";
        assert!(needs_recovery(dirty));
        assert!(!needs_recovery(&dirty.replace("needs_recovery ", "")));
        assert!(!needs_recovery("Journal features: needs_recovery\n"));
    }

    #[test]
    fn fstrim_output() {
        assert_eq!(
            parse_fstrim("/run/e2e-backup/h/fs: 2.8 GiB (3006477107 bytes) trimmed\n"),
            Some(3_006_477_107)
        );
        assert_eq!(parse_fstrim("nonsense"), None);
    }
}
