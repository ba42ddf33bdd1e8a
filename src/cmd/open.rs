//! e2e-open: bring the stack up to a mounted filesystem, creating the container if allowed.

use crate::cli::OpenCli;
use crate::stack::open::ensure_open;
use crate::stack::Ctx;
use anyhow::Result;
use std::path::PathBuf;

pub fn open(cli: OpenCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    ensure_open(
        &ctx,
        &job,
        cli.create || job.container.create,
        cli.read_only,
    )?;
    Ok(Some(ctx.paths.fs.clone()))
}
