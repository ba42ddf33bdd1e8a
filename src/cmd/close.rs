//! e2e-close: tear the job's stack down from any state.

use crate::cli::CloseCli;
use crate::error::{code_of, fail, Code};
use crate::outcome;
use crate::remote;
use crate::stack::close::{held_elsewhere, teardown};
use crate::stack::{lock, Ctx};
use anyhow::Result;
use std::path::PathBuf;

/// Tear down from any state, using only what the kernel shows (no job file needed).
pub fn close(cli: CloseCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    if cli.release_lease {
        // A step of a teardown that holds the job's lock itself: no lock taken here.
        let p = &ctx.paths;
        crate::lease::release(&p.dm_dev, &p.lease_keeper, &p.kernel.hostname())?;
        return Ok(None);
    }
    // For the server's port, to fence a dead link, and for --outcome's probe: closing itself needs
    // no job file.
    let job = ctx.job().ok();
    // A run in progress would go on writing into whatever is at fs/ once the container is gone.
    let _lock = match lock(&ctx) {
        Err(e) if cli.force && code_of(&e) == Code::Locked => {
            crate::warning!("{e:#}; closing anyway (--force): that run will fail");
            // Read by that run when its next step fails (see remote::lost_link).
            let _ = std::fs::write(&ctx.paths.forced, format!("{}\n", std::process::id()));
            None
        }
        Err(e) if code_of(&e) == Code::Locked => {
            return Err(fail(
                Code::Locked,
                format!("{e:#}: a run is using the stack; wait for it, stop it, or pass --force"),
            ))
        }
        l => l?,
    };
    // A backup while someone browses: the stack is theirs now; judge the run, close nothing.
    let held = cli.outcome.then(|| held_elsewhere(&ctx)).flatten();
    if let Some(why) = &held {
        crate::notice!("{why}");
    }
    let r = match held {
        Some(_) => Ok(()),
        None => teardown(&ctx, cli.keep_remote),
    };
    if r.is_err() {
        // Nothing closed under that run (its filesystem was in use, say): it has nothing to learn.
        let _ = std::fs::remove_file(&ctx.paths.forced);
    }
    r?;
    if !cli.outcome || ctx.run.is_dry() {
        return Ok(None);
    }
    let record = std::env::var_os(outcome::ENV)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            fail(
                Code::Config,
                format!(
                    "--outcome: {} is not set (the e2e-backup@ units set it to the record's path)",
                    outcome::ENV
                ),
            )
        })?;
    let record = PathBuf::from(record);
    // Nothing recorded: no layer ran, because the remote's mount unit failed, or one was killed.
    // A probe of the server turns the first case into the line e2e-mount would have given.
    if !outcome::recorded(&record) {
        if let Some(job) = &job {
            if let Err(e) = ctx.run.run(&remote::probe(&job.remote)) {
                let _ = outcome::take(&record);
                return Err(e.context("the backup did not run: the remote did not mount"));
            }
        }
    }
    outcome::take(&record).map(Some)
}
