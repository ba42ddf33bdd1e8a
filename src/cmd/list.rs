//! e2e-sync --list: the snapshots in the container, oldest first; an incomplete one (see
//! [`crate::partial`]) has a second, tab-separated field saying so.

use crate::config::Job;
use crate::partial;
use crate::progress::print_stdout;
use crate::snapshots;
use crate::stack::{with_stack, Ctx};
use anyhow::Result;
use std::path::PathBuf;

pub(crate) fn list(ctx: &Ctx, job: &Job) -> Result<Option<PathBuf>> {
    // Printed after the stack is closed: nothing the reader does can leave it open.
    let list = with_stack(ctx, job, true, |_| {
        let (stamps, _) = snapshots::scan(&ctx.paths.fs);
        let fs = &ctx.paths.fs;
        Ok(stamps
            .into_iter()
            .map(|(s, _)| match partial::unread_count(fs, &s) {
                Some(n) => format!("{s}\tincomplete: {n} source path(s) not read\n"),
                None => format!("{s}\n"),
            })
            .collect::<String>())
    })?;
    print_stdout(&list);
    Ok(None)
}
