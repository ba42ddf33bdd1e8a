//! A layer's operation as a list of steps, run by the one Runner in one call: each step's command,
//! the shell variable it sets for later steps (`loop=$(losetup …)`), and what undoes it.

use super::{Arg, Cmd, Runner, Undo};
use anyhow::Result;

/// One step: `cmd`, optionally captured into `var`, and its undo, pushed once it succeeded; or a
/// remark (a `#` line of the dry-run script).
pub struct Step {
    cmd: Option<Cmd>,
    note: &'static str,
    var: Option<&'static str>,
    undo: Option<Cmd>,
}

impl Step {
    pub fn run(cmd: Cmd) -> Self {
        Step {
            cmd: Some(cmd),
            note: "",
            var: None,
            undo: None,
        }
    }
    pub fn note(note: &'static str) -> Self {
        Step {
            cmd: None,
            note,
            var: None,
            undo: None,
        }
    }
    /// A step whose stdout later steps use as `Arg::Var(var)`.
    pub fn capture(var: &'static str, cmd: Cmd) -> Self {
        Step {
            var: Some(var),
            ..Step::run(cmd)
        }
    }
    pub fn undo(mut self, cmd: Cmd) -> Self {
        self.undo = Some(cmd);
        self
    }
}

/// The values the captured steps produced: literals in a real run, `"$var"` in a dry run.
#[derive(Default, Debug)]
pub struct Vars(Vec<(&'static str, Arg)>);

impl Vars {
    pub fn get(&self, var: &'static str) -> Arg {
        self.0
            .iter()
            .find(|(v, _)| *v == var)
            .map_or(Arg::Var(var), |(_, a)| a.clone())
    }
    /// `cmd` with the variables set so far replaced by their values (a real run's argv).
    fn bind(&self, mut cmd: Cmd) -> Cmd {
        for a in &mut cmd.args {
            if let Arg::Var(v) = a {
                *a = self.get(v);
            }
        }
        cmd
    }
}

impl Runner {
    /// Run `steps` in order; each one that succeeds pushes its undo onto `undo`. Stops at the first
    /// failure, leaving `undo` to unwind what ran. Returns the captured values.
    pub fn steps(&self, undo: &mut Undo, steps: Vec<Step>) -> Result<Vars> {
        self.steps_checked(undo, steps, &|| Ok(()))
    }

    /// [`Runner::steps`], calling `check` before each command (a fence: is the target still ours?).
    pub fn steps_checked(
        &self,
        undo: &mut Undo,
        steps: Vec<Step>,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Vars> {
        let mut vars = Vars::default();
        for s in steps {
            let Some(cmd) = s.cmd else {
                self.note(s.note);
                continue;
            };
            check()?;
            let cmd = vars.bind(cmd);
            match s.var {
                Some(v) => {
                    let value = self.capture(&cmd, v)?;
                    vars.0.push((v, value));
                }
                None => {
                    self.run(&cmd)?;
                }
            }
            if let Some(u) = s.undo {
                undo.push(vars.bind(u));
            }
        }
        Ok(vars)
    }

    /// Run `steps`, which undo nothing (a teardown, an online grow), in order; stop at the first failure.
    pub fn all(&self, steps: Vec<Step>) -> Result<()> {
        self.all_checked(steps, &|| Ok(()))
    }

    /// [`Runner::all`], calling `check` before each command.
    pub fn all_checked(&self, steps: Vec<Step>, check: &dyn Fn() -> Result<()>) -> Result<()> {
        debug_assert!(steps.iter().all(|s| s.undo.is_none()));
        let mut undo = Undo::new(self);
        self.steps_checked(&mut undo, steps, check)?;
        undo.done();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Vec<Step> {
        vec![
            Step::capture("dev", Cmd::new("echo").arg("/dev/loop7"))
                .undo(Cmd::new("true").arg("detach").arg(Arg::Var("dev"))),
            Step::run(
                Cmd::new("test")
                    .arg(Arg::Var("dev"))
                    .arg("=")
                    .arg("/dev/loop7"),
            ),
            Step::run(Cmd::new("false")),
        ]
    }

    #[test]
    fn real_run_binds_captured_values_and_unwinds_what_ran() {
        let r = Runner::new(false, false);
        let mut undo = Undo::new(&r);
        let e = r.steps(&mut undo, plan()).unwrap_err();
        assert!(e.to_string().contains("false failed"), "{e}");
        assert_eq!(undo.pending(), ["true detach /dev/loop7"]);
        let mut undo = Undo::new(&r);
        let v = r
            .steps(&mut undo, plan().into_iter().take(2).collect())
            .unwrap();
        assert_eq!(v.get("dev"), Arg::Lit("/dev/loop7".into()));
        undo.done();
    }

    #[test]
    fn the_check_runs_before_each_command_and_stops_the_rest() {
        let r = Runner::buffered();
        let checks = std::cell::Cell::new(0);
        let steps = || {
            vec![
                Step::note("two commands"),
                Step::run(Cmd::new("true").arg("1")),
                Step::run(Cmd::new("true").arg("2")),
            ]
        };
        r.all_checked(steps(), &|| {
            checks.set(checks.get() + 1);
            Ok(())
        })
        .unwrap();
        assert_eq!(checks.get(), 2, "not before the note");
        let e = r
            .all_checked(steps(), &|| {
                checks.set(checks.get() + 1);
                anyhow::ensure!(checks.get() < 4, "not ours any more");
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "not ours any more");
        assert_eq!(
            r.script(),
            [
                "set -e",
                "# two commands",
                "true 1",
                "true 2",
                "# two commands",
                "true 1"
            ]
        );
    }

    #[test]
    fn dry_run_prints_variables() {
        let r = Runner::buffered();
        let mut undo = Undo::new(&r);
        let v = r.steps(&mut undo, plan()).unwrap();
        assert_eq!(v.get("dev"), Arg::Var("dev"));
        assert_eq!(
            r.script(),
            [
                "set -e",
                "dev=$(echo /dev/loop7)",
                "test \"$dev\" = /dev/loop7",
                "false"
            ]
        );
        assert_eq!(undo.pending(), ["true detach \"$dev\""]);
        undo.done();
    }
}
