//! The job file `/etc/e2e-backup/<job>.toml`: schema, validation, flag overrides.
//!
//! The file is read into "raw" structs where every field is optional (so flags can fill in what a
//! file leaves out, or replace the file altogether), then resolved into a [`Job`] with defaults
//! applied and every value checked. Errors name the file and the key.

mod file;
mod key;

pub use file::Retention;
use file::{parse_file, RawFile};
pub use key::{check_key_file, MIN_KEY_BYTES};

use crate::error::{fail, Code};
use crate::filesystem::Kind;
use crate::paths::validate_job;
use crate::remote::Remote;
use crate::size::{parse_size, parse_size_spec, SizeSpec, MAX_CONTAINER, MIN_CONTAINER};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_DIR: &str = "/etc/e2e-backup";
pub const CONFIG_DIR_ENV: &str = "E2E_BACKUP_CONFIG_DIR";

/// Values given on the command line; each replaces the job file's value.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Server host name (remote.host)
    #[arg(long, value_name = "HOST", help_heading = "Job overrides")]
    pub host: Option<String>,
    /// SSH port (remote.port)
    #[arg(long, value_name = "PORT", help_heading = "Job overrides")]
    pub port: Option<u16>,
    /// SSH user (remote.user)
    #[arg(long, value_name = "USER", help_heading = "Job overrides")]
    pub user: Option<String>,
    /// Directory on the server holding the container (remote.path)
    #[arg(long, value_name = "PATH", help_heading = "Job overrides")]
    pub remote_path: Option<String>,
    /// SSH private key (remote.identity_file)
    #[arg(long, value_name = "FILE", help_heading = "Job overrides")]
    pub identity_file: Option<PathBuf>,
    /// known_hosts file pinning the server key (remote.known_hosts)
    #[arg(long, value_name = "FILE", help_heading = "Job overrides")]
    pub known_hosts: Option<PathBuf>,
    /// Container file name inside the remote path (container.file)
    #[arg(
        long = "container-file",
        value_name = "NAME",
        help_heading = "Job overrides"
    )]
    pub container_file: Option<String>,
    /// Container size at creation, e.g. 64G (container.size)
    #[arg(long, value_name = "SIZE", help_heading = "Job overrides")]
    pub size: Option<String>,
    /// LUKS key file (container.key_file)
    #[arg(long, value_name = "FILE", help_heading = "Job overrides")]
    pub key_file: Option<PathBuf>,
    /// Source path to back up, repeatable (sync.paths)
    #[arg(long = "source", value_name = "PATH", help_heading = "Job overrides")]
    pub sources: Vec<String>,
    /// rsync exclude pattern, repeatable (sync.exclude)
    #[arg(long, value_name = "PATTERN", help_heading = "Job overrides")]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub file: String,
    pub size: Option<u64>,
    pub key_file: Option<PathBuf>,
    /// Where key_file came from, for messages: "container.key_file" or "--key-file".
    pub key_label: &'static str,
    pub create: bool,
    pub auto_grow_free: SizeSpec,
    pub auto_grow_step: SizeSpec,
    pub max_size: Option<u64>,
    pub server_reserve: u64,
    /// The filesystem a new container gets, and the one every open expects to find.
    pub filesystem: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sync {
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub exclude_from: Vec<PathBuf>,
    /// Files listing more paths to back up, one absolute path a line, read at each run (a list a
    /// command wrote just before, as restic's dynamicFilesFrom).
    pub files_from: Vec<PathBuf>,
    pub rsync_args: Vec<String>,
    /// A run whose source files cannot all be read still publishes a snapshot, marked incomplete
    /// (see `partial`); false: it fails and publishes nothing.
    pub allow_partial: bool,
    /// A run that finds the source equal to the latest (complete) snapshot makes no new one; it
    /// records the check beside that snapshot instead (see `unchanged`).
    pub skip_unchanged: bool,
}

impl Sync {
    /// `paths` and the paths the `files_from` lists hold now (empty lines and `#` comments
    /// skipped, duplicates dropped), or one line saying which list or line is wrong. However many
    /// they are, rsync takes them (`snapshots::with_sources`); a line break in a path it cannot
    /// take from a list, so it is refused wherever the path comes from.
    pub fn all_paths(&self) -> Result<Vec<String>> {
        let mut all = self.paths.clone();
        let mut seen: std::collections::HashSet<String> = all.iter().cloned().collect();
        for f in &self.files_from {
            let text = std::fs::read_to_string(f).map_err(|e| {
                fail(
                    Code::Config,
                    format!(
                        "sync.files_from: cannot read {}: {e}; nothing synced",
                        f.display()
                    ),
                )
            })?;
            for (i, line) in text.lines().enumerate() {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if !line.starts_with('/') {
                    return Err(fail(
                        Code::Config,
                        format!("{}:{}: {line:?} is not an absolute path (sync.files_from lists one absolute path a line); nothing synced", f.display(), i + 1),
                    ));
                }
                if seen.insert(line.to_string()) {
                    all.push(line.to_string());
                }
            }
        }
        if let Some(p) = all.iter().find(|p| p.contains('\n')) {
            return Err(fail(
                Code::Config,
                format!("sync.paths: {p:?} holds a line break, which rsync cannot take from a list of paths: back up its parent directory instead; nothing synced"),
            ));
        }
        Ok(all)
    }
}

/// A resolved job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    /// Where the settings came from (the job file, or "command line"), for messages.
    pub origin: String,
    pub remote: Remote,
    pub container: Container,
    pub sync: Sync,
    pub retention: Retention,
    pub browse: Browse,
}

/// Browsing the snapshots on demand: e2e-backup-generator writes an automount at
/// /run/e2e-backup/JOB/browse for a job that asks for it (see `cmd::generator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browse {
    pub automount: bool,
    /// systemd's TimeoutIdleSec= of the automount, as written (`N`, `Ns`, `Nmin` or `Nh`).
    pub idle_timeout: String,
}

impl Default for Browse {
    fn default() -> Self {
        Browse {
            automount: false,
            idle_timeout: "10min".into(),
        }
    }
}

/// `N`, `Ns`, `Nmin` or `Nh` with N > 0: the subset of systemd's time spans a job file may give.
fn time_span(s: &str) -> bool {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit());
    let n = &s[..s.len() - unit.len()];
    !n.is_empty() && !n.starts_with('0') && ["", "s", "min", "h"].contains(&unit)
}

/// Where the job file of `job` is: `--config`, else `--config-dir`/$E2E_BACKUP_CONFIG_DIR/default dir.
pub fn job_file(job: &str, config: Option<&Path>, config_dir: Option<&Path>) -> PathBuf {
    if let Some(c) = config {
        return c.to_path_buf();
    }
    let dir = config_dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
    dir.join(format!("{job}.toml"))
}

/// Load and resolve a job: the job file (required only if `--config` names it or flags do not give
/// everything) with `ov` applied on top.
pub fn load(
    job: &str,
    config: Option<&Path>,
    config_dir: Option<&Path>,
    ov: &Overrides,
) -> Result<Job> {
    validate_job(job)?;
    let file = job_file(job, config, config_dir);
    let (raw, origin) = match std::fs::read_to_string(&file) {
        Ok(text) => (parse_file(&text, &file)?, file.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.is_none() && ov.host.is_some() => {
            (RawFile::default(), "command line".to_string())
        }
        Err(e) => {
            return Err(fail(
                Code::Config,
                format!(
                    "cannot read job file {}: {e} (create it, or give --config FILE or the --host/--user/... flags)",
                    file.display()
                ),
            ))
        }
    };
    resolve(job, raw, ov, &origin)
}

/// A job from the flags alone, as if its job file were empty (what e2e-setup is about to write).
pub fn from_flags(job: &str, ov: &Overrides) -> Result<Job> {
    validate_job(job)?;
    resolve(job, RawFile::default(), ov, "command line")
}

fn resolve(job: &str, raw: RawFile, ov: &Overrides, origin: &str) -> Result<Job> {
    let bad = |key: &str, why: String| fail(Code::Config, format!("{origin}: {key}: {why}"));
    let need = |v: Option<String>, key: &str| -> Result<String> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(bad(key, "required but not set".to_string())),
        }
    };
    let need_path = |v: Option<PathBuf>, key: &str| -> Result<PathBuf> {
        v.ok_or_else(|| bad(key, "required but not set".to_string()))
    };
    let r = raw.remote;
    let c = raw.container;
    let s = raw.sync;
    let remote = Remote {
        host: need(ov.host.clone().or(r.host), "remote.host")?,
        port: ov.port.or(r.port).unwrap_or(22),
        user: need(ov.user.clone().or(r.user), "remote.user")?,
        path: need(ov.remote_path.clone().or(r.path), "remote.path")?,
        identity_file: need_path(
            ov.identity_file.clone().or(r.identity_file),
            "remote.identity_file",
        )?,
        known_hosts: need_path(
            ov.known_hosts.clone().or(r.known_hosts),
            "remote.known_hosts",
        )?,
    };
    if remote.host.starts_with('-')
        || remote
            .host
            .contains(|c: char| c.is_whitespace() || c == '@')
    {
        return Err(bad(
            "remote.host",
            format!("invalid host name {:?}", remote.host),
        ));
    }
    if remote.user.starts_with('-')
        || remote
            .user
            .contains(|c: char| c.is_whitespace() || c == '@' || c == ':')
    {
        return Err(bad(
            "remote.user",
            format!("invalid user name {:?}", remote.user),
        ));
    }
    if remote.path.contains('\n') {
        return Err(bad("remote.path", "must not contain a newline".to_string()));
    }

    let file = ov
        .container_file
        .clone()
        .or(c.file)
        .unwrap_or_else(|| format!("{job}.luks"));
    if file.is_empty() || file.contains('/') || file.starts_with('.') || file.contains('\n') {
        return Err(bad(
            "container.file",
            format!("{file:?} must be a plain file name inside remote.path (no '/', not starting with '.')"),
        ));
    }
    let size_field = |v: Option<String>, key: &str| -> Result<Option<u64>> {
        v.map(|s| parse_size(&s).map_err(|e| bad(key, e)))
            .transpose()
    };
    let spec_field = |v: Option<String>, key: &str, dflt: &str| -> Result<SizeSpec> {
        parse_size_spec(v.as_deref().unwrap_or(dflt)).map_err(|e| bad(key, e))
    };
    let container = Container {
        size: size_field(ov.size.clone().or(c.size), "container.size")?,
        key_label: if ov.key_file.is_some() {
            "--key-file"
        } else {
            "container.key_file"
        },
        key_file: ov.key_file.clone().or(c.key_file),
        create: c.create.unwrap_or(false),
        auto_grow_free: spec_field(c.auto_grow_free, "container.auto_grow_free", "10%")?,
        auto_grow_step: spec_field(c.auto_grow_step, "container.auto_grow_step", "25%")?,
        max_size: size_field(c.max_size, "container.max_size")?,
        server_reserve: size_field(c.server_reserve, "container.server_reserve")?
            .unwrap_or(1 << 30),
        filesystem: match c.filesystem.as_deref() {
            None => Kind::default(),
            Some(f) => Kind::parse(f).ok_or_else(|| {
                bad(
                    "container.filesystem",
                    format!("{f:?} is not a filesystem e2e-backup makes: \"ext4\" (the default) or \"btrfs\""),
                )
            })?,
        },
        file,
    };
    // LUKS2 takes 16 MiB of header; ext4 needs room after it. ext4 ends at 1 EiB (64-bit, 4 KiB blocks).
    for (key, v) in [
        ("container.size", container.size),
        ("container.max_size", container.max_size),
    ] {
        if let Some(n) = v {
            let min = container.filesystem.min_container();
            if n < min && min > MIN_CONTAINER {
                return Err(bad(
                    key,
                    format!(
                        "{n} bytes is too small for a {} container: give at least {}M",
                        container.filesystem.name(),
                        min >> 20
                    ),
                ));
            }
            if !(MIN_CONTAINER..=MAX_CONTAINER).contains(&n) {
                return Err(bad(
                    key,
                    format!(
                        "{n} bytes is out of range: a container holds 32M to 1E (ext4's limit)"
                    ),
                ));
            }
        }
    }
    if container.auto_grow_step.is_zero() && !container.auto_grow_free.is_zero() {
        return Err(bad(
            "container.auto_grow_step",
            "must not be 0 while auto_grow_free is set".to_string(),
        ));
    }

    let mut sync = Sync {
        paths: s.paths.unwrap_or_default(),
        exclude: s.exclude.unwrap_or_default(),
        exclude_from: s.exclude_from.unwrap_or_default(),
        files_from: s.files_from.unwrap_or_default(),
        rsync_args: s.rsync_args.unwrap_or_default(),
        allow_partial: s.allow_partial.unwrap_or(true),
        skip_unchanged: s.skip_unchanged.unwrap_or(false),
    };
    if !ov.sources.is_empty() {
        sync.paths = ov.sources.clone();
    }
    sync.exclude.extend(ov.exclude.iter().cloned());
    for p in &sync.paths {
        if !p.starts_with('/') {
            return Err(bad("sync.paths", format!("{p:?} is not an absolute path")));
        }
    }
    for f in &sync.files_from {
        if !f.is_absolute() {
            return Err(bad(
                "sync.files_from",
                format!("{:?} is not an absolute path", f.display()),
            ));
        }
    }
    for e in &sync.exclude {
        if let Some(why) = filter_rule_prefix(e) {
            return Err(bad(
                "sync.exclude",
                format!("{e:?} {why}, which rsync reads as a filter rule, not a pattern; write the pattern without it (for a name that really starts so, use a leading [!] or [+] character class)"),
            ));
        }
    }
    let browse = Browse {
        automount: raw.browse.automount.unwrap_or(false),
        idle_timeout: raw
            .browse
            .idle_timeout
            .unwrap_or_else(|| Browse::default().idle_timeout),
    };
    if !time_span(&browse.idle_timeout) {
        return Err(bad(
            "browse.idle_timeout",
            format!(
                "{:?} is not a time span: write a whole number and s, min or h (e.g. \"10min\")",
                browse.idle_timeout
            ),
        ));
    }
    Ok(Job {
        browse,
        name: job.to_string(),
        origin: origin.to_string(),
        remote,
        container,
        sync,
        retention: raw.retention,
    })
}

impl Job {
    /// The key file to use: `$CREDENTIALS_DIRECTORY/key` (systemd `LoadCredential=`) if present, else
    /// container.key_file. It must exist and not be readable by group or others.
    pub fn key_file(&self) -> Result<PathBuf> {
        let cred = std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| Path::new(&d).join("key"));
        let (path, key) = match cred.filter(|p| p.exists()) {
            Some(p) => (p, "$CREDENTIALS_DIRECTORY/key"),
            None => match &self.container.key_file {
                Some(p) => (p.clone(), self.container.key_label),
                None => {
                    return Err(fail(
                        Code::Config,
                        format!("{}: container.key_file: required but not set", self.origin),
                    ))
                }
            },
        };
        check_key_file(&path).map_err(|why| {
            fail(
                Code::Config,
                format!("{}: {key}: key file {}: {why}", self.origin, path.display()),
            )
        })?;
        Ok(path)
    }
}

/// Why an exclude pattern would not be taken as a pattern by rsync: `!` clears the list, `+ ` and
/// `- ` (and `+,`/`-,` with modifiers) turn it into an include or exclude rule.
fn filter_rule_prefix(e: &str) -> Option<&'static str> {
    if e == "!" {
        Some("is \"!\" (clears every exclude)")
    } else if e.starts_with("+ ") || e.starts_with("+,") {
        Some("starts with \"+\" (an include rule)")
    } else if e.starts_with("- ") || e.starts_with("-,") {
        Some("starts with \"- \" (a rule prefix)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
