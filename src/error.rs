//! Exit codes and the error type that carries one. [`exit_status`] is the one text of what each
//! code means: `--help`, the man pages and docs/contract.md are made from it (tests/man.rs).

use std::fmt;

/// Documented exit codes; [`Code::meaning`] says what each tells the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Runtime = 1,
    Config = 2,
    Remote = 3,
    Refused = 4,
    Locked = 5,
    NoSpace = 6,
    Unchecked = 7,
    Incomplete = 8,
    /// 128 + the signal's number.
    Hangup = 129,
    Interrupted = 130,
    Terminated = 143,
}

impl Code {
    pub const ALL: [Code; 11] = [
        Code::Runtime,
        Code::Config,
        Code::Remote,
        Code::Refused,
        Code::Locked,
        Code::NoSpace,
        Code::Unchecked,
        Code::Incomplete,
        Code::Hangup,
        Code::Interrupted,
        Code::Terminated,
    ];

    /// What the code tells the user; the signal codes share one phrase (see [`exit_status`]).
    pub fn meaning(self) -> &'static str {
        match self {
            Code::Runtime => "an external step failed",
            Code::Config => "usage or configuration error",
            Code::Remote => "remote unreachable or host key mismatch",
            Code::Refused => "container refused (not LUKS, wrong key, not readable or writable by the server account, in use by another host, or not the history this host wrote)",
            Code::Locked => "locked by another run on this host, or the stack was closed under the run by e2e-close --force",
            Code::NoSpace => "out of space (server or container)",
            Code::Unchecked => "a check cannot be made (the snapshot's manifest is missing, damaged or empty; --restore --unchecked restores anyway)",
            Code::Incomplete => "a snapshot was made but is incomplete: some source files could not be read (the previous version stands in where there was one; e2e-sync --list marks it)",
            Code::Hangup | Code::Interrupted | Code::Terminated => {
                "stopped by SIGHUP, SIGINT, SIGTERM after closing what the run had opened (a snapshot it had finished is kept and its path printed)"
            }
        }
    }

    /// The exit code for a run stopped by signal `sig`.
    pub fn for_signal(sig: i32) -> Code {
        match sig {
            1 => Code::Hangup,
            15 => Code::Terminated,
            _ => Code::Interrupted,
        }
    }
}

/// `lead` + "0 success; 1 an external step failed; …; 129, 130, 143 stopped by …", wrapped at `width`.
pub fn exit_status(lead: &str, width: usize) -> String {
    let mut parts = vec!["0 success".to_string()];
    for c in Code::ALL {
        match c {
            Code::Hangup => parts.push(format!("129, 130, 143 {}", c.meaning())),
            Code::Interrupted | Code::Terminated => {}
            _ => parts.push(format!("{} {}", c as i32, c.meaning())),
        }
    }
    wrap(&format!("{lead}{}.", parts.join("; ")), width)
}

/// Break `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + w.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out + &line
}

/// An error with a one-line message meant for the user and a documented exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: Code,
    pub msg: String,
    /// Another binary's error, already logged at priority err where it happened: shown again at
    /// priority notice, so that `journalctl -p err` has each failure once.
    pub repeated: bool,
}

impl Fail {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
            repeated: false,
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

/// Whether `err` repeats another binary's error (see [`Fail::repeated`]).
pub fn is_repeated(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fail>())
        .is_some_and(|f| f.repeated)
}

/// The exit code for any error: the first [`Fail`] in its chain, else a runtime failure.
pub fn code_of(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fail>())
        .map_or(Code::Runtime, |f| f.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_names_every_code_once() {
        let t = exit_status("", 100);
        assert!(t.lines().all(|l| l.len() <= 100), "{t}");
        let flat = t.replace('\n', " ");
        assert!(
            flat.starts_with("0 success; 1 an external step failed; 2 usage"),
            "{flat}"
        );
        for c in [1, 2, 3, 4, 5, 6, 7, 8] {
            assert_eq!(flat.matches(&format!("; {c} ")).count(), 1, "{c}: {flat}");
        }
        assert!(flat.ends_with("; 129, 130, 143 stopped by SIGHUP, SIGINT, SIGTERM after closing what the run had opened (a snapshot it had finished is kept and its path printed)."));
    }
}
