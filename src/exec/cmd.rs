//! One external command as a value: program, arguments, environment, accepted exit codes and
//! error mapping, and its rendering as a line of a shell script.

use crate::error::{fail, Code, Fail};
use anyhow::Result;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// One command-line argument: a literal, or (dry-run only) the value of an earlier step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Lit(String),
    Var(&'static str),
}

impl Arg {
    /// Shell form: quoted literal or `"$var"`.
    pub fn render(&self) -> String {
        match self {
            Arg::Lit(s) => quote(s),
            Arg::Var(v) => format!("\"${v}\""),
        }
    }

    /// The literal value; a variable renders as `$var` (only reachable in dry-run output and tests).
    pub fn value(&self) -> String {
        match self {
            Arg::Lit(s) => s.clone(),
            Arg::Var(v) => format!("${v}"),
        }
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Lit(s.to_string())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Lit(s)
    }
}
impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Lit(s.clone())
    }
}
impl From<&std::path::Path> for Arg {
    fn from(p: &std::path::Path) -> Self {
        Arg::Lit(p.to_string_lossy().into_owned())
    }
}
impl From<std::path::PathBuf> for Arg {
    fn from(p: std::path::PathBuf) -> Self {
        Arg::Lit(p.to_string_lossy().into_owned())
    }
}
impl From<&std::path::PathBuf> for Arg {
    fn from(p: &std::path::PathBuf) -> Self {
        Arg::Lit(p.to_string_lossy().into_owned())
    }
}
impl From<&Arg> for Arg {
    fn from(a: &Arg) -> Self {
        a.clone()
    }
}

/// Quote `s` for a POSIX shell; words made only of safe characters stay bare.
pub fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

type ErrMap = Box<dyn Fn(i32, &str) -> Option<Fail>>;

/// A command to run: program, arguments, extra environment, accepted exit codes, error mapping.
pub struct Cmd {
    pub program: String,
    pub args: Vec<Arg>,
    pub env: Vec<(String, String)>,
    /// Exit codes other than 0 that count as success (rsync 24, fsck 1).
    pub ok_codes: Vec<i32>,
    /// Exit codes the caller handles from the output (rsync 23). A dry-run script cannot, so there
    /// they stay failures.
    handled_codes: Vec<i32>,
    errmap: Option<ErrMap>,
    /// Text for the command's stdin (a list of paths too long for its arguments); a here-document
    /// in the dry-run script.
    input: Option<String>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            ok_codes: Vec::new(),
            handled_codes: Vec::new(),
            errmap: None,
            input: None,
        }
    }

    /// `rm -f FILE`: the undo of a file a step made, and the clean-up of one a cut run left.
    pub fn rm_f(file: impl Into<Arg>) -> Self {
        Cmd::new("rm").arg("-f").arg(file)
    }

    pub fn arg(mut self, a: impl Into<Arg>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, A>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<Arg>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn ok_code(mut self, c: i32) -> Self {
        self.ok_codes.push(c);
        self
    }

    /// Let exit code `c` through to the caller, which reads the output to decide (see
    /// [`Cmd::handled_codes`]); the dry-run script still fails on it.
    pub fn handled_code(mut self, c: i32) -> Self {
        self.handled_codes.push(c);
        self
    }

    /// Map a failure (exit code, stderr) to a specific user-facing error; `None` falls back to the
    /// generic "X failed" message.
    pub fn on_fail(mut self, f: impl Fn(i32, &str) -> Option<Fail> + 'static) -> Self {
        self.errmap = Some(Box::new(f));
        self
    }

    /// Feed `text` to the command's stdin (otherwise /dev/null).
    pub fn input(mut self, text: String) -> Self {
        self.input = Some(text);
        self
    }

    /// The here-document's delimiter: a word no line of the input is.
    fn input_end(&self) -> Option<String> {
        let text = self.input.as_deref()?;
        let mut end = "E2E_INPUT".to_string();
        while text.lines().any(|l| l == end) {
            end.push('_');
        }
        Some(end)
    }

    /// The argv as plain strings (for tests and messages).
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().map(Arg::value))
            .collect()
    }

    /// One shell-quoted line.
    pub fn render(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(quote(&self.program));
        words.extend(self.args.iter().map(Arg::render));
        if let Some(end) = self.input_end() {
            words.push(format!("<<'{end}'"));
        }
        words.join(" ")
    }

    /// What a real run logs: [`Cmd::render`], and how many lines its stdin gets (the lines
    /// themselves are in the dry-run script).
    pub fn log_line(&self) -> String {
        match &self.input {
            Some(text) => format!("{} # {} line(s)", self.render(), text.lines().count()),
            None => self.render(),
        }
    }

    /// The script line: like [`Cmd::render`], plus an exit-code guard when codes besides 0 are fine,
    /// so the line succeeds under `set -e` exactly when a real run would.
    pub fn script_line(&self) -> String {
        let mut line = self.render();
        if !self.ok_codes.is_empty() {
            let codes: Vec<String> = self.ok_codes.iter().map(|c| c.to_string()).collect();
            line = format!(
                "{line} || case $? in {}) ;; *) false ;; esac",
                codes.join("|")
            );
        }
        self.with_input(line)
    }

    /// The command as a `$( )` in the script holds it: a here-document must end on its own line,
    /// before the closing parenthesis.
    pub(super) fn substitution(&self) -> String {
        let line = self.with_input(self.render());
        if self.input.is_some() {
            line + "\n"
        } else {
            line
        }
    }

    /// `line` followed by the here-document of the input, if any (the line's own `<<'END'` is
    /// [`Cmd::render`]'s).
    fn with_input(&self, line: String) -> String {
        match (&self.input, self.input_end()) {
            (Some(text), Some(end)) => format!("{line}\n{}\n{end}", text.trim_end_matches('\n')),
            _ => line,
        }
    }

    pub(super) fn command(&self) -> Result<Command> {
        let mut c = Command::new(&self.program);
        for a in &self.args {
            match a {
                Arg::Lit(s) => c.arg(s),
                Arg::Var(v) => anyhow::bail!("internal error: unresolved ${v} in a real run"),
            };
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Own process group: a terminal's Ctrl-C is ours to handle (see catch_signals). SIGTERM when
        // we die, even by SIGKILL: no rsync goes on writing into a container nobody holds.
        c.process_group(0);
        unsafe {
            c.pre_exec(|| {
                nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM);
                Ok(())
            });
        }
        Ok(c)
    }

    /// Start it with stdout and stderr piped, and its stdin the input (written by a thread of its
    /// own, so that a command that writes while it reads cannot block on a full pipe) or nothing.
    pub(super) fn spawn_piped(&self) -> Result<std::process::Child> {
        let stdin = match self.input {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        let mut child = self
            .command()?
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(self, e))?;
        if let (Some(text), Some(mut w)) = (self.input.clone(), child.stdin.take()) {
            // A command that exits before reading it all makes the write fail (EPIPE): its exit
            // code tells what happened.
            std::thread::spawn(move || std::io::Write::write_all(&mut w, text.as_bytes()));
        }
        Ok(child)
    }

    pub(super) fn check(&self, code: Option<i32>, out: &Output) -> Result<()> {
        let rc = code.unwrap_or(-1);
        if rc == 0 || self.ok_codes.contains(&rc) || self.handled_codes.contains(&rc) {
            return Ok(());
        }
        let stderr = out.stderr.as_str();
        // Some tools (e2fsck's MMP report) put the telling part on stdout: the mapper sees both.
        let both = format!("{}\n{}", out.stderr, out.stdout);
        if let Some(f) = self.errmap.as_ref().and_then(|m| m(rc, &both)) {
            return Err(f.into());
        }
        let last = last_line(stderr);
        let how = match code {
            Some(c) => format!("exit code {c}"),
            None => "a signal".to_string(),
        };
        let tail = if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        };
        Err(fail(
            Code::Runtime,
            format!("{} failed with {how}{tail}", self.program),
        ))
    }
}

/// The last non-empty line of a command's stderr: usually the one that says what went wrong.
pub fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// What a finished command produced.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(super) fn spawn_error(cmd: &Cmd, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        fail(
            Code::Runtime,
            format!(
                "cannot run {}: not found in PATH (is it installed?)",
                cmd.program
            ),
        )
    } else {
        fail(Code::Runtime, format!("cannot run {}: {e}", cmd.program))
    }
}
