//! Teardown: from what this run opened, from whatever the kernel shows, or from a killed run's leftovers.

use super::{Ctx, Stack};
use crate::container as ct;
use crate::error::{fail, Code, Fail};
use crate::exec::{Arg, Cmd, Step};
use crate::filesystem as fsys;
use crate::paths::JobPaths;
use crate::remote;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Unmount the container's ext4, waiting while its flush makes progress (sectors written through
/// the mapping: a slow link with much dirty data, after a run was stopped mid-rsync, can need more
/// than a minute), up to 150 s in all (the units' TimeoutStopSec= is 3 min). Over a hung or dead
/// sshfs nothing completes, so after a minute without progress, or at the cap, the connection is
/// fenced (the flush fails with I/O errors; ext4's journal keeps the filesystem consistent) and
/// the mount detached lazily.
/// `known`: this run mounted it (a dry-run cannot see that in the mount table).
pub(crate) fn unmount_fs(ctx: &Ctx, known: bool) -> Result<()> {
    let (run, p) = (&ctx.run, &ctx.paths);
    if !known && p.kernel.mount_at(&p.fs).is_none() {
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
    let written = || p.kernel.dm_sectors_written(&p.dm_name);
    if run
        .run_until_stalled(
            &umount,
            Duration::from_secs(60),
            Duration::from_secs(150),
            &written,
        )?
        .is_none()
    {
        remote::fence(run, p, ctx.port.get())?;
        run.run(&Cmd::new("umount").arg("-l").arg(&p.fs))?;
    }
    Ok(())
}

/// Undo what [`ensure_open`] did (nothing if the stack was already up).
pub fn close_opened(ctx: &Ctx, s: &Stack) -> Result<()> {
    let _cleanup = ctx.run.unwinding();
    let p = &ctx.paths;
    if s.opened {
        unmount_fs(ctx, true)?;
        let mut steps = Vec::new();
        if let Some(cow) = &s.overlay {
            steps = ct::remove_overlay(&p.overlay_name, std::slice::from_ref(cow), &p.cow);
        }
        if p.lease_keeper.exists() {
            steps.push(Step::run(crate::lease::release_cmd(&p.job)));
        }
        steps.push(Step::run(ct::luks_close(&p.dm_name)));
        steps.extend(s.loop_dev.iter().map(|l| Step::run(ct::losetup_detach(l))));
        ctx.run.all(steps)?;
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
        return recover_stale_dry(ctx);
    }
    // A run killed outright (SIGKILL, OOM, power to the process but not the host) could not
    // unwind: the layers it opened are still up, and would look like a stack opened by hand.
    if let Some((pid, remote)) = stale_owner(p) {
        crate::notice!(
            "job {} has a stack left by a run that was killed (pid {pid}); tearing it down first",
            p.job
        );
        // Its rsync may take a moment to die (SIGTERM when its parent did): retry a busy umount.
        let mut tries = 0;
        loop {
            match teardown(ctx, !remote) {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    crate::notice!("teardown not finished ({e:#}); retrying");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_file(&p.owner);
        return Ok(());
    }
    let remote_up = remote::is_mounted(p);
    let above = ctx.fs_mounted() || p.kernel.dm_slaves(&p.dm_name).is_some();
    let stale = if remote_up {
        !remote::responsive(p, Duration::from_secs(20))
    } else {
        above
    };
    if stale {
        crate::notice!(
            "job {} has a stack left by a run that lost its link; tearing it down first",
            p.job
        );
        teardown(ctx, false)?;
    }
    Ok(())
}

/// A read-only open left behind (`e2e-open --read-only` to browse or restore, then forgotten)
/// would make a backup fail. If nothing uses it, close it (the remote stays) so the run can open
/// the container for writing; if something does, say so (exit 5, nothing closed). A filesystem
/// that ext4 remounted read-only after an I/O error (the mapping itself is writable) is left to
/// the refusal in `open_stack`.
pub(crate) fn close_idle_read_only(ctx: &Ctx) -> Result<()> {
    let p = &ctx.paths;
    let ro_open = p.kernel.mount_at(&p.fs).is_some_and(|m| m.read_only())
        && p.kernel.dm_read_only(&p.dm_name) == Some(true);
    if !ro_open {
        return Ok(());
    }
    crate::notice!(
        "job {} is open read-only (a browse or restore left open): closing it to back up",
        p.job
    );
    if ctx.run.is_dry() {
        // The script cannot see the mounts go: it closes everything, then shows a full bring-up.
        teardown(ctx, false)?;
        p.kernel.forget();
        return Ok(());
    }
    teardown(ctx, true)
}

/// A dry run decides from what it can see without probing the link: a killed run's stack, or
/// layers left without their remote, are torn down in the script (and then taken as gone).
fn recover_stale_dry(ctx: &Ctx) -> Result<()> {
    let p = &ctx.paths;
    let above = ctx.fs_mounted() || p.kernel.dm_slaves(&p.dm_name).is_some();
    let remote_up = remote::is_mounted(p);
    let killed = stale_owner(p);
    if killed.is_some() || (above && !remote_up) {
        ctx.run
            .note("a stack left by an earlier run: torn down first");
        teardown(ctx, killed.is_some_and(|(_, mounted)| !mounted))?;
        p.kernel.forget();
    } else if remote_up {
        ctx.run.note(
            "a real run first checks that the mounted remote answers, and tears the stack down if not",
        );
    }
    Ok(())
}

/// The owner record of a stack whose run is gone: (pid, whether it had mounted the remote).
pub(crate) fn stale_owner(p: &JobPaths) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(&p.owner).ok()?;
    let mut w = text.split_whitespace();
    let pid: i32 = w.next()?.parse().ok()?;
    let remote = w.next() == Some("1");
    let alive = p.kernel.process_named(pid, "e2e-");
    (!alive).then_some((pid, remote))
}

/// e2e-close's work: unwind every layer of the job that the kernel shows.
pub(crate) fn teardown(ctx: &Ctx, keep_remote: bool) -> Result<()> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let _cleanup = run.unwinding();
    // ext4 over a loop over a hung sshfs (or a dead link) blocks umount; killing sshfs first turns
    // that into I/O errors, and the rest of the teardown goes through.
    if !run.is_dry() && remote::is_mounted(p) && !remote::responsive(p, Duration::from_secs(20)) {
        crate::progress::stderr_line(
            crate::progress::Level::Warning,
            &format!("{}: sshfs does not answer; killing it", p.remote.display()),
        );
        remote::fence(run, p, ctx.port.get())?;
    }
    if let Some(why) = held_elsewhere(ctx) {
        return Err(fail(Code::Locked, format!("{why}; nothing closed")));
    }
    unmount_fs(ctx, false)?;
    run.all(close_plan(p, &KernelView::read(p)))?;
    if !keep_remote {
        remote::unmount(run, p, false, ctx.port.get())?;
    }
    // Whatever a killed run had opened is closed now.
    if !run.is_dry() {
        let _ = std::fs::remove_file(&p.owner);
    }
    Ok(())
}

/// The job's filesystem is also mounted elsewhere (the browse automount's bind mount, or one made by
/// hand): unmounting fs/ would leave the mapping busy under that mount, so the stack stays. The
/// line says where and how it goes.
pub(crate) fn held_elsewhere(ctx: &Ctx) -> Option<String> {
    let p = &ctx.paths;
    let others = p.kernel.other_mounts_of(&p.fs);
    let first = others.first()?;
    Some(format!(
        "{} is also mounted at {} (browsing through the job's automount, or a bind mount): the stack stays open until that is unmounted (the automount does so after browse.idle_timeout without use; or umount it)",
        p.fs.display(),
        first.mountpoint.display()
    ))
}

/// What the kernel shows of one job's layers below its ext4 mount.
#[derive(Debug, Default)]
pub(crate) struct KernelView {
    overlay_slaves: Option<Vec<String>>,
    cow_file: bool,
    dm_slaves: Option<Vec<String>>,
    /// Loop devices whose backing file lies under the job's remote/.
    remote_loops: Vec<PathBuf>,
    ssh_ctl: bool,
    /// A btrfs container's lease keeper runs (or ran: its pid file is there).
    lease_keeper: bool,
}

impl KernelView {
    fn read(p: &JobPaths) -> Self {
        KernelView {
            overlay_slaves: p.kernel.dm_slaves(&p.overlay_name),
            cow_file: p.cow.exists(),
            dm_slaves: p.kernel.dm_slaves(&p.dm_name),
            remote_loops: p.kernel.loops_backed_by(&p.remote, true),
            ssh_ctl: p.ssh_ctl.exists(),
            lease_keeper: p.lease_keeper.exists(),
        }
    }
}

/// The teardown below the ext4 mount, from what the kernel shows: overlay, mapping, NBD and loop
/// devices, the NBD tunnel's ssh master. The order is the stack's, top down.
pub(crate) fn close_plan(p: &JobPaths, k: &KernelView) -> Vec<Step> {
    let dev = |s: &String| Path::new("/dev").join(s);
    let loops_of = |slaves: &[String]| -> Vec<PathBuf> {
        slaves
            .iter()
            .filter(|s| s.starts_with("loop"))
            .map(dev)
            .collect()
    };
    let mut steps = Vec::new();
    if let Some(slaves) = &k.overlay_slaves {
        let cows: Vec<Arg> = loops_of(slaves).into_iter().map(Arg::from).collect();
        steps.extend(ct::remove_overlay(&p.overlay_name, &cows, &p.cow));
    } else if k.cow_file {
        steps.push(Step::run(Cmd::rm_f(&p.cow)));
    }
    // Our loop under the mapping: once a dead sshfs is gone its backing path no longer starts with
    // remote/, so the search by path alone would miss it.
    let mut loops = Vec::new();
    if k.lease_keeper {
        steps.push(Step::run(crate::lease::release_cmd(&p.job)));
    }
    if let Some(slaves) = &k.dm_slaves {
        steps.push(Step::run(ct::luks_close(&p.dm_name)));
        for s in slaves.iter().filter(|s| s.starts_with("nbd")) {
            steps.push(Step::run(Cmd::new("nbd-client").arg("-d").arg(dev(s))));
        }
        loops = loops_of(slaves);
    }
    for l in &k.remote_loops {
        if !loops.contains(l) {
            loops.push(l.clone());
        }
    }
    steps.extend(loops.iter().map(|l| Step::run(ct::losetup_detach(l))));
    if k.ssh_ctl {
        let ctl = format!("ControlPath={}", p.ssh_ctl.display());
        steps.push(Step::run(Cmd::new("ssh").arg("-o").arg(ctl).args([
            "-O",
            "exit",
            "e2e-backup",
        ])));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Runner;

    fn script(k: &KernelView) -> Vec<String> {
        let r = Runner::buffered();
        r.all(close_plan(&JobPaths::new("home").unwrap(), k))
            .unwrap();
        r.script()
    }

    #[test]
    fn nothing_shown_nothing_run() {
        assert!(script(&KernelView::default()).is_empty());
    }

    #[test]
    fn overlay_mapping_nbd_and_loops_in_stack_order() {
        let k = KernelView {
            overlay_slaves: Some(vec!["dm-0".into(), "loop5".into()]),
            cow_file: true,
            dm_slaves: Some(vec!["loop2".into(), "nbd0".into()]),
            remote_loops: vec!["/dev/loop2".into(), "/dev/loop3".into()],
            ssh_ctl: true,
            lease_keeper: false,
        };
        assert_eq!(
            script(&k),
            [
                "set -e",
                "dmsetup remove e2e-home+ro",
                "losetup -d /dev/loop5",
                "rm -f /run/e2e-backup/home/cow",
                "cryptsetup close e2e-home",
                "nbd-client -d /dev/nbd0",
                "losetup -d /dev/loop2",
                "losetup -d /dev/loop3",
                "ssh -o ControlPath=/run/e2e-backup/home/ssh.ctl -O exit e2e-backup",
            ]
        );
    }

    #[test]
    fn a_lease_is_released_before_the_mapping_closes() {
        let k = KernelView {
            dm_slaves: Some(vec!["loop2".into()]),
            lease_keeper: true,
            ..Default::default()
        };
        let s = script(&k);
        assert!(s[1].ends_with("e2e-close --release-lease home"), "{s:?}");
        assert_eq!(
            s[2..],
            ["cryptsetup close e2e-home", "losetup -d /dev/loop2"]
        );
    }

    #[test]
    fn a_stray_cow_file_alone_is_removed() {
        let k = KernelView {
            cow_file: true,
            ..Default::default()
        };
        assert_eq!(script(&k), ["set -e", "rm -f /run/e2e-backup/home/cow"]);
    }
}
