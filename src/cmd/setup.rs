//! e2e-setup: from nothing to a job file, writing no file by hand. Makes the container key and the
//! SSH identity (unless they exist), pins the server's host key only after its fingerprint was
//! confirmed, writes the job file, and prints what the server needs. It never touches the server.

use crate::cli::SetupCli;
use crate::config::{self, check_key_file, Job};
use crate::error::{fail, Code};
use crate::exec::{quote, Cmd, Runner};
use crate::progress::{info, set_quiet};
use anyhow::Result;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// `sh -c` that writes `$2` into the new file `$1` (mode 0600), refusing to overwrite one.
fn write_new(file: &Path, text: &str) -> Cmd {
    Cmd::new("sh")
        .arg("-c")
        .arg(r#"set -C && umask 077 && printf %s "$2" >"$1""#)
        .arg("e2e-write")
        .arg(file)
        .arg(text)
}

/// `p` with `suffix` appended to its name (`home.id_ed25519` → `home.id_ed25519.pub`).
fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

pub fn setup(cli: SetupCli) -> Result<Option<PathBuf>> {
    set_quiet(cli.common.quiet);
    let run = Runner::new(cli.common.dry_run, cli.common.verbose);
    setup_with(&run, &cli)
}

pub(crate) fn setup_with(run: &Runner, cli: &SetupCli) -> Result<Option<PathBuf>> {
    let c = &cli.common;
    let file = config::job_file(&c.job, c.config.as_deref(), c.config_dir.as_deref());
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    if exists(&file) {
        return Err(fail(
            Code::Config,
            format!(
                "{} exists: e2e-setup writes new jobs only; edit it, or remove it to start over (nothing changed)",
                file.display()
            ),
        ));
    }
    let mut ov = c.overrides.clone();
    let at = |what: &str| dir.join(format!("{}.{what}", c.job));
    let key = ov.key_file.get_or_insert_with(|| at("key")).clone();
    let identity = ov
        .identity_file
        .get_or_insert_with(|| at("id_ed25519"))
        .clone();
    let known = ov
        .known_hosts
        .get_or_insert_with(|| at("known_hosts"))
        .clone();
    // The job as it will be read back: every value checked before anything is written.
    let missing: Vec<&str> = [
        (ov.host.is_none(), "--host"),
        (ov.user.is_none(), "--user"),
        (ov.remote_path.is_none(), "--remote-path"),
        (ov.size.is_none(), "--size"),
        (ov.sources.is_empty(), "--source"),
    ]
    .into_iter()
    .filter_map(|(m, f)| m.then_some(f))
    .collect();
    if !missing.is_empty() {
        return Err(fail(
            Code::Config,
            format!(
                "e2e-setup needs {} (e.g. e2e-setup {} --host backup.example.org --user alice --remote-path /srv/backup/alice --size 64G --source /home); nothing changed",
                missing.join(", "),
                c.job
            ),
        ));
    }
    let job = config::from_flags(&c.job, &ov)?;
    if exists(&key) {
        // An existing key that would be refused later is refused now, before anything is written.
        check_key_file(&key).map_err(|e| {
            fail(
                Code::Config,
                format!("key file {}: {e}; nothing changed", key.display()),
            )
        })?;
    }
    let size = ov.size.clone().unwrap_or_default();
    run.run(&Cmd::new("install").args(["-d", "-m", "0700"]).arg(&dir))?;
    // The host key first: until it is confirmed, nothing else is written.
    pin_host_key(run, &job, &known, cli.fingerprint.as_deref())?;
    make_key(run, &key)?;
    make_identity(run, &identity, &c.job)?;
    run.run(&write_new(&file, &job_file_text(&job, &size)))?;
    server_instructions(run, &job, &identity)?;
    Ok(Some(file))
}

/// 64 random bytes, mode 0600; an existing key (checked up front) is kept.
fn make_key(run: &Runner, key: &Path) -> Result<()> {
    if exists(key) {
        run.note(&format!("using the existing key {}", key.display()));
        return Ok(());
    }
    run.run(
        &Cmd::new("sh")
            .arg("-c")
            .arg(r#"set -C && umask 077 && head -c 64 /dev/urandom >"$1""#)
            .arg("e2e-key")
            .arg(key),
    )?;
    crate::warning!(
        "{k} is the ONLY way to read these backups: without it nobody, you included, can restore them. Keep a copy away from this machine now (a lost or encrypted disk takes this copy with it), e.g. on paper: base64 {k} (restore it with base64 -d), or on a USB stick kept offline",
        k = quote(&key.to_string_lossy())
    );
    Ok(())
}

/// An ed25519 key without a passphrase (the timer runs unattended), unless the file exists.
fn make_identity(run: &Runner, identity: &Path, job: &str) -> Result<()> {
    if exists(identity) {
        run.note(&format!(
            "using the existing SSH key {}",
            identity.display()
        ));
        return Ok(());
    }
    run.run(
        &Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("e2e-backup {job}"))
            .arg("-f")
            .arg(identity),
    )?;
    Ok(())
}

/// The fingerprint in `ssh-keygen -lf` output ("256 SHA256:… host (ED25519)").
fn fingerprint_of(listing: &str) -> Option<String> {
    listing
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
}

/// Fetch the server's ed25519 host key, show its fingerprint, and pin it only once confirmed:
/// `--fingerprint` given and equal, or "yes" typed at a terminal.
fn pin_host_key(run: &Runner, job: &Job, known: &Path, want: Option<&str>) -> Result<()> {
    if exists(known) {
        run.note(&format!("using the pinned host key in {}", known.display()));
        return Ok(());
    }
    let r = &job.remote;
    let scan = Cmd::new("ssh-keyscan")
        .args(["-T", "15", "-t", "ed25519", "-p"])
        .arg(r.port.to_string())
        .arg(&r.host);
    let Some(out) = run.query(&scan)? else {
        run.note("a real run shows the fingerprint and pins the key only once it is confirmed");
        return Ok(());
    };
    let lines: String = out
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if lines.is_empty() {
        return Err(fail(
            Code::Remote,
            format!("{}:{} offered no ed25519 host key to ssh-keyscan: check --host and --port (nothing pinned)", r.host, r.port),
        ));
    }
    let new = with_suffix(known, ".new");
    let _ = std::fs::remove_file(&new);
    run.run(&write_new(&new, &lines))?;
    let listed = run
        .query(&Cmd::new("ssh-keygen").arg("-lf").arg(&new))?
        .unwrap_or_default();
    let have = fingerprint_of(&listed).unwrap_or_default();
    let check = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub";
    let confirmed = match want {
        Some(w) => w.trim() == have,
        None if std::io::stdin().is_terminal() => {
            eprint!("The server {} presents the host key {have} (ED25519).\nCompare it with `{check}` run on the server. Is it the same? Type yes to pin it: ", r.host);
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            answer.trim() == "yes"
        }
        None => {
            let _ = std::fs::remove_file(&new);
            return Err(fail(
                Code::Config,
                format!("the server {} presents the host key {have} (ED25519): compare it with `{check}` on the server, then rerun with --fingerprint {have} (nothing pinned)", r.host),
            ));
        }
    };
    if !confirmed {
        let _ = std::fs::remove_file(&new);
        return Err(fail(
            Code::Refused,
            match want {
                Some(w) => format!("the server {} presents the host key {have}, not {w}: someone may be in between, or the server has another key; nothing pinned", r.host),
                None => "host key not confirmed: nothing pinned".to_string(),
            },
        ));
    }
    run.run(&Cmd::new("mv").arg("-T").arg(&new).arg(known))?;
    info(&format!(
        "pinned {have} for {} in {}",
        r.host,
        known.display()
    ));
    Ok(())
}

/// The job file e2e-setup writes: what it was given and the files it made; the rest default
/// (see e2e-backup.toml(5)). TOML strings quoted by the toml crate.
pub(crate) fn job_file_text(job: &Job, size: &str) -> String {
    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    let p = |v: &Path| s(&v.to_string_lossy());
    let r = &job.remote;
    let c = &job.container;
    let mut t = format!(
        "# Written by e2e-setup; see e2e-backup.toml(5).\n\n[remote]\nhost = {}\n",
        s(&r.host)
    );
    if r.port != 22 {
        t.push_str(&format!("port = {}\n", r.port));
    }
    t.push_str(&format!(
        "user = {}\npath = {}\nidentity_file = {}\nknown_hosts = {}\n\n[container]\nfile = {}\n",
        s(&r.user),
        s(&r.path),
        p(&r.identity_file),
        p(&r.known_hosts),
        s(&c.file)
    ));
    t.push_str(&format!("size = {}\n", s(size)));
    if let Some(k) = &c.key_file {
        t.push_str(&format!("key_file = {}\n", p(k)));
    }
    let list = |v: &[String]| v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ");
    t.push_str(&format!("\n[sync]\npaths = [{}]\n", list(&job.sync.paths)));
    if !job.sync.exclude.is_empty() {
        t.push_str(&format!("exclude = [{}]\n", list(&job.sync.exclude)));
    }
    t.push_str("\n[retention]\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 6\n");
    t
}

/// What the server's administrator does, printed (the tools never log in as anyone but the
/// backup account).
fn server_instructions(run: &Runner, job: &Job, identity: &Path) -> Result<()> {
    let r = &job.remote;
    // The public half: its .pub file, else derived from the private key (an identity given
    // without one); a dry run names the file.
    let pubkey = match std::fs::read_to_string(with_suffix(identity, ".pub")) {
        Ok(k) => k.trim().to_string(),
        Err(_) => run
            .query(&Cmd::new("ssh-keygen").arg("-y").arg("-f").arg(identity))?
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|| format!("<the line in {}.pub>", identity.display())),
    };
    let text = format!(
        "On the server {host}, as root (an SFTP-only account; \"Server side\" in e2e-backup(7) confines it further with ChrootDirectory):\n\
         \n\
         \x20   useradd --system --create-home --shell /usr/sbin/nologin {user}\n\
         \x20   install -d -m 0700 -o {user} -g {user} {path}\n\
         \x20   install -d -m 0700 -o {user} -g {user} ~{user}/.ssh\n\
         \x20   echo {line} >>~{user}/.ssh/authorized_keys\n\
         \n\
         \x20 and in /etc/ssh/sshd_config (then: systemctl reload ssh):\n\
         \n\
         \x20   Match User {user}\n\
         \x20     ForceCommand internal-sftp -p {requests}\n\
         \x20     ClientAliveInterval 15\n\
         \x20     ClientAliveCountMax 4\n\
         \x20     AllowTcpForwarding local\n\
         \x20     PermitOpen 127.0.0.1:10809\n\
         \x20     PermitTTY no\n\
         \x20     X11Forwarding no\n\
         \n\
         Then the first backup (it creates the container): e2e-sync --create {job}\n\
         and every night after: systemctl daemon-reload && systemctl enable --now e2e-backup@{job}.timer\n\
         (daemon-reload: e2e-backup-generator writes the job's mount units from the new job file)",
        host = r.host,
        user = quote(&r.user),
        path = quote(&r.path),
        line = quote(&format!(
            "restrict,port-forwarding,permitopen=\"127.0.0.1:10809\" {pubkey}"
        )),
        job = job.name,
        requests = crate::remote::SFTP_REQUESTS,
    );
    if run.is_dry() {
        for l in text.lines() {
            run.note(l);
        }
    } else {
        info(&text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_file_reads_back_as_the_same_job() {
        let d = tempfile::tempdir().unwrap();
        let ov = config::Overrides {
            host: Some("backup.example.org".into()),
            port: Some(2222),
            user: Some("alice".into()),
            remote_path: Some("/srv/backup/alice \"home\"".into()),
            identity_file: Some(d.path().join("home.id_ed25519")),
            known_hosts: Some(d.path().join("home.known_hosts")),
            size: Some("64G".into()),
            key_file: Some(d.path().join("home.key")),
            sources: vec!["/home".into(), "/etc".into()],
            exclude: vec!["*.tmp".into()],
            ..config::Overrides::default()
        };
        let job = config::from_flags("home", &ov).unwrap();
        let file = d.path().join("home.toml");
        std::fs::write(&file, job_file_text(&job, "64G")).unwrap();
        let back = config::load("home", Some(&file), None, &config::Overrides::default()).unwrap();
        assert_eq!(back.remote, job.remote);
        assert_eq!(back.container.size, Some(64 << 30));
        assert_eq!(back.container.key_file, job.container.key_file);
        assert_eq!(back.sync.paths, job.sync.paths);
        assert_eq!(back.sync.exclude, job.sync.exclude);
        assert_eq!(back.retention.keep_daily, 7);
    }

    #[test]
    fn fingerprint_from_ssh_keygen() {
        assert_eq!(
            fingerprint_of("256 SHA256:abc+/def 192.0.2.1 (ED25519)\n").as_deref(),
            Some("SHA256:abc+/def")
        );
        assert_eq!(fingerprint_of(""), None);
    }
}
