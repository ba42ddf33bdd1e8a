//! e2e-trim: return the container's unused blocks to the server (TRIM through NBD).

use crate::cli::TrimCli;
use crate::config::Job;
use crate::error::{code_of, fail, Code};
use crate::exec::{Cmd, Runner};
use crate::filesystem as fsys;
use crate::remote;
use crate::size::human;
use crate::stack::{lock, Ctx};
use anyhow::Result;
use std::path::PathBuf;

pub fn trim(cli: TrimCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let _lock = lock(&ctx)?;
    trim_job(&ctx, &job, cli.nbd_device, cli.nbd_port)
}

/// The trim of `job` (its lock held): the allocation on the server, the stack over NBD, the trim,
/// the teardown, the allocation again.
pub(super) fn trim_job(
    ctx: &Ctx,
    job: &Job,
    device: Option<PathBuf>,
    port: u16,
) -> Result<Option<PathBuf>> {
    let p = &ctx.paths;
    let run = &ctx.run;
    let r = &job.remote;
    let file = ctx.container_file(job);
    if ctx.fs_mounted()
        || p.kernel.dm_slaves(&p.dm_name).is_some()
        || !p.kernel.loops_backed_by(&file, false).is_empty()
    {
        return Err(fail(
            Code::Refused,
            format!("container of job {} is open through e2e-open; run e2e-close {} first (TRIM goes through NBD, not the loop device)", job.name, job.name),
        ));
    }
    let key = job.key_file()?; // before touching anything
    remote::make_dirs(run, p)?;
    let alloc = remote::allocated_cmd(r, &job.container.file);
    let before = server_allocation(run, &alloc)?;
    let (kind, undo) = crate::stack::nbd::open(ctx, job, &key, device, port)?;
    kind.settle_deletions(run, &p.fs)?;
    let claimed = fsys::fstrim(run, &p.fs)?;
    if let Some(c) = claimed {
        crate::progress::info(&format!(
            "fstrim reported {c} bytes ({}) trimmed (not trusted; judged by the server)",
            human(c)
        ));
    }
    drop(undo); // tear down in reverse: umount, close, nbd-client -d, tunnel exit
    let after = match before {
        Some(_) => server_allocation(run, &alloc)?,
        None => None,
    };
    if let (Some(b), Some(a)) = (before, after) {
        crate::progress::info(&format!(
            "server allocated bytes: before {b} ({}), after {a} ({})",
            human(b),
            human(a)
        ));
        if a >= b && claimed.unwrap_or(0) > 0 {
            return Err(fail(
                Code::Runtime,
                format!(
                    "fstrim reported {} trimmed but the server file did not shrink ({b} → {a} bytes): the server's NBD server must turn TRIM into hole punches (qemu-nbd --discard=unmap; not nbd-server, see e2e-trim --help)",
                    human(claimed.unwrap_or(0))
                ),
            ));
        }
    }
    Ok(Some(file))
}

/// The container's allocation on the server (`ssh HOST stat`), or None with a warning when the account
/// runs no commands: the NixOS server module's accounts are SFTP-only (ForceCommand internal-sftp)
/// yet may forward the NBD port, so the trim itself still works there. ssh's own failures
/// (unreachable, key refused) still end the run.
fn server_allocation(run: &Runner, alloc: &Cmd) -> Result<Option<u64>> {
    match run.query(alloc) {
        Ok(o) => Ok(o.and_then(|o| remote::parse_allocated(&o))),
        Err(e) if code_of(&e) == Code::Remote => Err(e),
        Err(e) => {
            let why = format!("{e:#}").replace('\n', " ");
            crate::warning!("cannot read the container's allocation on the server: the account runs no commands (SFTP-only?) ({why}); trimming without the before/after check");
            Ok(None)
        }
    }
}
