//! Bring-up: sshfs → container file → loop → LUKS → (overlay) → ext4, each step's undo recorded.

use super::{Ctx, Stack};
use crate::config::Job;
use crate::container::{self as ct, OpenOpts};
use crate::error::{fail, Code};
use crate::exec::{Arg, Cmd, Undo};
use crate::filesystem as fsys;
use crate::remote::{self, lost_link::explain_lost_link};
use anyhow::Result;
use std::path::Path;

/// Bring the stack up to a mounted filesystem (idempotent), creating the container if allowed.
pub fn ensure_open(ctx: &Ctx, job: &Job, create: bool, read_only: bool) -> Result<Stack> {
    open_explained(ctx, job, create, read_only, true)
}

/// Bring the stack up to the checked LUKS mapping, on a remote its mount unit mounted, and leave
/// the filesystem unmounted: e2e-open@.service's part, between the job's two generated mount units
/// (e2e-backup-generator(8)). A remote that is not mounted is an error: the units are missing.
pub fn open_unmounted(ctx: &Ctx, job: &Job, create: bool) -> Result<Stack> {
    let p = &ctx.paths;
    if !remote::is_mounted(p) && p.kernel.mount_at(&p.fs).is_none() {
        return Err(fail(
            Code::Config,
            format!(
                "{} is not mounted: e2e-open --no-mount opens between the job's mount units; run systemctl daemon-reload so that e2e-backup-generator writes them for {}, or e2e-open without --no-mount",
                p.remote.display(),
                job.origin
            ),
        ));
    }
    open_explained(ctx, job, create, false, false)
}

/// The bring-up; when it fails, told as a lost link if that is what it was.
fn open_explained(
    ctx: &Ctx,
    job: &Job,
    create: bool,
    read_only: bool,
    mount_fs: bool,
) -> Result<Stack> {
    open_stack(ctx, job, create, read_only, mount_fs).map_err(|e| {
        explain_lost_link(
            &ctx.run,
            &ctx.paths,
            &job.remote,
            ctx.remote_seen.get(),
            e,
            false,
        )
    })
}

pub(crate) fn open_stack(
    ctx: &Ctx,
    job: &Job,
    create: bool,
    read_only: bool,
    mount_fs: bool,
) -> Result<Stack> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let file = ctx.container_file(job);
    let existing_loop = || {
        p.kernel
            .loops_backed_by(&file, false)
            .into_iter()
            .next()
            .map(|l| Arg::from(&l))
    };
    let size_now = || std::fs::symlink_metadata(&file).ok().map(|m| m.len());
    if let Some(m) = p.kernel.mount_at(&p.fs) {
        if m.read_only() && !read_only {
            return Err(fail(
                Code::Runtime,
                format!(
                    "{} is mounted read-only (a restore, or ext4 remounted it after an I/O error): run e2e-close {} and retry",
                    p.fs.display(),
                    job.name
                ),
            ));
        }
        let fs = fsys::detected(&m.fstype, job.container.filesystem, &job.origin)?;
        return Ok(Stack {
            mounted_remote: false,
            opened: false,
            overlay: None,
            loop_dev: existing_loop(),
            size: size_now(),
            fs,
        });
    }
    let key = job.key_file()?; // before touching anything
    let mounted_remote = remote::mount(run, &job.remote, p)?;
    ctx.remote_seen.set(true);
    // A dry-run cannot look inside a remote it has not really mounted.
    let blind = run.is_dry() && mounted_remote;
    let mut undo = Undo::new(run);
    if mounted_remote {
        undo.push(Cmd::new(remote::fusermount()).arg("-u").arg(&p.remote));
    }
    let dev = p.dm_dev.as_path();
    let exists = if blind { !create } else { ct::present(&file)? };
    let mut created = false;
    let mut stack = Stack {
        mounted_remote,
        opened: true,
        overlay: None,
        loop_dev: None,
        size: if blind { None } else { size_now() },
        fs: job.container.filesystem,
    };

    if p.kernel.dm_slaves(&p.dm_name).is_some() {
        // Half-open from an earlier run: the mapping is there, only fsck + mount are missing.
        stack.loop_dev = existing_loop();
    } else if !exists {
        create_container(
            ctx, job, &key, create, read_only, blind, &mut undo, &mut stack,
        )?;
        created = true;
    } else {
        open_container(
            ctx,
            job,
            &key,
            read_only,
            blind,
            existing_loop(),
            &mut undo,
            &mut stack,
        )?;
    }
    if !created {
        stack.fs = fsys::detect(run, dev, job.container.filesystem, &job.origin)?;
    }
    if !read_only {
        before_rw_mount(ctx, stack.fs, created, &mut undo)?;
    }
    let ext4 = stack.fs == fsys::Kind::Ext4;
    let mut mount_dev = dev.to_path_buf();
    if read_only && ext4 {
        if let Some(cow) = open_overlay(ctx, &mut undo)? {
            stack.overlay = Some(cow);
            mount_dev = p.overlay_dev.clone();
        }
    }
    if mount_fs {
        stack.fs.mount_on(run, &mount_dev, &p.fs, read_only)?;
    }
    undo.done();
    Ok(stack)
}

/// Create the container: built under a temporary name and renamed into place once formatted, so an
/// interrupted creation leaves only that name, which the next creation removes.
#[allow(clippy::too_many_arguments)]
fn create_container(
    ctx: &Ctx,
    job: &Job,
    key: &Path,
    create: bool,
    read_only: bool,
    blind: bool,
    undo: &mut Undo,
    stack: &mut Stack,
) -> Result<()> {
    let (p, run) = (&ctx.paths, &ctx.run);
    let file = ctx.container_file(job);
    let dev = p.dm_dev.as_path();
    if job.container.file.starts_with(super::COPIES) {
        return Err(fail(
            Code::Config,
            format!(
                "the server keeps no copy {} (e2e-sync --from-copy): the copies it keeps are in {}",
                file.display(),
                file.parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
        ));
    }
    if !create {
        return Err(fail(
            Code::Config,
            format!(
                "container {} does not exist: run e2e-open --create {} (or set container.create = true in {})",
                file.display(),
                job.name,
                job.origin
            ),
        ));
    }
    if read_only {
        return Err(fail(
            Code::Config,
            "cannot create a container with --read-only",
        ));
    }
    let size = job.container.size.ok_or_else(|| {
        fail(
            Code::Config,
            format!(
                "{}: container.size: required to create the container",
                job.origin
            ),
        )
    })?;
    if blind {
        run.note(
            "the remote is not mounted yet, so this script guards against an existing container:",
        );
        run.run(&Cmd::new("test").arg("!").arg("-e").arg(&file))?;
        run.run(&Cmd::new("test").arg("!").arg("-L").arg(&file))?;
    }
    // Built under a temporary name and renamed into place once formatted: an interrupted
    // creation leaves only that name, which the next creation removes.
    let building = ct::building_name(&file);
    if std::fs::symlink_metadata(&building).is_ok() {
        crate::notice!(
            "removing {}, left by an interrupted creation",
            building.display()
        );
        run.run(&Cmd::rm_f(&building))?;
    }
    let lp = ct::format(run, undo, &building, size, key, &p.dm_name)?;
    job.container.filesystem.make(run, dev, &p.dm_name)?;
    if !blind && ct::present(&file)? {
        return Err(fail(
            Code::Refused,
            format!(
                "{} appeared on the server while this run created the container: another host creates it too; nothing replaced",
                file.display()
            ),
        ));
    }
    // Renamed while attached: the loop device keeps the open file under its new name.
    run.run(&Cmd::new("mv").arg("-T").arg(&building).arg(&file))?;
    stack.loop_dev = Some(lp);
    stack.size = Some(size);
    Ok(())
}

/// What a read-write mount of the opened container needs first (e2e-open's and e2e-trim's): ext4
/// a check (its MMP refuses a second host), unless mkfs just made it (and the check would cost
/// another MMP wait); btrfs the container's lease, which undo releases. btrfs has no check to run
/// before a mount: the mount replays its log, and every block is checked against its checksum
/// when read.
pub(crate) fn before_rw_mount(
    ctx: &Ctx,
    kind: fsys::Kind,
    created: bool,
    undo: &mut Undo,
) -> Result<()> {
    match kind {
        fsys::Kind::Ext4 if created => Ok(()),
        fsys::Kind::Ext4 => fsys::check_and_repair(&ctx.run, &ctx.paths.kernel, &ctx.paths.dm_dev),
        // btrfs has no multi-mount protection: the container's lease, kept until teardown.
        fsys::Kind::Btrfs => crate::lease::take_and_keep(&ctx.run, undo, &ctx.paths),
    }
}

/// Open the existing container: check it is a LUKS container the account may use, attach, open.
#[allow(clippy::too_many_arguments)]
fn open_container(
    ctx: &Ctx,
    job: &Job,
    key: &Path,
    read_only: bool,
    blind: bool,
    existing_loop: Option<Arg>,
    undo: &mut Undo,
    stack: &mut Stack,
) -> Result<()> {
    let (p, run) = (&ctx.paths, &ctx.run);
    let file = ctx.container_file(job);
    if !blind {
        ct::check_access(&file, &job.remote.user, false)?;
    }
    if !read_only && !blind {
        // A file that is not a container at all is told as that first.
        ct::check_access(&file, &job.remote.user, true).map_err(|e| told(ctx, job, &file, e))?;
    }
    let opts = OpenOpts {
        read_only,
        allow_discards: false,
    };
    // `cryptsetup isLuks` only after a failed open (a diagnosis, not a step of every run): a file
    // that is not LUKS fails `cryptsetup open` anyway, whose undo detaches the loop again; isLuks
    // then says what the file is, or that the link is gone.
    let lp = ct::attach_open(run, undo, &file, existing_loop, key, &p.dm_name, &opts)
        .map_err(|e| told(ctx, job, &file, e))?;
    stack.loop_dev = Some(lp);
    Ok(())
}

/// A failed open of `file` told as what it was: not a LUKS container (`cryptsetup isLuks`), the
/// link gone, or else `e` itself.
fn told(ctx: &Ctx, job: &Job, file: &Path, e: anyhow::Error) -> anyhow::Error {
    match ctx.run.run(&ct::is_luks(file)) {
        Ok(_) => e,
        Err(not) => explain_lost_link(
            &ctx.run,
            &ctx.paths,
            &job.remote,
            ctx.remote_seen.get(),
            not,
            true,
        ),
    }
}

/// A read-only open of a container whose journal needs recovery (a run cut off, a crash): the
/// read-only device cannot take the replay, so a device-mapper snapshot over the LUKS mapping takes
/// it instead, into a copy-on-write file in the client's 0700 run directory. The server's file is
/// never written; the replayed blocks (plaintext) stay in client memory (/run) until the close.
/// Returns the copy-on-write loop device, or `None` when the journal is clean (no overlay).
pub(crate) fn open_overlay(ctx: &Ctx, undo: &mut Undo) -> Result<Option<Arg>> {
    let (run, p) = (&ctx.run, &ctx.paths);
    let dev = p.dm_dev.as_path();
    let Some(dirty) = fsys::journal_needs_recovery(run, dev)? else {
        run.note(
            "a real run mounts through a local copy-on-write overlay if the journal needs recovery",
        );
        return Ok(None);
    };
    if !dirty {
        return Ok(None);
    }
    crate::notice!(
        "the container's journal needs recovery (it was not closed cleanly): replaying it into a local overlay ({}); the server's copy is not written",
        p.cow.display()
    );
    let cow = ct::overlay(run, undo, &p.overlay_name, dev, &p.cow)?;
    Ok(Some(cow))
}
