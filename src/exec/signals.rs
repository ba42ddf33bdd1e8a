//! Signals: SIGINT, SIGTERM and SIGHUP stop the running step and refuse the next one, so the run
//! unwinds what it opened; the stall watchdog stops a run the same way.

use crate::error::{fail, Code};
use anyhow::Result;
use std::sync::atomic::{AtomicI32, Ordering};

/// The first SIGINT/SIGTERM/SIGHUP this process received (0: none).
pub(super) static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The process group of the running step that a signal may stop (0: none, or a cleanup step).
pub(super) static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: nix::libc::c_int) {
    // Only async-signal-safe work here: remember the signal, stop the running step. A second
    // signal (a cleanup step that hangs, an impatient user) ends the process the default way.
    // After a stall the first signal is taken as the consequence of the stall it is (systemd
    // stops the units above a remote the run itself fenced): the run is unwinding already.
    match SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {}
        Err(STALLED) => {
            let _ = SIGNAL.compare_exchange(
                STALLED,
                STALLED_SIGNALED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        Err(_) => unsafe {
            nix::libc::signal(sig, nix::libc::SIG_DFL);
            nix::libc::raise(sig);
        },
    }
    let pg = CHILD.load(Ordering::SeqCst);
    if pg > 0 {
        unsafe { nix::libc::kill(-pg, nix::libc::SIGTERM) };
    }
}

/// Catch SIGINT, SIGTERM and SIGHUP: the running step is stopped, no further step starts, and the
/// error that follows unwinds what the run opened (cleanup steps still run) before the binary exits
/// 130/143/129. Children run in process groups of their own, so a terminal's Ctrl-C reaches only us
/// (sshfs, in particular, must not die under a mounted container).
pub fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        unsafe {
            let _ = sigaction(s, &act);
        }
    }
}

/// The value of [`SIGNAL`] that means "stopped because the server stopped answering".
const STALLED: i32 = -1;
/// Stalled, and a signal came since: the next one ends the process.
const STALLED_SIGNALED: i32 = -2;

/// Stop the running step and refuse further ones, as a signal would, because the server has not
/// answered for `secs` seconds (see ops' stall watchdog): the run then unwinds and exits 3.
pub fn stop_stalled(secs: u64) {
    STALLED_SECS.store(secs as i32, Ordering::SeqCst);
    if SIGNAL
        .compare_exchange(0, STALLED, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        let pg = CHILD.load(Ordering::SeqCst);
        if pg > 0 {
            unsafe { nix::libc::kill(-pg, nix::libc::SIGTERM) };
        }
    }
}
static STALLED_SECS: AtomicI32 = AtomicI32::new(0);

/// Whether the run was stopped by [`stop_stalled`].
pub fn stalled() -> bool {
    matches!(SIGNAL.load(Ordering::SeqCst), STALLED | STALLED_SIGNALED)
}

/// For a process whose ordinary end is a signal (the lease keeper, stopped by its release):
/// whether one came, taken as handled, so that the process ends as it should rather than with the
/// signal's error line and exit code.
pub fn take_signal() -> bool {
    let s = SIGNAL.load(Ordering::SeqCst);
    s > 0
        && SIGNAL
            .compare_exchange(s, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
}

/// `Err` (exit 128 + N, one line) once a stopping signal has arrived.
pub fn check_interrupted() -> Result<()> {
    stop_error("what this run had opened was closed again")
}

/// [`check_interrupted`] for a run that has finished: a signal that came while it was closing
/// still ends it with the signal's code (the caller asked it to stop, and a unit or script must see
/// that), and the line says that its result (`done`) is complete and kept.
pub fn check_interrupted_after(done: Option<&std::path::Path>) -> Result<()> {
    let kept = done.map_or(String::new(), |p| {
        format!(": {} is complete and kept", p.display())
    });
    stop_error(&format!(
        "while closing, after the run had finished{kept}; what it had opened was closed again"
    ))
}

fn stop_error(then: &str) -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        STALLED | STALLED_SIGNALED => Err(fail(
            Code::Remote,
            format!(
                "the server stopped answering (no reply to a statfs for {} s): stopped and closed again; earlier snapshots are not affected",
                STALLED_SECS.load(Ordering::SeqCst)
            ),
        )),
        sig => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("a signal");
            Err(fail(Code::for_signal(sig), format!("stopped by {name}; {then}")))
        }
    }
}
