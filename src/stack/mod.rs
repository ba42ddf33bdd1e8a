//! The stack's lifecycle: bring-up ([`open`]), teardown and recovery ([`close`]), undo on failure,
//! the job lock and the history check. Commands run their steps inside [`with_stack`], which leaves
//! the stack as it found it.

pub mod close;
pub mod grow;
pub mod nbd;
pub mod open;

use self::close::{close_idle_read_only, close_opened, recover_stale};
use self::open::ensure_open;
use crate::cli::Common;
use crate::config::{self, Job};
use crate::container as ct;
use crate::error::{fail, Code};
use crate::exec::{Arg, Cmd, Runner, Step};
use crate::manifest;
use crate::paths::JobPaths;
use crate::remote::{self, lost_link::explain_lost_link, watchdog::StallWatchdog};
use crate::rollback;
use crate::snapshots;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Per-run context: the runner and the job's runtime paths.
pub struct Ctx {
    pub run: Runner,
    pub paths: JobPaths,
    pub common: Common,
    /// The job's sshfs was seen mounted during this run: if it is gone at an error, the link died.
    pub(crate) remote_seen: std::cell::Cell<bool>,
    /// --accept-rollback: open a container that fails the check against the client's state.
    pub accept_rollback: std::cell::Cell<bool>,
    /// The container passed that check (false: accepted with --accept-rollback; never prune then).
    pub(crate) consistent: std::cell::Cell<bool>,
    /// The server's ssh port, once the job file was read (for fencing a dead connection).
    pub(crate) port: std::cell::Cell<u16>,
    /// The LUKS UUID read at the history check, recorded again with the new state: the UUID of the
    /// container this run opened (and one `cryptsetup luksUUID` less).
    pub(crate) uuid: std::cell::OnceCell<Option<String>>,
}

/// Where the server shows its copies of the job's containers (e2e-keep(1)), in the job's remote
/// directory: `history/<container file>/<STAMP>.luks`, read-only.
pub const COPIES: &str = "history/";

impl Ctx {
    pub fn new(common: &Common) -> Result<Self> {
        crate::progress::set_quiet(common.quiet);
        Self::with_runner(common, Runner::new(common.dry_run, common.verbose))
    }

    pub fn with_runner(common: &Common, run: Runner) -> Result<Self> {
        Ok(Ctx {
            run,
            paths: JobPaths::new(&common.job)?,
            common: common.clone(),
            remote_seen: Default::default(),
            accept_rollback: Default::default(),
            consistent: std::cell::Cell::new(true),
            port: std::cell::Cell::new(22),
            uuid: Default::default(),
        })
    }

    pub fn job(&self) -> Result<Job> {
        let c = &self.common;
        let j = config::load(
            &c.job,
            c.config.as_deref(),
            c.config_dir.as_deref(),
            &c.overrides,
        )?;
        self.port.set(j.remote.port);
        Ok(j)
    }

    pub fn container_file(&self, job: &Job) -> PathBuf {
        self.paths.remote.join(&job.container.file)
    }

    pub(crate) fn fs_mounted(&self) -> bool {
        self.paths.kernel.mount_at(&self.paths.fs).is_some()
    }

    /// Write a record inside the container whole, beside `file` (`FILE.tmp`), and return the step
    /// that renames it over `file`: a cut leaves the old record or the new one, never half of it.
    pub(crate) fn write_record(&self, file: &Path, text: &str) -> Result<Step> {
        let mut tmp = file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        self.assert_container_mounted()?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Step::run(Cmd::new("mv").arg("-T").arg(&tmp).arg(file)))
    }

    /// `fs/` is the filesystem of `/dev/mapper/e2e-<job>` (same device number), checked before every
    /// step that writes into it: a closed or lost container must not leave the run writing into the
    /// bare directory on the client.
    pub(crate) fn assert_container_mounted(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if self.run.is_dry() {
            return Ok(());
        }
        let p = &self.paths;
        let fs = std::fs::metadata(&p.fs).map(|m| m.dev());
        let dm = std::fs::metadata(&p.dm_dev).map(|m| m.rdev());
        // btrfs gives its files an anonymous device number: the mount table ties fs/ to the device.
        let of_dm = || {
            let real = |d: &Path| std::fs::canonicalize(d).ok();
            p.kernel.mount_at(&p.fs).is_some_and(|m| {
                m.fstype == "btrfs"
                    && real(Path::new(&m.source)).is_some_and(|s| Some(s) == real(&p.dm_dev))
            })
        };
        match (fs, dm) {
            (Ok(a), Ok(b)) if a == b && self.fs_mounted() => Ok(()),
            (Ok(_), Ok(_)) if of_dm() => Ok(()),
            _ => Err(fail(
                Code::Runtime,
                format!(
                    "{} is no longer the container's filesystem ({} closed under this run?): stopped before writing",
                    p.fs.display(),
                    p.dm_dev.display()
                ),
            )),
        }
    }

    /// Run `steps`, which write into the container's filesystem, each only while `fs/` is still the
    /// container's (see [`Ctx::assert_container_mounted`]).
    pub(crate) fn in_container(&self, steps: Vec<Step>) -> Result<()> {
        self.run
            .all_checked(steps, &|| self.assert_container_mounted())
    }

    /// Step 5 of the publish order: record the new snapshot (stamp, manifest hash, LUKS UUID) on the
    /// client, for the next run's [`Ctx::check_history`]. Fails before anything is pruned.
    pub(crate) fn record_history(&self, job: &Job, stamp: &str, dest: &Path) -> Result<()> {
        if self.run.is_dry() {
            return Ok(());
        }
        let state = rollback::State {
            stamp: stamp.to_string(),
            manifest_sha256: self.manifest_digest(stamp)?,
            luks_uuid: self.luks_uuid(job)?,
        };
        let file = rollback::state_file(&job.name);
        rollback::remember(&file, &state).with_context(|| {
            format!(
                "snapshot {} made, but recording it in {} failed (nothing pruned)",
                dest.display(),
                file.display()
            )
        })
    }

    /// The container's LUKS UUID: from the open mapping's UUID in sysfs (free), else
    /// `cryptsetup luksUUID` (read from the header on the server: no key needed).
    pub(crate) fn luks_uuid(&self, job: &Job) -> Result<Option<String>> {
        if let Some(u) = self.uuid.get() {
            return Ok(u.clone());
        }
        if let Some(u) = (!self.run.is_dry())
            .then(|| self.paths.kernel.dm_luks_uuid(&self.paths.dm_name))
            .flatten()
        {
            let _ = self.uuid.set(Some(u.clone()));
            return Ok(Some(u));
        }
        let out = self.run.query(&ct::luks_uuid(&self.container_file(job)))?;
        let u = out.map(|o| o.trim().to_string()).filter(|u| !u.is_empty());
        if !self.run.is_dry() {
            let _ = self.uuid.set(u.clone());
        }
        Ok(u)
    }

    /// sha256 of snapshot STAMP's manifest as it is now (`None`: no manifest).
    pub(crate) fn manifest_digest(&self, stamp: &str) -> Result<Option<String>> {
        let m = manifest::path(&self.paths.fs, stamp);
        if std::fs::symlink_metadata(&m).is_err() {
            return Ok(None);
        }
        let out = self.run.query(&Cmd::new("sha256sum").arg("--").arg(&m))?;
        Ok(out.and_then(|o| o.split_whitespace().next().map(str::to_string)))
    }

    /// Is this the container, and the history, this host last wrote? Checked on every open that
    /// reads or writes snapshots (sync, list, restore, verify); refuses with exit 4 otherwise.
    pub(crate) fn check_history(&self, job: &Job) -> Result<()> {
        // A server-held copy is older than what this host wrote, by design (e2e-sync --from-copy).
        if self.run.is_dry() || !self.fs_mounted() || job.container.file.starts_with(COPIES) {
            return Ok(());
        }
        let state = rollback::state_file(&job.name);
        let Some(r) = rollback::remembered(&state) else {
            return Ok(()); // this host never wrote here: nothing to compare against
        };
        let (stamps, _) = snapshots::scan(&self.paths.fs);
        let names: Vec<&str> = stamps.iter().map(|s| s.0.as_str()).collect();
        let uuid = self.luks_uuid(job)?;
        let digest = self.manifest_digest(&r.stamp)?;
        let seen = rollback::Seen {
            stamps: &names,
            luks_uuid: uuid.as_deref(),
            manifest_sha256: digest.as_deref(),
        };
        let ok = rollback::gate(&state, &seen, self.accept_rollback.get())?;
        self.consistent.set(ok);
        Ok(())
    }
}

/// What [`ensure_open`] found or did, so the caller can leave the stack as it found it.
pub struct Stack {
    pub mounted_remote: bool,
    pub opened: bool,
    /// The copy-on-write loop device of a read-only overlay this open made (journal replayed locally).
    pub overlay: Option<Arg>,
    /// The loop device under the container (`"$loop"` in a dry-run that attached it).
    pub loop_dev: Option<Arg>,
    /// Container file size if known.
    pub size: Option<u64>,
    /// The filesystem the container holds (read from it; the job file's in a dry-run).
    pub fs: crate::filesystem::Kind,
}

/// Run `f` with the stack open, then leave it as found (also when `f` fails).
pub(crate) fn with_stack<T>(
    ctx: &Ctx,
    job: &Job,
    read_only: bool,
    f: impl FnOnce(&mut Stack) -> Result<T>,
) -> Result<T> {
    recover_stale(ctx)?;
    if !read_only {
        close_idle_read_only(ctx)?;
    }
    // Claim the layers this run is about to open before it opens them: a run killed half-way
    // through bring-up (or through creation) leaves a record the next run acts on.
    let p = &ctx.paths;
    let claim = !ctx.run.is_dry() && !ctx.fs_mounted() && p.kernel.dm_slaves(&p.dm_name).is_none();
    if claim {
        let remote = u8::from(!remote::is_mounted(p));
        let _ = std::fs::create_dir_all(&p.dir);
        let _ = std::fs::write(&p.owner, format!("{} {remote}\n", std::process::id()));
    }
    let mut stack = ensure_open(ctx, job, job.container.create, read_only)?;
    if claim && !stack.opened && !stack.mounted_remote {
        let _ = std::fs::remove_file(&p.owner);
    }
    if remote::is_mounted(&ctx.paths) {
        ctx.remote_seen.set(true); // (an already open stack: open_stack did not mount it)
    }
    // Held open for the run: the filesystem cannot be unmounted (e2e-close --force, a user's umount)
    // under it, so no step ever writes into the bare directory a closed container leaves behind.
    let pin = (!ctx.run.is_dry() && ctx.fs_mounted())
        .then(|| std::fs::File::open(&p.fs).ok())
        .flatten();
    let watchdog = StallWatchdog::start(ctx.run.is_dry(), &ctx.paths);
    let r = ctx
        .check_history(job)
        .and_then(|_| f(&mut stack))
        .map_err(|e| explain_lost_link(&ctx.run, p, &job.remote, ctx.remote_seen.get(), e, false));
    drop(watchdog);
    drop(pin);
    if crate::exec::stalled() {
        let _cleanup = ctx.run.unwinding();
        if let Err(f) = remote::fence(&ctx.run, &ctx.paths, ctx.port.get()) {
            crate::warning!("fencing the silent connection failed: {f:#}");
        }
    }
    let c = close_opened(ctx, &stack);
    match (r, c) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            crate::warning!("closing the stack after the failure failed too: {c:#}");
            Err(e)
        }
    }
}

/// An exclusive lock on /run/e2e-backup/<job>/lock for the whole run (dropped = released).
pub(crate) fn lock(ctx: &Ctx) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    if ctx.run.is_dry() {
        return Ok(None);
    }
    // Only the job's run directory (a tmpfs directory): never a stat of remote/ or fs/, which
    // hangs when sshfs is stopped, and e2e-close must get past its lock in exactly that case.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctx.paths.dir)
            .with_context(|| format!("cannot make {}", ctx.paths.dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&ctx.paths.lock)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => {
            // A forced close of an earlier run is that run's news, not this one's.
            let _ = std::fs::remove_file(&ctx.paths.forced);
            Ok(Some(l))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(fail(
            Code::Locked,
            format!(
                "job {} is already running on this host (lock {} is held)",
                ctx.paths.job,
                ctx.paths.lock.display()
            ),
        )),
        Err((_, e)) => Err(e).with_context(|| format!("lock {}", ctx.paths.lock.display())),
    }
}
