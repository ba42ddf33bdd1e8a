use super::*;

#[test]
fn files_from_lists_add_paths() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.list"), d.path().join("b.list"));
    std::fs::write(&a, "# made by a hook\n/srv/db dump\n\n/home\n").unwrap();
    std::fs::write(&b, "relative/path\n").unwrap();
    let mut s = Sync {
        paths: vec!["/home".into()],
        exclude: vec![],
        exclude_from: vec![],
        files_from: vec![a.clone()],
        rsync_args: vec![],
        allow_partial: true,
        skip_unchanged: false,
    };
    assert_eq!(s.all_paths().unwrap(), ["/home", "/srv/db dump"]);
    s.files_from.push(b.clone());
    let e = s.all_paths().unwrap_err().to_string();
    assert!(e.contains(&format!("{}:1:", b.display())), "{e}");
    // A line break cannot go into rsync's list of paths: refused, before anything opens.
    s.files_from = vec![a.clone()];
    s.paths.push("/srv/two\nlines".into());
    let e = s.all_paths().unwrap_err().to_string();
    assert!(e.contains("holds a line break"), "{e}");
    s.paths.pop();
    s.files_from = vec![d.path().join("missing")];
    assert!(s
        .all_paths()
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}

const FULL: &str = r#"
[remote]
host = "backup.example.org"
port = 2222
user = "alice"
path = "/srv/backup/alice"
identity_file = "/etc/e2e-backup/id_ed25519"
known_hosts = "/etc/e2e-backup/known_hosts"

[container]
file = "home.luks"
size = "64G"
key_file = "/etc/e2e-backup/home.key"
create = true
auto_grow_free = "10%"
auto_grow_step = "8G"
max_size = "5T"
server_reserve = "2G"

[sync]
paths = ["/home", "/etc"]
exclude = ["*.cache"]
exclude_from = ["/etc/e2e-backup/home.exclude"]
rsync_args = ["--one-file-system"]

[retention]
keep_last = 7
keep_daily = 7
"#;

fn res(text: &str, ov: &Overrides) -> Result<Job> {
    let f = Path::new("/etc/e2e-backup/home.toml");
    resolve(
        "home",
        parse_file(text, f)?,
        ov,
        "/etc/e2e-backup/home.toml",
    )
}

#[test]
fn full_file() {
    let j = res(FULL, &Overrides::default()).unwrap();
    assert_eq!(j.remote.port, 2222);
    assert_eq!(j.container.size, Some(64 << 30));
    assert_eq!(j.container.max_size, Some(5 << 40));
    assert_eq!(j.container.auto_grow_free, SizeSpec::Percent(10.0));
    assert_eq!(j.container.auto_grow_step, SizeSpec::Bytes(8 << 30));
    assert_eq!(j.container.server_reserve, 2 << 30);
    assert!(j.container.create);
    assert_eq!(j.sync.paths, ["/home", "/etc"]);
    assert_eq!(j.retention.keep_last, 7);
    assert_eq!(j.retention.keep_weekly, 0);
}

#[test]
fn defaults_and_overrides() {
    let min = "[remote]\nhost='h'\nuser='u'\npath='/p'\nidentity_file='/i'\nknown_hosts='/k'\n";
    let j = res(min, &Overrides::default()).unwrap();
    assert_eq!(j.remote.port, 22);
    assert_eq!(j.container.file, "home.luks");
    assert_eq!(j.container.server_reserve, 1 << 30);
    assert!(!j.container.create);
    let ov = Overrides {
        host: Some("other".into()),
        size: Some("1G".into()),
        sources: vec!["/data".into()],
        ..Overrides::default()
    };
    let j = res(min, &ov).unwrap();
    assert_eq!(j.remote.host, "other");
    assert_eq!(j.container.size, Some(1 << 30));
    assert_eq!(j.sync.paths, ["/data"]);
}

#[test]
fn unknown_key_names_key_file_and_section() {
    let text = FULL.replace("max_size", "max_sizee");
    let e = res(&text, &Overrides::default()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with("/etc/e2e-backup/home.toml:17: unknown key `max_sizee`"),
        "{m}"
    );
    assert!(m.ends_with("in [container]"), "{m}");
    assert!(!m.contains('\n'), "{m}");
    assert_eq!(crate::error::code_of(&e), Code::Config);
    let e = res("[remot]\nhost='x'\n", &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("unknown key `remot`"), "{e}");
}

#[test]
fn browse_idle_timeout_is_a_plain_time_span() {
    assert_eq!(
        res(FULL, &Overrides::default()).unwrap().browse,
        Browse::default()
    );
    for ok in ["90", "30s", "15min", "2h"] {
        let j = res(
            &format!("{FULL}\n[browse]\nautomount = true\nidle_timeout = \"{ok}\"\n"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            (j.browse.automount, j.browse.idle_timeout.as_str()),
            (true, ok)
        );
    }
    for bad in ["", "0", "10 min", "5m", "1d", "-3s", "07s"] {
        let e = res(
            &format!("{FULL}\n[browse]\nidle_timeout = \"{bad}\"\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("browse.idle_timeout: "),
            "{bad}: {e}"
        );
        assert_eq!(crate::error::code_of(&e), Code::Config);
    }
}

#[test]
fn malformed_and_missing() {
    let e = res("[remote\nhost=", &Overrides::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("/etc/e2e-backup/home.toml:1: "),
        "{e}"
    );
    let e = res("[remote]\nhost='h'\n", &Overrides::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/e2e-backup/home.toml: remote.user: required but not set"
    );
    let e = res(&FULL.replace("\"64G\"", "\"64Q\""), &Overrides::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("container.size: invalid size \"64Q\""),
        "{e}"
    );
    let e = res(
        &FULL.replace("\"/home\", ", "\"home\", "),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("sync.paths: \"home\" is not an absolute path"),
        "{e}"
    );
    for bad in ["0", "1M", "2E", "-1G", "99999999T"] {
        let ov = Overrides {
            size: Some(bad.into()),
            ..Overrides::default()
        };
        let e = res(FULL, &ov).unwrap_err();
        assert!(e.to_string().contains("container.size: "), "{bad}: {e}");
    }
    let e = res(&FULL.replace("home.luks", "../x"), &Overrides::default()).unwrap_err();
    assert!(e.to_string().contains("container.file"), "{e}");
    let e = res(
        &FULL.replace("port = 2222", "port = \"x\""),
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(crate::error::code_of(&e), Code::Config);
}

#[test]
fn exclude_filter_rules_refused() {
    for e in ["!", "+ /keep", "- x", "+,s x", "-,p y"] {
        assert!(filter_rule_prefix(e).is_some(), "{e}");
    }
    for e in ["*.cache", "-x", "+x", "/home/*/tmp", "!x"] {
        assert_eq!(filter_rule_prefix(e), None, "{e}");
    }
}

#[test]
fn filesystem_is_ext4_unless_btrfs_is_asked_for() {
    let with = |v: &str| FULL.replace("[sync]", &format!("filesystem = {v}\n\n[sync]"));
    let none = Overrides::default();
    assert_eq!(res(FULL, &none).unwrap().container.filesystem, Kind::Ext4);
    let j = res(&with("\"btrfs\""), &none).unwrap();
    assert_eq!(j.container.filesystem, Kind::Btrfs);
    let e = res(&with("\"xfs\""), &none).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/e2e-backup/home.toml: container.filesystem: \"xfs\" is not a filesystem e2e-backup makes: \"ext4\" (the default) or \"btrfs\""
    );
    // mkfs.btrfs needs room that ext4 does not.
    let small = Overrides {
        size: Some("64M".into()),
        ..Overrides::default()
    };
    assert!(res(FULL, &small).is_ok());
    let e = res(&with("\"btrfs\""), &small).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "container.size: 67108864 bytes is too small for a btrfs container: give at least 128M"
        ),
        "{e}"
    );
}
