//! The job's connection to the server as processes: which they are (sshfs, the ssh each sshfs
//! started, e2e-trim's NBD tunnel), and the fence that ends them and their TCP connections when a
//! run gives up on the link.

use crate::exec::{Cmd, Runner};
use crate::kernel::{orphan_ports, Kernel, Process};
use crate::paths::JobPaths;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// pids of sshfs processes serving `mountpoint`: started as `sshfs` (e2e-mount) or as mount(8)'s
/// helper `mount.fuse.sshfs` (the generated mount unit; Debian links it, and `mount.sshfs`, to sshfs).
pub fn sshfs_pids(k: &Kernel, mountpoint: &Path) -> Vec<i32> {
    serving(&k.processes(), mountpoint)
}

/// [`sshfs_pids`] among `procs`.
fn serving(procs: &[Process], mountpoint: &Path) -> Vec<i32> {
    let mp = mountpoint.to_string_lossy();
    procs
        .iter()
        .filter(|p| {
            let is_sshfs = p.argv.first().is_some_and(|a| {
                let name = a.rsplit('/').next().unwrap_or(a);
                matches!(name, "sshfs" | "mount.fuse.sshfs" | "mount.sshfs")
            });
            is_sshfs && p.argv.iter().any(|a| a.trim_end_matches('/') == mp)
        })
        .map(|p| p.pid)
        .collect()
}

/// pids of the ssh processes the sshfs processes `parents` started.
fn ssh_children(procs: &[Process], parents: &[i32]) -> Vec<i32> {
    procs
        .iter()
        .filter(|p| p.comm == "ssh" && p.ppid.is_some_and(|pp| parents.contains(&pp)))
        .map(|p| p.pid)
        .collect()
}

/// The processes of the job's connection: its sshfs and the ssh each sshfs started, and e2e-trim's
/// NBD tunnel (the ssh forwarding to the job's socket), which writes into the container too: a
/// btrfs container's lease keeper that lost the lease during a trim fences that.
pub fn connection_pids(paths: &JobPaths) -> Vec<i32> {
    // One read of /proc for all three.
    let procs = paths.kernel.processes();
    let sshfs = serving(&procs, &paths.remote);
    let mut pids = ssh_children(&procs, &sshfs);
    pids.extend(&sshfs);
    pids.extend(tunnel_pids(&procs, &paths.nbd_sock));
    pids
}

/// The ssh whose `-L` forward starts at `sock` (e2e-trim's tunnel, `ssh -f`: no parent to find it by).
fn tunnel_pids(procs: &[Process], sock: &Path) -> Vec<i32> {
    let from = format!("{}:", sock.display());
    procs
        .iter()
        .filter(|p| p.comm == "ssh" && p.argv.iter().any(|a| a.starts_with(&from)))
        .map(|p| p.pid)
        .collect()
}

/// Fence the job's connection once a run gives up on it: kill sshfs and its ssh, wait until they
/// are gone, then destroy (`ss -K`: RST, queued data dropped) the orphaned TCP connections to the
/// server's port that could still deliver writes when the link returns. Without this, a late
/// stream of the dead run's writes can land in the container after the next run's fsck.
pub fn fence(run: &Runner, paths: &JobPaths, port: u16) -> Result<()> {
    let pids = connection_pids(paths);
    for pid in &pids {
        run.run(
            &Cmd::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .ok_code(1),
        )?;
    }
    if run.is_dry() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| paths.kernel.process_exists(*p))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for lport in orphan_ports(&paths.kernel.tcp_tables(), port) {
        run.run(
            &Cmd::new("ss")
                .args(["-K", "-t", "-n", "state", "all"])
                .arg(format!("( sport = :{lport} and dport = :{port} )")),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_includes_the_trim_tunnel() {
        let tmp = tempfile::tempdir().unwrap();
        let put = |p: &str, text: &str| {
            let f = tmp.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        };
        let p = JobPaths::under(tmp.path(), "j").unwrap();
        let other = JobPaths::under(tmp.path(), "other").unwrap();
        let forward = |q: &JobPaths| format!("{}:127.0.0.1:10809", q.nbd_sock.display());
        put(
            "proc/7/cmdline",
            &format!("sshfs\0u@h:/srv\0{}\0", p.remote.display()),
        );
        put("proc/7/stat", "7 (sshfs) S 1 7 7");
        put("proc/8/cmdline", "ssh\0-x\0u@h\0-s\0sftp\0");
        put("proc/8/stat", "8 (ssh) S 7 7 7");
        put(
            "proc/9/cmdline",
            &format!("ssh\0-f\0-N\0-L\0{}\0u@h\0", forward(&p)),
        );
        put("proc/9/stat", "9 (ssh) S 1 9 9");
        put(
            "proc/10/cmdline",
            &format!("ssh\0-L\0{}\0u@h\0", forward(&other)),
        );
        put("proc/10/stat", "10 (ssh) S 1 10 10");
        let mut pids = connection_pids(&p);
        pids.sort();
        assert_eq!(
            pids,
            vec![7, 8, 9],
            "sshfs, its ssh, the trim's tunnel; not another job's"
        );
    }
}
