//! Undo on failure, one convention for every layer.

use super::{Cmd, Runner};

/// What undoes a multi-step operation that fails half-way: each layer pushes the step that undoes
/// the one it just ran; dropped before [`Undo::done`], the steps run newest first as cleanup steps.
pub struct Undo<'a> {
    run: &'a Runner,
    steps: Vec<Cmd>,
}

impl<'a> Undo<'a> {
    pub fn new(run: &'a Runner) -> Self {
        Undo {
            run,
            steps: Vec::new(),
        }
    }
    pub fn push(&mut self, c: Cmd) {
        self.steps.push(c);
    }
    pub fn done(mut self) {
        self.steps.clear();
    }
    /// The undo steps as they would run, newest first (for tests).
    #[cfg(test)]
    pub fn pending(&self) -> Vec<String> {
        self.steps.iter().rev().map(Cmd::render).collect()
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let _cleanup = self.run.unwinding();
        while let Some(c) = self.steps.pop() {
            if let Err(e) = self.run.run(&c) {
                crate::warning!("cleanup step failed: {e:#}");
            }
        }
    }
}
