//! Bounded time on a server that stops answering.

use crate::paths::JobPaths;
use crate::remote;
use std::time::{Duration, Instant};

/// Bounded time on a server that stops answering (alive, but silent: ServerAlive is answered by
/// sshd, not by a stuck sftp-server). While the stack is up, a thread asks the server for a statfs
/// through sshfs every 30 s; after `E2E_BACKUP_STALL_TIMEOUT` seconds (default 600) without an
/// answer it stops the running step as a signal would, and the run unwinds (exit 3). Each answer
/// is also a systemd watchdog ping (`WatchdogSec=` on e2e-sync@), so a run that hangs where this
/// thread cannot help (in the kernel) is still stopped by systemd.
pub(crate) struct StallWatchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallWatchdog {
    /// `dry`: a dry run starts none.
    pub(crate) fn start(dry: bool, p: &JobPaths) -> Option<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        if dry {
            return None;
        }
        let limit = std::env::var("E2E_BACKUP_STALL_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(600);
        let every = Duration::from_secs(limit.clamp(2, 120) / 2).min(Duration::from_secs(30));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, paths) = (stop.clone(), p.clone());
        let watchdog = std::env::var_os("WATCHDOG_USEC").is_some();
        std::thread::spawn(move || {
            let mut last_ok = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                if !remote::is_mounted(&paths) || remote::responsive(&paths, every) {
                    last_ok = Instant::now();
                    if watchdog {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                } else if last_ok.elapsed() >= Duration::from_secs(limit) {
                    crate::progress::stderr_line(
                        crate::progress::Level::Warning,
                        &format!(
                            "{}: the server has not answered for {limit} s; stopping the run",
                            paths.remote.display()
                        ),
                    );
                    crate::exec::stop_stalled(limit);
                    // The running step may be blocked in the kernel on the silent FUSE mount
                    // (syncfs, a write), where no signal reaches it: killing the connection fails
                    // those requests (ENOTCONN), so the step returns and the run can unwind. The
                    // main thread then fences properly (remote::fence, logged as a step).
                    for pid in remote::connection_pids(&paths) {
                        eprintln!(
                            "+ kill -KILL {pid}  # stall watchdog: the connection's sshfs/ssh"
                        );
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return;
                }
                let until = Instant::now() + every;
                while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        Some(StallWatchdog { stop })
    }
}

impl Drop for StallWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
