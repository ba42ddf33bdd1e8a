//! e2e-open: bring the stack up to a mounted filesystem (or, for the units, to the LUKS mapping),
//! creating the container if allowed.

use crate::cli::OpenCli;
use crate::stack::open::{ensure_open, open_unmounted};
use crate::stack::Ctx;
use anyhow::Result;
use std::path::PathBuf;

pub fn open(cli: OpenCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let create = cli.create || job.container.create;
    if cli.no_mount {
        open_unmounted(&ctx, &job, create)?;
        return Ok(Some(ctx.paths.dm_dev.clone()));
    }
    ensure_open(&ctx, &job, create, cli.read_only)?;
    Ok(Some(ctx.paths.fs.clone()))
}
