//! What a run tells its user: results on stdout, progress on a TTY, status to systemd.

use crate::size::human;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Write results to stdout in one piece. A reader that has gone away (`e2e-sync --list | grep -q X`,
/// `| head -1`) is not an error of ours: the output is dropped instead of panicking, which is what
/// `println!` does on EPIPE (Rust ignores SIGPIPE).
pub fn print_stdout(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

static SCRIPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process made a dry-run runner: its stdout is a script, and must stay a valid one.
pub fn stdout_is_a_script() {
    SCRIPT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The path a command produced, on stdout. In a dry-run stdout is a script: the path becomes a
/// comment. Also printed before the error of a run whose result stands (see `cmd::sync`).
pub fn print_result(p: &std::path::Path) {
    let script = SCRIPT.load(std::sync::atomic::Ordering::Relaxed);
    print_stdout(&format!(
        "{}{}\n",
        if script { "# " } else { "" },
        p.display()
    ));
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `-q`: stderr gets only warnings and errors (no logged commands, progress, notes or reports).
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// An informational line on stderr (a report such as "verified …"); none with `-q`.
pub fn info(line: &str) {
    if !quiet() {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// A result as one line of JSON on stdout (`--json`; the schemas are in docs/contract.md).
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    print_stdout(&format!("{}\n", serde_json::to_string(v)?));
    Ok(())
}

/// A mode's report on stdout: its JSON with `--json` (docs/contract.md), else its text.
pub fn print_report<T: serde::Serialize + ?Sized>(
    json: bool,
    v: &T,
    text: fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(v);
    }
    print_stdout(&text(v));
    Ok(())
}

/// The syslog priority of a line on stderr.
#[derive(Clone, Copy)]
pub enum Level {
    Err = 3,
    Warning = 4,
    Notice = 5,
}

/// One line on stderr. Under systemd, when stderr is the journal stream that `JOURNAL_STREAM`
/// names, it starts with `<N>`: journald takes that as the line's priority and strips it, so
/// `journalctl -p warning` shows errors and warnings (the `+ cmd` lines stay at info).
pub fn stderr_line(level: Level, line: &str) {
    if quiet() && matches!(level, Level::Notice) {
        return;
    }
    let line = if to_journal() {
        format!("<{}>{line}", level as u8)
    } else {
        line.to_string()
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether stderr is the journal stream systemd connected ("DEVICE:INODE" in `JOURNAL_STREAM`).
fn to_journal() -> bool {
    static J: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *J.get_or_init(|| {
        use std::os::fd::AsFd;
        let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        nix::sys::stat::fstat(std::io::stderr().as_fd())
            .is_ok_and(|st| want.to_str() == Some(&format!("{}:{}", st.st_dev, st.st_ino)))
    })
}

/// `warning!("…", args)`: a `warning: …` line on stderr at priority warning.
#[macro_export]
macro_rules! warning {
    ($($a:tt)*) => {
        $crate::progress::stderr_line($crate::progress::Level::Warning, &format!("warning: {}", format_args!($($a)*)))
    };
}

/// `notice!("…", args)`: a `note: …` line on stderr at priority notice.
#[macro_export]
macro_rules! notice {
    ($($a:tt)*) => {
        $crate::progress::stderr_line($crate::progress::Level::Notice, &format!("note: {}", format_args!($($a)*)))
    };
}

/// Progress to a TTY (stderr) and to systemd (`STATUS=`) when `NOTIFY_SOCKET` is set.
pub(crate) fn progress_reporter() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal() && !quiet();
    let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
    let mut last = Instant::now() - Duration::from_secs(10);
    move |line: &str| {
        let Some(status) = parse_progress(line) else {
            return;
        };
        if tty {
            eprint!("\r{status}\x1b[K");
        }
        if notify && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}

pub(crate) fn notify_status(status: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
    }
}

pub(crate) fn finish_progress() {
    if std::io::stderr().is_terminal() && !quiet() {
        eprintln!();
    }
}

/// rsync `--info=progress2` line → a short status, e.g. `45% of 1.23G, 12.34MB/s, 0:00:12 left`.
pub fn parse_progress(line: &str) -> Option<String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 4 || !f[1].ends_with('%') || !f[0].chars().all(|c| c.is_ascii_digit() || c == ',')
    {
        return None;
    }
    let done: u64 = f[0].replace(',', "").parse().ok()?;
    Some(format!(
        "{} {} copied, {}, eta {}",
        f[1],
        human(done),
        f[2],
        f[3]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("    1,234,567,890  45%   12.34MB/s    0:00:12 (xfr#5, to-chk=10/20)")
                .as_deref(),
            Some("45% 1.1 GiB copied, 12.34MB/s, eta 0:00:12")
        );
        assert_eq!(parse_progress("Number of files: 2 (reg: 1, dir: 1)"), None);
        assert_eq!(parse_progress(""), None);
    }
}
