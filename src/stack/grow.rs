//! Online grow of an open stack: file → loop capacity → LUKS → ext4 (systemd-homed's order).

use super::{Ctx, Stack};
use crate::config::Job;
use crate::container as ct;
use crate::error::{code_of, fail, Code};
use crate::filesystem as fsys;
use crate::remote;
use crate::size::human;
use anyhow::Result;

/// Before a sync: grow by container.auto_grow_step when free space is below auto_grow_free.
pub(crate) fn auto_grow(ctx: &Ctx, job: &Job, stack: &mut Stack) -> Result<()> {
    let c = &job.container;
    if c.auto_grow_free.is_zero() {
        return Ok(());
    }
    let (Ok((free, _)), Some(size)) = (fsys::usage(&ctx.paths.fs), stack.size) else {
        ctx.run
            .note("auto-grow check skipped: filesystem not mounted yet");
        return Ok(());
    };
    if ctx.run.is_dry() && !ctx.fs_mounted() {
        ctx.run
            .note("auto-grow check skipped: filesystem not mounted yet");
        return Ok(());
    }
    if free >= c.auto_grow_free.of(size) {
        return Ok(());
    }
    let mut new = size + c.auto_grow_step.of(size);
    if let Some(max) = c.max_size {
        new = new.min(max);
    }
    if new <= size {
        crate::warning!(
            "container has only {} free and is at container.max_size; not growing",
            human(free)
        );
        return Ok(());
    }
    match grow_to(ctx, job, stack, new) {
        Err(e) if code_of(&e) == Code::NoSpace => {
            crate::warning!("not growing before sync: {e:#}");
            Ok(())
        }
        r => r,
    }
}

/// Online grow: file → loop capacity → LUKS → ext4 (systemd-homed's order).
pub(crate) fn grow_to(ctx: &Ctx, job: &Job, stack: &mut Stack, new: u64) -> Result<()> {
    let key = job.key_file()?; // before touching anything
    let p = &ctx.paths;
    let run = &ctx.run;
    let file = ctx.container_file(job);
    let new = new.div_ceil(4096) * 4096; // whole LUKS sectors
    let cur = stack.size.unwrap_or(0);
    if new < cur {
        return Err(fail(
            Code::Config,
            format!("refusing to shrink {} from {} to {}: ext4 shrinks only offline; e2e-trim returns unused space", file.display(), human(cur), human(new)),
        ));
    }
    if new == cur {
        return Ok(());
    }
    if !(run.is_dry() && stack.mounted_remote) {
        let free = remote::server_free(p)?;
        let need = (new - cur).saturating_add(job.container.server_reserve);
        if free < need {
            return Err(fail(
                Code::NoSpace,
                format!(
                    "server has {} free; growing by {} would leave less than container.server_reserve ({})",
                    human(free),
                    human(new - cur),
                    human(job.container.server_reserve)
                ),
            ));
        }
    }
    let lp = stack.loop_dev.clone().ok_or_else(|| {
        fail(
            Code::Runtime,
            format!(
                "no loop device backs {}: is it open through e2e-trim?",
                file.display()
            ),
        )
    })?;
    ct::grow(run, &file, &lp, &p.dm_name, &key, new)?;
    run.run(&stack.fs.grow(&p.dm_dev, &p.fs))?;
    stack.size = Some(new);
    Ok(())
}
