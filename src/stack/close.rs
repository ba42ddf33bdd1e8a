//! Teardown: from what this run opened, from whatever the kernel shows, or from a killed run's leftovers.

use super::{Ctx, Stack};
use crate::container as ct;
use crate::error::{Code, Fail};
use crate::exec::{Arg, Cmd, Runner};
use crate::filesystem as fsys;
use crate::paths::{dm_slaves, loops_backed_by, mount_at, JobPaths};
use crate::remote;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// Unmount the container's ext4 within a minute: over a hung or dead sshfs the flush blocks, so
/// then the connection is fenced (the flush fails with I/O errors) and the mount detached lazily.
/// `known`: this run mounted it (a dry-run cannot see that in the mount table).
pub(crate) fn unmount_fs(ctx: &Ctx, known: bool) -> Result<()> {
    let (run, p) = (&ctx.run, &ctx.paths);
    if !known && mount_at(&p.fs).is_none() {
        return Ok(());
    }
    let shown = p.fs.display().to_string();
    let umount = fsys::umount(&p.fs).on_fail(move |_, stderr| {
        stderr.contains("target is busy").then(|| {
            Fail::new(
                Code::Locked,
                format!("{shown} is in use (a running e2e-sync holds it, or a shell or program has something open in it): stop that first; nothing closed"),
            )
        })
    });
    if run.run_timeout(&umount, Duration::from_secs(60))?.is_none() {
        remote::fence(run, p, ctx.port.get())?;
        run.run(&Cmd::new("umount").arg("-l").arg(&p.fs))?;
    }
    Ok(())
}

/// Remove a read-only overlay: the snapshot mapping, then its copy-on-write loop device(s) and file.
pub(crate) fn remove_overlay(run: &Runner, p: &JobPaths, cow_loops: &[Arg]) -> Result<()> {
    run.run(&ct::overlay_remove(&p.overlay_name))?;
    for l in cow_loops {
        run.run(&ct::losetup_detach(l.clone()))?;
    }
    run.run(&Cmd::new("rm").arg("-f").arg(&p.cow))?;
    Ok(())
}

/// Undo what [`ensure_open`] did (nothing if the stack was already up).
pub fn close_opened(ctx: &Ctx, s: &Stack) -> Result<()> {
    let _cleanup = ctx.run.unwinding();
    let p = &ctx.paths;
    if s.opened {
        unmount_fs(ctx, true)?;
        if let Some(cow) = &s.overlay {
            remove_overlay(&ctx.run, p, std::slice::from_ref(cow))?;
        }
        ctx.run.run(&ct::luks_close(&p.dm_name))?;
        if let Some(l) = &s.loop_dev {
            ctx.run.run(&ct::losetup_detach(l))?;
        }
    }
    if s.mounted_remote {
        remote::unmount(&ctx.run, p, true, ctx.port.get())?;
    }
    let _ = std::fs::remove_file(&p.owner);
    Ok(())
}

/// A run that lost its link (or whose sshfs was killed) can leave pieces behind: a dead sshfs, a
/// mapping or an ext4 mount without a live remote under it. We hold the job's lock, so no other
/// run of this job uses them: tear them down, so the next run needs no manual e2e-close.
pub(crate) fn recover_stale(ctx: &Ctx) -> Result<()> {
    let p = &ctx.paths;
    if ctx.run.is_dry() {
        return Ok(());
    }
    // A run killed outright (SIGKILL, OOM, power to the process but not the host) could not
    // unwind: the layers it opened are still up, and would look like a stack opened by hand.
    if let Some((pid, remote)) = stale_owner(p) {
        eprintln!(
            "note: job {} has a stack left by a run that was killed (pid {pid}); tearing it down first",
            p.job
        );
        // Its rsync may take a moment to die (SIGTERM when its parent did): retry a busy umount.
        let mut tries = 0;
        loop {
            match teardown(ctx, !remote) {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("note: teardown not finished ({e:#}); retrying");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_file(&p.owner);
        return Ok(());
    }
    let remote_up = remote::is_mounted(p);
    let above = ctx.fs_mounted() || dm_slaves(&p.dm_name).is_some();
    let stale = if remote_up {
        !remote::responsive(p, Duration::from_secs(20))
    } else {
        above
    };
    if stale {
        eprintln!(
            "note: job {} has a stack left by a run that lost its link; tearing it down first",
            p.job
        );
        teardown(ctx, false)?;
    }
    Ok(())
}

/// The owner record of a stack whose run is gone: (pid, whether it had mounted the remote).
pub(crate) fn stale_owner(p: &JobPaths) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(&p.owner).ok()?;
    let mut w = text.split_whitespace();
    let pid: i32 = w.next()?.parse().ok()?;
    let remote = w.next() == Some("1");
    let alive =
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("e2e-"));
    (!alive).then_some((pid, remote))
}

/// e2e-close's work: unwind every layer of the job that the kernel shows.
pub(crate) fn teardown(ctx: &Ctx, keep_remote: bool) -> Result<()> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let _cleanup = run.unwinding();
    // ext4 over a loop over a hung sshfs (or a dead link) blocks umount; killing sshfs first turns
    // that into I/O errors, and the rest of the teardown goes through.
    if remote::is_mounted(p) && !remote::responsive(p, Duration::from_secs(20)) {
        eprintln!("{}: sshfs does not answer; killing it", p.remote.display());
        remote::fence(run, p, ctx.port.get())?;
    }
    unmount_fs(ctx, false)?;
    let mut loops = Vec::new();
    if let Some(slaves) = dm_slaves(&p.overlay_name) {
        let cows: Vec<Arg> = slaves
            .iter()
            .filter(|s| s.starts_with("loop"))
            .map(|s| Path::new("/dev").join(s).into())
            .collect();
        remove_overlay(run, p, &cows)?;
    } else if p.cow.exists() {
        run.run(&Cmd::new("rm").arg("-f").arg(&p.cow))?;
    }
    if let Some(slaves) = dm_slaves(&p.dm_name) {
        run.run(&ct::luks_close(&p.dm_name))?;
        for s in slaves.iter().filter(|s| s.starts_with("nbd")) {
            run.run(&Cmd::new("nbd-client").arg("-d").arg(format!("/dev/{s}")))?;
        }
        // Our loop under the mapping: once a dead sshfs is gone its backing path no longer
        // starts with remote/, so the search by path below would miss it.
        loops.extend(
            slaves
                .iter()
                .filter(|s| s.starts_with("loop"))
                .map(|s| Path::new("/dev").join(s)),
        );
    }
    for l in loops_backed_by(&p.remote, true) {
        if !loops.contains(&l) {
            loops.push(l);
        }
    }
    for l in loops {
        run.run(&ct::losetup_detach(&l))?;
    }
    if p.ssh_ctl.exists() {
        let ctl = format!("ControlPath={}", p.ssh_ctl.display());
        run.run(
            &Cmd::new("ssh")
                .arg("-o")
                .arg(ctl)
                .args(["-O", "exit", "e2e-backup"]),
        )?;
    }
    if !keep_remote {
        remote::unmount(run, p, false, ctx.port.get())?;
    }
    // Whatever a killed run had opened is closed now.
    let _ = std::fs::remove_file(&p.owner);
    Ok(())
}
