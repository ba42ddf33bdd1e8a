//! e2e-open: bring the stack up to a mounted filesystem (or, for the units, to the LUKS mapping),
//! creating the container if allowed.

use crate::cli::OpenCli;
use crate::stack::open::{ensure_open, open_unmounted};
use crate::stack::Ctx;
use anyhow::Result;
use std::path::PathBuf;

pub fn open(cli: OpenCli) -> Result<Option<PathBuf>> {
    let ctx = Ctx::new(&cli.common)?;
    if let Some(seq) = cli.keep_lease {
        return keep_lease(&ctx, seq).map(|_| None);
    }
    let job = ctx.job()?;
    let create = cli.create || job.container.create;
    if cli.no_mount {
        open_unmounted(&ctx, &job, create)?;
        return Ok(Some(ctx.paths.dm_dev.clone()));
    }
    ensure_open(&ctx, &job, create, cli.read_only)?;
    Ok(Some(ctx.paths.fs.clone()))
}

/// `e2e-open --keep-lease SEQ JOB`, started by the bring-up of a btrfs container that took its lease
/// (`lease::take`): beat every interval, each time checking first that the block is still this
/// keeper's. SIGTERM (`e2e-close --release-lease`, in teardown): write the block free and exit. A
/// block that is no longer ours means another host took the container (this host's beats did not
/// reach the server for 2 × interval + 1 s): this host's connection is fenced at once, so that
/// nothing more it writes reaches the server.
fn keep_lease(ctx: &Ctx, mut seq: u64) -> Result<()> {
    use crate::lease::{self, Lease, INTERVAL_MS};
    let p = &ctx.paths;
    std::fs::write(&p.lease_keeper, format!("{}\n", std::process::id()))?;
    // The kernel's OOM killer must not end the beats of a mounted container.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let me = p.kernel.hostname().trim().to_string();
    let beat = |seq: u64, held: bool| Lease {
        held,
        seq,
        interval_ms: INTERVAL_MS,
        pid: std::process::id(),
        holder: me.clone(),
    };
    let step = std::time::Duration::from_millis(100);
    let r = loop {
        // SIGTERM is the keeper's ordinary end (its release), not an error.
        if crate::exec::take_signal() {
            break lease::write(&p.dm_dev, &beat(seq.wrapping_add(1), false));
        }
        if !p.dm_dev.exists() {
            break Ok(()); // closed under the keeper (e2e-close --force): nothing left to hold
        }
        match lease::read(&p.dm_dev) {
            Ok(b) if lease::still_ours(&b, seq) => {
                seq = seq.wrapping_add(1);
                if let Err(e) = lease::write(&p.dm_dev, &beat(seq, true)) {
                    crate::warning!("{e:#}");
                }
            }
            Ok(b) => {
                let who = Lease::decode(&b).map(|l| l.holder).unwrap_or_default();
                let port = ctx.job().map_or(22, |j| j.remote.port);
                if let Err(e) = crate::remote::fence(&ctx.run, p, port) {
                    crate::warning!("fencing the connection failed: {e:#}");
                }
                break Err(crate::error::fail(
                    crate::error::Code::Refused,
                    format!("lost the container's lease to host {who:?}: this host's connection to the server is cut; run e2e-close {} here", p.job),
                ));
            }
            Err(e) => crate::warning!("{e:#}"),
        }
        for _ in 0..INTERVAL_MS / 100 {
            if crate::exec::check_interrupted().is_err() {
                break;
            }
            std::thread::sleep(step);
        }
    };
    let _ = std::fs::remove_file(&p.lease_keeper);
    r
}
