//! One file per command: each holds its binary's flow (parse → stack → steps) and nothing else.
//! Every command returns the path to print on success.

mod close;
#[cfg(test)]
mod golden;
mod grow;
mod list;
mod mount;
mod open;
mod restore;
mod sync;
mod trim;
mod verify;

pub use close::close;
pub use grow::grow;
pub use mount::mount;
pub use open::open;
pub use sync::sync;
pub use trim::trim;

use crate::error::code_of;
use crate::progress::print_stdout;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run one binary: parse, call `f`, print the produced path, map errors to one line and an exit code.
pub fn main<C: clap::Parser>(name: &str, f: fn(C) -> Result<Option<PathBuf>>) -> ExitCode {
    let cli = C::parse();
    crate::exec::catch_signals();
    match f(cli) {
        Ok(Some(p)) => {
            // In a dry-run stdout is a script: the path becomes a comment.
            let mark = if crate::exec::dry_run_active() {
                "# "
            } else {
                ""
            };
            print_stdout(&format!("{mark}{}\n", p.display()));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{name}: error: {msg}");
            ExitCode::from(code_of(&e) as u8)
        }
    }
}
