//! e2e-mount: the sshfs layer alone (in the background, or in the foreground for systemd).

use crate::cli::MountCli;
use crate::config::Job;
use crate::error::{fail, Code};
use crate::progress::print_stdout;
use crate::remote;
use crate::stack::Ctx;
use anyhow::Result;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn mount(cli: MountCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    if cli.foreground {
        return mount_foreground(&ctx, &job);
    }
    remote::mount(&ctx.run, &job.remote, &ctx.paths)?;
    Ok(Some(ctx.paths.remote.clone()))
}

fn mount_foreground(ctx: &Ctx, job: &Job) -> Result<Option<PathBuf>> {
    use nix::sys::signal::{kill, SigSet, Signal};
    use nix::unistd::Pid;
    let p = &ctx.paths;
    if remote::is_mounted(p) {
        return Err(fail(
            Code::Runtime,
            format!(
                "{} is already mounted by another process: run e2e-close {} first",
                p.remote.display(),
                p.job
            ),
        ));
    }
    remote::make_dirs(&ctx.run, p)?;
    // Block the signals we wait for before starting sshfs (std resets the mask in the child).
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    let mut started = None;
    remote::mount_or_diagnose(&ctx.run, &job.remote, || {
        let Some(mut child) = ctx
            .run
            .spawn(&remote::sshfs(&job.remote, &p.remote, true))?
        else {
            return Ok(()); // dry-run
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !remote::is_mounted(p) {
            if let Some(st) = child.try_wait()? {
                return Err(fail(
                    Code::Remote,
                    format!("sshfs exited ({st}) before the mount was up"),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(fail(Code::Remote, "sshfs did not mount within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started = Some(child);
        Ok(())
    })?;
    let Some(mut child) = started else {
        return Ok(Some(p.remote.clone())); // dry-run
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    print_stdout(&format!("{}\n", p.remote.display()));
    let pid = Pid::from_raw(child.id() as i32);
    let result = loop {
        let sig = set.wait()?;
        match sig {
            Signal::SIGCHLD => {
                if let Some(st) = child.try_wait()? {
                    break Err(fail(
                        Code::Remote,
                        format!("sshfs exited ({st}): link to {} lost", job.remote.host),
                    ));
                }
            }
            _ => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                break Ok(None);
            }
        }
    };
    // Unmounting ends sshfs's loop cleanly (SIGTERM alone left it running until the next request).
    let unmounted = remote::unmount(&ctx.run, p, false, job.remote.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait()?.is_none() {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
    unmounted?;
    result
}
