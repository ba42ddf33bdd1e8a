//! e2e-trim: return the container's unused blocks to the server (TRIM through NBD).

use crate::cli::TrimCli;
use crate::container::{self as ct, OpenOpts};
use crate::error::{code_of, fail, Code};
use crate::exec::{Cmd, Runner, Undo};
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
    let p = &ctx.paths;
    let run = &ctx.run;
    let r = &job.remote;
    let file = ctx.container_file(&job);
    if ctx.fs_mounted()
        || p.kernel.dm_slaves(&p.dm_name).is_some()
        || !p.kernel.loops_backed_by(&file, false).is_empty()
    {
        return Err(fail(
            Code::Refused,
            format!("container of job {} is open through e2e-open; run e2e-close {} first (TRIM goes through NBD, not the loop device)", job.name, job.name),
        ));
    }
    let key = job.key_file()?;
    // The nbd module is often not loaded until first use.
    if cli.nbd_device.is_none() && !p.kernel.module_loaded("nbd") {
        run.run(&Cmd::new("modprobe").arg("nbd"))?;
    }
    let nbd = match cli
        .nbd_device
        .clone()
        .or_else(|| p.kernel.free_nbd_device())
    {
        Some(d) => d,
        None if run.is_dry() => PathBuf::from("/dev/nbd0"),
        None => {
            return Err(fail(
                Code::Runtime,
                "no free NBD device: load the module (modprobe nbd)",
            ))
        }
    };
    // The tunnel's local end is a Unix socket in the 0700 run directory: a loopback TCP port
    // would let any local user reach the decrypted-by-nobody but writable NBD export.
    let sock = &p.nbd_sock;
    remote::make_dirs(run, p)?;
    let alloc = remote::allocated_cmd(r, &job.container.file);
    let before = server_allocation(run, &alloc)?;

    let mut undo = Undo::new(run);
    // The tunnel: the NBD server listens on the server's loopback only; NBD is plain text.
    let ctl = format!("ControlPath={}", p.ssh_ctl.display());
    let tunnel = remote::ssh_checked(r)
        .args([
            "-f",
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ControlMaster=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-o",
        ])
        .arg(&ctl)
        .arg("-L")
        .arg(format!("{}:127.0.0.1:{}", sock.display(), cli.nbd_port))
        .arg(remote::destination(r));
    run.run(&tunnel)?;
    undo.push(
        Cmd::new("ssh")
            .arg("-o")
            .arg(&ctl)
            .args(["-O", "exit"])
            .arg(remote::destination(r)),
    );
    let export = job.container.file.clone();
    undo.push(Cmd::rm_f(sock));
    run.run(
        &Cmd::new("nbd-client")
            .arg("-unix")
            .arg(sock)
            .arg(&nbd)
            .arg("-N")
            .arg(&export)
            .on_fail(move |_, stderr| {
                Some(crate::Fail::new(
                    Code::Remote,
                    format!(
                        "nbd-client could not attach export {export:?} through the tunnel ({}): is the NBD server (qemu-nbd) running on the server's 127.0.0.1 with that export name?",
                        stderr.lines().last().unwrap_or("").trim()
                    ),
                ))
            }),
    )?;
    undo.push(Cmd::new("nbd-client").arg("-d").arg(&nbd));
    run.run(&ct::is_luks(&nbd))?;
    run.run(&ct::luks_open(
        &nbd,
        &key,
        &p.dm_name,
        &OpenOpts {
            read_only: false,
            allow_discards: true,
        },
    ))?;
    undo.push(ct::luks_close(&p.dm_name));
    let kind = fsys::detect(run, &p.dm_dev, job.container.filesystem, &job.origin)?;
    crate::stack::open::before_rw_mount(&ctx, kind, false, &mut undo)?;
    kind.mount_on(run, &p.dm_dev, &p.fs, false)?;
    undo.push(fsys::umount(&p.fs));
    for settle in kind.settle_deletions(&p.fs) {
        run.run(&settle)?;
    }
    let out = run.run(&fsys::fstrim(&p.fs))?;
    let claimed = fsys::parse_fstrim(&out.stdout);
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
