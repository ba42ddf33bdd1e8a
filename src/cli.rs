//! clap definitions of all binaries, one derive struct each. Man pages and shell completions are
//! generated from these (clap_mangen), so help texts here are the documentation.

use crate::config::Overrides;
use clap::{Args, Parser};
use std::path::PathBuf;

/// Options every binary takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Job name: selects /etc/e2e-backup/<JOB>.toml and /run/e2e-backup/<JOB>/
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Job file to read instead of <config-dir>/<JOB>.toml
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of job files [env: E2E_BACKUP_CONFIG_DIR] [default: /etc/e2e-backup]
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Print the commands that would run, shell-quoted, one per line, as a script; run none
    #[arg(long)]
    pub dry_run: bool,
    /// Also show the output of the commands run
    #[arg(short, long)]
    pub verbose: bool,
    /// Only warnings and errors on stderr: no logged commands, progress, notes or reports (for
    /// cron and scripts; stdout and the exit code are unchanged)
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The environment variables the binaries read, and what each does: `--help` and the man pages'
/// ENVIRONMENT section are made from this list.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "E2E_BACKUP_CONFIG_DIR",
        "directory of job files, as --config-dir (default /etc/e2e-backup)",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "if $CREDENTIALS_DIRECTORY/key exists (systemd LoadCredential=key:...), it is used instead of container.key_file",
    ),
    (
        "E2E_BACKUP_STATE_DIR",
        "where the client keeps its record of the newest snapshot it wrote, instead of /var/lib/e2e-backup",
    ),
    (
        "E2E_BACKUP_STALL_TIMEOUT",
        "seconds without an answer from the server before a run stops itself (default 600)",
    ),
    (
        "E2E_BACKUP_OUTCOME",
        "set by the e2e-backup@ units: e2e-mount, e2e-open and e2e-sync write their result to this file, and e2e-close --outcome reads it",
    ),
    (
        "JOURNAL_STREAM",
        "set by systemd: when stderr is the journal, error, warning and note lines carry their priority (journalctl -p warning shows them)",
    ),
    (
        "NOTIFY_SOCKET",
        "set by systemd: progress and the result go to it as STATUS= lines",
    ),
    (
        "E2E_BACKUP_TEST_PBKDF",
        "=1 is for the test suite ONLY: with the file /run/e2e-backup-test-only-weak-pbkdf too (the variable alone is ignored, with a warning) luksFormat uses PBKDF2 with 1000 iterations, which makes the key slot cheap to attack",
    ),
];

/// `--help`'s closing paragraphs: `notes` (if any), the environment, what each exit code means.
fn after_help(notes: &str) -> String {
    let env: Vec<String> = ENVIRONMENT
        .iter()
        .map(|(k, v)| format!("  {k}: {v}"))
        .collect();
    format!(
        "{notes}{}Environment:\n{}\n\n{}",
        if notes.is_empty() { "" } else { "\n\n" },
        env.join("\n"),
        crate::error::exit_status("Exit status: ", 100)
    )
}

/// e2e-trim's notes on the server side (`--help`, and NOTES in its man page).
pub const TRIM_NOTES: &str = "\
Server side: an NBD server bound to the server's loopback, one export per container, named after the
container file, turning TRIM into hole punches. Use qemu-nbd (Debian package qemu-utils), run as the
client's backup user, e.g.:

    qemu-nbd --persistent --bind 127.0.0.1 --port 10809 --format raw \\
        --discard=unmap --export-name home.luks /srv/backup/alice/home.luks

Not nbd-server (package nbd-server, up to 3.27 at least): its TRIM handler (exptrim in nbdsrv.c)
clamps each request to export size minus twice its offset, so discards in the upper half of the
file are dropped while fstrim still reports them trimmed.

NBD is plain text; e2e-trim reaches it only through an SSH tunnel whose local end is a Unix socket in
the job's 0700 run directory (ssh -L /run/e2e-backup/JOB/nbd.sock:127.0.0.1:10809)
with the job's pinned host key and identity.";

/// Mount the job's remote directory over sshfs at /run/e2e-backup/<JOB>/remote.
///
/// Strict host-key checking against remote.known_hosts, keep-alives so a dead link fails within
/// about 30 seconds, no reconnect (a dropped link is fatal for the run). Prints the mountpoint.
#[derive(Debug, Parser)]
#[command(name = "e2e-mount", version, after_help = after_help(""))]
pub struct MountCli {
    #[command(flatten)]
    pub common: Common,
    /// Stay in the foreground (for systemd Type=notify): READY=1 once mounted, unmount on SIGTERM
    #[arg(long)]
    pub foreground: bool,
}

/// Open the job's encrypted container and mount its filesystem at /run/e2e-backup/<JOB>/fs.
///
/// Mounts the remote first if needed. Creates the container on first use with --create (or
/// container.create = true). Refuses a file that is not LUKS, a wrong key, or a container another
/// host holds open. Prints the mountpoint.
#[derive(Debug, Parser)]
#[command(name = "e2e-open", version, after_help = after_help(""))]
pub struct OpenCli {
    #[command(flatten)]
    pub common: Common,
    /// Create the container if the file does not exist yet
    #[arg(long)]
    pub create: bool,
    /// Open and mount read-only (for restores)
    #[arg(long)]
    pub read_only: bool,
    /// Stop at the checked LUKS mapping and leave mounting to the job's mount unit; the remote
    /// must be mounted already (how e2e-open@.service runs, see e2e-backup-generator(8))
    #[arg(long, conflicts_with = "read_only")]
    pub no_mount: bool,
    /// (started by the bring-up of a btrfs container, not by hand) keep its lease from SEQ on until
    /// SIGTERM, then release it
    #[arg(long, hide = true, value_name = "SEQ")]
    pub keep_lease: Option<u64>,
}

/// Back up the job's paths into a new snapshot, or restore from one.
///
/// Opens the stack if needed (and closes what it opened at the end), grows the container first
/// when it is short of space, rsyncs into snapshots/<STAMP>.inflight, renames it on success, moves
/// `latest`, prunes per [retention]. Prints the new snapshot's path. Source files that cannot be
/// read do not cost the snapshot (sync.allow_partial): it is published with the previous version
/// in their place, marked incomplete, and the run exits 8. A read-only open of the job left behind
/// (e2e-open --read-only, to browse) is closed first if nothing uses it; exit 5 if something does.
#[derive(Debug, Parser)]
#[command(name = "e2e-sync", version, after_help = after_help(""))]
pub struct SyncCli {
    #[command(flatten)]
    pub common: Common,
    /// Restore SNAPSHOT[/PATH] (SNAPSHOT may be `latest`) into TARGET, rsync-style, read-only open;
    /// then check every restored file against the snapshot's checksum manifest (exit 1 if one differs)
    #[arg(long, num_args = 2, value_names = ["SNAPSHOT[/PATH]", "TARGET"], conflicts_with = "list")]
    pub restore: Option<Vec<String>>,
    /// With --restore: restore even when the snapshot's manifest is missing, damaged or lists none of
    /// the files (otherwise refused with exit 7 before anything is copied); the restore is unchecked
    #[arg(long, requires = "restore")]
    pub unchecked: bool,
    /// List the snapshots, oldest first, one stamp per line; an incomplete one is followed by a tab
    /// and "incomplete: N source path(s) not read"
    #[arg(long)]
    pub list: bool,
    /// Print the result as JSON on stdout instead of a path or lines: a sync's summary (snapshot,
    /// stamp, complete, unread, files, bytes, changed_bytes, seconds), --verify's and --restore's
    /// findings, --list, --diff and --history (every schema in docs/contract.md)
    #[arg(long, conflicts_with = "prune")]
    pub json: bool,
    /// What changed from snapshot OLD to NEW (each `latest` or a stamp), from their checksum
    /// manifests, reading no file data: one line per regular file, `+ PATH` added, `- PATH` removed,
    /// `M PATH` other contents (metadata, symlinks and empty directories are not compared); the
    /// counts on stderr. Exit 7 if a manifest cannot be read
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with_all = ["restore", "list", "verify", "create", "prune", "history"])]
    pub diff: Option<Vec<String>>,
    /// The versions of one file, by its source path (e.g. /home/alice/notes.txt), across the
    /// snapshots, oldest first: `STAMP<TAB>STATE<TAB>SIZE<TAB>MODIFIED<TAB>SHA256` (first 16 hex
    /// digits), STATE one of added, same, changed, removed, stale (not readable in that run: the
    /// previous version), unknown (no readable manifest: exit 7)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["restore", "list", "verify", "create", "prune"])]
    pub history: Option<String>,
    /// Apply [retention] now, without a sync: print every snapshot, oldest first, as
    /// `keep<TAB>STAMP<TAB>rules` (e.g. "daily 2": the newest of the 2nd most recent day) or
    /// `remove<TAB>STAMP<TAB>no rule keeps it`, then delete the removed ones. The snapshot `latest`
    /// names is always kept
    #[arg(long, conflicts_with_all = ["restore", "list", "verify", "create", "no_prune"])]
    pub prune: bool,
    /// With --prune: open read-only, print the verdicts, delete nothing
    #[arg(long, requires = "prune")]
    pub preview: bool,
    /// Re-read SNAPSHOT (--verify=STAMP; default `latest`; read-only open) against the checksum
    /// manifest written when it was made; report changed, missing and extra files, exit 1 on any
    /// difference
    #[arg(long, value_name = "SNAPSHOT", num_args = 0..=1, require_equals = true, default_missing_value = "latest", conflicts_with_all = ["restore", "list"])]
    pub verify: Option<String>,
    /// Create the container first if it does not exist (as e2e-open --create)
    #[arg(long, conflicts_with_all = ["restore", "list", "verify"])]
    pub create: bool,
    /// Do not grow the container before syncing
    #[arg(long)]
    pub no_grow: bool,
    /// Do not prune old snapshots after syncing
    #[arg(long)]
    pub no_prune: bool,
    /// Read a copy the server keeps (e2e-keep(1)) instead of the live container: the one of STAMP,
    /// at history/<container.file>/STAMP.luks in the job's remote directory; with --list, --restore,
    /// --verify, --diff or --history (read-only; the job must not be open)
    #[arg(long, value_name = "STAMP", conflicts_with_all = ["prune", "create", "skip_unchanged"])]
    pub from_copy: Option<String>,
    /// Make no new snapshot when nothing changed since the latest one, as sync.skip_unchanged =
    /// true: the run is recorded beside that snapshot ("unchanged through", in --list)
    #[arg(long, conflicts_with_all = ["restore", "list", "verify", "prune", "diff", "history"])]
    pub skip_unchanged: bool,
    /// Use the container even though it fails the check against what this host last wrote (it lacks
    /// the newest snapshot this host wrote, that snapshot's manifest changed, or its LUKS UUID
    /// differs: the server handed back an older or another copy); a sync then prunes nothing
    #[arg(long)]
    pub accept_rollback: bool,
}

/// What one e2e-sync run does: make a snapshot, or one of the modes its options choose (clap
/// lets at most one of them through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode<'a> {
    Snapshot,
    Restore { from: &'a str, target: &'a str },
    Verify(&'a str),
    List,
    Diff { old: &'a str, new: &'a str },
    History(&'a str),
    Prune,
}

impl SyncMode<'_> {
    /// The modes that only read snapshots (a read-only open; the ones `--from-copy` may serve).
    pub fn reads_only(self) -> bool {
        !matches!(self, SyncMode::Snapshot | SyncMode::Prune)
    }
}

impl SyncCli {
    pub fn mode(&self) -> SyncMode<'_> {
        if let Some(r) = &self.restore {
            SyncMode::Restore {
                from: &r[0],
                target: &r[1],
            }
        } else if let Some(s) = &self.verify {
            SyncMode::Verify(s)
        } else if self.list {
            SyncMode::List
        } else if let Some(d) = &self.diff {
            SyncMode::Diff {
                old: &d[0],
                new: &d[1],
            }
        } else if let Some(p) = &self.history {
            SyncMode::History(p)
        } else if self.prune {
            SyncMode::Prune
        } else {
            SyncMode::Snapshot
        }
    }
}

/// Grow the job's container online: file → loop device → LUKS → ext4.
///
/// Checks the server's free space first (keeping container.server_reserve) and refuses to shrink.
/// Prints the container file path.
#[derive(Debug, Parser)]
#[command(name = "e2e-grow", version, after_help = after_help(""))]
#[command(group = clap::ArgGroup::new("amount").required(true).args(["to", "by"]))]
pub struct GrowCli {
    #[command(flatten)]
    pub common: Common,
    /// New total size, e.g. 128G
    #[arg(long, value_name = "SIZE")]
    pub to: Option<String>,
    /// Grow by this much, e.g. 16G or 25%
    #[arg(long, value_name = "SIZE")]
    pub by: Option<String>,
}

/// Give the server back the space of deleted data (TRIM over NBD through an SSH tunnel).
///
/// Needs an NBD server on the server bound to 127.0.0.1:10809 (qemu-nbd --discard=unmap) with an
/// export named after the container file. The container must not be open via e2e-open at the same
/// time. Reports the server's allocated bytes before and after on stderr (ssh HOST stat) and judges
/// by them; an SFTP-only account cannot run stat, so there it warns and trims unjudged. A btrfs
/// container: the trim holds its lease while mounted (as e2e-open does) and first waits until the
/// space of deleted snapshots is free (btrfs frees it in the background). Prints the container
/// file path.
#[derive(Debug, Parser)]
#[command(name = "e2e-trim", version, after_help = after_help(TRIM_NOTES))]
pub struct TrimCli {
    #[command(flatten)]
    pub common: Common,
    /// NBD server port on the server's loopback
    #[arg(long, value_name = "PORT", default_value_t = 10809)]
    pub nbd_port: u16,
    /// NBD device to use [default: the first free /dev/nbdN]
    #[arg(long, value_name = "DEV")]
    pub nbd_device: Option<PathBuf>,
}

/// Tear the job's stack down from any state: umount, cryptsetup close, detach loop, unmount sshfs.
///
/// Kills a hung sshfs. Takes the job's lock: while a run (e2e-sync, e2e-grow, e2e-trim) holds it,
/// refuses with exit 5 unless --force. A filesystem that is in use (a running e2e-sync holds it open,
/// or a shell sits in it) is never unmounted under it, --force or not: exit 5, nothing closed.
/// A run whose stack --force took down while it was still coming up fails with exit 5 and says
/// that the stack was closed under it (not that the link was lost). Prints nothing.
#[derive(Debug, Parser)]
#[command(name = "e2e-close", version, after_help = after_help(""))]
pub struct CloseCli {
    #[command(flatten)]
    pub common: Common,
    /// Leave the sshfs mount in place
    #[arg(long)]
    pub keep_remote: bool,
    /// Close even while a run of this job holds its lock (a stale lock; a running sync keeps its
    /// filesystem mounted all the same)
    #[arg(long)]
    pub force: bool,
    /// Then exit with the outcome of the job's last backup run through the systemd units, read
    /// from the file $E2E_BACKUP_OUTCOME names (what e2e-backup@JOB.service runs): the sync's snapshot, or
    /// the failing layer's error line and exit code; no recorded outcome is a failure
    #[arg(long)]
    pub outcome: bool,
    /// (a step of teardown, not for use by hand) stop the lease keeper of the job's btrfs
    /// container and leave its lease free
    #[arg(long, hide = true)]
    pub release_lease: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        MountCli::command().debug_assert();
        OpenCli::command().debug_assert();
        SyncCli::command().debug_assert();
        GrowCli::command().debug_assert();
        TrimCli::command().debug_assert();
        CloseCli::command().debug_assert();
    }

    #[test]
    fn parse_examples() {
        let s =
            SyncCli::try_parse_from(["e2e-sync", "home", "--restore", "latest/home/a", "/tmp/r"])
                .unwrap();
        assert_eq!(s.restore.unwrap(), ["latest/home/a", "/tmp/r"]);
        let s = SyncCli::try_parse_from(["e2e-sync", "--verify", "home"]).unwrap();
        assert_eq!(
            (s.verify.as_deref(), s.common.job.as_str()),
            (Some("latest"), "home")
        );
        let s =
            SyncCli::try_parse_from(["e2e-sync", "--verify=2024-01-02T03:04:05Z", "home"]).unwrap();
        assert_eq!(s.verify.as_deref(), Some("2024-01-02T03:04:05Z"));
        assert_eq!(s.common.job, "home");
        assert!(GrowCli::try_parse_from(["e2e-grow", "home"]).is_err());
        assert!(GrowCli::try_parse_from(["e2e-grow", "home", "--to", "1G", "--by", "1G"]).is_err());
        let g = GrowCli::try_parse_from(["e2e-grow", "--by", "10%", "home", "--dry-run"]).unwrap();
        assert!(g.common.dry_run);
        let o = OpenCli::try_parse_from([
            "e2e-open", "home", "--host", "h", "--source", "/a", "--source", "/b",
        ])
        .unwrap();
        assert_eq!(o.common.overrides.sources, ["/a", "/b"]);
    }
}

/// Set up a new job: from nothing to a job file, writing no file by hand.
///
/// Makes the container key (64 random bytes; it is the only way back to the data: keep a copy
/// offline), an SSH key for the job (ed25519, no passphrase: the timer runs unattended), fetches the
/// server's host key and pins it only once its fingerprint is confirmed (--fingerprint, or "yes" at
/// a terminal), writes <config-dir>/<JOB>.toml, and prints what the server's administrator does
/// (the account, its authorized_keys line, the sshd settings). Existing key files are kept; an
/// existing job file is refused. It never logs in to the server. Prints the job file's path.
#[derive(Debug, Parser)]
#[command(name = "e2e-setup", version, after_help = after_help(""))]
pub struct SetupCli {
    #[command(flatten)]
    pub common: Common,
    /// The server's host key fingerprint (SHA256:…, from `ssh-keygen -lf
    /// /etc/ssh/ssh_host_ed25519_key.pub` on the server) to confirm without a prompt
    #[arg(long, value_name = "SHA256:...")]
    pub fingerprint: Option<String>,
}

/// On the SERVER: keep read-only copies of the clients' containers, out of the clients' reach.
///
/// Run by root after a client's session (e2e-keep@.timer), for one client's directory STORE (the
/// SFTP account's writable tree): each container file *.luks in it that is quiescent (no process
/// of --user runs but the qemu-nbd that serves e2e-trim, and it has not changed for --settle
/// seconds) and changed since its newest copy is copied by reflink (`cp --reflink=always
/// --no-dereference`: constant time, no space until the live file changes; a symlink is not followed)
/// to INTO/<FILE>/<STAMP>.luks, mode 0444, owned by root: the client's account can neither
/// delete, rename nor write it. A filesystem that cannot reflink (or INTO on another filesystem)
/// is refused with one line; --full-copy copies whole instead. INTO must not lie inside STORE.
/// Before each copy it compares the container with the newest copy: truncated, its LUKS header gone
/// or replaced (another LUKS UUID), or its allocated bytes down to less than half (a client's
/// e2e-trim that gives back that much looks the same to a server without the key, and is reported
/// too) are reported at priority err, the copy from before is kept whatever the retention says (a
/// `.keep` file beside it), and the run exits 4 (so an OnFailure= unit tells someone). Retention
/// (--keep-*) runs on the server's clock. Prints the path of each new copy.
#[derive(Debug, Parser)]
#[command(name = "e2e-keep", version, after_help = after_help(""))]
pub struct KeepCli {
    /// The client's directory: the SFTP account's writable tree, holding its *.luks containers
    #[arg(value_name = "STORE")]
    pub store: PathBuf,
    /// Where the copies go (outside STORE; on the same XFS or btrfs filesystem for reflinks)
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// The client's account: no copy while a process of it runs (its session is still open)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Seconds a container must be unchanged before it is copied
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub settle: i64,
    /// Copy whole where a reflink is not possible (writes the container's allocated size every time)
    #[arg(long)]
    pub full_copy: bool,
    /// Exit 4 with a line at priority err when a container's newest copy is older than this (a
    /// client that has not completed a session), e.g. 2d; 0 = never
    #[arg(long, value_name = "DURATION", default_value = "0")]
    pub alert_after: String,
    /// Retention of the copies, by the server's clock (as [retention] in e2e-backup.toml(5)); none
    /// given keeps every copy
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Print the commands that would run, as a script; run none
    #[arg(long)]
    pub dry_run: bool,
    /// Also show the output of the commands run
    #[arg(short, long)]
    pub verbose: bool,
    /// Only warnings and errors on stderr
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}
