//! btrfs inside the container: what differs from ext4 in making, mounting and growing it. The
//! snapshot engine on top of it is in `snapshots`.

use crate::exec::Cmd;
use std::path::Path;

/// The working tree a btrfs container's runs update in place; each snapshot is a read-only
/// snapshot of it (`snapshots`).
pub const CURRENT: &str = "current";

/// mkfs.btrfs for a container on an untrusted, sparse, remote file.
///
/// - `--nodiscard`: no TRIM of the whole new device (through a loop on sshfs it is swallowed; over
///   NBD it would only punch holes the new sparse file already has).
/// - `-m dup`: two copies of every metadata block. The server holds the blocks: one it garbles is
///   then repaired from the other copy on read (btrfs checksums every block), not just detected.
///   Data has one copy; a garbled data block fails its read (checksum), and the manifest check names
///   the file.
/// - `--csum xxhash`: under XTS a garbled block decrypts to random bytes, which a 64-bit checksum
///   lets through with a chance of 2^-64 a block against crc32c's 2^-32, at no measured cost
///   (bench/btrfs-csum: reads 0.57-0.91x crc32c's time; sha256 1.4x). A replayed old block is
///   caught the same way, and a replayed metadata block also by its generation. (Needs Linux 5.5.)
pub fn mkfs(dev: &Path, label: &str) -> Cmd {
    Cmd::new("mkfs.btrfs")
        .args([
            "-q",
            "--nodiscard",
            "-m",
            "dup",
            "-d",
            "single",
            "--csum",
            "xxhash",
            "-L",
        ])
        .arg(label)
        .arg(dev)
}

/// `nosuid,nodev` as for ext4. Read-only: `rescue=nologreplay`, because a read-only device cannot
/// take the replay of a log tree an unclean stop left (ext4 needs an overlay for its journal; btrfs
/// can skip the log, which holds only fsyncs since the last commit: every snapshot is committed).
pub fn mount_options(read_only: bool) -> &'static str {
    if read_only {
        "ro,nosuid,nodev,rescue=nologreplay"
    } else {
        "rw,nosuid,nodev"
    }
}

/// Online grow to the size of the (grown) device.
pub fn resize_max(mountpoint: &Path) -> Cmd {
    Cmd::new("btrfs")
        .args(["filesystem", "resize", "max"])
        .arg(mountpoint)
}

/// A read-only snapshot of the working tree: the atomic publish of the btrfs engine.
pub fn snapshot(current: &Path, dest: &Path) -> Cmd {
    Cmd::new("btrfs")
        .args(["-q", "subvolume", "snapshot", "-r"])
        .arg(current)
        .arg(dest)
}

/// Delete a subvolume (a snapshot being pruned): one step, whatever it holds.
pub fn delete(subvolume: &Path) -> Cmd {
    Cmd::new("btrfs")
        .args(["-q", "subvolume", "delete"])
        .arg(subvolume)
}

/// Create the working tree on a container's first run.
pub fn create(subvolume: &Path) -> Cmd {
    Cmd::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(subvolume)
}

/// Wait until every deleted subvolume is cleaned up (its extents free).
pub fn wait_deleted(mountpoint: &Path) -> Cmd {
    Cmd::new("btrfs")
        .args(["-q", "subvolume", "sync"])
        .arg(mountpoint)
}
