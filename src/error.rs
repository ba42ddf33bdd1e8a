//! Exit codes (docs/contract.md) and the error type that carries one.

use std::fmt;

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// An external step failed at run time.
    Runtime = 1,
    /// Usage or configuration error.
    Config = 2,
    /// Remote unreachable or host key mismatch.
    Remote = 3,
    /// Container refused: not LUKS, wrong key, in use by another host.
    Refused = 4,
    /// Locked by another run on this host.
    Locked = 5,
    /// Out of space on the server or in the container.
    NoSpace = 6,
    /// A check that was asked for cannot be made: the snapshot's manifest is missing, unreadable or
    /// empty (pass `--unchecked` to restore without the check).
    Unchecked = 7,
    /// Stopped by SIGHUP (128 + 1), after unwinding what the run had opened.
    Hangup = 129,
    /// Stopped by SIGINT (Ctrl-C; 128 + 2), after unwinding.
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15), after unwinding.
    Terminated = 143,
}

impl Code {
    /// The exit code for a run stopped by signal `sig`.
    pub fn for_signal(sig: i32) -> Code {
        match sig {
            1 => Code::Hangup,
            15 => Code::Terminated,
            _ => Code::Interrupted,
        }
    }
}

/// An error with a one-line message meant for the user and a documented exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: Code,
    pub msg: String,
}

impl Fail {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Fail {}

/// Build an `anyhow::Error` carrying an exit code.
pub fn fail(code: Code, msg: impl Into<String>) -> anyhow::Error {
    Fail::new(code, msg).into()
}

/// The exit code for any error: the first [`Fail`] in its chain, else a runtime failure.
pub fn code_of(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fail>())
        .map_or(Code::Runtime, |f| f.code)
}
