//! Runtime paths under /run/e2e-backup/<job>/, job-name validation, and read-only views of kernel
//! state (mounts, loop devices, device-mapper) that need no external command, so `--dry-run` sees them.

use crate::error::{fail, Code};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub const RUN_BASE: &str = "/run/e2e-backup";

/// Refuse any job name that could escape /run/e2e-backup/ or confuse a shell or a unit name.
pub fn validate_job(name: &str) -> Result<()> {
    let ok_first = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || "_.@-".contains(c);
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(c) => ok_first(c) && chars.all(ok_rest),
        None => false,
    } && !name.contains("..")
        && name.len() <= 64;
    if valid {
        Ok(())
    } else {
        Err(fail(
            Code::Config,
            format!(
                "invalid job name {:?}: use [A-Za-z0-9_][A-Za-z0-9_.@-]*, no \"..\", at most 64 characters",
                name
            ),
        ))
    }
}

/// The runtime paths of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    pub job: String,
    pub dir: PathBuf,
    pub remote: PathBuf,
    pub fs: PathBuf,
    pub lock: PathBuf,
    /// Written by a run that opened layers itself ("PID REMOTE"): if that PID is gone, the stack
    /// is a killed run's, and the next run tears it down.
    pub owner: PathBuf,
    /// Left by `e2e-close --force` under a running run, so that run names why its steps failed.
    pub forced: PathBuf,
    /// ssh control socket of the NBD tunnel (e2e-trim).
    pub ssh_ctl: PathBuf,
    pub dm_name: String,
    pub dm_dev: PathBuf,
    /// Read-only opens of a container whose journal needs recovery: a device-mapper snapshot
    /// (`e2e-<job>+ro`; `+` is not allowed in job names, so it cannot collide) over the LUKS
    /// mapping, with its copy-on-write file `cow` here on the client.
    pub overlay_name: String,
    pub overlay_dev: PathBuf,
    pub cow: PathBuf,
}

impl JobPaths {
    pub fn new(job: &str) -> Result<Self> {
        validate_job(job)?;
        let dir = Path::new(RUN_BASE).join(job);
        let dm_name = format!("e2e-{job}");
        Ok(JobPaths {
            job: job.to_string(),
            remote: dir.join("remote"),
            fs: dir.join("fs"),
            lock: dir.join("lock"),
            owner: dir.join("opened-by"),
            forced: dir.join("closed-by-force"),
            ssh_ctl: dir.join("ssh.ctl"),
            dm_dev: Path::new("/dev/mapper").join(&dm_name),
            overlay_dev: Path::new("/dev/mapper").join(format!("{dm_name}+ro")),
            overlay_name: format!("{dm_name}+ro"),
            cow: dir.join("cow"),
            dm_name,
            dir,
        })
    }
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Undo the octal escapes (`\040` for space) of /proc mount files.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u16, |v, c| v * 8 + u16::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                mountpoint: PathBuf::from(unescape(lf.get(4)?)),
                options: lf.get(5)?.to_string(),
                fstype: rf.first()?.to_string(),
                source: unescape(rf.get(1)?),
            })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins, as in the kernel's view).
pub fn mount_at(path: &Path) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path)
}

/// Loop devices whose backing file is `file` (or, with `prefix`, lies below that directory).
pub fn loops_backed_by(file: &Path, prefix: bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let back = back.trim_end_matches('\n');
        let back = Path::new(back.strip_suffix(" (deleted)").unwrap_or(back));
        if back == file || (prefix && back.starts_with(file)) {
            found.push(Path::new("/dev").join(&name));
        }
    }
    found.sort();
    found
}

/// Whether a device-mapper device of that name exists, and the block devices under it.
/// Local ports of orphaned TCP connections to remote port `port` that may still hold unsent data
/// (FIN-WAIT-1, CLOSING, LAST-ACK; inode 0 = no process owns them), from /proc/net/tcp{,6} text.
/// A dead ssh's socket lives on like this and delivers its queued writes when the link returns.
pub fn orphan_ports(tcp_tables: &str, port: u16) -> Vec<u16> {
    let mut out = Vec::new();
    for l in tcp_tables.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || f[0] == "sl" {
            continue;
        }
        let port_of = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let (Some(lp), Some(rp)) = (port_of(f[1]), port_of(f[2])) else {
            continue;
        };
        if rp == port && matches!(f[3], "04" | "0B" | "09") && f[9] == "0" {
            out.push(lp);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The kernel's TCP tables, IPv4 and IPv6.
pub fn tcp_tables() -> String {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn dm_slaves(dm_name: &str) -> Option<Vec<String>> {
    let rd = std::fs::read_dir("/sys/block").ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let name = std::fs::read_to_string(p.join("dm/name")).unwrap_or_default();
        if name.trim() == dm_name {
            let mut s: Vec<String> = std::fs::read_dir(p.join("slaves"))
                .map(|r| {
                    r.flatten()
                        .map(|x| x.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            s.sort();
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_connections() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B1F2 020000C0:0016 04 00001000:00000000 01:00000100 00000005     0        0 0 1 0000 20 4 30 10 -1
   1: 0100007F:B1F3 020000C0:0016 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000 20 4 30 10 -1
   2: 0100007F:B1F4 020000C0:0016 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1
   3: 0100007F:B1F5 020000C0:0050 04 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1
   4: 0100007F:B1F6 020000C0:0016 09 00000000:00000000 00:00000000 00000000     0        0 0 1 0000 20 4 30 10 -1";
        // FIN-WAIT-1 and LAST-ACK orphans to port 22; not the live one, FIN-WAIT-2, or port 80.
        assert_eq!(orphan_ports(t, 22), vec![0xB1F2, 0xB1F6]);
        assert!(orphan_ports(t, 2222).is_empty());
    }

    #[test]
    fn job_names() {
        for ok in ["home", "a", "_x", "user@host", "a.b-c_d", &"x".repeat(64)] {
            assert!(validate_job(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "a/b",
            "../etc",
            "a b",
            "a$b",
            "é",
            &"x".repeat(65),
        ] {
            let e = validate_job(bad).unwrap_err();
            assert_eq!(crate::error::code_of(&e), Code::Config, "{bad}");
        }
    }

    #[test]
    fn job_paths() {
        let p = JobPaths::new("home").unwrap();
        assert_eq!(p.remote, Path::new("/run/e2e-backup/home/remote"));
        assert_eq!(p.fs, Path::new("/run/e2e-backup/home/fs"));
        assert_eq!(p.dm_dev, Path::new("/dev/mapper/e2e-home"));
    }

    #[test]
    fn mountinfo() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 30 0:50 / /run/e2e-backup/h/remote rw,nosuid,nodev,relatime shared:9 - fuse.sshfs u@h:/srv rw,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mountpoint, Path::new("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].fstype, "fuse.sshfs");
        assert_eq!(m[1].source, "u@h:/srv");
        assert_eq!(m[1].options, "rw,nosuid,nodev,relatime");
    }
}
