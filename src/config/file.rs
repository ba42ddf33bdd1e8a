//! The job file as written: every key optional (flags may fill in what a file leaves out), unknown
//! keys refused. Resolved into a [`super::Job`] by `config::load`.

use crate::error::{fail, Code};
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub remote: RawRemote,
    #[serde(default)]
    pub container: RawContainer,
    #[serde(default)]
    pub sync: RawSync,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub browse: RawBrowse,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrowse {
    pub automount: Option<bool>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub path: Option<String>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    pub file: Option<String>,
    pub size: Option<String>,
    pub key_file: Option<PathBuf>,
    pub create: Option<bool>,
    pub auto_grow_free: Option<String>,
    pub auto_grow_step: Option<String>,
    pub max_size: Option<String>,
    pub server_reserve: Option<String>,
    pub filesystem: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    pub paths: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub exclude_from: Option<Vec<PathBuf>>,
    pub files_from: Option<Vec<PathBuf>>,
    pub rsync_args: Option<Vec<String>>,
    pub allow_partial: Option<bool>,
    pub skip_unchanged: Option<bool>,
}

/// Retention policy, restic/borg semantics (see `retention::select_keep`). All zero = keep everything.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Every snapshot made within this long before the newest one ("7d", "2w", "1y6m", "36h"),
    /// in seconds; 0 = not set.
    #[serde(default, deserialize_with = "within_seconds")]
    pub keep_within: i64,
}

fn within_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = String::deserialize(d)?;
    crate::timefmt::parse_within(&s).map_err(serde::de::Error::custom)
}

/// Parse the text of a job file; errors read `FILE:LINE: message (in [section])`.
pub fn parse_file(text: &str, file: &Path) -> Result<RawFile> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().replace("unknown field", "unknown key");
        let (line, section) = match e.span() {
            Some(sp) => {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let section = before
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| l.starts_with('[') && l.ends_with(']'))
                    .map(|l| format!(" in {l}"))
                    .unwrap_or_default();
                (format!(":{line}"), section)
            }
            None => (String::new(), String::new()),
        };
        fail(
            Code::Config,
            format!("{}{line}: {msg}{section}", file.display()),
        )
    })
}
