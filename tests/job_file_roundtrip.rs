//! Round trip for nix/check: the job files the NixOS module generates must be what the binaries
//! parse. With E2E_ROUNDTRIP_DIR set, every `<job>.toml` there is loaded through the real loader
//! (config::load: the serde schema with deny_unknown_fields, defaults, validation) and the resolved
//! job is written to `<job>.resolved` as `key=value` lines for nix/check to compare with the
//! module's settings. Without the variable the test checks nothing (it is nix/check's helper).

use e2e_backup::config::{self, Overrides};
use e2e_backup::size::SizeSpec;
use std::fmt::Write;

fn spec(s: SizeSpec) -> String {
    match s {
        SizeSpec::Bytes(b) => b.to_string(),
        SizeSpec::Percent(p) => format!("{p}%"),
    }
}

#[test]
fn generated_job_files_parse() {
    let Some(dir) = std::env::var_os("E2E_ROUNDTRIP_DIR") else {
        return;
    };
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let job = path.file_stem().unwrap().to_string_lossy().into_owned();
        let j = config::load(&job, Some(&path), None, &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
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
            ("sync.rsync_args", format!("{:?}", j.sync.rsync_args)),
            ("retention", format!("{:?}", j.retention)),
        ] {
            writeln!(out, "{k}={v}").unwrap();
        }
        std::fs::write(path.with_extension("resolved"), out).unwrap();
        n += 1;
    }
    assert!(n > 0, "no .toml files in {dir:?}");
}
