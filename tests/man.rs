//! Golden test: man/e2e-*.1 and completions/ are generated from the clap definitions in src/cli.rs.
//! `cargo test` fails when a checked-in file differs from what the definitions produce (so the
//! docs never drift from the flags); `E2E_UPDATE_MAN=1 cargo test` rewrites them.

use clap::CommandFactory;
use clap_complete::Shell;
use e2e_backup::cli::{
    CloseCli, GrowCli, KeepCli, MountCli, OpenCli, SetupCli, SyncCli, TrimCli, ENVIRONMENT,
    TRIM_NOTES,
};
use e2e_backup::error::exit_status;
use std::path::{Path, PathBuf};

fn commands() -> Vec<clap::Command> {
    vec![
        MountCli::command(),
        OpenCli::command(),
        SyncCli::command(),
        GrowCli::command(),
        TrimCli::command(),
        CloseCli::command(),
        SetupCli::command(),
        KeepCli::command(),
    ]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compare `got` with the file at `rel`, or write it when updating. Returns a complaint if stale.
fn check(rel: &str, got: &[u8], stale: &mut Vec<String>) {
    let path = root().join(rel);
    if std::env::var_os("E2E_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    match std::fs::read(&path) {
        Ok(have) if have == got => {}
        Ok(_) => stale.push(format!("{rel} is stale")),
        Err(e) => stale.push(format!("{rel}: {e}")),
    }
}

/// Plain text as roff: backslashes escaped, no line starting with a control character; a blank
/// line starts a new paragraph, an indented line is shown as is.
fn roff(text: &str) -> String {
    let mut out = Vec::new();
    for l in text.replace('\\', "\\e").lines() {
        if l.is_empty() {
            out.push(".PP".to_string());
        } else if l.starts_with(' ') {
            out.push(format!(".nf\n{l}\n.fi"));
        } else if l.starts_with('.') || l.starts_with('\'') {
            out.push(format!("\\&{l}"));
        } else {
            out.push(l.to_string());
        }
    }
    out.join("\n")
}

fn section(buf: &mut Vec<u8>, title: &str, text: &str) {
    buf.extend_from_slice(format!(".SH \"{title}\"\n{}\n", roff(text)).as_bytes());
}

fn report(stale: Vec<String>) {
    assert!(
        stale.is_empty(),
        "{}\nsrc/cli.rs changed: regenerate with `E2E_UPDATE_MAN=1 cargo test --test man` and commit the result",
        stale.join("\n")
    );
}

/// One page per binary. The date is left out on purpose: it would make the page change every day.
#[test]
fn man_pages_are_current() {
    let mut stale = Vec::new();
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        let mut buf = Vec::new();
        let man = clap_mangen::Man::new(cmd)
            .section("1")
            .manual("e2e-backup")
            .source(format!("e2e-backup {}", env!("CARGO_PKG_VERSION")));
        // clap's sections, but not EXTRA (--help's closing paragraphs): those get their headings.
        man.render_title(&mut buf).unwrap();
        man.render_name_section(&mut buf).unwrap();
        man.render_synopsis_section(&mut buf).unwrap();
        man.render_description_section(&mut buf).unwrap();
        man.render_options_section(&mut buf).unwrap();
        if name == "e2e-trim" {
            section(&mut buf, "NOTES", TRIM_NOTES);
        }
        buf.extend_from_slice(b".SH ENVIRONMENT\n");
        for (k, v) in ENVIRONMENT {
            buf.extend_from_slice(format!(".TP\n.B {k}\n{}\n", roff(v)).as_bytes());
        }
        section(&mut buf, "EXIT STATUS", &exit_status("", 100));
        man.render_version_section(&mut buf).unwrap();
        // A SEE ALSO section clap has no field for: the overview and the job file.
        buf.extend_from_slice(
            b".SH \"SEE ALSO\"\n\\fBe2e-backup\\fR(7), \\fBe2e-backup.toml\\fR(5)\n",
        );
        check(&format!("man/{name}.1"), &buf, &mut stale);
    }
    report(stale);
}

#[test]
fn completions_are_current() {
    let mut stale = Vec::new();
    for mut cmd in commands() {
        let name = cmd.get_name().to_string();
        for (shell, rel) in [
            (Shell::Bash, format!("completions/bash/{name}")),
            (Shell::Zsh, format!("completions/zsh/_{name}")),
            (Shell::Fish, format!("completions/fish/{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut buf);
            let text = String::from_utf8(buf).unwrap();
            let text = with_job_names(shell, &cmd, &text);
            check(&rel, text.as_bytes(), &mut stale);
        }
    }
    report(stale);
}

/// What lists the job names: the `*.toml` files in $E2E_BACKUP_CONFIG_DIR or /etc/e2e-backup.
const BASH_JOBS: &str = r#"
# JOB: the job files in $E2E_BACKUP_CONFIG_DIR (default /etc/e2e-backup), offered for a word that
# is not an option or an option's value (added to clap's generated completion, tests/man.rs).
_e2e_backup_jobs() {
    local f
    for f in "${E2E_BACKUP_CONFIG_DIR:-/etc/e2e-backup}"/*.toml; do
        [[ -e $f ]] || continue
        f=${f##*/}
        printf '%s\n' "${f%.toml}"
    done
}
FN_jobs() {
    FN "$@"
    local rc=$? cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    [[ $cur == -* ]] && return $rc
    case "$prev" in
        VALUED) return $rc ;;
    esac
    COMPREPLY=($(compgen -W "$(_e2e_backup_jobs)" -- "$cur"))
    return 0
}
"#;

const ZSH_JOBS: &str = r#"(( $+functions[_e2e_backup_jobs] )) ||
_e2e_backup_jobs() {
    local -a jobs
    jobs=(${E2E_BACKUP_CONFIG_DIR:-/etc/e2e-backup}/*.toml(N:t:r))
    _describe -t jobs 'job' jobs
}

"#;

const FISH_JOBS: &str = r#"function __e2e_backup_jobs
    set -l d /etc/e2e-backup
    set -q E2E_BACKUP_CONFIG_DIR; and set d $E2E_BACKUP_CONFIG_DIR
    for f in $d/*.toml
        basename $f .toml
    end
end
complete -c NAME -n 'not string match -q -- "-*" (commandline -ct)' -a '(__e2e_backup_jobs)' -d job
"#;

/// clap's completion, plus the job names for the JOB argument (clap cannot know them).
fn with_job_names(shell: Shell, cmd: &clap::Command, text: &str) -> String {
    let name = cmd.get_name();
    // e2e-keep runs on the server and takes a directory, not a job.
    if !cmd.get_positionals().any(|a| a.get_id() == "job") {
        return text.to_string();
    }
    match shell {
        Shell::Bash => {
            let f = text
                .split("complete -F ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .expect("bash completion registers a function");
            let valued: Vec<String> = cmd
                .get_arguments()
                .filter(|a| a.get_action().takes_values() && !a.is_positional())
                .flat_map(|a| {
                    let mut v: Vec<String> =
                        a.get_long().map(|l| format!("--{l}")).into_iter().collect();
                    v.extend(a.get_short().map(|c| format!("-{c}")));
                    v
                })
                .collect();
            let helper = BASH_JOBS
                .replace("FN", f)
                .replace("VALUED", &valued.join("|"));
            let at = text
                .find("\nif [[ \"${BASH_VERSINFO[0]}\"")
                .expect("bash registration");
            format!("{}{helper}{}", &text[..at + 1], &text[at + 1..]).replace(
                &format!("complete -F {f} "),
                &format!("complete -F {f}_jobs "),
            )
        }
        Shell::Zsh => {
            let at = text
                .find("\nif [ \"$funcstack[1]\"")
                .expect("zsh registration");
            let t = format!("{}{ZSH_JOBS}{}", &text[..at + 1], &text[at + 1..]);
            let job = "':job -- Job name";
            let i = t.find(job).expect("zsh JOB argument");
            let end = i + t[i..].find(":_default'").expect("zsh JOB action");
            format!(
                "{}:_e2e_backup_jobs'{}",
                &t[..end],
                &t[end + ":_default'".len()..]
            )
        }
        Shell::Fish => format!("{text}{}", FISH_JOBS.replace("NAME", name)),
        _ => text.to_string(),
    }
}

/// The bash completion, run by bash: the job names in the config directory complete JOB, and not
/// an option's value.
#[test]
fn bash_completes_job_names() {
    let dir = tempfile::tempdir().unwrap();
    for j in ["home", "hosts", "media"] {
        std::fs::write(dir.path().join(format!("{j}.toml")), "").unwrap();
    }
    std::fs::write(dir.path().join("home.key"), "").unwrap();
    let script = r#"
        source "$1"
        complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=()
            _e2e__sync_jobs e2e-sync "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
            printf '%s\n' "${COMPREPLY[@]}" | sort | paste -sd' '; }
        complete_words e2e-sync h
        complete_words e2e-sync --dry-run ""
        complete_words e2e-sync --config ho
        complete_words e2e-sync --dry-r
    "#;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(root().join("completions/bash/e2e-sync"))
        .env("E2E_BACKUP_CONFIG_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines,
        [
            "home hosts",
            "home hosts media",
            "home.key home.toml hosts.toml",
            "--dry-run"
        ],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every page the Makefile installs exists (hand-written 5 and 7 included) and says its own name.
#[test]
fn hand_written_pages_exist() {
    for (f, th) in [
        ("man/e2e-backup.toml.5", ".TH E2E-BACKUP.TOML 5"),
        ("man/e2e-backup.7", ".TH E2E-BACKUP 7"),
        ("man/e2e-backup-generator.8", ".TH E2E-BACKUP-GENERATOR 8"),
    ] {
        let text = std::fs::read_to_string(Path::new(&root()).join(f)).unwrap();
        assert!(text.contains(th), "{f} lacks {th:?}");
    }
}

/// e2e-backup.toml(5) documents every key the parser accepts: the fields of the raw structs in
/// src/config/file.rs (serde names = field names there).
#[test]
fn job_file_page_covers_every_key() {
    let src = std::fs::read_to_string(root().join("src/config/file.rs")).unwrap();
    let page = std::fs::read_to_string(root().join("man/e2e-backup.toml.5")).unwrap();
    let mut missing = Vec::new();
    for (st, section) in [
        ("RawRemote", "remote"),
        ("RawContainer", "container"),
        ("RawSync", "sync"),
        ("Retention", "retention"),
        ("RawBrowse", "browse"),
    ] {
        let start = src
            .find(&format!("pub struct {st} {{"))
            .unwrap_or_else(|| panic!("struct {st} not in src/config/file.rs"));
        let body = &src[start..start + src[start..].find("\n}").unwrap()];
        let keys: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
            .map(|(k, _)| k.trim())
            .collect();
        assert!(!keys.is_empty(), "no fields found in {st}");
        assert!(
            page.contains(&format!("[{section}]")),
            "page lacks [{section}]"
        );
        for k in keys {
            // Keys are set in bold at the start of their entry: .B key  or  \fBkey\fR
            if !page.contains(&format!(".B {k}\n")) && !page.contains(&format!("\\fB{k}\\fR")) {
                missing.push(format!("{section}.{k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "man/e2e-backup.toml.5 does not document: {}",
        missing.join(", ")
    );
}

/// Replace the paragraph of `file` that starts with `lead` (up to the next blank line or roff
/// request) by `text`, or report it stale.
fn check_paragraph(rel: &str, lead: &str, text: &str, stale: &mut Vec<String>) {
    let have = std::fs::read_to_string(root().join(rel)).unwrap();
    let start = have
        .find(lead)
        .unwrap_or_else(|| panic!("{rel}: no paragraph starting with {lead:?}"));
    let len = have[start..]
        .find("\n\n")
        .or_else(|| have[start..].find("\n."))
        .map_or(have.len() - start, |n| n + 1);
    let got = format!("{}{text}\n{}", &have[..start], &have[start + len..]);
    check(rel, got.as_bytes(), stale);
}

/// The exit codes' meaning has one source (src/error.rs): `--help` and the generated pages take it
/// from there; the hand-written page and docs/contract.md are checked against it.
#[test]
fn exit_codes_are_described_from_one_source() {
    let mut stale = Vec::new();
    check_paragraph(
        "docs/contract.md",
        "Exit codes: 0 success",
        &exit_status("Exit codes: ", 100),
        &mut stale,
    );
    check_paragraph(
        "man/e2e-backup.7",
        "0 success;",
        &exit_status("", 100),
        &mut stale,
    );
    report(stale);
}

/// The SFTP allow-list has one source (src/remote/mod.rs): the server module, the page's server
/// setup and the scenario that runs the module's account all grant exactly those requests.
#[test]
fn sftp_requests_are_listed_from_one_source() {
    let want = e2e_backup::remote::SFTP_REQUESTS;
    for (rel, text) in [
        (
            "nix/modules/e2e-backup.nix",
            format!("sftpRequests = \"{want}\""),
        ),
        (
            "man/e2e-backup.7",
            format!("internal-sftp \\-d /data \\-p {want}\n"),
        ),
        (
            "tests/vm/scenarios/sftp-only",
            format!("internal-sftp -d /data -p {want}\n"),
        ),
    ] {
        let have = std::fs::read_to_string(root().join(rel)).unwrap();
        assert!(have.contains(&text), "{rel} does not grant exactly {want}");
    }
}
