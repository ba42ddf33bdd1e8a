//! e2e-grow: grow the container by hand.

use crate::cli::GrowCli;
use crate::error::{fail, Code};
use crate::size::human;
use crate::size::{self, parse_size_spec};
use crate::stack::grow::grow_to;
use crate::stack::{lock, with_stack, Ctx};
use anyhow::Result;
use std::path::PathBuf;

pub fn grow(cli: GrowCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    let job = ctx.job()?;
    let _lock = lock(&ctx)?;
    let file = ctx.container_file(&job);
    // Bad sizes are refused before anything is opened (an open rw mount writes the superblock).
    let to = cli
        .to
        .as_deref()
        .map(size::parse_size)
        .transpose()
        .map_err(|e| fail(Code::Config, format!("--to: {e}")))?;
    let by = cli
        .by
        .as_deref()
        .map(parse_size_spec)
        .transpose()
        .map_err(|e| fail(Code::Config, format!("--by: {e}")))?;
    with_stack(&ctx, &job, false, |stack| {
        let cur = stack.size;
        let new = match (to, by) {
            (Some(to), _) => to,
            (None, Some(spec)) => {
                let Some(cur) = cur else {
                    ctx.run
                        .note("current size unknown in a dry-run before the container is open");
                    return Ok(Some(file.clone()));
                };
                cur + spec.of(cur)
            }
            (None, None) => unreachable!("clap requires --to or --by"),
        };
        if let Some(max) = job.container.max_size {
            if new > max {
                return Err(fail(
                    Code::Config,
                    format!(
                        "{} is more than container.max_size ({}) in {}",
                        human(new),
                        human(max),
                        job.origin
                    ),
                ));
            }
        }
        grow_to(&ctx, &job, stack, new)?;
        Ok(Some(file.clone()))
    })
}
