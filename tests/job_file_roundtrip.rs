//! Round trip for nix/check: the job files the NixOS module generates must be what the binaries
//! parse. With E2E_ROUNDTRIP_DIR set, every `<job>.toml` there is loaded through the real loader
//! (config::load: the serde schema with deny_unknown_fields, defaults, validation) and the resolved
//! job is written to `<job>.resolved` as `key=value` lines for nix/check to compare with the
//! module's settings. Without the variable it resolves the checked-in job files of
//! tests/fixtures/jobs and compares each with its `<job>.resolved` byte for byte
//! (`E2E_UPDATE_GOLDEN=1` rewrites them), so the defaults and the resolution stay what they are.

use e2e_backup::config::{self, Overrides};
use e2e_backup::size::SizeSpec;
use std::fmt::Write;

fn spec(s: SizeSpec) -> String {
    match s {
        SizeSpec::Bytes(b) => b.to_string(),
        SizeSpec::Percent(p) => format!("{p}%"),
    }
}

/// Every `<job>.toml` in `dir`, resolved: (path of its `.resolved` file, the `key=value` text).
fn resolve_all(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let job = path.file_stem().unwrap().to_string_lossy().into_owned();
        let j = config::load(&job, Some(&path), None, &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        all.push((path.with_extension("resolved"), render(&j)));
    }
    assert!(!all.is_empty(), "no .toml files in {dir:?}");
    all.sort();
    all
}

fn render(j: &config::Job) -> String {
    let mut out = String::new();
    let r = &j.remote;
    let c = &j.container;
    let key = c.key_file.as_ref().map(|p| p.display().to_string());
    for (k, v) in [
        ("remote.host", r.host.clone()),
        ("remote.port", r.port.to_string()),
        ("remote.user", r.user.clone()),
        ("remote.path", r.path.clone()),
        (
            "remote.identity_file",
            r.identity_file.display().to_string(),
        ),
        ("remote.known_hosts", r.known_hosts.display().to_string()),
        ("container.file", c.file.clone()),
        ("container.size", format!("{:?}", c.size)),
        ("container.key_file", format!("{key:?}")),
        ("container.create", c.create.to_string()),
        ("container.auto_grow_free", spec(c.auto_grow_free)),
        ("container.auto_grow_step", spec(c.auto_grow_step)),
        ("container.max_size", format!("{:?}", c.max_size)),
        ("container.server_reserve", c.server_reserve.to_string()),
        ("sync.paths", format!("{:?}", j.sync.paths)),
        ("sync.exclude", format!("{:?}", j.sync.exclude)),
        ("sync.exclude_from", format!("{:?}", j.sync.exclude_from)),
        ("sync.files_from", format!("{:?}", j.sync.files_from)),
        ("sync.rsync_args", format!("{:?}", j.sync.rsync_args)),
        ("sync.allow_partial", j.sync.allow_partial.to_string()),
        ("sync.skip_unchanged", j.sync.skip_unchanged.to_string()),
        ("retention", format!("{:?}", j.retention)),
        ("browse.automount", j.browse.automount.to_string()),
        ("browse.idle_timeout", j.browse.idle_timeout.clone()),
    ] {
        writeln!(out, "{k}={v}").unwrap();
    }
    out
}

#[test]
fn generated_job_files_parse() {
    if let Some(dir) = std::env::var_os("E2E_ROUNDTRIP_DIR") {
        // nix/check's helper: it compares these with the module's settings.
        for (file, text) in resolve_all(dir.as_ref()) {
            std::fs::write(file, text).unwrap();
        }
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jobs");
    let update = std::env::var_os("E2E_UPDATE_GOLDEN").is_some();
    for (file, text) in resolve_all(&dir) {
        if update {
            std::fs::write(&file, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (E2E_UPDATE_GOLDEN=1 writes it)", file.display()));
        assert_eq!(
            text,
            want,
            "{} differs (E2E_UPDATE_GOLDEN=1 rewrites it)",
            file.display()
        );
    }
}
