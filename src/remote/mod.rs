//! The server side: ssh reachability probe, sshfs mount/unmount, server free space (statvfs through
//! sshfs, which forwards `statvfs@openssh.com`), server allocated bytes (stat over ssh); the link's
//! health: the stall watchdog and the diagnosis of a lost link.

mod fence;
pub mod lost_link;
pub mod nbd;
pub mod watchdog;

pub use fence::{connection_pids, fence, sshfs_pids};

use crate::error::{Code, Fail};
use crate::exec::{last_line, quote, Cmd, Runner};
use crate::paths::JobPaths;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The job's server and how to reach it (the job file's `[remote]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub path: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
}

/// ssh options shared by every connection: pinned host key, key-only auth, fail fast on a dead link.
/// ServerAlive 10 s × 3 declares a dead link in ~30 s instead of hanging forever.
pub fn ssh_options(r: &Remote) -> Vec<(String, String)> {
    [
        ("BatchMode", "yes".to_string()),
        ("ConnectTimeout", "15".to_string()),
        ("StrictHostKeyChecking", "yes".to_string()),
        ("UserKnownHostsFile", r.known_hosts.display().to_string()),
        ("GlobalKnownHostsFile", "/dev/null".to_string()),
        ("IdentityFile", r.identity_file.display().to_string()),
        ("IdentitiesOnly", "yes".to_string()),
        ("ServerAliveInterval", "10".to_string()),
        ("ServerAliveCountMax", "3".to_string()),
        ("Port", r.port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `user@host` for ssh (ssh takes IPv6 literals bare here).
pub fn destination(r: &Remote) -> String {
    format!("{}@{}", r.user, r.host)
}

/// The SFTP requests the tools make, for the server's `ForceCommand internal-sftp -p …` (OpenSSH
/// refuses every other): sshfs reading, writing, truncating (set/fsetstat) and fsyncing the
/// container, listing and stat-ing its directory, realpath at mount, statvfs for free space;
/// `--create`'s build under a temporary name (open, rename/posix-rename, remove of a leftover) and
/// mkdir. Refused: symlink and hardlink (links that a root process on the server, e2e-keep or
/// qemu-nbd, could be led through), readlink, lsetstat, rmdir, copy-data (a server-side copy
/// the tools never ask for), fstatvfs, limits, expand-path, home-directory and
/// users-groups-by-id (names of the server's accounts). The server module, e2e-backup(7) and
/// e2e-setup's instructions use this list; tests/man.rs keeps them equal.
pub const SFTP_REQUESTS: &str = "open,close,read,write,lstat,fstat,setstat,fsetstat,opendir,readdir,remove,mkdir,realpath,stat,rename,posix-rename,statvfs,fsync";

/// `user@host:path`, what sshfs mounts (also a mount unit's `What=`).
pub fn sftp_target(r: &Remote) -> String {
    let host = if r.host.contains(':') {
        format!("[{}]", r.host)
    } else {
        r.host.clone()
    };
    format!("{}@{}:{}", r.user, host, r.path)
}

/// `ssh OPTIONS user@host` ready for a remote command or `-N`.
pub fn ssh(r: &Remote) -> Cmd {
    // -F /dev/null: no user or system ssh_config (ProxyCommand, ControlMaster, LocalCommand,
    // forwardings…) reaches a connection to the untrusted server.
    // -a -x: no agent or X11 forwarded to an untrusted server (the defaults without a config;
    // spelt out, as sshfs does for its own ssh).
    let mut c = Cmd::new("ssh").args(["-F", "/dev/null", "-a", "-x"]);
    for (k, v) in ssh_options(r) {
        c = c.arg("-o").arg(format!("{k}={v}"));
    }
    c
}

/// [`ssh`] whose own failures (exit 255) end in one classified line; any other code is the remote
/// command's.
pub fn ssh_checked(r: &Remote) -> Cmd {
    let r2 = r.clone();
    ssh(r).on_fail(move |rc, stderr| (rc == 255).then(|| classify_ssh_error(&r2, stderr)))
}

/// Classify an ssh failure (exit 255) from its stderr.
pub fn classify_ssh_error(r: &Remote, stderr: &str) -> Fail {
    let host = format!("{}:{}", r.host, r.port);
    let kh = r.known_hosts.display();
    let has = |s: &str| stderr.contains(s);
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || has("Host key verification failed")
        || has("host key is known")
    {
        Fail::new(
            Code::Remote,
            format!("host key of {host} does not match {kh}: refusing to connect (if the server key really changed, update remote.known_hosts)"),
        )
    } else if has("Permission denied") {
        Fail::new(
            Code::Remote,
            format!("{host} refused the key {}: check remote.user and remote.identity_file and the server's authorized_keys", r.identity_file.display()),
        )
    } else {
        let last = match last_line(stderr) {
            "" => "no answer",
            l => l,
        };
        Fail::new(
            Code::Remote,
            format!("cannot reach {host}: {last} (check remote.host, remote.port, the network)"),
        )
    }
}

/// A quick `ssh … true` that names an unreachable host, a host-key mismatch or a refused key, which
/// sshfs hides behind "read: Connection reset by peer"; run only after sshfs failed (one SSH
/// handshake less per run: ≈3 s under emulation, a round trip or more on a real uplink; an
/// unreachable host now waits out ConnectTimeout twice). ssh exits 255 for its own failures; any
/// other code was the account's answer after login, so the link and key are fine:
/// an SFTP-only account (ForceCommand internal-sftp, as the NixOS server module sets up) answers 1
/// "This service allows sftp connections only.", a restricted shell 126 or 127.
pub fn probe(r: &Remote) -> Cmd {
    ssh_checked(r)
        .arg(destination(r))
        .arg("true")
        .ok_code(1)
        .ok_code(126)
        .ok_code(127)
}

/// Escape a value for a FUSE `-o` option (commas separate options).
fn fuse_opt(v: &str) -> String {
    v.replace('\\', "\\\\").replace(',', "\\,")
}

/// The sshfs options, for `sshfs -o` and for the generated mount unit's `Options=` alike: root's
/// mount readable by the tools (`allow_other`), ssh without ssh_config (`-F /dev/null`, through
/// `ssh_command`, which sshfs splits at spaces and which, unlike `-F`, is also a mount option),
/// then the shared ssh options (sshfs passes the ones ssh knows on to it). sshfs itself adds `-x
/// -a -oClearAllForwardings=yes`. No `reconnect`: files opened before a reconnect keep failing, and
/// the loop device holds exactly such a file, so a dropped link must end the run.
pub fn sshfs_options(r: &Remote) -> Vec<String> {
    let mut o = vec![
        "allow_other".to_string(),
        "ssh_command=ssh -F /dev/null".to_string(),
    ];
    o.extend(
        ssh_options(r)
            .into_iter()
            .map(|(k, v)| format!("{k}={}", fuse_opt(&v))),
    );
    o
}

/// The sshfs invocation: `sshfs [-f] SOURCE MOUNTPOINT -o OPTION…` (see [`sshfs_options`]).
pub fn sshfs(r: &Remote, mountpoint: &Path, foreground: bool) -> Cmd {
    let mut c = Cmd::new("sshfs");
    if foreground {
        c = c.arg("-f");
    }
    c = c.arg(sftp_target(r)).arg(mountpoint);
    for o in sshfs_options(r) {
        c = c.arg("-o").arg(o);
    }
    let r2 = r.clone();
    c.on_fail(move |_, stderr| {
        let s = stderr;
        if s.contains("No such file or directory") {
            Some(Fail::new(
                Code::Remote,
                format!("remote.path {} does not exist on {}", r2.path, r2.host),
            ))
        } else if s.contains("Host key")
            || s.contains("host key")
            || s.contains("Connection")
            || s.contains("Permission denied")
        {
            Some(classify_ssh_error(&r2, s))
        } else {
            None
        }
    })
}

pub fn is_mounted(paths: &JobPaths) -> bool {
    paths
        .kernel
        .mount_at(&paths.remote)
        .is_some_and(|m| m.fstype == "fuse.sshfs")
}

/// Create /run/e2e-backup/<job>/ and its subdirectories with mode 0700.
pub fn make_dirs(run: &Runner, paths: &JobPaths) -> Result<()> {
    let missing: Vec<&PathBuf> = [&paths.dir, &paths.remote, &paths.fs]
        .into_iter()
        // A dead sshfs leaves its mountpoint failing stat (ENOTCONN): it exists all the same, and
        // `install -d` on it would fail before e2e-sync could clear the stale stack.
        .filter(|p| !p.is_dir() && paths.kernel.mount_at(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run.run(
        &Cmd::new("install")
            .arg("-d")
            .arg("-m")
            .arg("0700")
            .args(missing),
    )?;
    Ok(())
}

/// Mount the remote directory (idempotent). Returns whether it mounted it now.
pub fn mount(run: &Runner, r: &Remote, paths: &JobPaths) -> Result<bool> {
    if is_mounted(paths) {
        return Ok(false);
    }
    make_dirs(run, paths)?;
    mount_or_diagnose(run, r, || {
        run.run(&sshfs(r, &paths.remote, false)).map(drop)
    })?;
    Ok(true)
}

/// Run `start` (which starts sshfs); if it fails, the probe's diagnosis replaces sshfs's vaguer
/// error, unless the probe gets through (then sshfs's own error stands).
pub fn mount_or_diagnose(
    run: &Runner,
    r: &Remote,
    start: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Err(e) = start() else { return Ok(()) };
    run.run(&probe(r))?; // (refused after a signal: then that is the error)
    Err(e)
}

/// The FUSE unmount helper available here (fuse3's, else fuse2's).
pub fn fusermount() -> &'static str {
    let found = |n: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(n).is_file()))
            .unwrap_or(false)
    };
    if found("fusermount3") || !found("fusermount") {
        "fusermount3"
    } else {
        "fusermount"
    }
}

/// Whether the sshfs mount answers a statfs within `limit` (a stopped sshfs or a dead link does not).
pub fn responsive(paths: &JobPaths, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = paths.remote.clone();
    // The probe may block until sshfs dies; it is left behind on purpose then.
    std::thread::spawn(move || {
        let _ = tx.send(nix::sys::statvfs::statvfs(&dir).is_ok());
    });
    matches!(rx.recv_timeout(limit), Ok(true))
}

/// Unmount the sshfs mount; if the unmount hangs or fails, kill sshfs and detach lazily.
/// `known_mounted`: this run mounted it (a dry-run cannot see that in the mount table).
pub fn unmount(run: &Runner, paths: &JobPaths, known_mounted: bool, port: u16) -> Result<()> {
    if !known_mounted && !is_mounted(paths) {
        return Ok(());
    }
    let fm = fusermount();
    let clean = Cmd::new(fm).arg("-u").arg(&paths.remote);
    let done = match run.run_timeout(&clean, Duration::from_secs(15)) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(e) => {
            crate::warning!("{e:#}; killing sshfs");
            false
        }
    };
    if !done {
        fence(run, paths, port)?;
        run.run(&Cmd::new(fm).arg("-uz").arg(&paths.remote))?;
    }
    Ok(())
}

/// Bytes available to us on the server's filesystem (sshfs passes statvfs through).
pub fn server_free(paths: &JobPaths) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(&paths.remote)
        .with_context(|| format!("statvfs {}", paths.remote.display()))?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// `ssh … stat -c '%b %B' FILE`: the server's allocated bytes for the container.
pub fn allocated_cmd(r: &Remote, file: &str) -> Cmd {
    let path = format!("{}/{}", r.path.trim_end_matches('/'), file);
    // ssh joins its arguments into one line for the remote shell, so quote for that shell.
    let remote_cmd = format!("stat -c '%b %B' -- {}", quote(&path));
    ssh_checked(r).arg(destination(r)).arg(remote_cmd)
}

pub fn parse_allocated(out: &str) -> Option<u64> {
    let mut it = out.split_whitespace();
    let blocks: u64 = it.next()?.parse().ok()?;
    let size: u64 = it.next()?.parse().ok()?;
    blocks.checked_mul(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn remote() -> Remote {
        Remote {
            host: "backup.example.org".into(),
            port: 2222,
            user: "alice".into(),
            path: "/srv/backup/alice".into(),
            identity_file: "/etc/e2e-backup/id_ed25519".into(),
            known_hosts: "/etc/e2e-backup/known_hosts".into(),
        }
    }

    #[test]
    fn sshfs_argv() {
        let c = sshfs(&remote(), Path::new("/run/e2e-backup/home/remote"), false);
        assert_eq!(
            c.argv(),
            [
                "sshfs",
                "alice@backup.example.org:/srv/backup/alice",
                "/run/e2e-backup/home/remote",
                "-o",
                "allow_other",
                "-o",
                "ssh_command=ssh -F /dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UserKnownHostsFile=/etc/e2e-backup/known_hosts",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentityFile=/etc/e2e-backup/id_ed25519",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "Port=2222",
            ]
        );
        let f = sshfs(&remote(), Path::new("/m"), true);
        assert_eq!(f.argv()[1], "-f");
        assert!(!c.argv().iter().any(|a| a.contains("reconnect")));
    }

    #[test]
    fn sshfs_escapes_commas_and_ipv6() {
        let mut r = remote();
        r.identity_file = "/k,ey".into();
        r.host = "::1".into();
        let a = sshfs(&r, Path::new("/m"), false).argv();
        assert!(a.contains(&"IdentityFile=/k\\,ey".to_string()));
        assert_eq!(a[1], "alice@[::1]:/srv/backup/alice");
    }

    #[test]
    fn probe_and_stat() {
        let p = probe(&remote()).argv();
        assert_eq!(p[p.len() - 2..], ["alice@backup.example.org", "true"]);
        // An SFTP-only account cannot run `true`; only ssh's own 255 is a failure.
        assert!(probe(&remote())
            .script_line()
            .ends_with("true || case $? in 1|126|127) ;; *) false ;; esac"));
        let s = allocated_cmd(&remote(), "home.luks");
        assert_eq!(
            s.argv().last().unwrap(),
            "stat -c '%b %B' -- /srv/backup/alice/home.luks"
        );
        assert_eq!(parse_allocated("2048 512\n"), Some(1 << 20));
        assert_eq!(parse_allocated("x"), None);
    }

    #[test]
    fn ssh_errors() {
        let r = remote();
        let e = classify_ssh_error(&r, "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n");
        assert!(
            e.msg
                .starts_with("host key of backup.example.org:2222 does not match"),
            "{}",
            e.msg
        );
        let e = classify_ssh_error(
            &r,
            "ssh: connect to host backup.example.org port 2222: Connection refused\n",
        );
        assert_eq!(e.msg, "cannot reach backup.example.org:2222: ssh: connect to host backup.example.org port 2222: Connection refused (check remote.host, remote.port, the network)");
        assert_eq!(e.code, Code::Remote);
        let e = classify_ssh_error(&r, "alice@h: Permission denied (publickey).\n");
        assert!(e.msg.contains("refused the key"));
    }
}
