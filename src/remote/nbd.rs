//! e2e-trim's transport: the server's NBD export (qemu-nbd on the server's loopback, named after the
//! container file) reached through an ssh forward that starts at a Unix socket in the job's 0700 run
//! directory, and attached as a local NBD device. NBD is plain text: it never leaves the ssh
//! connection, and no local user can reach the socket.

use super::{destination, ssh_checked, Remote};
use crate::error::{fail, Code, Fail};
use crate::exec::{Cmd, Runner, Undo};
use crate::kernel::Kernel;
use crate::paths::JobPaths;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The NBD device to use: `given`, else the first free one (the module loaded first when it is not
/// yet: it often is not until first use).
pub fn device(run: &Runner, k: &Kernel, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    if !k.module_loaded("nbd") {
        run.run(&Cmd::new("modprobe").arg("nbd"))?;
    }
    match k.free_nbd_device() {
        Some(d) => Ok(d),
        None if run.is_dry() => Ok(PathBuf::from("/dev/nbd0")),
        None => Err(fail(
            Code::Runtime,
            "no free NBD device: load the module (modprobe nbd)",
        )),
    }
}

/// The ssh forward from the job's socket to the server's NBD `port` (undo: the control socket's
/// exit, then the socket removed).
pub fn tunnel(run: &Runner, undo: &mut Undo, r: &Remote, p: &JobPaths, port: u16) -> Result<()> {
    let ctl = format!("ControlPath={}", p.ssh_ctl.display());
    let forward = ssh_checked(r)
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
        .arg(format!("{}:127.0.0.1:{port}", p.nbd_sock.display()))
        .arg(destination(r));
    run.run(&forward)?;
    undo.push(
        Cmd::new("ssh")
            .arg("-o")
            .arg(&ctl)
            .args(["-O", "exit"])
            .arg(destination(r)),
    );
    undo.push(Cmd::rm_f(&p.nbd_sock));
    Ok(())
}

/// Attach the export `export` through the [`tunnel`] as the local device `dev` (undo: detach).
pub fn attach(run: &Runner, undo: &mut Undo, sock: &Path, dev: &Path, export: &str) -> Result<()> {
    let name = export.to_string();
    run.run(
        &Cmd::new("nbd-client")
            .arg("-unix")
            .arg(sock)
            .arg(dev)
            .arg("-N")
            .arg(export)
            .on_fail(move |_, stderr| {
                Some(Fail::new(
                    Code::Remote,
                    format!(
                        "nbd-client could not attach export {name:?} through the tunnel ({}): is the NBD server (qemu-nbd) running on the server's 127.0.0.1 with that export name?",
                        stderr.lines().last().unwrap_or("").trim()
                    ),
                ))
            }),
    )?;
    undo.push(Cmd::new("nbd-client").arg("-d").arg(dev));
    Ok(())
}
