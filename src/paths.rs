//! Runtime paths under /run/e2e-backup/<job>/ and job-name validation.

use crate::error::{fail, Code};
use crate::kernel::Kernel;
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
    /// The pid of the process that keeps a btrfs container's lease (`lease`).
    pub lease_keeper: PathBuf,
    /// ssh control socket of the NBD tunnel (e2e-trim).
    pub ssh_ctl: PathBuf,
    /// The NBD tunnel's local end (e2e-trim): a Unix socket in the 0700 run directory.
    pub nbd_sock: PathBuf,
    pub dm_name: String,
    pub dm_dev: PathBuf,
    /// Read-only opens of a container whose journal needs recovery: a device-mapper snapshot
    /// (`e2e-<job>+ro`; `+` is not allowed in job names, so it cannot collide) over the LUKS
    /// mapping, with its copy-on-write file `cow` here on the client.
    pub overlay_name: String,
    pub overlay_dev: PathBuf,
    pub cow: PathBuf,
    /// Where the kernel's state is read (and the run directory lies): `/` but in tests.
    pub kernel: Kernel,
}

impl JobPaths {
    pub fn new(job: &str) -> Result<Self> {
        Self::under(Path::new("/"), job)
    }

    /// The paths of `job` on a host whose root is `root` (fixture trees in tests).
    pub fn under(root: &Path, job: &str) -> Result<Self> {
        validate_job(job)?;
        let dir = root.join(RUN_BASE.trim_start_matches('/')).join(job);
        let dm_name = format!("e2e-{job}");
        Ok(JobPaths {
            job: job.to_string(),
            remote: dir.join("remote"),
            fs: dir.join("fs"),
            lock: dir.join("lock"),
            owner: dir.join("opened-by"),
            forced: dir.join("closed-by-force"),
            lease_keeper: dir.join("lease.pid"),
            ssh_ctl: dir.join("ssh.ctl"),
            nbd_sock: dir.join("nbd.sock"),
            dm_dev: Path::new("/dev/mapper").join(&dm_name),
            overlay_dev: Path::new("/dev/mapper").join(format!("{dm_name}+ro")),
            overlay_name: format!("{dm_name}+ro"),
            cow: dir.join("cow"),
            dm_name,
            dir,
            kernel: Kernel::at(root),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
