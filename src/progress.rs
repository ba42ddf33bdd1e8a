//! What a run tells its user: results on stdout, progress on a TTY, status to systemd.

use crate::snapshots;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Write results to stdout in one piece. A reader that has gone away (`e2e-sync --list | grep -q X`,
/// `| head -1`) is not an error of ours: the output is dropped instead of panicking, which is what
/// `println!` does on EPIPE (Rust ignores SIGPIPE).
pub fn print_stdout(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
}

/// Progress to a TTY (stderr) and to systemd (`STATUS=`) when `NOTIFY_SOCKET` is set.
pub(crate) fn progress_reporter() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal();
    let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
    let mut last = Instant::now() - Duration::from_secs(10);
    move |line: &str| {
        let Some(status) = snapshots::parse_progress(line) else {
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
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}
