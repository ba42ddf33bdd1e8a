//! The one place that runs external commands.
//!
//! Every state change of the stack is an external command (even `mv`, `ln`, `install -d`), so that
//! `--dry-run` can print the exact sequence as a shell script that, run by hand, does the same. Values a
//! later command needs from an earlier one (the loop device `losetup -f --show` picked) become shell
//! variables in the script: [`Runner::capture`] returns an [`Arg::Var`] in dry-run mode.

use anyhow::Result;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod cmd;
mod signals;
mod steps;
mod undo;

use cmd::spawn_error;
pub use cmd::{last_line, quote, Arg, Cmd, Output};
pub use signals::{
    catch_signals, check_interrupted, check_interrupted_after, stalled, stop_stalled, take_signal,
};
use signals::{CHILD, SIGNAL};
pub use steps::{Step, Vars};
pub use undo::Undo;

enum Sink {
    Stdout,
    Buffer(RefCell<Vec<String>>),
}

/// Runs commands, or in dry-run mode prints them as a script.
pub struct Runner {
    dry_run: bool,
    pub verbose: bool,
    sink: Sink,
    started: RefCell<bool>,
    /// > 0 while undoing: those steps run even after a stopping signal.
    unwinding: std::rc::Rc<std::cell::Cell<u32>>,
}

/// While alive, the runner's steps are cleanup steps (see [`Runner::unwinding`]).
pub struct Unwinding(std::rc::Rc<std::cell::Cell<u32>>);

impl Drop for Unwinding {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The running step, registered so that a signal stops it; unregistered when dropped.
struct Running {
    interruptible: bool,
}

impl Running {
    fn start(interruptible: bool, child: &std::process::Child) -> Self {
        if interruptible {
            CHILD.store(child.id() as i32, Ordering::SeqCst);
            if SIGNAL.load(Ordering::SeqCst) != 0 {
                // The signal came between the check and the registration.
                unsafe { nix::libc::kill(-(child.id() as i32), nix::libc::SIGTERM) };
            }
        }
        Running { interruptible }
    }
    /// After the child ended: a stopped step is reported as the stop, not as its own failure.
    fn finish(self) -> Result<()> {
        if self.interruptible {
            check_interrupted()
        } else {
            Ok(())
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.interruptible {
            CHILD.store(0, Ordering::SeqCst);
        }
    }
}

impl Runner {
    pub fn new(dry_run: bool, verbose: bool) -> Self {
        if dry_run {
            crate::progress::stdout_is_a_script();
        }
        Runner {
            dry_run,
            verbose,
            sink: Sink::Stdout,
            started: RefCell::new(false),
            unwinding: Default::default(),
        }
    }

    /// A dry-run runner that collects the script (for tests).
    pub fn buffered() -> Self {
        Runner {
            dry_run: true,
            verbose: false,
            sink: Sink::Buffer(RefCell::new(Vec::new())),
            started: RefCell::new(false),
            unwinding: Default::default(),
        }
    }

    pub fn is_dry(&self) -> bool {
        self.dry_run
    }

    /// Mark the steps run while the guard lives as cleanup: a stopping signal neither refuses nor
    /// stops them (an interrupted run must still unmount and close what it opened).
    pub fn unwinding(&self) -> Unwinding {
        self.unwinding.set(self.unwinding.get() + 1);
        Unwinding(self.unwinding.clone())
    }

    /// Start a step: refused once a stopping signal has arrived, unless it is a cleanup step.
    fn begin(&self, cmd: &Cmd) -> Result<bool> {
        let interruptible = self.unwinding.get() == 0;
        if interruptible {
            check_interrupted()?;
        }
        self.log(cmd);
        Ok(interruptible)
    }

    /// The collected script of a [`Runner::buffered`] runner.
    pub fn script(&self) -> Vec<String> {
        match &self.sink {
            Sink::Buffer(b) => b.borrow().clone(),
            Sink::Stdout => Vec::new(),
        }
    }

    fn emit(&self, line: String) {
        if !self.started.replace(true) {
            self.emit_raw("set -e".to_string());
        }
        self.emit_raw(line);
    }

    fn emit_raw(&self, line: String) {
        match &self.sink {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{line}");
            }
            Sink::Buffer(b) => b.borrow_mut().push(line),
        }
    }

    /// A remark: a `#` comment in the dry-run script, stderr in verbose real runs.
    pub fn note(&self, msg: &str) {
        if self.dry_run {
            self.emit(format!("# {msg}"));
        } else if self.verbose {
            eprintln!("# {msg}");
        }
    }

    fn log(&self, cmd: &Cmd) {
        if !crate::progress::quiet() {
            eprintln!("+ {}", cmd.log_line());
        }
    }

    /// Run to completion, capturing stdout/stderr. In dry-run mode print the line and pretend success.
    pub fn run(&self, cmd: &Cmd) -> Result<Output> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(Output::default());
        }
        self.exec(cmd)
    }

    /// Run a command whose stdout a later step needs. Dry-run: prints `var=$(cmd)` and returns `"$var"`.
    pub fn capture(&self, cmd: &Cmd, var: &'static str) -> Result<Arg> {
        if self.dry_run {
            self.emit(format!("{var}=$({})", cmd.substitution()));
            return Ok(Arg::Var(var));
        }
        let out = self.exec(cmd)?;
        Ok(Arg::Lit(out.stdout.trim().to_string()))
    }

    /// Run a read-only probe whose answer only this process uses (e.g. allocated bytes on the server).
    /// Dry-run: prints the line and returns `None`.
    pub fn query(&self, cmd: &Cmd) -> Result<Option<String>> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(None);
        }
        Ok(Some(self.exec(cmd)?.stdout))
    }

    fn exec(&self, cmd: &Cmd) -> Result<Output> {
        let interruptible = self.begin(cmd)?;
        let child = cmd.spawn_piped()?;
        let step = Running::start(interruptible, &child);
        let out = child.wait_with_output()?;
        step.finish()?;
        let o = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if self.verbose {
            eprint!("{}{}", o.stdout, o.stderr);
        }
        cmd.check(out.status.code(), &o)?;
        Ok(o)
    }

    /// Run with a deadline; `Ok(None)` when it had to be killed (a hung FUSE unmount, say).
    /// Dry-run: prints the line and returns a success.
    pub fn run_timeout(&self, cmd: &Cmd, limit: Duration) -> Result<Option<Output>> {
        self.run_until_stalled(cmd, limit, limit, &|| None)
    }

    /// [`Runner::run_timeout`] whose deadline moves `limit` later whenever `progress` answers
    /// something new (a flush still writing on a slow link is not a hung one), up to `cap` in all.
    pub fn run_until_stalled(
        &self,
        cmd: &Cmd,
        limit: Duration,
        cap: Duration,
        progress: &dyn Fn() -> Option<u64>,
    ) -> Result<Option<Output>> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(Some(Output::default()));
        }
        let interruptible = self.begin(cmd)?;
        let mut child = cmd.spawn_piped()?;
        let step = Running::start(interruptible, &child);
        let start = Instant::now();
        let mut deadline = start + limit;
        let mut seen = progress();
        let mut checked = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                let now = progress();
                if now.is_some() && now != seen {
                    seen = now;
                    deadline = (Instant::now() + limit).min(start + cap);
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                // A process in uninterruptible sleep (I/O on a dead FUSE mount) cannot be reaped
                // yet: wait a little, then leave it.
                let until = Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                crate::progress::stderr_line(
                    crate::progress::Level::Warning,
                    &format!(
                        "{}: no answer after {}s, killed",
                        cmd.program,
                        start.elapsed().as_secs()
                    ),
                );
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut o = Output {
            code: status.code().unwrap_or(-1),
            ..Output::default()
        };
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut o.stdout);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut o.stderr);
        }
        step.finish()?;
        cmd.check(status.code(), &o)?;
        Ok(Some(o))
    }

    /// Run, handing each stdout record (split at `\r` or `\n`) to `on_line` as it arrives; stderr is
    /// kept for the error message. Used for rsync progress.
    pub fn run_streaming(&self, cmd: &Cmd, mut on_line: impl FnMut(&str)) -> Result<Output> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(Output::default());
        }
        let interruptible = self.begin(cmd)?;
        let mut child = cmd.spawn_piped()?;
        let step = Running::start(interruptible, &child);
        let mut err_pipe = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err_pipe.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let mut out = child.stdout.take().expect("piped");
        let mut all = Vec::new();
        let mut pending = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            all.extend_from_slice(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\n' || b == b'\r' {
                    on_line(&String::from_utf8_lossy(&pending));
                    pending.clear();
                } else {
                    pending.push(b);
                }
            }
        }
        if !pending.is_empty() {
            on_line(&String::from_utf8_lossy(&pending));
        }
        let status = child.wait()?;
        step.finish()?;
        let o = Output {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&all).into_owned(),
            stderr: err_thread.join().unwrap_or_default(),
        };
        if self.verbose {
            eprint!("{}", o.stderr);
        }
        cmd.check(status.code(), &o)?;
        Ok(o)
    }

    /// Run a read-only probe until it prints a stdout line `wanted` accepts, then stop it (SIGTERM
    /// to its process group): `Some(Some(line))`. `Some(None)` when it ended without one, with exit
    /// code 0; `Ok(None)` when it cannot tell (a dry run, which prints the line; a non-zero exit).
    /// The probe's own exit code never fails the run: the caller falls back to the real work.
    pub fn first_line(
        &self,
        cmd: &Cmd,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Option<Option<String>>> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(None);
        }
        let interruptible = self.begin(cmd)?;
        let mut child = cmd.spawn_piped()?;
        let step = Running::start(interruptible, &child);
        // stderr is not read: close it, so a chatty probe can never block on a full pipe.
        drop(child.stderr.take());
        let out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut found = None;
        for line in std::io::BufRead::split(out, b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            if wanted(&line) {
                unsafe { nix::libc::kill(-(child.id() as i32), nix::libc::SIGTERM) };
                found = Some(line);
                break;
            }
        }
        let status = child.wait()?;
        step.finish()?;
        Ok(match found {
            Some(line) => Some(Some(line)),
            None if status.code() == Some(0) => Some(None),
            None => None,
        })
    }

    /// Start a long-running command (sshfs -f) with stdout/stderr inherited. Dry-run: prints it.
    pub fn spawn(&self, cmd: &Cmd) -> Result<Option<std::process::Child>> {
        if self.dry_run {
            self.emit(cmd.script_line());
            return Ok(None);
        }
        self.log(cmd);
        let child = cmd
            .command()?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| spawn_error(cmd, e))?;
        Ok(Some(child))
    }
}

#[cfg(test)]
mod tests;
