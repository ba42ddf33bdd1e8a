//! e2e-trim's bring-up: the container over NBD instead of sshfs + loop, since only NBD turns a
//! discard into a hole punched in the server's file: tunnel → nbd-client → LUKS (discards allowed)
//! → the filesystem, mounted read-write after its check or under its lease. Each step's undo is
//! recorded; the caller's [`Undo`] takes the stack down in reverse (umount, lease, close, detach,
//! tunnel).

use super::Ctx;
use crate::config::Job;
use crate::container::{self as ct, OpenOpts};
use crate::exec::Undo;
use crate::filesystem::{self as fsys, Kind};
use crate::remote::nbd;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Bring the job's container up over NBD (`device`, or the first free one; the server's NBD server
/// on its loopback `port`), opened with `key`, and mount it read-write. Returns its filesystem and
/// what undoes it all.
pub fn open<'a>(
    ctx: &'a Ctx,
    job: &Job,
    key: &Path,
    device: Option<PathBuf>,
    port: u16,
) -> Result<(Kind, Undo<'a>)> {
    let (p, run) = (&ctx.paths, &ctx.run);
    let dev = nbd::device(run, &p.kernel, device)?;
    let mut undo = Undo::new(run);
    nbd::tunnel(run, &mut undo, &job.remote, p, port)?;
    nbd::attach(run, &mut undo, &p.nbd_sock, &dev, &job.container.file)?;
    let rw = OpenOpts {
        read_only: false,
        allow_discards: true,
    };
    ct::open_device(run, &mut undo, &dev, key, &p.dm_name, &rw)?;
    let kind = fsys::detect(run, &p.dm_dev, job.container.filesystem, &job.origin)?;
    super::open::before_rw_mount(ctx, kind, false, &mut undo)?;
    kind.mount_on(run, &p.dm_dev, &p.fs, false)?;
    undo.push(fsys::umount(&p.fs));
    Ok((kind, undo))
}
